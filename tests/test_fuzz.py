"""Hostile input, generated: a cachedvec error or documented behaviour, never anything else.

Hypothesis feeds every parser at cachedvec's boundaries: vector values
(the codec), texts and namespaces (the key encoder), ``manifest.json``
(the index loader), metadata filters, store URLs, file store keys, document
metadata, texts (NUL bytes, lone surrogates, 10 MB) and model output. The
rule each test enforces is the one in ``docs/reliability.md``: an input is
either accepted and round-trips exactly, or refused with a
:class:`~cachedvec.errors.CachedVecError` subclass (``TypeError`` for a
non-string where a string is due, as documented). Inputs that once broke
the rule stay as explicit regression cases.
"""

from __future__ import annotations

import hashlib
import json
import math
import operator
import os
import re
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, assume, example, given, settings
from hypothesis import strategies as st

from cachedvec import CachedEmbeddings, open_store
from cachedvec.codec import VectorCodec
from cachedvec.errors import (
    CachedVecError,
    CodecError,
    ConfigError,
    FilterError,
    InvalidKeyError,
    InvalidTextError,
    ModelError,
    VectorIndexError,
)
from cachedvec.index import VectorIndex, compile_filter, read_manifest
from cachedvec.keys import KeyEncoder, ModelFingerprint, check_namespace
from cachedvec.stores import path_keys
from cachedvec.stores.file import FileStore
from cachedvec.testing import FakeEmbeddings
from tests.crash_harness import Figures

FIGURES = Figures("fuzz tests")
KEY_RE = re.compile(r"^cv1:[A-Za-z0-9._:@+=/-]+:(doc|query):[0-9a-f]{64}$")
# What LangChain's LocalFileStore accepts as a key.
LOCAL_FILE_KEY_RE = re.compile(r"^[a-zA-Z0-9_.\-/]+$")


def fuzz(examples: int) -> Any:
    return settings(
        max_examples=examples,
        deadline=None,
        suppress_health_check=[
            HealthCheck.too_slow,
            HealthCheck.function_scoped_fixture,
            HealthCheck.data_too_large,
        ],
    )


def count(name: str) -> None:
    FIGURES.add(f"hypothesis cases: {name}")


@pytest.fixture(scope="module", autouse=True)
def _report_figures() -> Iterator[None]:
    yield
    FIGURES.report()


@pytest.fixture(scope="module")
def scratch() -> Iterator[Path]:
    """A folder shared by a test's examples (hypothesis reruns a test body many times)."""
    folder = Path(tempfile.mkdtemp(prefix="cachedvec-fuzz-"))
    yield folder
    shutil.rmtree(folder, ignore_errors=True)


# Every code point, lone surrogates and NUL included.
any_char = st.characters(codec=None, exclude_categories=())
any_text = st.text(any_char, max_size=40)
json_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.integers(-(10**40), 10**40),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(any_char, max_size=10),
)
json_values = st.recursive(
    json_scalars,
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner, max_size=4)
    ),
    max_leaves=12,
)


# ------------------------------------------------------------------ codec


edits = st.lists(
    st.one_of(
        st.tuples(st.just("replace"), st.integers(0, 10**4), st.integers(1, 255)),
        st.tuples(st.just("insert"), st.integers(0, 10**4), st.binary(min_size=1, max_size=8)),
        st.tuples(st.just("delete"), st.integers(0, 10**4), st.integers(1, 16)),
        st.tuples(st.just("truncate"), st.integers(0, 10**4), st.just(0)),
    ),
    min_size=1,
    max_size=4,
)


def apply_edits(value: bytes, ops: list[tuple[str, int, Any]]) -> bytes:
    out = bytearray(value)
    for op, where, arg in ops:
        at = where % (len(out) + 1)
        if op == "replace" and out:
            out[at % len(out)] ^= arg
        elif op == "insert":
            out[at:at] = arg
        elif op == "delete":
            del out[at : at + arg]
        elif op == "truncate":
            del out[at:]
    return bytes(out)


