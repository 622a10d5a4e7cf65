"""CachedEmbeddings: only missing texts reach the model, nothing wrong comes back."""

from __future__ import annotations

import asyncio
import struct
import zlib
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from langchain_core.embeddings import Embeddings

from cachedvec import CachedEmbeddings, open_store
from cachedvec.errors import (
    CachedVecError,
    ConfigError,
    InvalidKeyError,
    InvalidTextError,
    ModelOutputError,
)
from cachedvec.stores.base import CachedVecStore
from cachedvec.testing import FakeEmbeddings
from tests.conftest import PERSISTENT_KINDS, store_url

TEXTS = [f"document number {i} about topic {i % 7}" for i in range(100)]


def test_each_unique_missing_text_is_computed_exactly_once(any_store: CachedVecStore) -> None:
    model = FakeEmbeddings(16)
    emb = CachedEmbeddings(model, any_store, batch_size=7)
    texts = TEXTS + TEXTS[:10]  # 10% duplicates
    out = emb.embed_documents_array(texts)
    assert model.texts_embedded == 100
    assert emb.stats.computed == 100 and emb.stats.duplicates == 10
    np.testing.assert_array_equal(out, model.embed_array(texts))
    np.testing.assert_array_equal(out[100:], out[:10])

    model.texts_embedded = 0
    again = emb.embed_documents_array(texts)
    assert model.texts_embedded == 0
    np.testing.assert_array_equal(again, out)
    assert emb.stats.hits == 100


def test_partial_hits_compute_only_the_missing(any_store: CachedVecStore) -> None:
    model = FakeEmbeddings(8)
    emb = CachedEmbeddings(model, any_store)
    emb.embed_documents(TEXTS[:50])
    model.texts_embedded = 0
    out = emb.embed_documents_array(TEXTS)
    assert model.texts_embedded == 50
    np.testing.assert_array_equal(out, model.embed_array(TEXTS))


def test_list_api_matches_array_api() -> None:
    emb = CachedEmbeddings(FakeEmbeddings(8))
    assert emb.embed_documents(TEXTS[:5]) == emb.embed_documents_array(TEXTS[:5]).tolist()
    assert emb.embed_query("q") == emb.embed_query_array("q").tolist()


def test_documents_and_queries_use_separate_namespaces() -> None:
    store = open_store("memory://")
    emb = CachedEmbeddings(FakeEmbeddings(8), store)
    emb.embed_documents(["same text"])
    emb.embed_query("same text")
    keys = sorted(store.yield_keys())
    assert len(keys) == 2
    assert [k.split(":")[3] for k in keys] == ["doc", "query"]


def test_query_cache_can_be_turned_off_or_moved() -> None:
    store, qstore = open_store("memory://"), open_store("memory://")
    model = FakeEmbeddings(8)
    uncached = CachedEmbeddings(model, store, cache_queries=False)
    uncached.embed_query("q")
    uncached.embed_query("q")
    assert list(store.yield_keys()) == []
    # Computed twice, written never: the stats say what reached the store.
    assert uncached.stats.computed == 2 and uncached.stats.bytes_written == 0
    asyncio.run(uncached.aembed_query("q"))
    assert uncached.stats.bytes_written == 0
    emb = CachedEmbeddings(model, store, query_store=qstore)
    emb.embed_query("q")
    before = model.texts_embedded
    emb.embed_query("q")
    assert model.texts_embedded == before
    assert len(list(qstore.yield_keys())) == 1 and list(store.yield_keys()) == []


def test_two_models_never_mix_in_one_store() -> None:
    store = open_store("memory://")
    a, b = FakeEmbeddings(8, seed=1, name="a"), FakeEmbeddings(8, seed=2, name="b")
    va = CachedEmbeddings(a, store).embed_documents_array(TEXTS[:3])
    vb = CachedEmbeddings(b, store).embed_documents_array(TEXTS[:3])
    assert b.texts_embedded == 3
    assert not np.allclose(va, vb)
    bigger = FakeEmbeddings(16, seed=1, name="a")
    CachedEmbeddings(bigger, store).embed_documents_array(TEXTS[:3])
    assert bigger.texts_embedded == 3


