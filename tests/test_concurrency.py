"""Four processes embedding overlapping corpora into one shared store at once.

For every persistent backend (a SQLite file, a PostgreSQL database, a file
store folder, a diskcache folder): no process fails (SQLite's busy state is
waited out), every key ends up stored exactly once, every stored value
decodes to exactly the vector the model gives for its text, and a second
round of the same workers is served entirely from the shared cache.
"""

from __future__ import annotations

import multiprocessing
import random
import traceback
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from cachedvec import CachedEmbeddings, open_store
from cachedvec.codec import VectorCodec
from cachedvec.testing import FakeEmbeddings
from tests.conftest import store_url

WORKERS = 4
DIM = 32
UNIQUE_TEXTS = 2_000
PER_WORKER = 1_000  # neighbours share half their texts, ends wrap around
BATCH = 40  # small batches: many interleaved write transactions


def corpus() -> list[str]:
    return [
        f"shared text {i} about topic {i % 97} and item {i * 7919 % 1009}"
        for i in range(UNIQUE_TEXTS)
    ]


def worker_texts(worker: int) -> list[str]:
    texts = corpus()
    start = worker * (UNIQUE_TEXTS // WORKERS)
    mine = [texts[(start + i) % UNIQUE_TEXTS] for i in range(PER_WORKER)]
    rng = random.Random(worker)
    rng.shuffle(mine)
    return mine + mine[:100]  # a few repeats inside one call too


def embed_in_worker(url: str, worker: int, barrier: Any) -> dict[str, Any]:
    """One worker process: embed its texts through the shared store, check them."""
    try:
        texts = worker_texts(worker)
        model = FakeEmbeddings(DIM)
        with CachedEmbeddings(model, url, batch_size=BATCH) as cached:
            barrier.wait(timeout=60)  # all workers hit the store together
            got = cached.embed_documents_array(texts)
            stats = cached.stats.as_dict()
        expected = FakeEmbeddings(DIM).embed_array(texts)
        return {"ok": bool(np.array_equal(got, expected)), "stats": stats}
    except BaseException:  # report, so the parent shows the traceback
        return {"ok": False, "error": traceback.format_exc()}


def run_workers(url: str) -> list[dict[str, Any]]:
    # fork: children start in milliseconds; none inherits an open store.
    context = multiprocessing.get_context("fork")
    barrier = context.Manager().Barrier(WORKERS)
    with context.Pool(WORKERS) as pool:
        results = pool.starmap(embed_in_worker, [(url, w, barrier) for w in range(WORKERS)])
    for result in results:
        assert "error" not in result, result["error"]
        assert result["ok"], "a worker got a vector different from its model's"
    return results


@pytest.fixture(params=["sqlite", "postgres", "file", "diskcache"])
def shared_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "postgres":
        return str(request.getfixturevalue("postgres_store_url"))
    return store_url(request.param, tmp_path)


def test_four_writers_share_one_store(shared_url: str) -> None:
    first = run_workers(shared_url)
    computed = sum(r["stats"]["computed"] for r in first)
    assert UNIQUE_TEXTS <= computed <= WORKERS * PER_WORKER

    texts = corpus()
    model = FakeEmbeddings(DIM)
    with open_store(shared_url) as store:
        with CachedEmbeddings(model, store) as reader:
            expected_keys = reader.document_keys(texts)
        listed = list(store.yield_keys())
        assert len(listed) == len(set(listed)) == UNIQUE_TEXTS, "each key stored once"
        assert set(listed) == set(expected_keys)
        matrix, missing, corrupt = VectorCodec(DIM).decode_many(store.mget(expected_keys))
    assert missing == [] and corrupt == []
    assert np.array_equal(matrix, FakeEmbeddings(DIM).embed_array(texts))

    second = run_workers(shared_url)
    assert [r["stats"]["computed"] for r in second] == [0] * WORKERS
    assert all(r["stats"]["misses"] == 0 for r in second)