@fuzz(1500)
@given(
    dim=st.integers(1, 48),
    dtype=st.sampled_from(["float32", "float16"]),
    seed=st.integers(0, 2**32 - 1),
    ops=edits,
)
def test_an_edited_value_never_decodes_to_another_vector(
    dim: int, dtype: Any, seed: int, ops: list[tuple[str, int, Any]]
) -> None:
    count("codec: edited values")
    codec = VectorCodec(dim, dtype)
    vector = np.random.default_rng(seed).standard_normal(dim).astype(np.float32)
    value = codec.encode(vector)
    damaged = apply_edits(value, ops)
    expected = codec.round_trip(vector.reshape(1, -1))[0]
    try:
        decoded = codec.decode(damaged)
    except CodecError:
        assert damaged != value
    else:
        assert damaged == value, "a damaged value decoded"
        np.testing.assert_array_equal(decoded, expected)
    matrix, missing, corrupt = codec.decode_many([value, damaged, None])
    assert missing == [2] and corrupt == ([] if damaged == value else [1])
    np.testing.assert_array_equal(matrix[0], expected)


@fuzz(300)
@given(dim=st.one_of(json_values, st.integers()), dtype=json_scalars)
def test_codec_settings_are_checked(dim: Any, dtype: Any) -> None:
    count("codec: settings")
    try:
        codec = VectorCodec(dim, dtype)
    except ConfigError:
        return
    assert codec.dtype in ("float32", "float16") and codec.dim == dim


@fuzz(800)
@given(
    blobs=st.lists(st.one_of(st.none(), st.binary(max_size=120)), max_size=6),
    dim=st.one_of(st.none(), st.integers(1, 16)),
)
def test_any_bytes_decode_to_misses_never_to_vectors(
    blobs: list[bytes | None], dim: int | None
) -> None:
    count("codec: arbitrary bytes")
    matrix, missing, corrupt = VectorCodec(dim).decode_many(blobs)
    assert missing == [i for i, b in enumerate(blobs) if b is None]
    assert corrupt == [i for i, b in enumerate(blobs) if b is not None]
    assert not matrix.any()


# -------------------------------------------------------------------- keys


@fuzz(600)
@given(
    texts=st.lists(st.one_of(any_text, st.text(max_size=5)), max_size=8),
    kind=st.sampled_from(["doc", "query"]),
    algorithm=st.sampled_from(["sha256", "blake2b"]),
)
def test_the_key_encoder_hashes_any_text_or_names_the_bad_one(
    texts: list[str], kind: Any, algorithm: str
) -> None:
    count("keys: texts")
    encoder = KeyEncoder("model:0123456789abcdef", kind, algorithm)
    try:
        keys = encoder.keys(texts)
    except InvalidTextError as exc:
        bad = next(i for i, t in enumerate(texts) if _has_surrogate(t))
        assert f"texts[{bad}]" in str(exc)
        return
    assert not any(_has_surrogate(t) for t in texts)
    assert all(KEY_RE.match(k) for k in keys)
    assert len(set(keys)) == len(set(texts))


def _has_surrogate(text: str) -> bool:
    return any(0xD800 <= ord(c) <= 0xDFFF for c in text)


@fuzz(200)
@given(
    texts=st.lists(
        st.one_of(
            st.text(max_size=3),
            st.integers(),
            st.none(),
            st.binary(),
            st.lists(st.text(max_size=2), max_size=2),
        ),
        min_size=1,
        max_size=5,
    )
)
def test_non_strings_are_a_type_error_naming_the_position(texts: list[Any]) -> None:
    count("keys: non-strings")
    assume(not all(isinstance(t, str) for t in texts))
    with pytest.raises(TypeError, match=r"texts\[\d+\]"):
        KeyEncoder("ns", "doc").keys(texts)


@fuzz(300)
@given(namespace=any_text)
def test_a_user_namespace_is_store_safe_or_refused(namespace: str) -> None:
    count("keys: namespaces")
    try:
        check_namespace(namespace)
    except ConfigError:
        return
    key = KeyEncoder(namespace, "doc").key("text")
    assert KEY_RE.match(key)
    assert not {"", ".", ".."} & set(namespace.split("/"))
    stored = path_keys.escape(key)
    assert LOCAL_FILE_KEY_RE.match(stored) and path_keys.unescape(stored) == key


@fuzz(300)
@given(key=any_text)
def test_path_safe_keys_round_trip_any_key(key: str) -> None:
    count("keys: path-safe escapes")
    try:
        key.encode("utf-8")
    except UnicodeEncodeError:
        return  # keys are text a store can encode
    stored = path_keys.escape(key)
    assert path_keys.unescape(stored) == key
    assert stored == "" or re.fullmatch(r"[A-Za-z0-9_./-]+", stored)


