"""Damaged cache values and index folders: detected, recomputed or refused, never returned.

``test_embeddings.py`` checks one damage of each kind per store and
``test_persist.py`` one damage of each kind per index file. Here seeded
random sweeps apply hundreds of damages (cut short, extended, bits flipped,
bytes zeroed or randomised, headers rewritten with a valid checksum, values
of another dimension) to every persistent store, through every path that
reads the cache (embedding sync and async, ``get_vectors``, ingest,
reindex, query), and to every file of index folders of three index types,
through ``VectorIndex.load`` and through the CLI.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import random
import shutil
import struct
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import xxhash
from click.testing import CliRunner, Result

import cachedvec
from cachedvec import CachedEmbeddings, open_store
from cachedvec.codec import VectorCodec
from cachedvec.errors import (
    CachedVecError,
    IndexCorruptError,
    IndexMismatchError,
    MissingVectorsError,
)
from cachedvec.index import VectorIndex
from cachedvec.testing import FakeEmbeddings
from tests.conftest import PERSISTENT_KINDS
from tests.crash_harness import DIM, Figures, truth

FIGURES = Figures("corruption tests")
TEXTS = [f"text number {i} about w{i % 11} and w{i % 17}" for i in range(240)]


@pytest.fixture(scope="module", autouse=True)
def _report_figures() -> Iterator[None]:
    yield
    FIGURES.report()


# ------------------------------------------------------------------ damages


def _resealed(body: bytes) -> bytes:
    """``body`` with a valid digest: damage a checksum cannot see, only the checks after it."""
    return body + struct.pack("<Q", xxhash.xxh3_64_intdigest(body))


def _flip_bits(value: bytes, rng: random.Random) -> bytes:
    out = bytearray(value)
    for _ in range(rng.randint(1, 3)):
        out[rng.randrange(len(out))] ^= 1 << rng.randrange(8)
    return bytes(out)


def _randomise_run(value: bytes, rng: random.Random) -> bytes:
    out = bytearray(value)
    start = rng.randrange(len(out))
    for i in range(start, min(start + rng.randint(1, 8), len(out))):
        out[i] ^= rng.randint(1, 255)
    return bytes(out)


def _zero_block(value: bytes, rng: random.Random) -> bytes:
    start = rng.randrange(len(value))
    end = min(start + rng.randint(4, 64), len(value))
    return value[:start] + bytes(end - start) + value[end:]


def _rewrite_header(value: bytes, offset: int, new: int) -> bytes:
    body = bytearray(value[:-8])
    body[offset] = new
    return _resealed(bytes(body))


VALUE_DAMAGES: dict[str, Callable[[bytes, random.Random], bytes]] = {
    "truncated": lambda v, rng: v[: rng.randrange(len(v))],
    "extended": lambda v, rng: v + rng.randbytes(rng.randint(1, 16)),
    "bits flipped": _flip_bits,
    "bytes randomised": _randomise_run,
    "block zeroed": _zero_block,
    "garbage": lambda v, rng: rng.randbytes(len(v)),
    "empty": lambda v, rng: b"",
    "header only": lambda v, rng: v[:8],
    "wrong dimension": lambda v, rng: VectorCodec().encode(
        np.ones(rng.choice([DIM - 1, DIM + 1, 2 * DIM]), np.float32)
    ),
    "future format version": lambda v, rng: _rewrite_header(v, 2, 3),
    "unknown dtype": lambda v, rng: _rewrite_header(v, 3, 9),
    "dimension field lies": lambda v, rng: _rewrite_header(v, 4, DIM + 1),
    "other magic": lambda v, rng: _rewrite_header(v, 0, ord("X")),
}


def damage(value: bytes, rng: random.Random) -> tuple[str, bytes]:
    """A random damage of ``value`` that really changes it."""
    while True:
        name = rng.choice(sorted(VALUE_DAMAGES))
        damaged = VALUE_DAMAGES[name](value, rng)
        if damaged != value:
            return name, damaged


def damage_some(store: Any, keys: list[str], count: int, rng: random.Random) -> list[int]:
    """Replace ``count`` random values with damaged ones; their positions, sorted."""
    positions = sorted(rng.sample(range(len(keys)), count))
    values = store.mget([keys[p] for p in positions])
    pairs = []
    for p, value in zip(positions, values, strict=True):
        name, damaged = damage(value, rng)
        FIGURES.add(f"damaged values by kind: {name}")
        pairs.append((keys[p], damaged))
    store.mset(pairs)
    return positions


# --------------------------------------------------------------- store values


@pytest.mark.parametrize("kind", PERSISTENT_KINDS)
def test_random_damage_to_stored_values_is_always_detected(
    kind: str, make_store_url: Callable[[str], str]
) -> None:
    rng = random.Random(f"values-{kind}")
    url = make_store_url(kind)
    expected = truth(TEXTS)
    with CachedEmbeddings(FakeEmbeddings(DIM), url, batch_size=32) as emb:
        emb.embed_documents_array(TEXTS)
        keys = emb.document_keys(TEXTS)
        good = emb.store.mget(keys)
        damaged = damage_some(emb.store, keys, 100, rng)
        # Reading by key (what re-indexing does) reports them missing.
        matrix, missing = emb.get_vectors(keys)
        assert missing == damaged
        intact = [i for i in range(len(TEXTS)) if i not in set(damaged)]
        np.testing.assert_array_equal(matrix[intact], expected[intact])
    model = FakeEmbeddings(DIM)
    with CachedEmbeddings(model, url, batch_size=32) as emb:
        out = emb.embed_documents_array(TEXTS)
        np.testing.assert_array_equal(out, expected)
        assert (emb.stats.corrupt, emb.stats.computed, emb.stats.hits) == (100, 100, 140)
        assert model.texts_embedded == 100
        assert emb.store.mget(keys) == good  # each damaged value was replaced
    FIGURES.add(f"damaged values detected and recomputed: {kind} store (sync)", 100)


@pytest.mark.parametrize("kind", PERSISTENT_KINDS)
def test_damaged_values_are_recomputed_on_the_async_path(
    kind: str, make_store_url: Callable[[str], str]
) -> None:
    rng = random.Random(f"async-{kind}")
    url = make_store_url(kind)
    texts = TEXTS[:60]
    with CachedEmbeddings(FakeEmbeddings(DIM), url) as emb:
        emb.embed_documents_array(texts)
        damaged = damage_some(emb.store, emb.document_keys(texts), 25, rng)
    with CachedEmbeddings(FakeEmbeddings(DIM), url) as emb:
        out = asyncio.run(emb.aembed_documents_array(texts))
        np.testing.assert_array_equal(out, truth(texts))
        assert emb.stats.corrupt == emb.stats.computed == len(damaged)
    FIGURES.add(f"damaged values detected and recomputed: {kind} store (async)", len(damaged))


# -------------------------------------------------------------- the index path


@pytest.fixture
def corpus(tmp_path: Path) -> Path:
    root = tmp_path / "corpus"
    root.mkdir()
    for f in range(4):
        paragraphs = [TEXTS[i] for i in range(f * 15, f * 15 + 15)]
        (root / f"doc{f}.txt").write_text("\n\n".join(paragraphs) + "\n")
    return root


def ingest(corpus: Path, index: Path, url: str, **options: Any) -> Any:
    return cachedvec.ingest(
        [corpus],
        index=index,
        store=url,
        model=FakeEmbeddings(DIM),
        chunk_size=60,
        chunk_overlap=0,
        **options,
    )


def index_vectors_are_the_model_s(index: Path) -> int:
    with VectorIndex.load(index) as loaded:
        records = list(loaded.records())
        vectors, missing = loaded.get_vectors([r.id for r in records])
    assert not missing
    np.testing.assert_allclose(vectors, truth([r.text for r in records]), atol=1e-5)
    return len(records)


def cached_keys_of(index: Path) -> list[str]:
    with VectorIndex.load(index) as loaded:
        return [r.cache_key for r in loaded.records() if r.cache_key]


@pytest.mark.parametrize("kind", PERSISTENT_KINDS)
def test_reindex_refuses_damaged_vectors_then_recomputes_exactly_them(
    kind: str, make_store_url: Callable[[str], str], corpus: Path, tmp_path: Path
) -> None:
    url, index = make_store_url(kind), tmp_path / "index"
    documents = ingest(corpus, index, url).documents
    keys = cached_keys_of(index)
    with open_store(url) as store:
        damaged = damage_some(store, keys, 7, random.Random(f"reindex-{kind}"))
    manifest = (index / "manifest.json").read_bytes()
    with pytest.raises(MissingVectorsError, match="7 of") as refused:
        cachedvec.reindex(index, factory="HNSW16", store=url)
    assert refused.value.missing == len(damaged)
    assert (index / "manifest.json").read_bytes() == manifest  # nothing changed
    report = cachedvec.reindex(
        index, factory="HNSW16", store=url, compute_missing=True, model=FakeEmbeddings(DIM)
    )
    assert (report.computed, report.cache_hits) == (7, documents - 7)
    assert index_vectors_are_the_model_s(index) == documents
    FIGURES.add("damaged values refused by reindex, then recomputed", 7)


def test_ingest_recomputes_damaged_vectors_and_counts_them(corpus: Path, tmp_path: Path) -> None:
    url, index = f"sqlite:///{tmp_path}/cache.db", tmp_path / "index"
    first = ingest(corpus, index, url)
    keys = cached_keys_of(index)
    with open_store(url) as store:
        damage_some(store, keys, 9, random.Random("ingest"))
    shutil.rmtree(index)  # rebuild the index from the (damaged) cache
    again = ingest(corpus, index, url)
    assert (again.computed, again.cache_hits) == (9, first.computed - 9)
    assert index_vectors_are_the_model_s(index) == first.documents
    FIGURES.add("damaged values recomputed by ingest", 9)


def test_a_damaged_cached_query_is_recomputed(corpus: Path, tmp_path: Path) -> None:
    url, index = f"sqlite:///{tmp_path}/cache.db", tmp_path / "index"
    ingest(corpus, index, url)
    question = TEXTS[3]
    options = {"index": index, "store": url, "model": FakeEmbeddings(DIM), "k": 1}
    hits, cached = cachedvec.query(question, **options)
    assert not cached and hits[0].text == question
    with CachedEmbeddings(FakeEmbeddings(DIM), url) as emb:
        key = emb.query_keys([question])[0]
        value = emb.store.mget([key])[0]
        emb.store.mset([(key, _flip_bits(value, random.Random(1)))])
    hits, cached = cachedvec.query(question, **options)
    assert not cached and hits[0].text == question  # recomputed, same answer
    assert cachedvec.query(question, **options)[1]  # and cached again
    FIGURES.add("damaged values recomputed by query", 1)


# ------------------------------------------------------------- index folders


def build_index(folder: Path, factory: str, n: int = 300) -> None:
    texts = [f"document {i} words w{i % 13} w{i % 7}" for i in range(n)]
    index = VectorIndex(DIM, factory=factory, fingerprint=FakeEmbeddings(DIM).fingerprint)
    index.add(
        truth(texts),
        texts,
        [{"n": i, "source": f"s{i % 4}"} for i in range(n)],
        ids=[f"d{i}" for i in range(n)],
    )
    index.delete([f"d{i}" for i in range(0, n, 10)])
    index.save(folder)
    index.close()


def manifest_entry(folder: Path, role: str) -> dict[str, Any]:
    return json.loads((folder / "manifest.json").read_text())["files"][role]  # type: ignore


def folder_file(folder: Path, role: str) -> Path:
    if role == "manifest":
        return folder / "manifest.json"
    return folder / manifest_entry(folder, role)["name"]


FILE_DAMAGES: dict[str, Callable[[bytes, random.Random], bytes]] = {
    "bits flipped": _flip_bits,
    "bytes randomised": _randomise_run,
    "truncated": lambda b, rng: b[: rng.randrange(len(b))],
    "block zeroed": _zero_block,
    "appended": lambda b, rng: b + rng.randbytes(rng.randint(1, 100)),
    "emptied": lambda b, rng: b"",
}


@pytest.mark.parametrize("factory", ["Flat", "HNSW16", "IVF8,Flat"])
def test_random_damage_to_an_index_folder_is_always_refused(factory: str, tmp_path: Path) -> None:
    rng = random.Random(f"folder-{factory}")
    folder = tmp_path / "index"
    build_index(folder, factory)
    files = {role: folder_file(folder, role) for role in ("index", "docstore", "manifest")}
    originals = {role: path.read_bytes() for role, path in files.items()}
    refusals: dict[str, int] = {}
    for _ in range(120):
        role = rng.choice(sorted(files))
        name = rng.choice(sorted(FILE_DAMAGES))
        damaged = FILE_DAMAGES[name](originals[role], rng)
        if damaged == originals[role]:
            continue
        files[role].write_bytes(damaged)
        with pytest.raises((IndexCorruptError, IndexMismatchError)) as refused:
            VectorIndex.load(folder).close()
        refusals[refused.typename] = refusals.get(refused.typename, 0) + 1
        FIGURES.add(f"index folders damaged and refused: {role} file")
        files[role].write_bytes(originals[role])
    # A flipped bit can turn format_version 1 into 3 (refused as "newer"),
    # everything else is corrupt.
    assert refusals.get("IndexCorruptError", 0) > 100, refusals
    with VectorIndex.load(folder) as loaded:  # the restored folder is fine again
        assert len(loaded) == 270


def reseal(folder: Path, role: str) -> None:
    """Recompute a data file's size and checksum in the manifest, as an attacker could."""
    path = folder / "manifest.json"
    data = json.loads(path.read_text())
    content = folder_file(folder, role).read_bytes()
    data["files"][role].update(bytes=len(content), xxh3_128=xxhash.xxh3_128(content).hexdigest())
    body = {key: value for key, value in data.items() if key != "manifest_sha256"}
    canonical = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    data["manifest_sha256"] = hashlib.sha256(canonical.encode()).hexdigest()
    path.write_text(json.dumps(data))