@pytest.mark.parametrize("kind", PERSISTENT_KINDS)
@pytest.mark.parametrize(
    "damage", ["truncate", "bitflip", "garbage", "wrong_dim", "empty", "digest"]
)
def test_corrupt_values_are_recomputed_and_counted(
    kind: str, damage: str, make_store_url: Callable[[str], str]
) -> None:
    model = FakeEmbeddings(8)
    url = make_store_url(kind)
    with CachedEmbeddings(model, url) as emb:
        truth = emb.embed_documents_array(TEXTS[:4])
        key = emb.document_keys([TEXTS[1]])[0]
        value = emb.store.mget([key])[0]
        assert value is not None
        bad = {
            "truncate": value[:-3],
            "bitflip": value[:20] + bytes([value[20] ^ 0x10]) + value[21:],
            "garbage": b"\x80\x04pickle?",
            "wrong_dim": CachedEmbeddings(FakeEmbeddings(4)).codec.encode(np.ones(4)),
            "empty": b"",
            "digest": value[:-8] + bytes(8),
        }[damage]
        emb.store.mset([(key, bad)])
    model.texts_embedded = 0
    with CachedEmbeddings(model, url) as emb:
        out = emb.embed_documents_array(TEXTS[:4])
        np.testing.assert_array_equal(out, truth)
        assert model.texts_embedded == 1
        assert emb.stats.corrupt == 1 and emb.stats.hits == 3
        # The damaged value was replaced by a good one.
        assert emb.store.mget([key])[0] == value


def _version_1_value(vector: np.ndarray) -> bytes:
    """A float32 value as codec format version 1 wrote it: header, data, CRC-32."""
    body = struct.pack("<2sBBI", b"CV", 1, 1, len(vector)) + vector.astype("<f4").tobytes()
    return body + struct.pack("<I", zlib.crc32(body))


def test_a_cache_written_in_format_version_1_is_still_hit(any_store: CachedVecStore) -> None:
    model = FakeEmbeddings(8)
    emb = CachedEmbeddings(model, any_store)
    truth = model.embed_array(TEXTS[:20])
    keys = emb.document_keys(TEXTS[:20])
    old = [_version_1_value(v) for v in truth]
    old[5] = old[5][:30] + bytes([old[5][30] ^ 1]) + old[5][31:]  # one damaged old value
    any_store.mset(list(zip(keys, old, strict=True)))
    model.texts_embedded = 0
    np.testing.assert_array_equal(emb.embed_documents_array(TEXTS[:20]), truth)
    assert model.texts_embedded == 1
    assert emb.stats.hits == 19 and emb.stats.corrupt == 1
    # Old values stay as they are; the recomputed one is written in the current format.
    stored = any_store.mget(keys)
    assert stored[0] == old[0]
    assert stored[5] is not None and stored[5][2] == 2 and len(stored[5]) == 8 + 8 * 4 + 8


def test_corrupted_file_on_disk_is_recomputed(tmp_path: Path) -> None:
    model = FakeEmbeddings(8)
    url = f"file://{tmp_path}/store"
    with CachedEmbeddings(model, url) as emb:
        truth = emb.embed_documents_array(["alpha", "beta"])
    files = [p for p in (tmp_path / "store").rglob("*") if p.is_file()]
    assert len(files) == 2
    raw = bytearray(files[0].read_bytes())
    raw[15] ^= 0xFF
    files[0].write_bytes(bytes(raw))
    with CachedEmbeddings(model, url) as emb:
        np.testing.assert_array_equal(emb.embed_documents_array(["alpha", "beta"]), truth)
        assert emb.stats.corrupt == 1


class _BadModel(Embeddings):
    def __init__(self, mode: str) -> None:
        self.mode = mode

    def embed_documents(self, texts: list[str]) -> list[list[float]]:
        if self.mode == "nan":
            return [[float("nan"), 1.0] for _ in texts]
        if self.mode == "inf":
            return [[float("inf"), 1.0] for _ in texts]
        if self.mode == "count":
            return [[1.0, 2.0] for _ in texts[1:]]
        if self.mode == "ragged":
            return [[1.0, 2.0][: 1 + i % 2] for i, _ in enumerate(texts)]
        return [["x", "y"] for _ in texts]

    def embed_query(self, text: str) -> list[float]:
        return self.embed_documents([text])[0]


