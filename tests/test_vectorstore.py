"""CachedVectorStore: the LangChain surface over the index and the cache."""

from __future__ import annotations

import sys
import threading
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from langchain_core.documents import Document
from langchain_core.embeddings import DeterministicFakeEmbedding

from cachedvec import CachedEmbeddings, CachedVectorStore
from cachedvec.errors import ConfigError, FilterError, IndexMismatchError
from cachedvec.testing import FakeEmbeddings

DIM = 64
TEXTS = [
    "the cat sat on the mat",
    "dogs chase cats around the garden",
    "a recipe for banana bread with walnuts",
    "how to bake sourdough bread at home",
    "orbital mechanics of geostationary satellites",
    "rockets reach orbit by going sideways fast",
]
METADATAS = [
    {"topic": "pets", "n": 0, "source": "pets.md"},
    {"topic": "pets", "n": 1, "source": "pets.md"},
    {"topic": "baking", "n": 2, "source": "baking.md"},
    {"topic": "baking", "n": 3, "source": "baking.md"},
    {"topic": "space", "n": 4, "source": "space.md"},
    {"topic": "space", "n": 5, "source": "space.md"},
]
IDS = [f"doc{i}" for i in range(len(TEXTS))]


@pytest.fixture
def fake() -> FakeEmbeddings:
    return FakeEmbeddings(dim=DIM)


@pytest.fixture
def cached(fake: FakeEmbeddings) -> Iterator[CachedEmbeddings]:
    with CachedEmbeddings(fake, "memory://") as embeddings:
        yield embeddings


@pytest.fixture
def store(cached: CachedEmbeddings) -> Iterator[CachedVectorStore]:
    vectorstore = CachedVectorStore.from_texts(TEXTS, cached, METADATAS, ids=IDS)
    yield vectorstore
    vectorstore.close()


def texts_of(documents: list[Document]) -> list[str]:
    return [doc.page_content for doc in documents]


# -- the basics --------------------------------------------------------------------------


def test_similarity_search_finds_the_related_text(store: CachedVectorStore) -> None:
    (top,) = store.similarity_search("bread baking", k=1)
    assert top.page_content in (TEXTS[2], TEXTS[3])
    assert top.id in ("doc2", "doc3") and top.metadata["topic"] == "baking"
    pairs = store.similarity_search_with_score("the cat sat on the mat", k=2)
    assert pairs[0][0].id == "doc0" and pairs[0][1] == pytest.approx(1.0, abs=1e-5)
    assert pairs[0][1] >= pairs[1][1]


def test_cache_keys_are_recorded_and_reindexing_needs_no_model(
    store: CachedVectorStore, cached: CachedEmbeddings, fake: FakeEmbeddings
) -> None:
    index = store.index
    assert index is not None
    records = list(index.records())
    assert [r.cache_key for r in records] == cached.document_keys(TEXTS)
    calls = fake.calls
    vectors, missing = cached.get_vectors([r.cache_key for r in records if r.cache_key])
    assert missing == []
    before = [texts_of(store.similarity_search(t, k=3)) for t in TEXTS]
    index.rebuild(factory="HNSW16", vectors=vectors)
    assert [texts_of(store.similarity_search(t, k=3)) for t in TEXTS] == before
    assert fake.calls == calls + len(TEXTS)  # only the query embeddings above
    assert index.fingerprint == fake.fingerprint


def test_adding_the_same_texts_again_computes_nothing(
    store: CachedVectorStore, fake: FakeEmbeddings
) -> None:
    computed = fake.texts_embedded
    store.add_texts(TEXTS, METADATAS, ids=IDS)
    assert fake.texts_embedded == computed
    assert len(store) == len(TEXTS)


def test_the_array_path_is_used_when_available(fake: FakeEmbeddings) -> None:
    def refuse(texts: list[str]) -> list[list[float]]:
        raise AssertionError("float lists should not be needed")

    fake.embed_documents = refuse  # type: ignore[method-assign]
    vectorstore = CachedVectorStore.from_texts(TEXTS, fake)
    assert len(vectorstore) == len(TEXTS)
    assert all(r.cache_key is None for r in vectorstore.index.records())  # type: ignore[union-attr]


def test_plain_langchain_embeddings_work() -> None:
    embedding = DeterministicFakeEmbedding(size=12)
    vectorstore = CachedVectorStore(embedding, metric="l2")
    assert vectorstore.index is None and len(vectorstore) == 0
    assert vectorstore.similarity_search("anything") == []
    ids = vectorstore.add_documents([Document("alpha", id="a"), Document("beta")])
    assert ids[0] == "a" and len(ids[1]) == 32
    assert vectorstore.similarity_search("alpha", k=1)[0].id == "a"
    assert vectorstore.index is not None and vectorstore.index.dim == 12


