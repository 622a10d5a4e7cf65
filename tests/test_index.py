"""VectorIndex against exact brute force, for every metric and index family."""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

import faiss
import numpy as np
import pytest
from langchain_core.vectorstores.utils import maximal_marginal_relevance

from cachedvec.errors import ConfigError, DimensionError, FilterError, InvalidTextError
from cachedvec.index import FaissIndex, VectorIndex
from cachedvec.keys import ModelFingerprint

DIM = 32
# Removable and tombstoning families, with and without training and transforms.
FACTORIES = ["Flat", "HNSW16", "IVF8,Flat", "PQ8np", "SQ8", "PCA16,HNSW16", "IVF8,PQ4np", "NSG16"]


def random_vectors(n: int, dim: int = DIM, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((n, dim)).astype(np.float32)


def clustered(n: int, dim: int, seed: int, clusters: int = 1000) -> np.ndarray:
    """Unit vectors around random centres: embedding-like, not uniform noise.

    The spread is wide enough that FAISS's own defaults miss (IVF256 with
    nprobe=1 reaches about 0.93 recall@10 here), so the test checks ours.
    """
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((clusters, dim)).astype(np.float32)
    points = centres[rng.integers(0, clusters, n)] + 1.2 * rng.standard_normal((n, dim))
    points /= np.linalg.norm(points, axis=1, keepdims=True)
    return points.astype(np.float32)


def exact_top_k(data: np.ndarray, queries: np.ndarray, k: int, metric: str) -> np.ndarray:
    if metric == "cosine":
        data = data / np.linalg.norm(data, axis=1, keepdims=True)
        queries = queries / np.linalg.norm(queries, axis=1, keepdims=True)
    if metric == "l2":
        scores = -((queries[:, None, :] - data[None, :, :]) ** 2).sum(-1)
    else:
        scores = queries @ data.T
    return np.argsort(-scores, axis=1, kind="stable")[:, :k]


def build(
    factory: str = "Flat", n: int = 500, metric: str = "cosine", seed: int = 0, **options: Any
) -> tuple[VectorIndex, np.ndarray]:
    data = random_vectors(n, seed=seed)
    index = VectorIndex(DIM, metric=metric, factory=factory, **options)
    index.add(
        data,
        [f"text {i}" for i in range(n)],
        [{"n": i, "group": i % 10, "source": f"s{i % 5}.md"} for i in range(n)],
        ids=[f"d{i}" for i in range(n)],
        cache_keys=[f"key{i}" for i in range(n)],
    )
    return index, data


def ids_of(hits: list[Any]) -> list[str]:
    return [hit.id for hit in hits]


def assert_consistent(index: VectorIndex) -> None:
    """FAISS holds exactly the docstore's vectors plus the tombstones."""
    live = index._docs.vector_ids()
    stored = index._faiss.stored_ids()
    assert len(live) == len(index)
    assert set(live.tolist()) <= set(stored.tolist())
    assert len(stored) == len(live) + index.tombstones


# -- exactness -------------------------------------------------------------------


@pytest.mark.parametrize("metric", ["cosine", "ip", "l2"])
def test_flat_equals_numpy_exact_top_k(metric: str) -> None:
    index, data = build(metric=metric, n=800)
    queries = random_vectors(30, seed=1)
    expected = exact_top_k(data, queries, 10, metric)
    for query, want in zip(queries, expected, strict=True):
        hits = index.search(query, 10)
        assert ids_of(hits) == [f"d{i}" for i in want]
    # Scores: similarity for cosine/ip, squared distance for l2.
    hit = index.search(queries[0], 1)[0]
    best = data[int(hit.id[1:])]
    q = queries[0]
    if metric == "cosine":
        want_score = q @ best / np.linalg.norm(q) / np.linalg.norm(best)
    elif metric == "ip":
        want_score = q @ best
    else:
        want_score = ((q - best) ** 2).sum()
    assert hit.score == pytest.approx(float(want_score), rel=1e-4, abs=1e-4)


@pytest.mark.parametrize("metric", ["cosine", "l2"])
def test_batch_search_equals_single_searches(metric: str) -> None:
    index, _ = build(metric=metric)
    queries = random_vectors(25, seed=2)
    batch = index.search_batch(queries, 5)
    assert [ids_of(r) for r in batch] == [ids_of(index.search(q, 5)) for q in queries]
    filtered = index.search_batch(queries, 5, filter={"group": 3})
    assert [ids_of(r) for r in filtered] == [
        ids_of(index.search(q, 5, filter={"group": 3})) for q in queries
    ]


@pytest.mark.parametrize("metric", ["cosine", "ip", "l2"])
def test_flat_search_matches_faiss_own_search_across_score_blocks(
    metric: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The numpy-product path returns what FAISS's own flat search returns.

    A tiny score block splits the 40 queries into blocks of 3 and the stored
    vectors into blocks of 100 to 300 (the last one short), and removed
    vectors leave holes in the ids, so both block loops and the
    position-to-id mapping are exercised.
    """
    from cachedvec.index import faiss_index

    monkeypatch.setattr(faiss_index, "_SCORE_BLOCK", 300)
    monkeypatch.setattr(faiss_index, "_MIN_COLUMNS", 100)
    index = FaissIndex(DIM, metric=metric)
    assert index._flat is not None  # else this compares FAISS with itself
    data = index.prepare(random_vectors(600, seed=5))
    ids = np.arange(1000, 1600, dtype=np.int64)
    index.add(data, ids)
    index.remove(ids[::7])
    queries = index.prepare(random_vectors(40, seed=6))
    for batch in (queries, queries[:1]):
        scores, found = index.search(batch, 10)
        want_scores, want_ids = index.faiss_index.search(batch, 10)
        np.testing.assert_array_equal(found, want_ids)
        np.testing.assert_allclose(scores, want_scores, rtol=1e-5, atol=1e-4)
    assert not np.isin(found, ids[::7]).any()


def test_only_a_bare_flat_index_takes_the_numpy_path(tmp_path: Any) -> None:
    assert FaissIndex(DIM, factory="PCA16,Flat")._flat is None  # queries need the PCA
    assert FaissIndex(DIM, factory="HNSW16")._flat is None
    # Read back from disk, FAISS returns the metric's subclass (IndexFlatIP).
    flat = FaissIndex(DIM, metric="ip")
    flat.add(flat.prepare(random_vectors(50)), np.arange(50, dtype=np.int64))
    faiss.write_index(flat.faiss_index, str(tmp_path / "f.faiss"))
    loaded = FaissIndex.from_faiss(faiss.read_index(str(tmp_path / "f.faiss")), "ip", "Flat")
    assert loaded._flat is not None
    query = loaded.prepare(random_vectors(3, seed=9))
    np.testing.assert_array_equal(loaded.search(query, 5)[1], flat.search(query, 5)[1])


@pytest.mark.parametrize("factory", ["IVF16,PQ8np", "OPQ8,IVF16,PQ8np"])
def test_training_on_few_vectors_warns_once_and_trains_as_faiss_does(
    factory: str, capfd: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture
) -> None:
    # FAISS's k-means would print one stderr line per PQ sub-quantizer (and
    # per OPQ step): hundreds of lines from one CLI command.
    data = random_vectors(300)
    ours = FaissIndex(DIM, metric="l2", factory=factory)
    ours.train(ours.prepare(data))
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert len(warnings) == 1
    assert "300 vectors" in warnings[0] and "624 for 16 inverted lists" in warnings[0]
    assert "9,984 for 256 PQ centroids" in warnings[0]
    assert "WARNING clustering" not in capfd.readouterr().err
    # ... and the trained index is the one FAISS alone would have trained.
    plain = faiss.index_factory(DIM, factory, faiss.METRIC_L2)
    plain.train(data)
    capfd.readouterr()

    def state(index: faiss.Index) -> list[np.ndarray]:
        ivf = faiss.extract_index_ivf(index)
        arrays = [
            ivf.quantizer.reconstruct_n(0, ivf.nlist),
            faiss.vector_to_array(faiss.downcast_index(ivf).pq.centroids),
        ]
        top = faiss.downcast_index(index)
        if isinstance(top, faiss.IndexPreTransform):
            opq = faiss.downcast_VectorTransform(top.chain.at(0))
            arrays.append(faiss.vector_to_array(opq.A))
            assert opq.pq is None  # the quantizer lent for training is gone
        return arrays

    for got, want in zip(state(ours.faiss_index), state(plain), strict=True):
        np.testing.assert_array_equal(got, want)


def test_results_carry_text_metadata_and_order() -> None:
    index, data = build()
    hits = index.search(data[7], 3)
    assert hits[0].id == "d7"
    assert hits[0].text == "text 7"
    assert hits[0].metadata == {"n": 7, "group": 7, "source": "s2.md"}
    assert hits[0].score == pytest.approx(1.0, abs=1e-5)
    assert [h.score for h in hits] == sorted((h.score for h in hits), reverse=True)


def test_asking_for_more_than_exists_returns_what_exists() -> None:
    index, _ = build(n=7)
    assert len(index.search(random_vectors(1)[0], 50)) == 7
    assert len(index.search(random_vectors(1)[0], 50, filter={"group": 3})) == 1
    empty = VectorIndex(DIM)
    assert empty.search(random_vectors(1)[0], 3) == []
    assert empty.search_batch(random_vectors(2), 3) == [[], []]
    assert empty.mmr_search(random_vectors(1)[0], 3) == []


def test_single_query_search_restores_faiss_threads() -> None:
    index, data = build()
    before = faiss.omp_get_max_threads()
    index.search(data[0], 3)
    assert faiss.omp_get_max_threads() == before


# -- approximate indexes -----------------------------------------------------------


@pytest.fixture(scope="module")
def embedding_like() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    data = clustered(20_200, 384, seed=3)
    base, queries = data[:20_000], data[20_000:]
    truth = exact_top_k(base, queries, 10, "cosine")
    return base, queries, truth


@pytest.mark.parametrize("factory", ["HNSW32", "IVF256,Flat"])
def test_default_recall_at_10_is_at_least_095(
    factory: str, embedding_like: tuple[np.ndarray, np.ndarray, np.ndarray]
) -> None:
    base, queries, truth = embedding_like
    index = VectorIndex(384, factory=factory)
    index.add(base, [""] * len(base), ids=[str(i) for i in range(len(base))])
    results = index.search_batch(queries, 10)
    recall = np.mean(
        [
            len({int(h.id) for h in hits} & set(want.tolist())) / 10
            for hits, want in zip(results, truth, strict=True)
        ]
    )
    assert recall >= 0.95, f"{factory} recall@10 {recall:.3f}"


def test_ef_search_and_nprobe_are_settable_and_validated() -> None:
    hnsw = VectorIndex(DIM, factory="HNSW16", ef_search=100)
    assert hnsw.ef_search == 100
    hnsw.ef_search = 20
    assert hnsw.ef_search == 20 and hnsw.nprobe is None
    ivf = VectorIndex(DIM, factory="IVF64,Flat")
    assert ivf.nprobe == 32
    assert VectorIndex(DIM, factory="IVF16,Flat").nprobe == 16  # never more than the lists
    assert VectorIndex(DIM, factory="IVF1024,Flat").nprobe == 64
    ivf.nprobe = 1000
    assert ivf.nprobe == 64  # capped at the number of lists
    with pytest.raises(ConfigError):
        VectorIndex(DIM, factory="Flat", ef_search=10)
    with pytest.raises(ConfigError):
        VectorIndex(DIM, factory="HNSW16", nprobe=10)
    with pytest.raises(ConfigError):
        hnsw.ef_search = 0
    # 0 is refused, not taken for "the default" (only None is).
    for settings in ({"factory": "IVF16,Flat", "nprobe": 0}, {"factory": "HNSW16", "ef_search": 0}):
        with pytest.raises(ConfigError, match="positive integer"):
            VectorIndex(DIM, **settings)  # type: ignore[arg-type]
    ivf.add(random_vectors(200), [f"t{i}" for i in range(200)])
    with pytest.raises(ConfigError, match="nprobe"):
        ivf.rebuild(nprobe=0)
    ivf.rebuild()  # the same factory keeps its settings
    assert ivf.nprobe == 64


# -- add, upsert, delete --------------------------------------------------------------


@pytest.mark.parametrize("factory", FACTORIES)
def test_deleted_ids_never_come_back(factory: str) -> None:
    index, data = build(factory, n=600)
    deleted = [f"d{i}" for i in range(0, 600, 2)]
    result = index.delete(deleted)
    assert result.deleted == deleted and result.missing == []
    assert len(index) == 300
    assert_consistent(index)
    queries = np.concatenate([data[:40], random_vectors(20, seed=5)])
    # 300 documents are left, so every search must still return k hits: an
    # index that returned nothing (or fewer) would pass the "no deleted id" checks.
    batch = index.search_batch(queries, 50)
    assert [len(hits) for hits in batch] == [50] * len(queries)
    for hits in batch:
        assert not set(ids_of(hits)) & set(deleted)
    for query in data[:10]:
        hits = index.search(query, 10)
        assert len(hits) == 10 and not set(ids_of(hits)) & set(deleted)
        # Group 4 holds only even numbers: all deleted, so nothing may match.
        assert index.search(query, 10, filter={"group": 4}) == []
        # Group 3 holds only odd numbers: all 60 alive.
        hits = index.search(query, 10, filter={"group": 3})
        assert len(hits) == 10 and all(hit.metadata["group"] == 3 for hit in hits)
        hits = index.mmr_search(query, 5, fetch_k=30)
        assert len(hits) == 5 and not set(ids_of(hits)) & set(deleted)
    assert index.get(deleted[:5]) == []
    # Every live document is still found by its own vector (flat-storage types).
    if factory in ("Flat", "HNSW16", "IVF8,Flat", "SQ8", "NSG16"):
        top = [index.search(data[i], 1)[0].id for i in range(1, 60, 2)]
        assert top == [f"d{i}" for i in range(1, 60, 2)]


@pytest.mark.parametrize("factory", ["Flat", "HNSW16", "IVF8,Flat", "PCA16,HNSW16"])
def test_k_results_come_back_despite_many_deletions(factory: str) -> None:
    index, data = build(factory, n=400)
    index.delete([f"d{i}" for i in range(400) if i % 20])  # keep 20
    assert len(index.search(data[0], 20)) == 20
    assert len(index.search(data[5], 15)) == 15


@pytest.mark.parametrize("factory", ["Flat", "HNSW16", "IVF8,Flat", "PQ8np"])
def test_upsert_replaces_the_old_vector_and_text(factory: str) -> None:
    index, data = build(factory, n=300)
    far = -data[10]  # the opposite direction
    index.add(far[None], ["replaced"], [{"v": 2}], ids=["d10"])
    assert len(index) == 300
    assert_consistent(index)
    assert "d10" not in ids_of(index.search(data[10], 5))
    top = index.search(far, 1)[0]
    assert (top.id, top.text, top.metadata) == ("d10", "replaced", {"v": 2})
    (record,) = index.get(["d10"])
    assert record.text == "replaced" and record.cache_key is None


def test_delete_reports_missing_ids_and_changes_nothing_for_them() -> None:
    index, _ = build(n=50)
    result = index.delete(["d1", "nope", "d1", "also-nope"])
    assert result.deleted == ["d1"]
    assert result.missing == ["nope", "also-nope"]
    assert len(index) == 49
    assert index.delete([]).deleted == []


def test_generated_ids_are_unique_strings() -> None:
    index = VectorIndex(DIM)
    ids = index.add(random_vectors(100), ["t"] * 100)
    assert len(set(ids)) == 100 and all(isinstance(i, str) and len(i) == 32 for i in ids)
    mixed = index.add(random_vectors(3, seed=1), ["a", "b", "c"], ids=["x", None, "y"])
    assert mixed[0] == "x" and mixed[2] == "y" and mixed[1] not in ids


def test_get_records_and_vectors() -> None:
    index, data = build(n=20)
    records = index.get(["d3", "zz", "d1", "d3"])
    assert [r.id for r in records] == ["d3", "d1"]
    assert records[0].cache_key == "key3" and records[0].source == "s3.md"
    vectors, missing = index.get_vectors(["d2", "zz", "d4"])
    assert missing == [1]
    expected = data[[2, 4]] / np.linalg.norm(data[[2, 4]], axis=1, keepdims=True)
    np.testing.assert_allclose(vectors, expected, rtol=1e-5, atol=1e-6)
    assert [r.id for r in index.records()] == [f"d{i}" for i in range(20)]
    assert index.sources() == [f"s{i}.md" for i in range(5)]


def test_delete_sources() -> None:
    index, _ = build(n=50)
    result = index.delete_sources(["s1.md", "s9.md"])
    assert sorted(result.deleted) == sorted(f"d{i}" for i in range(1, 50, 5))
    assert len(index) == 40
    assert "s1.md" not in index.sources()


def test_text_and_metadata_round_trip_unusual_values() -> None:
    index = VectorIndex(DIM)
    text = "NUL \x00 inside, emoji \U0001f600, accents éß"
    metadata = {
        "nested": {"a": [1, 2, {"b": None}]},
        "unicode": "日本語",
        "numpy": np.int64(5),
        "array": np.arange(2),
        "lone": "\ud800",
    }
    index.add(random_vectors(1), [text], [metadata], ids=["odd"])
    (hit,) = index.search(random_vectors(1)[0], 1)
    assert hit.text == text
    assert hit.metadata == {
        "nested": {"a": [1, 2, {"b": None}]},
        "unicode": "日本語",
        "numpy": 5,
        "array": [0, 1],
        "lone": "\ud800",
    }


# -- filters, thresholds, MMR -------------------------------------------------------


@pytest.mark.parametrize("metric", ["cosine", "l2"])
def test_filtered_flat_search_equals_exact_filtered_top_k(metric: str) -> None:
    index, data = build(n=2000, metric=metric)
    queries = random_vectors(10, seed=7)
    for selective in ({"group": 3}, {"n": {"$in": [5, 900, 1500, 1999]}}, {"n": {"$lt": 40}}):
        keep = np.array([compile_match(selective, i) for i in range(2000)])
        subset = np.flatnonzero(keep)
        for query in queries:
            want = subset[exact_top_k(data[subset], query[None], 10, metric)[0]]
            hits = index.search(query, 10, filter=selective)
            assert len(hits) == min(10, len(subset))
            assert ids_of(hits) == [f"d{i}" for i in want]


def compile_match(spec: dict[str, Any], i: int) -> bool:
    metadata = {"n": i, "group": i % 10}
    if "group" in spec:
        return metadata["group"] == spec["group"]
    condition = spec["n"]
    if "$in" in condition:
        return i in condition["$in"]
    return i < condition["$lt"]


@pytest.mark.parametrize("factory", ["HNSW16", "IVF8,Flat", "NSG16"])
def test_filtered_search_returns_k_whenever_k_match(factory: str) -> None:
    index, data = build(factory, n=3000)
    rare = {"n": {"$in": [7, 70, 700, 1700, 2900]}}  # 5 of 3000: the exact path
    for query in data[:5]:
        assert sorted(ids_of(index.search(query, 5, filter=rare))) == sorted(
            ["d7", "d70", "d700", "d1700", "d2900"]
        )
        assert len(index.search(query, 10, filter={"group": 3})) == 10  # over-fetch path
        assert len(index.search(query, 10, filter=rare)) == 5
    assert index.search(data[0], 3, filter={"group": 99}) == []


def test_score_threshold_per_metric() -> None:
    for metric, keep in (("cosine", lambda s: s >= 0.3), ("l2", lambda s: s <= 40.0)):
        index, data = build(metric=metric)
        threshold = 0.3 if metric == "cosine" else 40.0
        hits = index.search(data[0], 50, score_threshold=threshold)
        assert hits and all(keep(h.score) for h in hits)
        everything = index.search(data[0], 50)
        assert ids_of(hits) == [h.id for h in everything if keep(h.score)]


def test_mmr_matches_langchain_selection_and_diversifies() -> None:
    index, _ = build(n=400)
    query = random_vectors(1, seed=11)[0]  # not a stored vector: no exact ties
    candidates = index.search(query, 30)
    vectors, _ = index.get_vectors(ids_of(candidates))
    for lambda_mult in (0.0, 0.3, 0.5, 1.0):
        picks = maximal_marginal_relevance(query, list(vectors), lambda_mult=lambda_mult, k=8)
        expected = [candidates[i].id for i in picks]
        result = index.mmr_search(query, 8, fetch_k=30, lambda_mult=lambda_mult)
        assert ids_of(result) == expected
    # Near-duplicates: plain search returns them all, MMR only one.
    twins = VectorIndex(DIM)
    base = random_vectors(1, seed=9)[0]
    noise = random_vectors(50, seed=10)
    twins.add(
        np.concatenate([base + 0.001 * noise[:5], noise]),
        ["twin"] * 5 + ["other"] * 50,
    )
    assert [h.text for h in twins.search(base, 5)] == ["twin"] * 5
    diverse = twins.mmr_search(base, 5, fetch_k=20, lambda_mult=0.3)
    assert [h.text for h in diverse].count("twin") == 1
    assert twins.mmr_search(base, 3, filter={"missing": 1}) == []


# -- bad input leaves everything as it was ---------------------------------------------


def test_bad_input_raises_clear_errors_and_changes_nothing() -> None:
    index, data = build(n=100)
    before = [ids_of(index.search(q, 5)) for q in data[:3]]
    attempts = [
        (DimensionError, lambda: index.add(random_vectors(2, dim=DIM + 1), ["a", "b"])),
        (DimensionError, lambda: index.search(np.ones(DIM - 1), 3)),
        (DimensionError, lambda: index.search_batch(np.ones((2, 2, DIM)), 3)),
        (ConfigError, lambda: index.search(data[0], 0)),
        (ConfigError, lambda: index.search(data[0], -1)),
        (ConfigError, lambda: index.search(data[0], 2.5)),  # type: ignore[arg-type]
        (ConfigError, lambda: index.search(data[0], True)),
        (ConfigError, lambda: index.search(data[:2], 3)),
        (ConfigError, lambda: index.mmr_search(data[0], 3, lambda_mult=2)),
        (ConfigError, lambda: index.mmr_search(data[0], 3, lambda_mult="0.5")),
        (ConfigError, lambda: index.add(np.full((1, DIM), np.nan), ["a"])),
        (ConfigError, lambda: index.search(np.full(DIM, np.inf), 3)),
        (ConfigError, lambda: index.add(random_vectors(2), ["only one"])),
        (ConfigError, lambda: index.add(random_vectors(2), ["a", "b"], [{}])),
        (ConfigError, lambda: index.add(random_vectors(2), ["a", "b"], ids=["x"])),
        (ConfigError, lambda: index.add(random_vectors(2), ["a", "b"], ids=["x", "x"])),
        (ConfigError, lambda: index.add(random_vectors(2), ["a", "b"], ids=["x", 5])),
        (ConfigError, lambda: index.add(random_vectors(1), [b"bytes"])),
        (ConfigError, lambda: index.add(random_vectors(1), ["a"], [{"f": object()}])),
        (ConfigError, lambda: index.add(random_vectors(1), ["a"], ["not a dict"])),
        (ConfigError, lambda: index.add([["x"] * DIM], ["a"])),
        (InvalidTextError, lambda: index.add(random_vectors(1), ["bad \ud800"], ids=["d1"])),
        (FilterError, lambda: index.search(data[0], 3, filter={"n": {"$regex": "x"}})),
        (ConfigError, lambda: index.delete([3])),  # type: ignore[list-item]
    ]
    for error, attempt in attempts:
        with pytest.raises(error):
            attempt()
    assert len(index) == 100
    assert_consistent(index)
    assert [ids_of(index.search(q, 5)) for q in data[:3]] == before
    assert index.get(["d1"])[0].text == "text 1"


@pytest.mark.parametrize(
    ("metric", "factory"),
    [("cosinus", "Flat"), ("cosine", "Flat7"), ("cosine", ""), ("cosine", "IDMap,Flat")],
)
def test_unknown_metric_or_factory_is_a_config_error(metric: str, factory: str) -> None:
    with pytest.raises(ConfigError):
        VectorIndex(DIM, metric=metric, factory=factory)


@pytest.mark.parametrize(
    ("metric", "factory", "message"),
    [
        ("cosine", "Flat7", "unknown FAISS factory string 'Flat7': could not parse index string"),
        (
            "l2",
            "IVF16,Foo",
            "unknown FAISS factory string 'IVF16,Foo': could not parse code "
            "description Foo in IVF16,Foo",
        ),
        ("cosine", "PQ99999999999", "unknown FAISS factory string 'PQ99999999999': a number"),
        # Valid strings FAISS refuses for this metric or dimension, with its reason.
        (
            "cosine",
            "LSH",
            "FAISS factory string 'LSH' is valid, but FAISS refuses it for 32-d "
            "cosine vectors: LSH supports only the l2 metric",
        ),
        ("ip", "ITQ16,LSH", "refuses it for 32-d ip vectors: LSH supports only the l2 metric"),
        (
            "l2",
            "PQ7",
            "FAISS factory string 'PQ7' is valid, but FAISS refuses it for 32-d l2 "
            "vectors: The dimension of the vector (d) should be a multiple of the "
            "number of subquantizers (M)",
        ),
        ("cosine", "IVF8,PQ5np", "'IVF8,PQ5np' is valid, but FAISS refuses it for 32-d"),
    ],
)
def test_factory_errors_tell_unparsable_from_refused(
    metric: str, factory: str, message: str
) -> None:
    with pytest.raises(ConfigError) as info:
        VectorIndex(DIM, metric=metric, factory=factory)
    assert message in str(info.value)
    assert "failed" not in str(info.value)  # FAISS's assertion text is left out


def test_lsh_scores_are_hamming_distances_between_codes() -> None:
    # LSH (l2 only) hashes each vector to sign bits, here one per dimension, and
    # FAISS ranks by how many bits differ: not a squared distance (docs/index.md).
    index, data = build("LSH", n=300, metric="l2")
    queries = random_vectors(5, seed=1)
    for query, hits in zip(queries, index.search_batch(queries, 10), strict=True):
        differing = [int(((data[int(h.id[1:])] > 0) != (query > 0)).sum()) for h in hits]
        assert [h.score for h in hits] == differing == sorted(differing)
        assert all(0 <= bits <= DIM for bits in differing)
    index.close()


def test_bad_dimension_is_a_config_error() -> None:
    for dim in (0, -3, 2.0, True):
        with pytest.raises(ConfigError):
            VectorIndex(dim)  # type: ignore[arg-type]


def snapshot(index: VectorIndex, queries: np.ndarray) -> dict[str, Any]:
    """Everything a caller (and the FAISS/docstore pairing) can see of an index."""
    records = sorted(index.records(), key=lambda r: r.id)
    vectors, missing = index.get_vectors([r.id for r in records])
    return {
        "len": len(index),
        "tombstones": index.tombstones,
        "records": records,
        "vectors": vectors.tolist(),
        "missing": missing,
        "live": sorted(index._docs.vector_ids().tolist()),
        "stored": sorted(index._faiss.stored_ids().tolist()),
        "hits": [
            [(h.id, h.text, h.score) for h in hits] for hits in index.search_batch(queries, 5)
        ],
    }


def test_faiss_failure_rolls_the_docstore_back() -> None:
    # A real FAISS failure: NSG builds its graph once and refuses any later add.
    # The upsert of "d3" deletes its row and inserts the new ones before FAISS
    # fails, so the docstore must be rolled back.
    index, data = build("NSG16", n=300)
    queries = np.concatenate([data[:5], random_vectors(5, seed=9)])
    before = snapshot(index, queries)
    with pytest.raises(RuntimeError, match="incremental addition"):
        index.add(random_vectors(2, seed=4), ["new", "replacement"], ids=["new", "d3"])
    assert snapshot(index, queries) == before
    assert index.get(["new"]) == []
    assert [r.text for r in index.get(["d3"])] == ["text 3"]
    assert index.search(data[3], 1)[0].id == "d3"
    assert_consistent(index)
    # The index still works: a delete goes through and stays consistent.
    assert index.delete(["d3"]).deleted == ["d3"]
    assert len(index) == 299 and index.get(["d3"]) == []
    assert "d3" not in ids_of(index.search(data[3], 5))
    assert_consistent(index)


def test_a_second_add_to_nsg_fails_cleanly() -> None:
    """NSG builds its graph once: a second add raises FAISS's error and changes nothing."""
    index, data = build("NSG16", n=300)
    queries = np.concatenate([data[:5], random_vectors(5, seed=9)])
    before = snapshot(index, queries)
    # Not wrapped by cachedvec: FAISS's RuntimeError comes through as is.
    with pytest.raises(RuntimeError, match="NSG does not support incremental addition"):
        index.add(random_vectors(5, seed=8), ["late"] * 5)
    assert snapshot(index, queries) == before
    assert len(index) == 300
    assert not any(r.text == "late" for r in index.records())
    assert_consistent(index)
    assert index.search(data[0], 1)[0].id == "d0"


def test_untrained_index_needs_enough_vectors() -> None:
    index = VectorIndex(DIM, factory="IVF64,Flat")
    with pytest.raises(ConfigError, match="train"):
        index.add(random_vectors(10), ["t"] * 10)
    assert len(index) == 0
    index.train(random_vectors(2000, seed=1))
    index.add(random_vectors(10), [f"t{i}" for i in range(10)])
    assert len(index) == 10
    assert index.search(random_vectors(10)[3], 1)[0].text == "t3"


# -- rebuild --------------------------------------------------------------------------


@pytest.mark.parametrize("factory", ["Flat", "IVF8,Flat", "IVF8,SQ8", "PQ8", "LSH"])
def test_deletes_remove_vectors_for_real_except_from_graphs(factory: str) -> None:
    # IVF indexes keep a hash-table direct map, where FAISS removes only with
    # an IDSelectorArray: probing with another selector left them tombstoning
    # every delete, so dead vectors piled up in memory and in saved folders.
    index, data = build(factory, n=600, metric="l2")
    index.delete([f"d{i}" for i in range(0, 600, 2)])
    assert index.tombstones == 0 and index._faiss.ntotal == 300
    assert_consistent(index)
    assert all(int(h.id[1:]) % 2 for q in data[:20] for h in index.search(q, 5))
    index.add(data[:1], ["again"], ids=["d0"])  # an upsert reuses nothing stale
    assert index.search(data[0], 1)[0].id == "d0" and index._faiss.ntotal == 301


def test_an_ivf_folder_saved_with_tombstones_loads_without_them(tmp_path: Path) -> None:
    # What cachedvec saved before IVF removal worked: deletes as tombstones.
    index, data = build("IVF8,Flat", n=600, metric="l2")
    index._faiss._selector = None
    index.delete([f"d{i}" for i in range(0, 600, 2)])
    assert index.tombstones == 300
    index.save(tmp_path / "old")
    with VectorIndex.load(tmp_path / "old") as loaded:
        assert loaded.tombstones == 0 and loaded._faiss.ntotal == 300
        assert_consistent(loaded)
        assert all(int(h.id[1:]) % 2 for q in data[:20] for h in loaded.search(q, 5))


def test_compact_drops_tombstones_and_keeps_results() -> None:
    index, data = build("HNSW16", n=500, ef_search=80)
    index.delete([f"d{i}" for i in range(100)])
    assert index.tombstones == 100
    before = [ids_of(index.search(q, 5)) for q in data[100:110]]
    index.compact()
    assert index.tombstones == 0 and index.ef_search == 80
    assert_consistent(index)
    assert [ids_of(index.search(q, 5)) for q in data[100:110]] == before
    index.add(random_vectors(1, seed=3), ["after"], ids=["after"])
    assert index.search(random_vectors(1, seed=3)[0], 1)[0].id == "after"


def test_rebuild_to_another_factory_and_metric_from_given_vectors() -> None:
    index, data = build(n=600)
    vectors = np.stack([data[int(r.id[1:])] for r in index.records()])
    index.rebuild(factory="IVF8,Flat", metric="l2", vectors=vectors, nprobe=8)
    assert (index.factory, index.metric, index.nprobe) == ("IVF8,Flat", "l2", 8)
    assert index.search(data[42], 1)[0].id == "d42"
    with pytest.raises(ConfigError):
        index.rebuild(vectors=vectors[:10])
    assert index.factory == "IVF8,Flat"
    index.clear()
    assert len(index) == 0 and index.search(data[0], 3) == []


def test_fingerprint_is_kept() -> None:
    fingerprint = ModelFingerprint(model="m", dim=DIM)
    assert VectorIndex(DIM, fingerprint=fingerprint).fingerprint == fingerprint


# -- threads ---------------------------------------------------------------------------


def test_concurrent_searches_and_writes_stay_consistent() -> None:
    index, data = build("HNSW16", n=500)
    errors: list[BaseException] = []
    stop = threading.Event()
    searchers = 3
    iterations = [0] * searchers
    started = threading.Barrier(searchers + 1, timeout=60)

    def searcher(number: int) -> None:
        rng = np.random.default_rng(number)
        try:
            started.wait()
            while not stop.is_set():
                hits = index.search(data[rng.integers(0, 500)], 5)
                assert len(hits) == 5
                assert all(hit.text.startswith("text") for hit in hits)
                index.search_batch(data[:8], 3, filter={"group": 2})
                iterations[number] += 1
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)
            started.abort()

    threads = [threading.Thread(target=searcher, args=(n,)) for n in range(searchers)]
    for thread in threads:
        thread.start()
    started.wait()  # every searcher is in its loop before the first write
    for round_number in range(30):
        ids = [f"d{i}" for i in range(round_number * 5, round_number * 5 + 5)]
        index.delete(ids)
        index.add(data[:5], [f"text again {i}" for i in range(5)], ids=ids)
    # On a busy machine the writes can finish before a searcher is scheduled:
    # keep searching (bounded) until each one has completed an iteration.
    deadline = time.monotonic() + 60
    while min(iterations) == 0 and not errors and time.monotonic() < deadline:
        time.sleep(0.01)
    stop.set()
    for thread in threads:
        thread.join()
    assert not errors
    assert all(count >= 1 for count in iterations), iterations
    assert len(index) == 500
    assert_consistent(index)