@pytest.mark.parametrize("mode", ["nan", "inf", "count", "ragged", "strings"])
def test_bad_model_output_is_rejected_and_nothing_is_written(mode: str) -> None:
    store = open_store("memory://")
    emb = CachedEmbeddings(_BadModel(mode), store)
    with pytest.raises(ModelOutputError):
        emb.embed_documents(["a", "b"])
    assert list(store.yield_keys()) == []


def test_wrong_dimension_from_model_is_rejected() -> None:
    class Shrinking(FakeEmbeddings):
        def embed_array(self, texts):  # type: ignore[no-untyped-def]
            return super().embed_array(texts)[:, :4]

    with pytest.raises(ModelOutputError, match="dim 4"):
        CachedEmbeddings(Shrinking(8)).embed_documents(["a"])


def test_work_is_written_batch_by_batch(tmp_path: Path) -> None:
    class FailsLate(FakeEmbeddings):
        def embed_array(self, texts):  # type: ignore[no-untyped-def]
            if self.calls == 2:
                raise RuntimeError("model crashed")
            return super().embed_array(texts)

    url = store_url("sqlite", tmp_path)
    with CachedEmbeddings(FailsLate(8), url, batch_size=10) as emb, pytest.raises(RuntimeError):
        emb.embed_documents(TEXTS[:50])
    model = FakeEmbeddings(8)
    with CachedEmbeddings(model, url, batch_size=10) as emb:
        emb.embed_documents(TEXTS[:50])
    assert model.texts_embedded == 30  # the two finished batches were kept


def test_bad_input() -> None:
    model = FakeEmbeddings(8)
    emb = CachedEmbeddings(model)
    assert emb.embed_documents([]) == []
    assert emb.embed_documents_array([]).shape == (0, 8)
    with pytest.raises(TypeError, match=r"texts\[1\]"):
        emb.embed_documents(["a", None])  # type: ignore[list-item]
    with pytest.raises(TypeError):
        emb.embed_documents("not a list")  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        emb.embed_query(3)  # type: ignore[arg-type]
    with pytest.raises(InvalidTextError):
        emb.embed_documents(["\udcff"])
    # Positions are those of the caller's list, repeated texts included.
    with pytest.raises(TypeError, match=r"texts\[2\]"):
        emb.embed_documents(["a", "a", None])  # type: ignore[list-item]
    with pytest.raises(InvalidTextError, match=r"texts\[3\]"):
        emb.embed_documents(["a", "b", "a", "\udcff"])
    for bad in (0, -1, True, 2.5, "8"):
        with pytest.raises(ConfigError, match="batch_size"):
            CachedEmbeddings(model, batch_size=bad)  # type: ignore[arg-type]
        with pytest.raises(ConfigError, match="batch_size"):
            CachedEmbeddings.from_bytes_store(model, open_store("memory://"), batch_size=bad)  # type: ignore[arg-type]
    assert CachedEmbeddings.from_bytes_store(model, open_store("memory://")).batch_size == 256
    with pytest.raises(ConfigError):
        CachedEmbeddings(model, store=42)  # type: ignore[arg-type]


def test_empty_long_and_odd_texts_are_embedded_and_cached() -> None:
    model = FakeEmbeddings(8)
    emb = CachedEmbeddings(model)
    texts = ["", "x" * 1_000_000, "nul\x00byte", "emoji 🙂"]
    first = emb.embed_documents_array(texts)
    second = emb.embed_documents_array(texts)
    assert model.texts_embedded == 4
    np.testing.assert_array_equal(first, second)


def test_float16_storage_halves_the_bytes() -> None:
    model = FakeEmbeddings(64)
    e32, e16 = CachedEmbeddings(model), CachedEmbeddings(model, dtype="float16")
    v32, v16 = e32.embed_documents_array(TEXTS[:5]), e16.embed_documents_array(TEXTS[:5])
    np.testing.assert_allclose(v16, v32, atol=1e-3)
    assert e16.stats.bytes_written < 0.55 * e32.stats.bytes_written
    np.testing.assert_array_equal(e16.embed_documents_array(TEXTS[:5]), v16)


def test_from_bytes_store_takes_langchain_arguments() -> None:
    store = open_store("memory://")
    model = FakeEmbeddings(8)
    emb = CachedEmbeddings.from_bytes_store(
        model,
        store,
        namespace="my-model-v1",
        batch_size=16,
        query_embedding_cache=True,
        key_encoder="sha256",
    )
    emb.embed_documents(["a"])
    emb.embed_query("a")
    assert sorted(store.yield_keys())[0].startswith("cv1:my-model-v1:doc:")
    with pytest.raises(ConfigError):
        CachedEmbeddings.from_bytes_store(model, store, key_encoder="sha1")