def replace_once(path: Path, old: bytes, new: bytes) -> None:
    content = path.read_bytes()
    assert content.count(old) == 1 and len(old) == len(new)
    path.write_bytes(content.replace(old, new))


@pytest.mark.parametrize("damage_kind", ["text not UTF-8", "metadata not JSON"])
def test_a_docstore_damaged_behind_a_valid_checksum_fails_with_a_cachedvec_error(
    damage_kind: str, tmp_path: Path
) -> None:
    build_index(tmp_path, "Flat", n=20)
    docstore = folder_file(tmp_path, "docstore")
    if damage_kind == "text not UTF-8":
        replace_once(docstore, b"document 7 words", b"document 7 w\xffrds")
    else:
        replace_once(docstore, b'{"n": 7, "source": "s3"}', b'{"n": 7, "source": "s3"]')
    reseal(tmp_path, "docstore")
    query = truth(["document 7 words w7 w0"])[0]
    with pytest.raises(CachedVecError):
        with VectorIndex.load(tmp_path) as loaded:
            list(loaded.records())
            loaded.search(query, 3, filter={"n": {"$gte": 0}})


# ------------------------------------------------------------- through the CLI


def run_cli(monkeypatch: pytest.MonkeyPatch, *args: str | Path) -> Result:
    """``cachedvec ARGS`` in-process, with ``--model``-less commands on the fake model."""
    from cachedvec import cli

    monkeypatch.setattr(cli, "_model_arg", lambda value: FakeEmbeddings(DIM))
    return CliRunner().invoke(cli.main, [str(a) for a in args])