@fuzz(200)
@given(
    data=st.dictionaries(
        st.sampled_from(
            [
                "model",
                "revision",
                "dim",
                "normalize",
                "document_prompt",
                "query_prompt",
                "pooling",
                "params",
                "other",
            ]
        ),
        json_values,
    )
)
def test_a_fingerprint_from_any_dict_is_checked_and_store_safe(data: dict[str, Any]) -> None:
    count("keys: fingerprints from dicts")
    try:
        fingerprint = ModelFingerprint.from_dict(data)
        namespace = fingerprint.namespace()
    except ConfigError:
        return
    assert KEY_RE.match(KeyEncoder(namespace, "doc").key("text"))


# --------------------------------------------------------------- manifests


@pytest.fixture(scope="module")
def saved_index(scratch: Path) -> Path:
    folder = scratch / "index"
    model = FakeEmbeddings(8)
    texts = [f"text {i} w{i % 5}" for i in range(40)]
    index = VectorIndex(8, factory="HNSW16", fingerprint=model.fingerprint)
    index.add(
        model.embed_array(texts),
        texts,
        [{"n": i} for i in range(40)],
        ids=[f"d{i}" for i in range(40)],
    )
    index.delete(["d0", "d1"])
    index.save(folder)
    index.close()
    return folder


def _seal(data: dict[str, Any]) -> dict[str, Any]:
    body = {key: value for key, value in data.items() if key != "manifest_sha256"}
    canonical = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    return {**body, "manifest_sha256": hashlib.sha256(canonical.encode()).hexdigest()}


@contextmanager
def manifest_replaced(folder: Path, content: bytes) -> Iterator[None]:
    path = folder / "manifest.json"
    original = path.read_bytes()
    path.write_bytes(content)
    try:
        yield
    finally:
        path.write_bytes(original)


@fuzz(300)
@given(
    content=st.one_of(st.binary(max_size=300), json_values.map(lambda v: json.dumps(v).encode()))
)
def test_any_manifest_bytes_are_refused_clearly(saved_index: Path, content: bytes) -> None:
    count("manifest: arbitrary bytes and JSON")
    with manifest_replaced(saved_index, content):
        with pytest.raises(VectorIndexError):
            read_manifest(saved_index)
        with pytest.raises(VectorIndexError):
            VectorIndex.load(saved_index)


def _paths(data: Any, prefix: tuple[Any, ...] = ()) -> Iterator[tuple[Any, ...]]:
    """Every key path into a manifest dict."""
    if isinstance(data, dict):
        for key, value in data.items():
            yield (*prefix, key)
            yield from _paths(value, (*prefix, key))


@fuzz(300)
@given(data=st.data())
def test_a_resealed_manifest_with_any_field_changed_loads_consistently_or_is_refused(
    saved_index: Path, data: st.DataObject
) -> None:
    count("manifest: fields changed behind a valid checksum")
    manifest = json.loads((saved_index / "manifest.json").read_text())
    paths = sorted(p for p in _paths(manifest) if p != ("manifest_sha256",))
    for _ in range(data.draw(st.integers(1, 3))):
        path = data.draw(st.sampled_from(paths))
        parent: Any = manifest
        for key in path[:-1]:
            parent = parent.get(key) if isinstance(parent, dict) else None
        if not isinstance(parent, dict):
            continue  # an earlier change removed this branch
        action = data.draw(st.sampled_from(["replace", "delete", "add"]))
        if action == "replace":
            parent[path[-1]] = data.draw(json_values)
        elif action == "delete":
            parent.pop(path[-1], None)
        else:
            parent[data.draw(st.text(max_size=8))] = data.draw(json_values)
    with manifest_replaced(saved_index, json.dumps(_seal(manifest)).encode()):
        try:
            loaded = VectorIndex.load(saved_index)
        except VectorIndexError:
            return
        with loaded:
            assert len(loaded) == 38
            hits = loaded.search(np.ones(8, np.float32), 5, filter={"n": {"$gte": 10}})
            assert len(hits) == 5 and all(h.metadata["n"] >= 10 for h in hits)
    count("manifest: changed fields that still load (unused or equivalent)")


def test_a_manifest_with_a_huge_ef_search_is_refused(saved_index: Path) -> None:
    manifest = json.loads((saved_index / "manifest.json").read_text())
    manifest["search"]["ef_search"] = 2**31
    with manifest_replaced(saved_index, json.dumps(_seal(manifest)).encode()):
        with pytest.raises(VectorIndexError):
            VectorIndex.load(saved_index).close()