def test_langchain_local_file_store_works_with_a_model_named_namespace(tmp_path: Path) -> None:
    # LangChain's LocalFileStore refuses ":" in keys; cachedvec escapes them.
    from langchain_classic.storage import LocalFileStore

    store = LocalFileStore(tmp_path)
    model = FakeEmbeddings(8)
    namespace = "sentence-transformers/all-MiniLM-L6-v2"
    emb = CachedEmbeddings.from_bytes_store(model, store, namespace=namespace)
    first = emb.embed_documents_array(TEXTS[:5])
    query = emb.embed_query("a question")

    again = CachedEmbeddings.from_bytes_store(model, LocalFileStore(tmp_path), namespace=namespace)
    calls = model.calls
    np.testing.assert_array_equal(again.embed_documents_array(TEXTS[:5]), first)
    assert again.embed_query("a question") == query and model.calls == calls
    assert set(again.store.yield_keys()) == set(emb.document_keys(TEXTS[:5])) | set(
        emb.query_keys(["a question"])
    )
    assert sorted(again.store.yield_keys(prefix=f"cv1:{namespace}:query:")) == emb.query_keys(
        ["a question"]
    )
    # The model name is a folder in the store, as with LangChain's own cache.
    assert (tmp_path / "cv1_3asentence-transformers").is_dir()
    # A LangChain cache sharing the folder: its files are not taken for ours.
    store.mset([("my_cache4f1e2d", b"theirs"), ("model_41bc", b"theirs")])
    assert set(again.store.yield_keys()) == set(emb.document_keys(TEXTS[:5])) | set(
        emb.query_keys(["a question"])
    )
    too_long = CachedEmbeddings.from_bytes_store(model, store, namespace="a@" * 100)
    with pytest.raises(InvalidKeyError, match="too long for a file name"):
        too_long.embed_documents(["x"])


def test_get_vectors_reads_without_the_model() -> None:
    model = FakeEmbeddings(8)
    emb = CachedEmbeddings(model)
    truth = emb.embed_documents_array(TEXTS[:3])
    keys = emb.document_keys(TEXTS[:3]) + emb.document_keys(["never embedded"])
    calls = model.calls
    matrix, missing = emb.get_vectors(keys)
    assert model.calls == calls and missing == [3]
    np.testing.assert_array_equal(matrix[:3], truth)


def test_async_twins_share_the_cache() -> None:
    model = FakeEmbeddings(8)
    emb = CachedEmbeddings(model)

    async def run() -> tuple[list[list[float]], list[float]]:
        return await emb.aembed_documents(TEXTS[:4]), await emb.aembed_query("q")

    docs, query = asyncio.run(run())
    assert docs == emb.embed_documents(TEXTS[:4])
    assert query == emb.embed_query("q")
    assert model.texts_embedded == 5


def test_any_langchain_embeddings_works_as_model() -> None:
    from langchain_core.embeddings import DeterministicFakeEmbedding

    emb = CachedEmbeddings(DeterministicFakeEmbedding(size=12))
    assert emb.embed_documents_array(["a", "b"]).shape == (2, 12)
    assert "deterministicfakeembedding" in emb.namespace
    other = CachedEmbeddings(DeterministicFakeEmbedding(size=24))
    assert other.namespace != emb.namespace  # `size` is part of the fingerprint


class _Wrapper(Embeddings):
    """A user's adapter around some model object, as people write them."""

    def __init__(self, model: object) -> None:
        self.model = model

    def embed_documents(self, texts: list[str]) -> list[list[float]]:
        return self.model.embed_documents(texts)  # type: ignore[attr-defined]

    def embed_query(self, text: str) -> list[float]:
        return self.model.embed_query(text)  # type: ignore[attr-defined]


