"""Keys: stable, namespaced by everything that changes a vector, safe for stores."""

from __future__ import annotations

import hashlib
import re

import pytest
from hypothesis import given
from hypothesis import strategies as st

from cachedvec.errors import ConfigError, InvalidTextError, InvalidTextTypeError
from cachedvec.keys import KeyEncoder, ModelFingerprint, check_namespace, slug

KEY_RE = re.compile(r"^cv1:[a-z0-9._-]+:[0-9a-f]{16}:(doc|query):[0-9a-f]{64}$")
BASE = ModelFingerprint(model="org/My-Model", revision="abc", dim=384, normalize=True)


def test_key_format_is_documented_shape() -> None:
    key = KeyEncoder(BASE.namespace(), "doc").key("hello")
    assert KEY_RE.match(key)
    assert key.endswith(hashlib.sha256(b"hello").hexdigest())
    assert key.startswith("cv1:my-model:")


@given(st.text())
def test_keys_are_deterministic_and_store_safe(text: str) -> None:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return
    enc = KeyEncoder(BASE.namespace(), "query", "blake2b")
    assert enc.key(text) == KeyEncoder(BASE.namespace(), "query", "blake2b").key(text)
    assert KEY_RE.match(enc.key(text))


@given(st.text(), st.text())
def test_distinct_texts_get_distinct_keys(a: str, b: str) -> None:
    enc = KeyEncoder("ns", "doc")
    try:
        ka, kb = enc.key(a), enc.key(b)
    except InvalidTextError:
        return
    assert (ka == kb) == (a == b)


@pytest.mark.parametrize(
    "change",
    [
        {"model": "org/other"},
        {"revision": "def"},
        {"dim": 512},
        {"normalize": False},
        {"document_prompt": "passage: "},
        {"query_prompt": "query: "},
        {"pooling": "cls"},
        {"params": {"dimensions": 512}},
    ],
)
def test_every_fingerprint_field_changes_the_namespace(change: dict) -> None:
    changed = ModelFingerprint(**{**BASE.__dict__, **change})
    assert changed.namespace() != BASE.namespace()


def test_documents_and_queries_never_share_keys() -> None:
    ns = BASE.namespace()
    assert KeyEncoder(ns, "doc").key("q") != KeyEncoder(ns, "query").key("q")


def test_fingerprint_round_trips_through_dict() -> None:
    fp = ModelFingerprint(model="m", dim=3, params={"dimensions": 3})
    assert ModelFingerprint.from_dict(fp.to_dict()) == fp
    with pytest.raises(ConfigError):
        ModelFingerprint.from_dict({"dim": 3})


def test_bad_inputs_name_the_position() -> None:
    enc = KeyEncoder("ns", "doc")
    with pytest.raises(TypeError, match=r"texts\[2\] is int"):
        enc.keys(["a", "b", 3])
    with pytest.raises(InvalidTextError, match=r"texts\[1\]"):
        enc.keys(["a", "\ud800"])
    with pytest.raises(ConfigError, match="SHA-1"):
        KeyEncoder("ns", "doc", "sha1")
    with pytest.raises(ConfigError):
        KeyEncoder("ns", "passage")  # type: ignore[arg-type]


def test_texts_are_hashed_exactly() -> None:
    enc = KeyEncoder("ns", "doc")
    assert len(set(enc.keys(["a", "a ", "A", "a\x00", ""]))) == 5


@pytest.mark.parametrize("bad", ["", "../x", "a/./b", "a//b", "/a", "a/", "a/..", "a b", "x" * 201])
def test_user_namespaces_are_validated(bad: str) -> None:
    with pytest.raises(ConfigError):
        check_namespace(bad)


@pytest.mark.parametrize("good", ["sentence-transformers/all-MiniLM-L6-v2", "a:b", "v1.2/x..y"])
def test_model_names_with_slashes_are_namespaces(good: str) -> None:
    assert check_namespace(good) == good


def test_slug_is_readable() -> None:
    assert slug("sentence-transformers/all-MiniLM-L6-v2") == "all-minilm-l6-v2"
    assert slug("/") == "model"


@pytest.mark.parametrize("bad", ["ns\n", "ns\r\n", "a/b\n"])
def test_a_namespace_with_a_trailing_newline_is_refused(bad: str) -> None:
    # `$` in a regular expression also matches before a final newline.
    with pytest.raises(ConfigError):
        check_namespace(bad)


def test_a_namespace_that_is_not_a_string_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="must be a str"):
        check_namespace(5)  # type: ignore[arg-type]


def test_texts_of_a_generator_are_checked_once_and_named() -> None:
    enc = KeyEncoder("ns", "doc")
    assert enc.keys(t for t in ["a", "b"]) == enc.keys(["a", "b"])
    with pytest.raises(InvalidTextTypeError, match=r"texts\[1\] is NoneType") as caught:
        enc.keys(t for t in ["a", None])  # type: ignore[misc]
    # Both roots hold: cachedvec's text error and Python's convention.
    assert isinstance(caught.value, InvalidTextError) and isinstance(caught.value, TypeError)
    for single in ("abc", b"abc"):
        with pytest.raises(InvalidTextError, match="single string"):
            enc.keys(single)  # type: ignore[arg-type]
    with pytest.raises(InvalidTextError, match="got int"):
        enc.keys(3)  # type: ignore[arg-type]
    with pytest.raises(InvalidTextError, match="text is int"):
        enc.key(3)  # type: ignore[arg-type]


def test_fingerprints_are_hashable() -> None:
    assert len({BASE, ModelFingerprint(**BASE.__dict__), ModelFingerprint(model="x")}) == 2


_SET_NAMESPACE = """
from cachedvec.keys import ModelFingerprint
labels = {"alpha", "beta", "gamma", "delta"}
groups = {frozenset({"x", "y", "z"}), frozenset({"u", "v"}), ("t", 1)}
print(ModelFingerprint(model="m", params={"labels": labels, "groups": groups}).namespace())
"""


def test_a_set_valued_parameter_gives_the_same_namespace_in_every_process() -> None:
    # str() of a set of strings follows the process's hash seed.
    import os
    import subprocess
    import sys

    seen = {
        subprocess.run(
            [sys.executable, "-c", _SET_NAMESPACE],
            env={**os.environ, "PYTHONHASHSEED": str(seed)},
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        for seed in range(6)
    }
    assert len(seen) == 1
    # Sets of numbers always had a stable text: they keep it, unsorted, and
    # with it their namespace.
    ints = ModelFingerprint(model="m", params={"ids": {10, 3}, "f": frozenset({4, 5})})
    assert str({10, 3}) == "{10, 3}"
    assert '"ids":"{10, 3}"' in ints.canonical() and '"f":"frozenset({4, 5})"' in ints.canonical()


def test_a_parameter_whose_text_is_a_memory_address_is_refused() -> None:
    class Opaque:
        pass

    def pooling(x: float) -> float:
        return x

    for opaque in (Opaque(), pooling, lambda x: x, Opaque().__init__, {Opaque()}):
        with pytest.raises(ConfigError, match="memory address"):
            ModelFingerprint(model="m", params={"weights": opaque}).namespace()
    # An object with a text of its own counts by that text, as before.
    from pathlib import Path

    assert '"p":"/x/y"' in ModelFingerprint(model="m", params={"p": Path("/x/y")}).canonical()