# ------------------------------------------------------------------ filters


odd_scalars = st.one_of(
    json_scalars,
    st.binary(max_size=4),
    st.tuples(st.integers()),
    st.frozensets(st.integers()),
    st.just(float("nan")),
    st.just(10**30),
    st.complex_numbers(max_magnitude=3),
)
odd_values = st.recursive(
    odd_scalars,
    lambda inner: (
        st.lists(inner, max_size=3)
        | st.dictionaries(
            st.one_of(st.text(max_size=3), st.integers(), st.none()), inner, max_size=3
        )
    ),
    max_leaves=10,
)
operators = st.sampled_from(
    [
        "$eq",
        "$ne",
        "$gt",
        "$gte",
        "$lt",
        "$lte",
        "$in",
        "$nin",
        "$and",
        "$or",
        "$not",
        "$bogus",
        "$",
        "a",
        "b",
    ]
)
hostile_filters = st.recursive(
    st.dictionaries(st.one_of(operators, st.integers(), st.none()), odd_values, max_size=3),
    lambda inner: st.dictionaries(
        operators, inner | st.lists(inner, max_size=3) | odd_values, max_size=3
    ),
    max_leaves=10,
)


@fuzz(600)
@given(
    spec=st.one_of(hostile_filters, odd_values),
    metadata=st.dictionaries(st.sampled_from(["a", "b", "$and"]), odd_values, max_size=3),
)
def test_odd_filters_compile_or_raise_filter_error_and_never_fail_to_evaluate(
    spec: Any, metadata: dict[str, Any]
) -> None:
    count("filters: hostile specs and metadata")
    try:
        predicate = compile_filter(spec)
    except FilterError:
        return
    if predicate is not None:
        assert predicate(metadata) in (True, False)


def test_a_cli_filter_nested_too_deep_is_one_error_line(tmp_path: Path) -> None:
    from click.testing import CliRunner

    from cachedvec.cli import main

    result = CliRunner().invoke(
        main,
        ["query", "q", "--index", str(tmp_path), "--store", "memory://", "--filter", "[" * 100_000],
    )
    assert result.exit_code == 1 and isinstance(result.exception, SystemExit)
    assert "Traceback" not in result.output and "Traceback" not in result.stderr
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: --filter"), lines
    assert result.stdout == ""


# --------------------------------------------------------------------- URLs

# Inputs that once let a raw ValueError, OSError, OverflowError or
# SQLAlchemy error escape open_store (found by the fuzz test below).
# (SQLITE:/// was one; schemes are case-insensitive, so it now opens.)
HOSTILE_URLS = [
    "sqlite:///has\x00nul.db",
    "sqlite:///%00.db",
    "file://has\x00nul",
    "file://\ud800",
    "sqlite:///\ud800.db",
    "sqlite:///" + "n" * 300 + ".db",
    "sqlite:///x.db?timeout=abc",
    "postgresql://u@[::1/db",
    "postgresql+psycopg://u@127.0.0.1:abc/db",
    "SQLITE+x:///x.db",
    "sqlite://host/x.db",
    "diskcache://dc?size_limit=inf",
    "diskcache://dc?size_limit=1e999",
]