def test_wrappers_of_different_models_get_different_namespaces() -> None:
    store = open_store("memory://")
    first = CachedEmbeddings(_Wrapper(FakeEmbeddings(16, seed=1)), store)
    second = CachedEmbeddings(_Wrapper(FakeEmbeddings(16, seed=2)), store)
    assert first.namespace != second.namespace
    first.embed_documents(["hello"])
    np.testing.assert_array_equal(
        second.embed_documents_array(["hello"]),
        FakeEmbeddings(16, seed=2).embed_array(["hello"]),
    )
    # Settings inside a plain object count too.
    from langchain_core.embeddings import DeterministicFakeEmbedding

    sizes = {
        CachedEmbeddings(_Wrapper(DeterministicFakeEmbedding(size=n))).namespace for n in (8, 9)
    }
    assert len(sizes) == 2


def test_a_setting_the_fingerprint_cannot_see_into_is_warned_about(
    caplog: pytest.LogCaptureFixture,
) -> None:
    class Opaque:
        __slots__ = ()

    class OpaqueWrapper(_Wrapper):
        pass

    with caplog.at_level("WARNING", logger="cachedvec.models"):
        CachedEmbeddings(OpaqueWrapper(Opaque()))
        CachedEmbeddings(OpaqueWrapper(Opaque()))
    warnings = [r.getMessage() for r in caplog.records if "cannot see into" in r.getMessage()]
    assert len(warnings) == 1 and "'model' setting" in warnings[0] and "namespace=" in warnings[0]
    assert "OpaqueWrapper" in warnings[0]


def test_texts_may_come_from_a_generator() -> None:
    emb = CachedEmbeddings(FakeEmbeddings(8))
    vectors = emb.embed_documents(t for t in TEXTS[:3])
    assert vectors == emb.embed_documents(TEXTS[:3])
    with pytest.raises(TypeError, match="single string"):
        emb.embed_documents("one text")  # type: ignore[arg-type]


def test_namespaces_of_langchain_models_stay_put(caplog: pytest.LogCaptureFixture) -> None:
    # A namespace that changes makes every cached vector miss and every saved
    # index refuse to load: pinned for a class whose settings do not change.
    from langchain_core.embeddings import DeterministicFakeEmbedding

    emb = CachedEmbeddings(DeterministicFakeEmbedding(size=12))
    assert emb.namespace == "deterministicfakeembedding:2421c66f17709ed9"
    # Settings that are plain data but not JSON (a set) stay out, silently.
    openai = pytest.importorskip("langchain_community.embeddings.openai")
    with caplog.at_level("WARNING", logger="cachedvec.models"):
        model = CachedEmbeddings(openai.OpenAIEmbeddings.model_construct(model="x")).model
    assert "allowed_special" not in model.fingerprint.params
    assert not [r for r in caplog.records if r.name == "cachedvec.models"]


# ----------------------------------------------- found in review, with their fixes


class _Dimless(Embeddings):
    """A LangChain model whose fingerprint has no dimension (as most providers'),
    recording the texts it embeds (in a private attribute: not a setting)."""

    def __init__(self, dim: int) -> None:
        self.size = dim
        self._fake = FakeEmbeddings(dim)
        self._seen: list[str] = []

    def embed_documents(self, texts: list[str]) -> list[list[float]]:
        self._seen.extend(texts)
        return self._fake.embed_documents(texts)

    def embed_query(self, text: str) -> list[float]:
        self._seen.append(text)
        return self._fake.embed_query(text)


def test_a_stored_value_of_another_dimension_never_poisons_a_dimensionless_model(
    any_store: CachedVecStore,
) -> None:
    # The codec used to learn its dimension from the first stored value: one
    # 4-d value (a namespace shared with another model) made every 8-d value
    # corrupt and every model output a ModelOutputError, for the object's life.
    texts = ["a", "b", "c", "d"]
    emb = CachedEmbeddings(_Dimless(8), any_store)
    truth = emb.embed_documents_array(texts)
    stale = CachedEmbeddings(FakeEmbeddings(4)).codec.encode(np.ones(4))
    key = emb.document_keys(["a"])[0]
    any_store.mset([(key, stale)])
    model = _Dimless(8)
    emb = CachedEmbeddings(model, any_store)
    np.testing.assert_array_equal(emb.embed_documents_array(texts), truth)
    assert model._seen == ["a"]
    assert (emb.stats.hits, emb.stats.misses, emb.stats.corrupt) == (3, 1, 1)
    assert emb.stats.computed == 1

    # The stale value alone in its call, with a miss: the model's output
    # settles the dimension, and the stale value is recomputed in the same call.
    any_store.mset([(key, stale)])
    model = _Dimless(8)
    emb = CachedEmbeddings(model, any_store)
    out = emb.embed_documents_array(["a", "new"])
    np.testing.assert_array_equal(out[0], truth[0])
    assert out.shape == (2, 8) and sorted(model._seen) == ["a", "new"]
    stats = emb.stats
    assert stats.hits + stats.misses == 2 and stats.computed == stats.misses == 2
    assert stats.corrupt == 1
    assert any_store.mget([key])[0] != stale  # overwritten with the model's vector
    model._seen.clear()
    np.testing.assert_array_equal(emb.embed_documents_array(["a", "new"]), out)
    assert model._seen == []