class _MeetingEmbeddings(DeterministicFakeEmbedding):
    """Lets every thread finish embedding before any adds, to line up first adds."""

    barrier: Any = None

    def embed_documents(self, texts: list[str]) -> list[list[float]]:
        vectors = super().embed_documents(texts)
        self.barrier.wait(timeout=10)
        return vectors


def test_concurrent_first_adds_share_one_index() -> None:
    # The dimension is unknown until the first add creates the index; each
    # thread creating its own used to keep only the last one's documents.
    old_interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    try:
        for _ in range(10):
            embedding = _MeetingEmbeddings(size=8, barrier=threading.Barrier(4))
            vectorstore = CachedVectorStore(embedding)

            def add(t: int, vectorstore: CachedVectorStore = vectorstore) -> None:
                vectorstore.add_texts([f"doc {t}-{i}" for i in range(5)])

            threads = [threading.Thread(target=add, args=(t,)) for t in range(4)]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join()
            assert len(vectorstore) == 20
    finally:
        sys.setswitchinterval(old_interval)


# -- ids, upsert, delete, get ----------------------------------------------------------------


def test_upsert_delete_and_get_by_ids(store: CachedVectorStore) -> None:
    store.add_documents([Document("rockets and dogs", metadata={"topic": "mixed"}, id="doc0")])
    assert len(store) == len(TEXTS)
    (doc,) = store.get_by_ids(["doc0"])
    assert doc == Document("rockets and dogs", metadata={"topic": "mixed"}, id="doc0")
    assert store.delete(["doc1", "doc2"]) is True
    assert store.delete(["doc1", "never"]) is False  # missing ids: reported, not raised
    assert [d.id for d in store.get_by_ids(["doc5", "doc1", "doc3"])] == ["doc5", "doc3"]
    assert "doc1" not in {d.id for d in store.similarity_search("dogs chase cats", k=6)}
    with pytest.raises(ConfigError):
        store.delete()


def test_documents_are_not_mutated(cached: CachedEmbeddings) -> None:
    documents = [Document("one"), Document("two", metadata={"a": 1})]
    CachedVectorStore.from_documents(documents, cached)
    assert documents == [Document("one"), Document("two", metadata={"a": 1})]


# -- search options -----------------------------------------------------------------------------


def test_filters_thresholds_and_bad_options(store: CachedVectorStore) -> None:
    found = store.similarity_search("cats and rockets", k=4, filter={"topic": "space"})
    assert {d.metadata["topic"] for d in found} == {"space"} and len(found) == 2
    found = store.similarity_search("cats", k=6, filter={"n": {"$gte": 4}})
    assert sorted(d.id for d in found) == ["doc4", "doc5"]
    found = store.similarity_search("cats", k=6, filter=lambda m: m["n"] in (1, 3))
    assert sorted(d.id for d in found) == ["doc1", "doc3"]
    close = store.similarity_search_with_score("the cat sat on the mat", k=6, score_threshold=0.5)
    assert [d.id for d, _ in close] == ["doc0"]
    with pytest.raises(FilterError):
        store.similarity_search("cats", filter={"n": {"$near": 1}})
    with pytest.raises(ConfigError, match="filters"):
        store.similarity_search("cats", filters={"n": 1})
    with pytest.raises(ConfigError):
        store.similarity_search("cats", k=0)


@pytest.mark.parametrize("metric", ["cosine", "ip", "l2"])
def test_relevance_scores_are_in_range_and_agree_across_metrics(
    metric: str, cached: CachedEmbeddings
) -> None:
    vectorstore = CachedVectorStore.from_texts(TEXTS, cached, METADATAS, ids=IDS, metric=metric)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        pairs = vectorstore.similarity_search_with_relevance_scores("the cat sat on the mat", k=6)
    assert pairs[0][0].id == "doc0" and pairs[0][1] == pytest.approx(1.0, abs=1e-4)
    assert all(0.0 <= score <= 1.0 for _, score in pairs)
    cosine = CachedVectorStore.from_texts(TEXTS, cached, METADATAS, ids=IDS)
    reference = cosine.similarity_search_with_relevance_scores("the cat sat on the mat", k=6)
    assert [round(s, 4) for _, s in pairs] == [round(s, 4) for _, s in reference]
    kept = vectorstore.similarity_search_with_relevance_scores("cat mat", k=6, score_threshold=0.3)
    assert kept and all(score >= 0.3 for _, score in kept)