@pytest.mark.parametrize("url", HOSTILE_URLS)
def test_hostile_urls_raise_a_cachedvec_error(
    url: str, scratch: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(scratch)
    with pytest.raises(CachedVecError):
        open_store(url).close()


segment = st.one_of(
    st.sampled_from(
        [
            "a",
            "b.db",
            "c",
            "cache.db",
            "dir",
            ".",
            "%00",
            "%2e%2e",
            "%ff",
            "?",
            "#",
            "@",
            ":",
            "~",
            "x" * 300,
            "\x00",
            "\ud800",
            "é",
            " ",
            "\\",
            "",
        ]
    ),
    st.text(any_char, max_size=6).filter(lambda s: "/" not in s and s not in (".", "..")),
)
query = st.lists(
    st.tuples(
        st.sampled_from(
            [
                "size_limit",
                "eviction_policy",
                "cull_limit",
                "timeout",
                "mode",
                "uri",
                "sslmode",
                "x",
                "",
            ]
        ),
        st.one_of(
            st.sampled_from(
                [
                    "1",
                    "-1",
                    "0",
                    "inf",
                    "nan",
                    "1e999",
                    "10MB",
                    "2GiB",
                    "abc",
                    "least-recently-used",
                    "none",
                    "ro",
                    "true",
                    "",
                ]
            ),
            st.text(any_char, max_size=5),
        ),
    ),
    max_size=3,
).map(lambda pairs: "&".join(f"{k}={v}" for k, v in pairs))
schemes = st.sampled_from(
    [
        "memory",
        "file",
        "sqlite",
        "diskcache",
        "postgresql",
        "postgresql+psycopg",
        "sqlite+pysqlite",
        "FILE",
        "Memory",
        "mysql",
        "",
        "file+x",
        "diskcache+y",
    ]
)


@fuzz(300)
@given(
    scheme=st.one_of(schemes, st.text(any_char, max_size=8)),
    absolute=st.booleans(),
    parts=st.lists(segment, max_size=3),
    q=query,
    separator=st.sampled_from(["://", ":/", ":", "//", "://"]),
)
def test_open_store_raises_only_cachedvec_errors(
    scratch: Path, scheme: str, absolute: bool, parts: list[str], q: str, separator: str
) -> None:
    count("URLs: open_store")
    root = scratch / "urls"
    root.mkdir(exist_ok=True)
    # Paths stay inside the scratch folder: absolute ones under it, relative
    # ones from it (no ".." segments, no host for PostgreSQL but a closed port).
    path = "/".join(parts)
    if scheme.lower().startswith("postgres"):
        rest = f"u:p@127.0.0.1:1/{path or 'db'}"
    else:
        rest = f"{root}/{path}" if absolute else path
    url = f"{scheme}{separator}{rest}" + (f"?{q}" if q else "")
    old = os.getcwd()
    os.chdir(root)  # a relative store path means the same folder for its whole life
    try:
        try:
            store = open_store(url)
        except CachedVecError:
            return
        with store:
            assert store.mget(["k"]) in ([None], [b"v"])
            store.mset([("k", b"v")])
            assert store.mget(["k"]) == [b"v"]
    finally:
        os.chdir(old)


@fuzz(50)
@given(url=st.one_of(st.none(), st.integers(), st.binary(), st.lists(st.text(max_size=3))))
def test_a_url_that_is_not_a_string_is_invalid(url: Any) -> None:
    count("URLs: not strings")
    with pytest.raises(CachedVecError):
        open_store(url)


# ----------------------------------------------------------------- file store keys

path_like = st.text(st.one_of(st.sampled_from(list("/\\.%:~\x00 ")), any_char), max_size=40)
hostile_keys = st.one_of(
    path_like,
    st.lists(
        st.sampled_from(["..", ".", "", "etc", "passwd", ".tmp-x", "%2e%2e", "a"]),
        min_size=1,
        max_size=6,
    ).map("/".join),
    st.text(max_size=400),
)


@fuzz(400)
@given(key=hostile_keys)
def test_file_store_keys_never_leave_the_root(scratch: Path, key: str) -> None:
    count("file store: hostile keys")
    home = scratch / "keys"
    store = FileStore(home / "root")
    try:
        store.mset([(key, b"value")])
    except InvalidKeyError:
        return
    assert store.mget([key]) == [b"value"]
    assert key in set(store.yield_keys())
    store.mdelete([key])
    assert store.mget([key]) == [None]
    assert sorted(p.name for p in home.iterdir()) == ["root"]  # nothing written beside it


# -------------------------------------------------------------------- metadata

odd_keys = st.one_of(
    st.text(any_char, max_size=5),
    st.integers(),
    st.floats(),
    st.booleans(),
    st.none(),
    st.tuples(st.integers()),
)
odd_metadata_values = st.recursive(
    st.one_of(
        json_scalars,
        st.builds(pow, st.just(10), st.just(5000)),
        st.binary(max_size=3),
        st.sets(st.integers()),
        st.just(np.float32(1.5)),
        st.just(np.int64(7)),
        st.just(np.arange(3)),
    ),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(odd_keys, inner, max_size=3),
    max_leaves=8,
)


_ABSENT = object()


def _reference_match(spec: Any, metadata: dict[str, Any]) -> bool:
    """What a valid filter means, written out from docs (not cachedvec's code)."""
    if spec is None:
        return True
    return all(_reference_part(key, condition, metadata) for key, condition in spec.items())


def _reference_part(key: str, condition: Any, metadata: dict[str, Any]) -> bool:
    if key == "$and":
        return all(_reference_match(sub, metadata) for sub in condition)
    if key == "$or":
        return any(_reference_match(sub, metadata) for sub in condition)
    if key == "$not":
        return not _reference_match(condition, metadata)
    value = metadata.get(key, _ABSENT)
    if isinstance(condition, dict):
        return all(_reference_operator(op, arg, value) for op, arg in condition.items())
    if isinstance(condition, (list, tuple)):
        return _reference_operator("$in", condition, value)
    return _reference_operator("$eq", condition, value)


def _reference_equal(value: Any, expected: Any) -> bool:
    # A missing field equals nothing; booleans equal only booleans.
    if value is _ABSENT or isinstance(value, bool) != isinstance(expected, bool):
        return False
    return bool(value == expected)


def _reference_operator(op: str, argument: Any, value: Any) -> bool:
    if op == "$eq":
        return _reference_equal(value, argument)
    if op == "$ne":
        return not _reference_equal(value, argument)
    if op == "$in":
        return any(_reference_equal(value, option) for option in argument)
    if op == "$nin":
        return not any(_reference_equal(value, option) for option in argument)
    if value is _ABSENT or isinstance(value, bool):
        return False
    compare = {"$gt": operator.gt, "$gte": operator.ge, "$lt": operator.lt, "$lte": operator.le}
    try:
        return bool(compare[op](value, argument))
    except TypeError:  # types that do not order: false, not an error
        return False


def _json_round_trip(metadata: dict[Any, Any]) -> Any:
    from cachedvec.index.docstore import _ENCODER

    return json.loads(_ENCODER.encode(metadata))


@fuzz(200)
@given(
    metadata=st.dictionaries(odd_keys, odd_metadata_values, max_size=4),
    spec=st.one_of(st.none(), hostile_filters),
)
# Both outcomes of a valid filter, whatever hypothesis draws.
@example(
    metadata={"a": np.int64(7), 1: [True]}, spec={"a": {"$gt": 6, "$lte": 7}, "1": {"$ne": True}}
)
@example(metadata={"a": np.int64(7)}, spec={"$or": [{"a": 7.0}, {"b": None}]})
@example(metadata={"b": False}, spec={"b": [0, False], "c": {"$nin": [1]}})
@example(metadata={"a": np.int64(7)}, spec={"a": True})  # booleans equal only booleans
@example(metadata={"a": "x"}, spec={"a": {"$gt": 1}})  # no order: no match
@example(metadata={"a": (1, 2)}, spec={"$not": {"$or": [{"b": 1}, {"a": {"$ne": 1}}]}})
def test_odd_metadata_is_stored_as_json_or_refused(
    scratch: Path, metadata: dict[Any, Any], spec: Any
) -> None:
    count("metadata: odd JSON")
    index = VectorIndex(4)
    try:
        index.add(np.eye(4, dtype=np.float32)[:1], ["text"], [metadata], ids=["x"])
    except ConfigError:
        return
    expected = _json_round_trip(metadata)
    stored = index.get(["x"])[0].metadata
    assert json.dumps(stored, sort_keys=True) == json.dumps(expected, sort_keys=True)
    try:
        hits = index.search(np.ones(4, np.float32), 1, filter=spec)
    except FilterError:
        pass
    else:
        # One document: found exactly when the filter matches its stored metadata.
        assert len(hits) == (1 if _reference_match(spec, stored) else 0)
        assert [hit.id for hit in hits] == (["x"] if hits else [])
    folder = scratch / "metadata"
    index.save(folder)
    with VectorIndex.load(folder) as loaded:
        again = loaded.get(["x"])[0].metadata
    assert json.dumps(again, sort_keys=True) == json.dumps(expected, sort_keys=True)


# ----------------------------------------------------------------------- texts

with_nul = st.text(st.one_of(st.just("\x00"), st.characters()), max_size=30)


@fuzz(150)
@given(texts=st.lists(st.one_of(with_nul, any_text), min_size=1, max_size=6))
def test_texts_with_nul_bytes_and_lone_surrogates(scratch: Path, texts: list[str]) -> None:
    count("texts: NUL bytes and lone surrogates")
    model = FakeEmbeddings(8)
    with CachedEmbeddings(model, f"sqlite:///{scratch}/texts.db") as emb:
        if any(_has_surrogate(t) for t in texts):
            # Documented: a text that is not valid Unicode cannot be hashed.
            before = len(list(emb.store.yield_keys()))
            with pytest.raises(InvalidTextError):
                emb.embed_documents_array(texts)
            assert len(list(emb.store.yield_keys())) == before  # nothing written
            return
        first = emb.embed_documents_array(texts)
        again = emb.embed_documents_array(texts)
        np.testing.assert_array_equal(first, model.embed_array(texts))
        np.testing.assert_array_equal(again, first)
    index = VectorIndex(8)
    index.add(first, texts)
    assert sorted(r.text for r in index.records()) == sorted(texts)


@pytest.mark.parametrize("kind", ["file", "sqlite", "diskcache"])
def test_a_10_mb_text_is_embedded_cached_and_indexed(kind: str, tmp_path: Path) -> None:
    from tests.conftest import store_url

    text = "word " * 2_000_000 + "\x00 end"  # 10 MB; few distinct words keep the fake cheap
    model = FakeEmbeddings(8)
    with CachedEmbeddings(model, store_url(kind, tmp_path)) as emb:
        vector = emb.embed_documents_array([text])
        assert emb.stats.computed == 1
        np.testing.assert_array_equal(emb.embed_documents_array([text]), vector)
        assert emb.stats.hits == 1
    index = VectorIndex(8)
    index.add(vector, [text], ids=["big"])
    index.save(tmp_path / "index")
    with VectorIndex.load(tmp_path / "index") as loaded:
        assert loaded.get(["big"])[0].text == text
    count("texts: 10 MB")


# ------------------------------------------------------------------ model output


class ScriptedModel(FakeEmbeddings):
    """Good vectors for the first call, then whatever the test scripted."""

    def __init__(self, bad: Any) -> None:
        super().__init__(4)
        self.bad = bad

    def embed_array(self, texts: Any) -> Any:
        if self.calls:
            self.calls += 1
            return self.bad
        return super().embed_array(texts)


def _matrices(rows: int, cols: int) -> st.SearchStrategy[np.ndarray]:
    cells = st.sampled_from([0.5, -2.0, float("nan"), float("inf"), -float("inf")])
    return st.lists(cells, min_size=rows * cols, max_size=rows * cols).map(
        lambda xs: np.array(xs, np.float32).reshape(rows, cols)
    )


model_outputs = st.one_of(
    st.lists(
        st.lists(st.floats(allow_nan=True, allow_infinity=True, width=32), min_size=0, max_size=6),
        max_size=5,
    ),
    st.tuples(st.integers(0, 6), st.integers(0, 6)).flatmap(lambda shape: _matrices(*shape)),
    st.none(),
    st.text(max_size=3),
    st.integers(),
    st.just([[1, 2], [3]]),
    st.just(np.ones((3, 4, 1), np.float32)),
    st.just(np.array([["a"] * 4] * 3)),
)


def _valid(output: Any, rows: int) -> bool:
    try:
        array = np.asarray(output, dtype=np.float32)
    except (TypeError, ValueError):
        return False
    return array.shape == (rows, 4) and bool(np.isfinite(array).all())


@fuzz(300)
@given(output=model_outputs)
def test_any_model_output_is_validated_before_anything_is_cached(output: Any) -> None:
    count("model output: garbage, NaN, inf, wrong counts")
    assume(not _valid(output, 3))
    model = ScriptedModel(output)
    with CachedEmbeddings(model, "memory://", batch_size=3) as emb:
        with pytest.raises(ModelError):
            emb.embed_documents_array([f"text {i}" for i in range(6)])
        # The first batch was good and is kept; nothing of the bad one is.
        assert sorted(emb.store.yield_keys()) == sorted(
            emb.document_keys([f"text {i}" for i in range(3)])
        )


@fuzz(200)
@given(vectors=model_outputs)
def test_any_vectors_given_to_an_index_are_added_or_refused(vectors: Any) -> None:
    count("index: arbitrary vectors")
    index = VectorIndex(4)
    try:
        matrix = np.asarray(vectors, dtype=np.float32)
        rows = len(matrix) if matrix.ndim >= 1 else 1
    except (TypeError, ValueError):
        rows = 1
    try:
        index.add(vectors, ["t"] * rows)
    except (ConfigError, VectorIndexError):
        assert len(index) == 0
        return
    assert len(index) == rows
    assert all(math.isfinite(h.score) for h in index.search(np.ones(4, np.float32), 2))