def test_float16_storage_refuses_values_it_cannot_hold() -> None:
    class Loud(FakeEmbeddings):
        def embed_array(self, texts):  # type: ignore[no-untyped-def]
            return super().embed_array(texts) * 1e6  # beyond float16's 65504

    store = open_store("memory://")
    emb = CachedEmbeddings(Loud(8), store, dtype="float16")
    with pytest.raises(ModelOutputError, match="float16"):
        emb.embed_documents_array(["x"])
    assert list(store.yield_keys()) == []
    # float32 storage holds them.
    assert np.isfinite(CachedEmbeddings(Loud(8)).embed_documents_array(["x"])).all()


class RateLimitError(Exception):
    """A provider's own exception, as users catch it."""


class _Flaky(FakeEmbeddings):
    """Raises the provider's error on the given call (counted from 1)."""

    def __init__(self, fail_on: int) -> None:
        super().__init__(8)
        self.fail_on = fail_on

    def embed_array(self, texts):  # type: ignore[no-untyped-def]
        if self.calls + 1 == self.fail_on:
            self.calls += 1
            raise RateLimitError("slow down")
        return super().embed_array(texts)


class _FlakyLangChain(Embeddings):
    def __init__(self) -> None:
        self._inner = _Flaky(2)

    def embed_documents(self, texts: list[str]) -> list[list[float]]:
        return self._inner.embed_documents(texts)

    def embed_query(self, text: str) -> list[float]:
        return self._inner.embed_query(text)


@pytest.mark.parametrize("model", ["protocol", "langchain"])
@pytest.mark.parametrize("driver", ["sync", "async"])
def test_the_models_own_exception_reaches_the_caller_unchanged(
    model: str, driver: str, tmp_path: Path
) -> None:
    # Decided: not wrapped in ModelError, as LangChain's CacheBackedEmbeddings,
    # so `except RateLimitError` and retry libraries keep working. The batch
    # finished before it stays cached; nothing of the failed batch is written.
    flaky = _Flaky(2) if model == "protocol" else _FlakyLangChain()
    url = store_url("sqlite", tmp_path)
    with CachedEmbeddings(flaky, url, batch_size=4) as emb:
        with pytest.raises(RateLimitError) as caught:
            if driver == "sync":
                emb.embed_documents_array(TEXTS[:10])
            else:
                asyncio.run(emb.aembed_documents_array(TEXTS[:10]))
        assert not isinstance(caught.value, CachedVecError)
        assert sorted(emb.store.yield_keys()) == sorted(emb.document_keys(TEXTS[:4]))
        assert emb.stats.computed == 4


def test_async_twins_return_what_the_sync_methods_return() -> None:
    model = FakeEmbeddings(8)
    emb = CachedEmbeddings(model)
    queries = ["q1", "q2", "q1"]

    async def run() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        return (
            await emb.aembed_queries_array(queries),
            await emb.aembed_query_array("q2"),
            await emb.aembed_documents_array(queries),
        )

    many, one, docs = asyncio.run(run())
    assert model.texts_embedded == 4  # q1, q2 as queries; q1, q2 as documents
    np.testing.assert_array_equal(many, emb.embed_queries_array(queries))
    np.testing.assert_array_equal(one, emb.embed_query_array("q2"))
    np.testing.assert_array_equal(docs, emb.embed_documents_array(queries))
    assert model.texts_embedded == 4