class _Scaled(DeterministicFakeEmbedding):
    """Embeddings four times unit length."""

    def embed_documents(self, texts: list[str]) -> list[list[float]]:
        return (4 * np.asarray(super().embed_documents(texts))).tolist()

    def embed_query(self, text: str) -> list[float]:
        return (4 * np.asarray(super().embed_query(text))).tolist()


@pytest.mark.parametrize("metric", ["ip", "l2"])
def test_relevance_of_embeddings_that_are_not_unit_length_is_warned_about(
    metric: str, caplog: pytest.LogCaptureFixture
) -> None:
    vectorstore = CachedVectorStore.from_texts(TEXTS, _Scaled(size=16), metric=metric)
    with caplog.at_level("WARNING", logger="cachedvec.vectorstore"):
        for _ in range(2):
            pairs = vectorstore.similarity_search_with_relevance_scores(TEXTS[0], k=4)
    assert all(0.0 <= score <= 1.0 for _, score in pairs)
    warned = [r.getMessage() for r in caplog.records if "unit-length" in r.getMessage()]
    assert len(warned) == 1 and metric in warned[0]


def test_batch_search_by_vectors(store: CachedVectorStore, fake: FakeEmbeddings) -> None:
    queries = fake.embed_array(["cat on a mat", "bread", "orbit"])
    batch = store.similarity_search_by_vectors(queries, k=2)
    assert [texts_of(row) for row in batch] == [
        texts_of(store.similarity_search_by_vector(q.tolist(), k=2)) for q in queries
    ]
    filtered = store.similarity_search_by_vectors(queries, k=2, filter={"topic": "pets"})
    assert all(d.metadata["topic"] == "pets" for row in filtered for d in row)
    empty = CachedVectorStore(DeterministicFakeEmbedding(size=4))
    assert empty.similarity_search_by_vectors(np.ones((2, 4)), k=3) == [[], []]


def test_mmr_and_retrievers(store: CachedVectorStore) -> None:
    diverse = store.max_marginal_relevance_search("cats dogs bread", k=3, fetch_k=6)
    assert len(diverse) == 3 and len({d.id for d in diverse}) == 3
    only_space = store.max_marginal_relevance_search("x", k=2, filter={"topic": "space"})
    assert {d.id for d in only_space} == {"doc4", "doc5"}
    retriever = store.as_retriever(search_kwargs={"k": 2, "filter": {"topic": "baking"}})
    assert {d.id for d in retriever.invoke("bread")} == {"doc2", "doc3"}
    mmr = store.as_retriever(search_type="mmr", search_kwargs={"k": 2, "fetch_k": 6})
    assert len(mmr.invoke("cats")) == 2
    threshold = store.as_retriever(
        search_type="similarity_score_threshold", search_kwargs={"score_threshold": 0.9}
    )
    assert [d.id for d in threshold.invoke("the cat sat on the mat")] == ["doc0"]


# -- files --------------------------------------------------------------------------------------


def test_save_and_load_round_trip(store: CachedVectorStore, tmp_path: Path) -> None:
    store.save(tmp_path / "idx")
    with CachedEmbeddings(FakeEmbeddings(dim=DIM), "memory://") as fresh:
        loaded = CachedVectorStore.load(tmp_path / "idx", fresh)
        assert len(loaded) == len(TEXTS)
        for text in TEXTS:
            assert texts_of(loaded.similarity_search(text, k=3)) == texts_of(
                store.similarity_search(text, k=3)
            )
        assert loaded.get_by_ids(["doc4"])[0].metadata == METADATAS[4]


def test_loading_with_another_model_or_dimension_is_refused(
    store: CachedVectorStore, tmp_path: Path
) -> None:
    store.save(tmp_path)
    with CachedEmbeddings(FakeEmbeddings(dim=DIM, seed=1), "memory://") as other_model:
        with pytest.raises(IndexMismatchError):
            CachedVectorStore.load(tmp_path, other_model)
    with pytest.raises(IndexMismatchError):
        CachedVectorStore.load(tmp_path, FakeEmbeddings(dim=DIM * 2))
    # Plain embeddings carry no fingerprint: accepted, the dimension is checked on use.
    assert len(CachedVectorStore.load(tmp_path, DeterministicFakeEmbedding(size=DIM))) == 6


def test_load_can_override_search_settings(cached: CachedEmbeddings, tmp_path: Path) -> None:
    vectorstore = CachedVectorStore.from_texts(TEXTS, cached, factory="HNSW16")
    vectorstore.save(tmp_path)
    loaded = CachedVectorStore.load(tmp_path, cached, ef_search=128)
    assert loaded.index is not None and loaded.index.ef_search == 128