def assert_one_error_line(result: Result, *needles: str) -> None:
    assert result.exit_code == 1, result.output
    assert isinstance(result.exception, SystemExit), repr(result.exception)
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert "Traceback" not in result.output
    for needle in needles:
        assert needle in lines[0], lines[0]


def _flip_middle(path: Path) -> None:
    content = bytearray(path.read_bytes())
    content[len(content) // 2] ^= 0x04
    path.write_bytes(bytes(content))


FOLDER_DAMAGES: dict[str, Callable[[Path], None]] = {
    "index file bit flip": lambda folder: _flip_middle(folder_file(folder, "index")),
    "docstore truncated": lambda folder: folder_file(folder, "docstore").write_bytes(
        folder_file(folder, "docstore").read_bytes()[:4096]
    ),
    "manifest edited": lambda folder: replace_once(
        folder / "manifest.json", b'"metric": "cosine"', b'"metric": "l2"    '
    ),
    "manifest cut": lambda folder: (folder / "manifest.json").write_bytes(
        (folder / "manifest.json").read_bytes()[:100]
    ),
}


def folder_bytes(folder: Path) -> dict[str, bytes]:
    return {
        p.name: p.read_bytes()
        for p in folder.iterdir()
        if p.is_file() and p.name not in ("history.jsonl", ".lock")
    }


@pytest.mark.parametrize("damage_name", sorted(FOLDER_DAMAGES))
@pytest.mark.parametrize("command", ["ingest", "query", "reindex", "prune"])
def test_the_cli_refuses_a_damaged_index_in_one_line_and_leaves_it_alone(
    command: str,
    damage_name: str,
    corpus: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    url, index = f"sqlite:///{tmp_path}/cache.db", tmp_path / "index"
    documents = ingest(corpus, index, url).documents
    FOLDER_DAMAGES[damage_name](index)
    before = folder_bytes(index)
    where = ["--index", index, "--store", url]
    args = {
        "ingest": ["ingest", corpus, *where],
        "query": ["query", "w3", *where],
        "reindex": ["reindex", *where],
        "prune": ["prune", *where, "--dry-run"],
    }[command]
    result = run_cli(monkeypatch, *args)
    if command == "reindex" and damage_name == "index file bit flip":
        # A rebuild reads the verified docstore and the cache, never the old
        # FAISS file: it replaces a damaged one with a correct index.
        assert result.exit_code == 0, result.output
        assert index_vectors_are_the_model_s(index) == documents
        FIGURES.add("damaged FAISS files rebuilt from the cache by reindex")
        return
    assert_one_error_line(result, str(index))
    assert folder_bytes(index) == before  # a damaged index is never overwritten
    FIGURES.add("damaged index folders refused by a CLI command in one line")


@pytest.mark.parametrize("command", ["ingest", "query", "reindex", "stats"])
def test_an_index_from_a_newer_cachedvec_is_refused_and_never_overwritten(
    command: str, corpus: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    url, index = f"sqlite:///{tmp_path}/cache.db", tmp_path / "index"
    ingest(corpus, index, url)
    manifest = json.loads((index / "manifest.json").read_text())
    manifest.update(format_version=3, layout="something this version cannot know")
    (index / "manifest.json").write_text(json.dumps(manifest))  # sealed by a future writer
    before = folder_bytes(index)
    where = ["--index", index, "--store", url]
    args = {
        "ingest": ["ingest", corpus, *where],
        "query": ["query", "w3", *where],
        "reindex": ["reindex", *where],
        "stats": ["stats", *where],
    }[command]
    assert_one_error_line(run_cli(monkeypatch, *args), "format version 3", "upgrade")
    assert folder_bytes(index) == before
    FIGURES.add("newer-format index folders refused by a CLI command")


@pytest.mark.parametrize("content", ["[]", "1", '"text"', "null"])
def test_ingestion_records_that_are_not_an_object_are_a_clear_error(
    content: str, corpus: Path, tmp_path: Path
) -> None:
    url, index = f"sqlite:///{tmp_path}/cache.db", tmp_path / "index"
    ingest(corpus, index, url)
    (index / "ingest.json").write_text(content)
    with pytest.raises(IndexCorruptError, match="ingest.json"):
        ingest(corpus, index, url)


def test_damaged_ingestion_records_are_a_clear_error(corpus: Path, tmp_path: Path) -> None:
    url, index = f"sqlite:///{tmp_path}/cache.db", tmp_path / "index"
    ingest(corpus, index, url)
    records = index / "ingest.json"
    for damaged in (records.read_bytes()[:40], b"\xff\xfe", b'{"format_version": 99}'):
        records.write_bytes(damaged)
        with pytest.raises(IndexCorruptError, match="ingest.json"):
            ingest(corpus, index, url)
        FIGURES.add("damaged ingestion records refused")