@pytest.mark.parametrize(
    "output",
    [
        [["1.5", "2"]],  # numbers as text
        [[True, False]],
        np.array([[1 + 2j, 1]]),
        [[10**400, 1]],  # too big for any float
        [[1e300, 1.0]],  # too big for float32
        [[None, 1.0]],
    ],
)
def test_model_output_that_is_not_real_numbers_is_refused(output: object) -> None:
    class Fixed(Embeddings):
        def embed_documents(self, texts: list[str]) -> list[list[float]]:
            return output  # type: ignore[return-value]

        def embed_query(self, text: str) -> list[float]:
            raise NotImplementedError

    store = open_store("memory://")
    with pytest.raises(ModelOutputError):
        CachedEmbeddings(Fixed(), store, namespace="fixed").embed_documents(["a"])
    assert list(store.yield_keys()) == []


def test_every_bad_text_is_a_cachedvec_error_and_a_type_error() -> None:
    emb = CachedEmbeddings(FakeEmbeddings(8))
    calls: list[Callable[[], object]] = [
        lambda: emb.embed_documents(["a", None]),  # type: ignore[list-item]
        lambda: emb.embed_documents(["a", ["unhashable"]]),  # type: ignore[list-item]
        lambda: emb.embed_documents([b"bytes"]),  # type: ignore[list-item]
        lambda: emb.embed_documents(None),  # type: ignore[arg-type]
        lambda: emb.embed_documents(5),  # type: ignore[arg-type]
        lambda: emb.embed_documents("one text"),  # type: ignore[arg-type]
        lambda: emb.embed_query(None),  # type: ignore[arg-type]
        lambda: emb.document_keys(t for t in ["a", None]),  # type: ignore[misc]
        lambda: asyncio.run(emb.aembed_query(3)),  # type: ignore[arg-type]
        lambda: asyncio.run(emb.aembed_documents(["a", 3])),  # type: ignore[list-item]
    ]
    for call in calls:
        with pytest.raises(InvalidTextError) as caught:
            call()
        assert isinstance(caught.value, TypeError)
    with pytest.raises(ConfigError, match="namespace"):
        CachedEmbeddings(FakeEmbeddings(8), namespace=5)  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="namespace"):
        CachedEmbeddings(FakeEmbeddings(8), namespace="model\n")


def test_a_bad_argument_opens_no_store(tmp_path: Path) -> None:
    # The store used to be opened first: a bad dtype left a new SQLite file
    # (and an open connection) behind.
    for bad in ({"dtype": "float64"}, {"key_algorithm": "md5"}, {"namespace": "a//b"}):
        with pytest.raises(ConfigError):
            CachedEmbeddings(FakeEmbeddings(8), f"sqlite:///{tmp_path}/c.db", **bad)  # type: ignore[arg-type]
    assert list(tmp_path.iterdir()) == []


def test_from_bytes_store_treats_none_like_langchain_does() -> None:
    # LangChain: query_embedding_cache=None (or False) caches no queries.
    store = open_store("memory://")
    model = FakeEmbeddings(8)
    emb = CachedEmbeddings.from_bytes_store(model, store, query_embedding_cache=None)
    emb.embed_query("q")
    emb.embed_query("q")
    assert list(store.yield_keys()) == [] and model.texts_embedded == 2


def test_a_model_whose_fingerprint_is_not_one_is_refused_or_derived() -> None:
    class NotAFingerprint:
        fingerprint = "v1"

        def embed_documents_array(self, texts: list[str]) -> np.ndarray:
            return np.ones((len(texts), 3), np.float32)

        def embed_queries_array(self, texts: list[str]) -> np.ndarray:
            return np.ones((len(texts), 3), np.float32)

    with pytest.raises(ConfigError, match="fingerprint"):
        CachedEmbeddings(NotAFingerprint())

    class Tagged(_Dimless):
        fingerprint = "v1"  # a LangChain model's own attribute: not ours to trust

    a, b = CachedEmbeddings(Tagged(8)), CachedEmbeddings(Tagged(16))
    assert a.namespace != b.namespace
    assert a.embed_documents_array(["x"]).shape == (1, 8)


def test_every_exception_class_is_exported_from_the_package() -> None:
    import inspect

    import cachedvec
    from cachedvec import errors

    classes = {
        name
        for name, obj in vars(errors).items()
        if inspect.isclass(obj) and issubclass(obj, errors.CachedVecError)
    }
    assert classes <= set(cachedvec.__all__)  # ClusterError was left out
    assert all(getattr(cachedvec, name) is getattr(errors, name) for name in classes)
    assert set(cachedvec.__all__) <= set(dir(cachedvec))