def test_saving_before_the_dimension_is_known(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="nothing to save"):
        CachedVectorStore(DeterministicFakeEmbedding(size=4)).save(tmp_path)
    CachedVectorStore(DeterministicFakeEmbedding(size=4), dim=4).save(tmp_path / "a")
    CachedVectorStore(FakeEmbeddings(dim=8)).save(tmp_path / "b")  # FakeEmbeddings has .dim
    assert len(CachedVectorStore.load(tmp_path / "b", FakeEmbeddings(dim=8))) == 0


def test_bad_construction_is_a_config_error(fake: FakeEmbeddings) -> None:
    with pytest.raises(ConfigError):
        CachedVectorStore(fake, metric="dot")
    with pytest.raises(ConfigError):
        CachedVectorStore(fake, factory="NoSuchIndex")
    with pytest.raises(ConfigError):
        CachedVectorStore(fake, factory="Flat", nprobe=4)


# -- async ----------------------------------------------------------------------------------------


async def test_async_twins(cached: CachedEmbeddings, fake: FakeEmbeddings) -> None:
    vectorstore = await CachedVectorStore.afrom_texts(TEXTS, cached, METADATAS, ids=IDS)
    assert len(vectorstore) == 6
    assert [r.cache_key for r in vectorstore.index.records()] == cached.document_keys(TEXTS)  # type: ignore[union-attr]
    (top,) = await vectorstore.asimilarity_search("the cat sat on the mat", k=1)
    assert top.id == "doc0"
    pairs = await vectorstore.asimilarity_search_with_score("bread", k=2, filter={"n": 3})
    assert [d.id for d, _ in pairs] == ["doc3"]
    scored = await vectorstore.asimilarity_search_with_relevance_scores("orbit", k=2)
    assert all(0 <= s <= 1 for _, s in scored)
    diverse = await vectorstore.amax_marginal_relevance_search("cats", k=2, fetch_k=6)
    assert len(diverse) == 2
    batch = await vectorstore.asimilarity_search_by_vectors(fake.embed_array(["cats"]), k=1)
    assert batch[0][0].id in ("doc0", "doc1")
    await vectorstore.aadd_documents([Document("async text", id="late")])
    assert [d.id for d in await vectorstore.aget_by_ids(["late"])] == ["late"]
    assert await vectorstore.adelete(["late"]) is True
    assert len(vectorstore) == 6


# -- lifecycle ------------------------------------------------------------------------------------


def test_a_closed_store_says_it_is_closed(store: CachedVectorStore, tmp_path: Path) -> None:
    store.close()
    closed = "closed"
    with pytest.raises(ConfigError, match=closed):
        store.similarity_search("cats")
    with pytest.raises(ConfigError, match=closed):
        store.similarity_search_by_vectors(np.ones((1, DIM)))
    with pytest.raises(ConfigError, match=closed):
        store.max_marginal_relevance_search("cats")
    with pytest.raises(ConfigError, match=closed):
        store.add_texts(["x"])
    with pytest.raises(ConfigError, match=closed):
        store.delete(["doc0"])
    with pytest.raises(ConfigError, match=closed):
        store.get_by_ids(["doc0"])
    with pytest.raises(ConfigError, match=closed):
        store.save(tmp_path / "idx")
    assert store.index is not None
    with pytest.raises(ConfigError, match=closed):  # the index refuses on its own too
        store.index.search(np.ones(DIM))
    store.close()  # closing twice is harmless


def test_with_closes_the_store_and_leaves_the_embeddings_open(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'cache.db'}"
    with CachedEmbeddings(FakeEmbeddings(dim=DIM), url) as embeddings:
        with CachedVectorStore.from_texts(TEXTS, embeddings, METADATAS, ids=IDS) as vectorstore:
            assert [d.id for d in vectorstore.similarity_search(TEXTS[4], k=1)] == ["doc4"]
            vectorstore.save(tmp_path / "idx")
        index = vectorstore.index
        assert index is not None
        with pytest.raises(ConfigError, match="closed"):
            vectorstore.similarity_search("cats")
        with pytest.raises(ConfigError, match="closed"):  # what it owned is released
            index.search(np.ones(DIM))
        vectorstore.close()  # idempotent: again, and after the with
        # The embeddings (and their SQLite cache) are the caller's: still open.
        assert embeddings.embed_documents_array(TEXTS[:1]).shape == (1, DIM)
        assert embeddings.stats.hits >= 1

        # An error inside the block closes the store too, and reaches the caller.
        with pytest.raises(RuntimeError, match="inside"):
            with CachedVectorStore.load(tmp_path / "idx", embeddings) as loaded:
                assert len(loaded) == len(TEXTS)
                raise RuntimeError("inside")
        with pytest.raises(ConfigError, match="closed"):
            loaded.get_by_ids(["doc0"])


