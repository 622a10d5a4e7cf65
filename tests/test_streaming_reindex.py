"""Streaming rebuilds from the cache: bounded batches, sampled training, on-disk lists."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

import cachedvec
from cachedvec import reindexing
from cachedvec.cli import main
from cachedvec.codec import VectorCodec
from cachedvec.errors import ConfigError, MissingVectorsError, StoreError, VectorIndexError
from cachedvec.index import VectorIndex
from cachedvec.reindexing import ivf_pq_factory, large_index_factory
from cachedvec.stores import open_store
from cachedvec.testing import FakeEmbeddings

DIM = 32
N = 3000


def clustered(n: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((60, DIM))
    points = centres[rng.integers(0, 60, n)] + 0.6 * rng.standard_normal((n, DIM))
    return (points / np.linalg.norm(points, axis=1, keepdims=True)).astype(np.float32)


@pytest.fixture
def cached_index(tmp_path: Path) -> dict:
    """An index of N documents whose vectors sit in a SQLite cache under their keys."""
    vectors = clustered(N)
    keys = [f"cv1:test:0123456789abcdef:doc:{i:064x}" for i in range(N)]
    store = f"sqlite:///{tmp_path}/cache.db"
    with open_store(store) as opened:
        opened.mset(list(zip(keys, VectorCodec(DIM).encode_many(vectors), strict=True)))
    index = tmp_path / "idx"
    with VectorIndex(DIM, factory="Flat") as vindex:
        # Delete some first, so vector ids have gaps the rebuild must keep.
        vindex.add(
            vectors,
            [f"text {i}" for i in range(N)],
            [{"n": i} for i in range(N)],
            ids=[f"d{i}" for i in range(N)],
            cache_keys=keys,
        )
        vindex.delete([f"d{i}" for i in range(0, N, 10)])
        vindex.save(index)
    live = np.array([i for i in range(N) if i % 10])
    return {"index": str(index), "store": store, "vectors": vectors, "live": live}


def exact_ids(vectors: np.ndarray, live: np.ndarray, queries: np.ndarray, k: int) -> np.ndarray:
    return live[np.argsort(-(queries @ vectors[live].T), axis=1, kind="stable")[:, :k]]


def top_ids(index: str, queries: np.ndarray, k: int) -> list[list[str]]:
    with VectorIndex.load(index) as vindex:
        return [[hit.id for hit in hits] for hits in vindex.search_batch(queries, k)]


def test_streams_in_bounded_batches_and_matches_exact_search(
    cached_index: dict, monkeypatch: pytest.MonkeyPatch
) -> None:
    reads: list[int] = []
    read = reindexing._CacheReader.read

    def spy(self: reindexing._CacheReader, keys: list[str]) -> np.ndarray:
        reads.append(len(keys))
        return read(self, keys)

    monkeypatch.setattr(reindexing._CacheReader, "read", spy)
    report = cachedvec.reindex(
        cached_index["index"],
        store=cached_index["store"],
        factory="IVF16,Flat",
        nprobe=16,
        batch_size=500,
        train_size=700,
    )
    live = cached_index["live"]
    assert (report.documents, report.computed, report.cache_hits) == (len(live), 0, len(live))
    assert report.streamed and report.layout == "memory" and report.trained_on == 700
    # One sample read, then every vector in batches: never the whole matrix.
    assert reads[0] == 700 and max(reads) <= 700 and sum(reads[1:]) == len(live)
    queries = clustered(20, seed=1)
    # Probing every list, IVF-Flat is exact: the results are brute force's.
    expected = exact_ids(cached_index["vectors"], live, queries, 5)
    assert top_ids(cached_index["index"], queries, 5) == [
        [f"d{i}" for i in row] for row in expected
    ]
    with VectorIndex.load(cached_index["index"]) as vindex:
        assert (vindex.factory, vindex.nprobe, len(vindex)) == ("IVF16,Flat", 16, len(live))
        assert vindex.get(["d1"])[0].metadata == {"n": 1}


def test_ivf_pq_from_a_sample_keeps_recall(cached_index: dict) -> None:
    cachedvec.reindex(
        cached_index["index"],
        store=cached_index["store"],
        factory="IVF16,PQ16np",
        batch_size=400,
        train_size=1500,
    )
    queries = clustered(50, seed=2)
    expected = exact_ids(cached_index["vectors"], cached_index["live"], queries, 10)
    found = top_ids(cached_index["index"], queries, 10)
    recall = np.mean(
        [
            len({f"d{i}" for i in want} & set(got)) / 10
            for want, got in zip(expected, found, strict=True)
        ]
    )
    assert recall >= 0.8


def test_on_disk_layout_serves_the_same_results_from_a_memory_mapped_file(
    cached_index: dict, tmp_path: Path
) -> None:
    options = {
        "store": cached_index["store"],
        "factory": "IVF16,PQ8np",
        "train_size": 1000,
        "batch_size": 300,
    }
    cachedvec.reindex(cached_index["index"], **options)
    queries = clustered(20, seed=3)
    in_memory = top_ids(cached_index["index"], queries, 10)

    report = cachedvec.reindex(cached_index["index"], layout="ondisk", block_size=1000, **options)
    assert report.layout == "ondisk" and report.streamed
    folder = Path(cached_index["index"])
    lists = list(folder.glob("lists-*.ivfdata"))
    assert len(lists) == 1 and not list(folder.glob(".build-*"))  # blocks were merged
    # Same training sample, same vectors: the same index, served from the file.
    assert top_ids(cached_index["index"], queries, 10) == in_memory
    with VectorIndex.load(folder) as vindex:
        assert len(vindex) == len(cached_index["live"])
        with pytest.raises(VectorIndexError, match="read-only"):
            vindex.add(queries[:1], ["new"], ids=["new"])
        with pytest.raises(VectorIndexError, match="read-only"):
            vindex.delete(["d1"])
        assert len(vindex) == len(cached_index["live"]) and vindex.get(["d1"])
        # The FAISS file names the lists file by absolute path: a copy saved
        # elsewhere would break when this folder is rebuilt, so it is refused.
        with pytest.raises(ConfigError, match="own folder"):
            vindex.save(tmp_path / "copy")
        assert not (tmp_path / "copy").exists()
        vindex.save(folder)  # in its own folder the lists file stays
    assert list(folder.glob("lists-*.ivfdata")) == lists
    assert top_ids(cached_index["index"], queries, 10) == in_memory

    cachedvec.reindex(cached_index["index"], **options)  # back in memory
    assert not list(folder.glob("lists-*.ivfdata"))
    assert top_ids(cached_index["index"], queries, 10) == in_memory


def test_missing_vectors_stop_the_rebuild_with_their_count(
    cached_index: dict, tmp_path: Path
) -> None:
    keys = [f"cv1:test:0123456789abcdef:doc:{i:064x}" for i in (1, 2, 2999)]
    with open_store(cached_index["store"]) as store:
        store.mdelete(keys)
    folder = Path(cached_index["index"])
    manifest = (folder / "manifest.json").read_bytes()
    for layout in ("memory", "ondisk"):
        with pytest.raises(MissingVectorsError) as info:
            cachedvec.reindex(
                folder,
                store=cached_index["store"],
                factory="IVF16,Flat",
                layout=layout,
                batch_size=250,
                block_size=500,
            )
        assert info.value.missing == 3
    assert (folder / "manifest.json").read_bytes() == manifest
    assert not list(folder.glob("lists-*")) and not list(folder.glob(".build-*"))


def test_a_mistyped_store_is_an_error_not_a_new_cache(cached_index: dict, tmp_path: Path) -> None:
    folder = Path(cached_index["index"])
    manifest = (folder / "manifest.json").read_bytes()
    typo = tmp_path / "cahce.db"
    with pytest.raises(StoreError, match="cahce.db"):
        cachedvec.reindex(folder, store=f"sqlite:///{typo}", factory="IVF16,Flat")
    assert not typo.exists()
    assert (folder / "manifest.json").read_bytes() == manifest


def test_bad_streaming_options_are_refused(cached_index: dict) -> None:
    where = {"store": cached_index["store"]}
    with pytest.raises(ConfigError, match="not an IVF"):
        cachedvec.reindex(cached_index["index"], factory="HNSW16", layout="ondisk", **where)
    with pytest.raises(ConfigError, match="layout"):
        cachedvec.reindex(cached_index["index"], layout="sharded", **where)
    with pytest.raises(ConfigError, match="batch_size"):
        cachedvec.reindex(cached_index["index"], batch_size=0, **where)
    # nprobe 0 is refused like -3, not replaced by the default nprobe; with a
    # model too (that path builds its index only after embedding).
    for nprobe in (0, -3):
        with pytest.raises(ConfigError, match="nprobe must be a positive integer"):
            cachedvec.reindex(cached_index["index"], factory="IVF16,Flat", nprobe=nprobe, **where)
        with pytest.raises(ConfigError, match="nprobe must be a positive integer"):
            cachedvec.reindex(
                cached_index["index"],
                factory="IVF16,Flat",
                nprobe=nprobe,
                compute_missing=True,
                **where,
            )
    result = CliRunner().invoke(
        main,
        [
            "reindex",
            "--index",
            cached_index["index"],
            "--store",
            cached_index["store"],
            "--factory",
            "IVF16,Flat",
            "--nprobe",
            "0",
        ],
    )
    assert result.exit_code != 0 and "nprobe must be a positive integer" in result.output
    with pytest.raises(ConfigError, match="on-disk"):
        cachedvec.reindex(cached_index["index"], layout="ondisk", compute_missing=True, **where)
    # A factory FAISS cannot parse, and valid ones it refuses for this index (32-d cosine).
    for factory, message in (
        ("LHS", "unknown FAISS factory string 'LHS'"),
        (
            "LSH",
            "'LSH' is valid, but FAISS refuses it for 32-d cosine "
            "vectors: LSH supports only the l2 metric",
        ),
        ("PQ7", "'PQ7' is valid, but FAISS refuses it for 32-d cosine vectors: The dimension"),
    ):
        result = CliRunner().invoke(
            main,
            [
                "reindex",
                "--index",
                cached_index["index"],
                "--store",
                cached_index["store"],
                "--factory",
                factory,
            ],
        )
        assert result.exit_code != 0 and message in result.output, result.output


def test_rebuild_through_a_model_reports_its_training(cached_index: dict) -> None:
    """Not streamed: trained in memory on every vector, and the report says how many."""
    live = len(cached_index["live"])
    for factory, trained_on in (("IVF16,Flat", live), ("Flat", 0)):
        report = cachedvec.reindex(
            cached_index["index"],
            store=cached_index["store"],
            factory=factory,
            model=FakeEmbeddings(DIM),
        )
        assert (report.streamed, report.documents, report.trained_on) == (False, live, trained_on)
    with VectorIndex.load(cached_index["index"]) as vindex:
        assert vindex.factory == "Flat" and not vindex.needs_training
    # Streamed from the cache, the training sample is all the documents here.
    report = cachedvec.reindex(
        cached_index["index"], store=cached_index["store"], factory="IVF16,Flat"
    )
    assert (report.streamed, report.trained_on) == (True, live)


def test_recommended_factories_scale_lists_with_the_corpus() -> None:
    assert large_index_factory(1_000_000) == "IVF1024,SQ8"
    assert large_index_factory(100_000_000) == "IVF8192,SQ8"
    assert ivf_pq_factory(1_000_000, 384) == "IVF1024,PQ192np"
    assert ivf_pq_factory(100_000_000, 384) == "IVF8192,PQ192np"
    assert ivf_pq_factory(100, 32) == "IVF16,PQ16np"


def test_recommended_large_index_keeps_the_exact_top_10_on_disk(cached_index: dict) -> None:
    # The default settings of a large rebuild: factory, training sample, nprobe.
    factory = large_index_factory(len(cached_index["live"]))
    report = cachedvec.reindex(
        cached_index["index"],
        store=cached_index["store"],
        factory=factory,
        layout="ondisk",
        batch_size=500,
    )
    assert (report.factory, report.layout) == (factory, "ondisk")
    queries = clustered(50, seed=4)
    expected = exact_ids(cached_index["vectors"], cached_index["live"], queries, 10)
    found = top_ids(cached_index["index"], queries, 10)
    recall = np.mean(
        [
            len({f"d{i}" for i in want} & set(got)) / 10
            for want, got in zip(expected, found, strict=True)
        ]
    )
    assert recall >= 0.9


def test_cli_reindex_streaming_options(cached_index: dict) -> None:
    result = CliRunner().invoke(
        main,
        [
            "reindex",
            "--index",
            cached_index["index"],
            "--store",
            cached_index["store"],
            "--factory",
            "IVF16,PQ8np",
            "--layout",
            "ondisk",
            "--batch-size",
            "500",
            "--train-size",
            "800",
            "--nprobe",
            "4",
            "--json",
        ],
    )
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert (report["layout"], report["trained_on"], report["streamed"]) == ("ondisk", 800, True)
    with VectorIndex.load(cached_index["index"]) as vindex:
        assert vindex.nprobe == 4


def test_a_missing_index_is_an_error_that_leaves_no_lock_file(tmp_path: Path) -> None:
    # The job lock sits beside the folder; a typo'd --index must not litter it.
    open_store(f"sqlite:///{tmp_path}/cache.db").close()
    with pytest.raises(VectorIndexError, match="no cachedvec index in"):
        cachedvec.reindex(tmp_path / "idnex", store=f"sqlite:///{tmp_path}/cache.db")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cache.db"]
