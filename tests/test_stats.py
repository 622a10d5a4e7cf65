"""``cachedvec stats``: the cache hit rate and run history of an index.

Every ingest and query appends one line to the index's ``history.jsonl``
(``jobs.record_run``); ``stats`` reads it back (``jobs.read_history``) and
reports, per index, the number of ingest and query runs and the fraction
of their vectors that came from the cache. The expected figures here are
worked out from what each run must have looked up, not read back from the
reports.

The index and cache are built under the bundled model's namespace with the
fast fake (``tests.test_models.default_namespace_model``), so the CLI's
``query`` runs with the default model and finds the questions cached in
advance without loading it.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

import cachedvec
from cachedvec.ingestion import IngestReport
from cachedvec.jobs import HISTORY_FILE, read_history
from cachedvec.models import DEFAULT_MODEL_NAME
from tests.test_cli import cli, cli_json
from tests.test_models import default_namespace_model, seed_default_cache

# Each paragraph is one chunk at --chunk-size 100 (two together exceed it).
OLD = [
    "The kettle switches itself off once the water has boiled for a moment.",
    "Descale the kettle every month with a cup of citric acid and fresh water.",
    "Error E3 means the kettle is empty: fill it above the minimum mark again.",
]
NEW = "Bees share the direction of flowers with a waggle dance on the comb."
CHUNKING = {"chunk_size": 100, "chunk_overlap": 0}
INDEX_FIELDS = {"index", "factory", "metric", "dim", "counts", "model", "bytes", "runs", "hit_rate"}
NAMESPACE_FIELDS = {"namespace", "model", "kind", "dim", "entries", "bytes"}


class Setup:
    def __init__(self, root: Path) -> None:
        self.corpus = root / "corpus"
        self.corpus.mkdir()
        self.index = root / "index"
        self.store = f"sqlite:///{root / 'cache.db'}"

    def write(self, name: str, paragraphs: list[str]) -> None:
        (self.corpus / name).write_text("\n\n".join(paragraphs) + "\n", "utf-8")

    def ingest(self) -> IngestReport:
        return cachedvec.ingest(
            [self.corpus],
            index=self.index,
            store=self.store,
            model=default_namespace_model(),
            **CHUNKING,
        )

    def ask(self, question: str) -> bool:
        """A query through the Python API (the fake computes a new question)."""
        _, cached = cachedvec.query(
            question, index=self.index, store=self.store, model=default_namespace_model()
        )
        return cached

    def stats(self) -> dict[str, Any]:
        payload = cli_json("stats", "--store", self.store, "--index", self.index)
        (index,) = payload["indexes"]
        return index


@pytest.fixture
def setup(tmp_path: Path) -> Setup:
    return Setup(tmp_path)


def test_hit_rate_is_the_true_fraction_over_ingest_and_query_runs(setup: Setup) -> None:
    # Run 1: three new texts, all computed.
    setup.write("kettle.txt", OLD)
    first = setup.ingest()
    assert (first.cache_hits, first.computed) == (0, 3)
    assert setup.stats()["hit_rate"] == 0.0

    # Run 2: a new file repeating two known texts and adding one: 2 hits, 1 computed.
    setup.write("more.txt", [OLD[0], NEW, OLD[2]])
    second = setup.ingest()
    assert (second.added, second.cache_hits, second.computed) == (3, 2, 1)
    index = setup.stats()
    assert index["runs"] == 2
    assert index["hit_rate"] == pytest.approx(2 / (3 + 1 + 2))

    # Runs 3 and 4: a new question (computed), then the same one from the CLI (a hit).
    question = "How often should the kettle be descaled?"
    assert setup.ask(question) is False
    answer = cli_json("query", question, "--index", setup.index, "--store", setup.store)
    assert answer["query_cached"] is True
    # Runs 5 and 6: nothing changed, nothing looked up.
    for _ in range(2):
        unchanged = setup.ingest()
        assert (unchanged.cache_hits, unchanged.computed) == (0, 0)
    # A reindex reads every vector from the cache but is no ingest or query run.
    assert cachedvec.reindex(setup.index, store=setup.store, factory="HNSW32").cache_hits == 6

    hits, computed = 0 + 2 + 0 + 1, 3 + 1 + 1 + 0
    index = setup.stats()
    assert index["runs"] == 6
    assert index["hit_rate"] == pytest.approx(hits / (hits + computed))  # 3/8
    text = cli("stats", "--store", setup.store, "--index", setup.index)
    assert text.exit_code == 0, text.output
    assert "hit rate over 6 runs: 37.5%" in text.stdout
    jobs = [r["job"] for r in read_history(setup.index)]
    assert jobs == ["ingest", "ingest", "query", "query", "ingest", "ingest", "reindex"]


def test_query_runs_count_with_a_hit_or_a_miss_each(setup: Setup) -> None:
    setup.write("kettle.txt", OLD)
    setup.ingest()  # 3 computed
    seed_default_cache(setup.store, queries=["cached question"])
    for _ in range(3):  # cached in advance: three hits
        cli_json("query", "cached question", "--index", setup.index, "--store", setup.store)
    assert setup.ask("a question never asked") is False  # one miss
    index = setup.stats()
    assert index["runs"] == 5
    assert index["hit_rate"] == pytest.approx(3 / (3 + 3 + 1))
    queries = [r for r in read_history(setup.index) if r["job"] == "query"]
    assert [(r["cache_hits"], r["computed"]) for r in queries] == [(1, 0)] * 3 + [(0, 1)]


def test_json_fields(setup: Setup) -> None:
    setup.write("kettle.txt", OLD)
    setup.ingest()
    setup.ask("what does error E3 mean?")
    payload = cli_json("stats", "--store", setup.store, "--index", setup.index)
    assert set(payload) == {"store", "namespaces", "indexes"}
    assert payload["store"] == setup.store

    namespaces = {n["kind"]: n for n in payload["namespaces"]}
    assert set(namespaces) == {"doc", "query"}
    for kind, expected_entries in (("doc", 3), ("query", 1)):
        ns = namespaces[kind]
        assert set(ns) == NAMESPACE_FIELDS
        assert (ns["entries"], ns["dim"], ns["model"]) == (
            expected_entries,
            384,
            "all-minilm-l6-v2",
        )
        assert ns["namespace"].startswith("cv1:all-minilm-l6-v2:") and ns["namespace"].endswith(
            f":{kind}:"
        )
        assert ns["bytes"] == expected_entries * (384 * 4 + 16)  # 16 bytes of framing each

    (index,) = payload["indexes"]
    assert set(index) == INDEX_FIELDS
    assert index["index"] == str(setup.index)
    assert (index["factory"], index["metric"], index["dim"]) == ("Flat", "cosine", 384)
    assert index["counts"]["documents"] == 3
    assert index["model"] == DEFAULT_MODEL_NAME
    on_disk = sum(p.stat().st_size for p in setup.index.iterdir() if p.is_file())
    assert index["bytes"] == on_disk
    assert (index["runs"], index["hit_rate"]) == (2, 0.0)


def test_an_index_without_history_has_no_hit_rate(setup: Setup) -> None:
    setup.write("kettle.txt", OLD)
    setup.ingest()
    (setup.index / HISTORY_FILE).unlink()
    assert (setup.stats()["runs"], setup.stats()["hit_rate"]) == (0, None)
    text = cli("stats", "--store", setup.store, "--index", setup.index)
    assert text.exit_code == 0 and "hit rate over 0 runs: n/a" in text.stdout


def test_a_torn_last_line_is_skipped(setup: Setup) -> None:
    setup.write("kettle.txt", OLD)
    setup.ingest()  # 3 computed
    setup.write("more.txt", [OLD[1], NEW])
    setup.ingest()  # 1 hit, 1 computed
    before = setup.stats()
    history = setup.index / HISTORY_FILE
    with open(history, "a", encoding="utf-8") as f:  # a crash in the middle of a write
        f.write('{"time": 1767225600.5, "job": "query", "cache_hits": 1')
    after = setup.stats()
    assert (
        (after["runs"], after["hit_rate"])
        == (before["runs"], before["hit_rate"])
        == (
            2,
            pytest.approx(1 / 5),
        )
    )
    assert len(read_history(setup.index)) == 2


def test_a_run_after_a_torn_last_line_is_still_counted(setup: Setup) -> None:
    setup.write("kettle.txt", OLD)
    setup.ingest()
    with open(setup.index / HISTORY_FILE, "a", encoding="utf-8") as f:
        f.write('{"time": 1767225600.5, "job": "ingest", "cache_')
    setup.write("more.txt", [OLD[1], NEW])
    setup.ingest()  # 1 hit, 1 computed
    index = setup.stats()
    assert (index["runs"], index["hit_rate"]) == (2, pytest.approx(1 / 5))


def test_a_history_line_that_is_not_a_run_is_skipped(setup: Setup) -> None:
    setup.write("kettle.txt", OLD)
    setup.ingest()
    with open(setup.index / HISTORY_FILE, "a", encoding="utf-8") as f:
        f.write("[1, 2, 3]\n" + json.dumps("a string") + "\n\n")
    assert setup.stats()["runs"] == 1
    setup.ask("one more question")  # the history stays appendable
    assert (setup.stats()["runs"], setup.stats()["hit_rate"]) == (2, 0.0)


def test_a_run_line_with_a_count_that_is_not_a_number_is_skipped(setup: Setup) -> None:
    setup.write("kettle.txt", OLD)
    setup.ingest()  # 3 computed
    with open(setup.index / HISTORY_FILE, "a", encoding="utf-8") as f:
        f.write(json.dumps({"time": 1.0, "job": "ingest", "cache_hits": None}) + "\n")
    result = cli("stats", "--store", setup.store, "--index", setup.index, "--json")
    assert result.exit_code == 0, result.output
    (index,) = json.loads(result.stdout)["indexes"]
    assert index["hit_rate"] == 0.0