def test_a_store_closed_before_any_add_stays_closed() -> None:
    vectorstore = CachedVectorStore(DeterministicFakeEmbedding(size=4))
    vectorstore.close()
    with pytest.raises(ConfigError, match="closed"):
        vectorstore.add_texts(["x"])
    assert vectorstore.index is None


async def test_a_closed_store_refuses_async_calls_too(store: CachedVectorStore) -> None:
    store.close()
    with pytest.raises(ConfigError, match="closed"):
        await store.asimilarity_search("cats")
    with pytest.raises(ConfigError, match="closed"):
        await store.aadd_texts(["x"])


async def test_an_empty_store_checks_search_options_as_a_full_one_does(
    store: CachedVectorStore,
) -> None:
    empty = CachedVectorStore(DeterministicFakeEmbedding(size=DIM))  # no index until the first add
    assert empty.index is None
    for vectorstore in (empty, store):
        for k in (0, -1, True, 2.5):
            with pytest.raises(ConfigError, match="k must be"):
                vectorstore.similarity_search("x", k=k)  # type: ignore[arg-type]
        with pytest.raises(ConfigError, match="k must be"):
            vectorstore.similarity_search_by_vector([0.5] * DIM, k=0)
        with pytest.raises(ConfigError, match="k must be"):
            vectorstore.similarity_search_by_vectors(np.ones((2, DIM)), k=0)
        with pytest.raises(ConfigError, match="fetch_k"):
            vectorstore.similarity_search("x", fetch_k=0)
        with pytest.raises(FilterError):
            vectorstore.similarity_search("x", filter={"n": {"$near": 1}})
        with pytest.raises(ConfigError, match="k must be"):
            vectorstore.max_marginal_relevance_search("x", k=0)
        with pytest.raises(ConfigError, match="lambda_mult"):
            vectorstore.max_marginal_relevance_search("x", lambda_mult=2.0)
        with pytest.raises(ConfigError, match="k must be"):
            await vectorstore.asimilarity_search("x", k=0)
        with pytest.raises(ConfigError, match="k must be"):
            await vectorstore.amax_marginal_relevance_search("x", k=0)
    assert empty.similarity_search("x", k=2) == []
    assert empty.max_marginal_relevance_search("x", k=2) == []


def test_a_zero_query_vector_is_refused_under_cosine(store: CachedVectorStore) -> None:
    # It has no direction: every cosine score is 0 and any "nearest" is arbitrary.
    with pytest.raises(ConfigError, match="zero vector"):
        store.similarity_search_by_vector([0.0] * DIM)
    with pytest.raises(ConfigError, match=r"queries\[1\] is a zero vector"):
        store.similarity_search_by_vectors(np.vstack([np.ones(DIM), np.zeros(DIM)]))
    with pytest.raises(ConfigError, match="zero vector"):
        store.max_marginal_relevance_search_by_vector([0.0] * DIM)
    assert len(store.similarity_search_by_vector([1e-3] + [0.0] * (DIM - 1), k=2)) == 2


def test_a_zero_query_vector_is_a_valid_query_for_ip_and_l2(cached: CachedEmbeddings) -> None:
    for metric in ("ip", "l2"):
        vectorstore = CachedVectorStore.from_texts(TEXTS, cached, metric=metric)
        assert len(vectorstore.similarity_search_by_vector([0.0] * DIM, k=3)) == 3


def test_score_threshold_must_be_a_real_number(store: CachedVectorStore) -> None:
    empty = CachedVectorStore(DeterministicFakeEmbedding(size=DIM))
    for vectorstore in (store, empty):
        for bad in ("0.5", True, float("nan"), [0.5]):
            with pytest.raises(ConfigError, match="score_threshold"):
                vectorstore.similarity_search_with_score("q", score_threshold=bad)
            with pytest.raises(ConfigError, match="score_threshold"):
                vectorstore.similarity_search_by_vectors(np.ones((1, DIM)), score_threshold=bad)
    # ints, floats and numpy scalars are all thresholds
    for good in (0, 0.5, np.float32(0.5), float("-inf")):
        assert store.similarity_search_with_score("the cat sat on the mat", score_threshold=good)
