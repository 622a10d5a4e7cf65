"""Defects found in a review of the index: each test failed before its fix.

Real FAISS, real files; exact answers come from numpy brute force.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from cachedvec.embeddings import CachedEmbeddings
from cachedvec.errors import CachedVecError, ConfigError, DimensionError
from cachedvec.index import VectorIndex
from cachedvec.search import query
from cachedvec.testing import FakeEmbeddings
from cachedvec.vectorstore import CachedVectorStore
from tests.test_index import DIM, assert_consistent, build, exact_top_k, ids_of, random_vectors

# -- zero vectors under cosine ------------------------------------------------------


def test_a_zero_vector_is_refused_by_a_cosine_index_naming_its_position_and_text() -> None:
    index, data = build(n=50)
    before = ids_of(index.search(data[0], 5))
    vectors = random_vectors(3, seed=1)
    vectors[1] = 0.0
    with pytest.raises(ConfigError, match=r"vectors\[1\] \(for text 'empty chunk'\) is a zero"):
        index.add(vectors, ["a", "empty chunk", "c"], ids=["n0", "n1", "n2"])
    # Too small to normalise in float32 has no direction either.
    vectors[1] = 1e-30
    with pytest.raises(ConfigError, match=r"vectors\[1\]"):
        index.add(vectors, ["a", "tiny", "c"], ids=["n0", "n1", "n2"])
    assert len(index) == 50
    assert index.get(["n0", "n1", "n2"]) == []
    assert ids_of(index.search(data[0], 5)) == before
    assert_consistent(index)


@pytest.mark.parametrize("metric", ["ip", "l2"])
def test_a_zero_vector_is_a_valid_document_for_ip_and_l2(metric: str) -> None:
    index = VectorIndex(DIM, metric=metric)
    vectors = random_vectors(3)
    vectors[0] = 0.0
    index.add(vectors, ["zero", "b", "c"], ids=["z", "b", "c"])
    hits = index.search(np.zeros(DIM), 3) if metric == "l2" else index.search(vectors[1], 3)
    assert "z" in ids_of(hits)
    if metric == "l2":
        assert hits[0].id == "z" and hits[0].score == pytest.approx(0.0)


# -- training a filled index ----------------------------------------------------------


@pytest.mark.parametrize("factory", ["IVF8,PQ4np", "SQ8"])
def test_training_an_index_that_holds_vectors_is_refused(factory: str) -> None:
    # Retraining re-learned the codebooks under codes stored with the old
    # ones: searches then quietly returned other documents.
    index, data = build(factory, n=1000, metric="l2", **({"nprobe": 8} if "IVF" in factory else {}))
    before = [ids_of(index.search(q, 5)) for q in data[:5]]
    with pytest.raises(ConfigError, match="train before the first add"):
        index.train(random_vectors(1000, seed=3) * 10 + 5)
    assert [ids_of(index.search(q, 5)) for q in data[:5]] == before


def test_training_twice_before_the_first_add_is_allowed() -> None:
    index = VectorIndex(DIM, metric="l2", factory="IVF4,Flat", nprobe=4)
    index.train(random_vectors(200, seed=1) + 100)
    index.train(random_vectors(200, seed=2))
    data = random_vectors(100)
    index.add(data, [str(i) for i in range(100)], ids=[f"d{i}" for i in range(100)])
    expected = exact_top_k(data, data[:5], 3, "l2")
    assert [ids_of(index.search(q, 3)) for q in data[:5]] == [
        [f"d{i}" for i in row] for row in expected
    ]


# -- empty batches, huge k ----------------------------------------------------------------


@pytest.mark.parametrize("factory", ["Flat", "HNSW16"])
def test_an_empty_batch_is_no_rows(factory: str) -> None:
    index, _ = build(factory, n=50)
    assert index.search_batch(np.empty((0, DIM), np.float32), 3) == []  # ZeroDivisionError
    assert index.search_batch([], 3) == []  # DimensionError: "shape 1x0"
    assert index.search_batch([], 3, filter={"group": 1}) == []
    assert index.add([], []) == []
    assert len(index) == 50
    with pytest.raises(ConfigError, match="one query vector, got 0"):
        index.search([], 3)


@pytest.mark.parametrize("factory", ["Flat", "HNSW16", "IVF8,Flat"])
def test_a_huge_k_returns_every_match_without_allocating_k_slots(factory: str) -> None:
    # A filtered search allocated (queries x k) arrays: k=10**12 asked numpy for 3.6 TiB.
    index, data = build(factory, n=200, metric="l2")
    huge = 10**12
    assert len(index.search(data[0], huge)) == 200
    matching = index.search(data[0], huge, filter={"group": 3})
    assert sorted(ids_of(matching)) == sorted(f"d{i}" for i in range(3, 200, 10))
    assert index.search(data[0], huge, filter={"group": 99}) == []
    assert len(index.search_batch(data[:2], huge, filter={"n": {"$gte": 0}})[1]) == 200
    assert len(index.mmr_search(data[0], 5, fetch_k=huge, filter={"group": 3})) == 5


# -- argument types ---------------------------------------------------------------------------


def test_a_lone_string_is_refused_where_a_list_of_ids_is_expected() -> None:
    index, _ = build(n=20)
    index.add(random_vectors(1, seed=5), ["one letter"], ids=["d"])
    # A string is iterable: delete("d1") used to delete "d" and "1".
    attempts: list[Any] = [
        lambda: index.delete("d1"),
        lambda: index.delete(None),
        lambda: index.get("d1"),
        lambda: index.get_vectors("d1"),
        lambda: index.delete_sources("s1.md"),
        lambda: index.add(random_vectors(1), "a"),
        lambda: index.add(random_vectors(1), ["a"], ids="x"),
        lambda: index.add(random_vectors(1), ["a"], cache_keys="k"),
        lambda: index.add(random_vectors(1), ["a"], cache_keys=[5]),
    ]
    for attempt in attempts:
        with pytest.raises(ConfigError, match="list|expected str"):
            attempt()
    assert len(index) == 21
    assert index.get(["d", "d1"])[0].id == "d"
    assert_consistent(index)


def test_ids_may_come_from_any_iterable() -> None:
    index = VectorIndex(DIM)
    assert index.add(random_vectors(2), ("a", "b"), ids=(i for i in ["x", "y"])) == ["x", "y"]
    assert index.delete(iter(["x"])).deleted == ["x"]
    assert [r.id for r in index.get(i for i in ["y"])] == ["y"]


def test_constructor_arguments_of_other_types_are_config_errors() -> None:
    assert VectorIndex(np.int64(DIM)).dim == DIM  # a numpy dimension is a dimension
    for bad in (["l2"], {"cosine": 1}, None):
        with pytest.raises(ConfigError, match="unknown metric"):
            VectorIndex(DIM, metric=bad)  # type: ignore[arg-type]
    index, _ = build(n=10)
    with pytest.raises(ConfigError, match="unknown metric"):
        index.rebuild(metric=["x"])  # type: ignore[arg-type]
    with pytest.raises(DimensionError, match="single number"):
        index.rebuild(vectors=5)
    assert len(index.search(random_vectors(1)[0], 3)) == 3


def test_every_bad_argument_is_a_cachedvec_error() -> None:
    index, data = build(n=30)
    for attempt in (
        lambda: index.search(data[0], 3, fetch_k="many"),
        lambda: index.search(data[0], 3, filter={"n": {"$gt": [1]}}),
        lambda: index.search(data[0], 3, score_threshold=float("nan")),
        lambda: index.mmr_search(data[0], 3, fetch_k=0),
        lambda: index.rebuild(vectors=[[1.0, 2.0]]),
        lambda: index.rebuild(vectors=random_vectors(29)),
        lambda: index.delete([None]),
    ):
        with pytest.raises(CachedVecError):
            attempt()
    assert len(index) == 30


# -- the query job ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "options",
    [{"k": 0}, {"k": "5"}, {"filter": {"topic": {"$regex": "x"}}}, {"filter": "topic"}],
    ids=["k-zero", "k-text", "bad-operator", "not-a-filter"],
)
def test_query_refuses_bad_options_before_embedding_or_writing(
    options: dict[str, Any], tmp_path: Path
) -> None:
    url = f"sqlite:///{tmp_path}/cache.db"
    texts = ["kettle descaling", "vacation rules", "printer toner"]
    with CachedEmbeddings(FakeEmbeddings(16), url) as emb:
        store = CachedVectorStore(emb)
        store.add_texts(texts, [{"topic": "a"}] * 3)
        store.save(tmp_path / "idx")
        store.close()
    model = FakeEmbeddings(16)
    with pytest.raises(CachedVecError):
        query("how to descale", index=tmp_path / "idx", store=url, model=model, **options)
    assert model.calls == 0
    # The question was not cached either: asking it properly computes it.
    hits, cached = query("how to descale", k=2, index=tmp_path / "idx", store=url, model=model)
    assert len(hits) == 2 and not cached and model.calls == 1
