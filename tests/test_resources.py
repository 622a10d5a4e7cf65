"""Resource limits: a read-only folder, a full disk, too many open files.

Each gets a clear error (:class:`StoreError` or :class:`VectorIndexError`
naming the path) and corrupts nothing: what was written before still decodes
to the right vectors and the previous index still loads.

The full disk is a 256 KiB tmpfs and the read-only folder a tmpfs remounted
read-only (tests run as root here, and root ignores ``chmod``); both need
permission to mount, and skip, saying so, without it (under ``CI=true`` that
is a failure: CI runs as root and must run them). Too many open files is
a child process with a low ``RLIMIT_NOFILE`` whose descriptors are used up.
"""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest

import cachedvec
from cachedvec import CachedEmbeddings, open_store
from cachedvec.errors import StoreError, VectorIndexError
from cachedvec.index import VectorIndex
from cachedvec.testing import FakeEmbeddings
from tests.conftest import store_url
from tests.crash_harness import DIM, Figures, ForkServer, fd_limit_job, truth

FIGURES = Figures("resource limit tests")
LOCAL_KINDS = ["file", "sqlite", "diskcache"]


@pytest.fixture(scope="module", autouse=True)
def _report_figures() -> Iterator[None]:
    yield
    FIGURES.report()


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ForkServer]:
    forks = ForkServer(tmp_path_factory.mktemp("children"))
    yield forks
    forks.close()


def _skip_or_fail(reason: str) -> None:
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"{reason}; CI must run the resource limit tests", pytrace=False)
    pytest.skip(reason)


def _mount(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["mount", *args], capture_output=True, text=True)


@pytest.fixture
def tmpfs(tmp_path: Path) -> Iterator[Callable[[str], Path]]:
    """``mount(size)``: a fresh tmpfs of that size; unmounted afterwards."""
    mounted: list[Path] = []

    def mount(size: str) -> Path:
        folder = tmp_path / f"fs{len(mounted)}"
        folder.mkdir()
        result = _mount("-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(folder))
        if result.returncode != 0:
            _skip_or_fail(
                f"cannot mount a tmpfs here ({result.stderr.strip() or 'not root'}); "
                "a full disk and a read-only folder need one"
            )
        mounted.append(folder)
        return folder

    yield mount
    for folder in reversed(mounted):
        subprocess.run(["umount", "-l", str(folder)], capture_output=True)


def read_only(folder: Path) -> None:
    result = _mount("-o", "remount,ro", str(folder))
    if result.returncode != 0:
        _skip_or_fail(f"cannot remount {folder} read-only: {result.stderr.strip()}")
    with pytest.raises(OSError):
        (folder / "probe").write_text("x")  # really read-only, even for root


def writable(folder: Path) -> None:
    assert _mount("-o", "remount,rw", str(folder)).returncode == 0


def texts(prefix: str, n: int) -> list[str]:
    return [f"{prefix} text {i} w{i % 7} w{i % 11}" for i in range(n)]


def assert_cached_vectors_right(url: str, expected: list[str]) -> None:
    """Every text in ``expected`` is in the store as its model vector; nothing else is."""
    model = FakeEmbeddings(DIM)
    with CachedEmbeddings(model, url) as emb:
        keys = emb.document_keys(expected)
        with open_store(url) as store:
            stored = set(store.yield_keys())
        assert set(keys) <= stored, f"{len(set(keys) - stored)} written vectors are gone"
        matrix, missing = emb.get_vectors(keys)
    assert missing == []
    np.testing.assert_array_equal(matrix, truth(expected))


def build_index(folder: Path, n: int) -> None:
    index = VectorIndex(DIM, fingerprint=FakeEmbeddings(DIM).fingerprint)
    batch = texts("indexed", n)
    index.add(truth(batch), batch, ids=[f"d{i}" for i in range(n)])
    index.save(folder)
    index.close()


def index_size(folder: Path) -> int:
    with VectorIndex.load(folder) as loaded:
        records = list(loaded.records())
        vectors, _ = loaded.get_vectors([r.id for r in records])
    np.testing.assert_allclose(vectors, truth([r.text for r in records]), atol=1e-5)
    return len(records)


# ----------------------------------------------------------------- a full disk


@pytest.mark.parametrize("kind", LOCAL_KINDS)
def test_a_full_disk_is_a_store_error_and_keeps_what_was_written(
    kind: str, tmpfs: Callable[[str], Path]
) -> None:
    disk = tmpfs("1m")
    ballast = disk / "ballast"
    ballast.write_bytes(b"\0" * 256 * 1024)  # removed afterwards to make room to reopen
    url = store_url(kind, disk)
    written: list[str] = []
    with CachedEmbeddings(FakeEmbeddings(DIM), url, batch_size=40) as emb:
        with pytest.raises(StoreError) as full:
            for round_ in range(200):
                batch = texts(f"round {round_}", 40)
                emb.embed_documents_array(batch)
                written += batch
    message = str(full.value)
    assert str(disk) in message and ("space" in message or "full" in message), message
    assert written, "the disk filled before a single batch"
    ballast.unlink()
    assert_cached_vectors_right(url, written)
    if kind == "file":
        assert not list(disk.rglob(".tmp-*")), "a failed write left a temp file"
    FIGURES.add(f"full disk: {kind} store, batches kept intact", len(written) // 40)


def test_a_full_disk_during_an_index_save_keeps_the_previous_index(
    tmpfs: Callable[[str], Path],
) -> None:
    disk = tmpfs("256k")
    folder = disk / "index"
    build_index(folder, 50)
    files = sorted(p.name for p in folder.iterdir())
    bigger = VectorIndex.load(folder)
    more = texts("more", 3000)
    bigger.add(truth(more), more)
    with pytest.raises(VectorIndexError, match=str(folder)):
        bigger.save(folder)
    bigger.close()
    assert sorted(p.name for p in folder.iterdir()) == files  # the failed save left nothing
    assert index_size(folder) == 50
    FIGURES.add("full disk: index saves that failed and kept the previous index")


def test_a_full_disk_during_an_index_save_is_a_vector_index_error(
    tmpfs: Callable[[str], Path],
) -> None:
    disk = tmpfs("256k")
    index = VectorIndex(DIM)
    many = texts("many", 3000)
    index.add(truth(many), many)
    with pytest.raises(VectorIndexError, match=str(disk)):
        index.save(disk / "index")


# ----------------------------------------------------------- a read-only folder


def test_a_read_only_folder_gives_clear_errors_and_keeps_everything(
    tmpfs: Callable[[str], Path],
) -> None:
    disk = tmpfs("8m")
    urls = {kind: store_url(kind, disk) for kind in LOCAL_KINDS}
    kept = texts("kept", 20)
    for url in urls.values():
        with CachedEmbeddings(FakeEmbeddings(DIM), url) as emb:
            emb.embed_documents_array(kept)
    corpus = disk / "corpus"
    corpus.mkdir()
    (corpus / "notes.txt").write_text("\n\n".join(texts("corpus", 6)) + "\n")
    index = disk / "index"
    options = {
        "index": index,
        "store": urls["file"],
        "model": FakeEmbeddings(DIM),
        "chunk_size": 60,
        "chunk_overlap": 0,
    }
    documents = cachedvec.ingest([corpus], **options).documents
    read_only(disk)
    try:
        # The file store serves what it holds and refuses to write, naming itself.
        with CachedEmbeddings(FakeEmbeddings(DIM), urls["file"]) as emb:
            emb.embed_documents_array(kept)
            assert emb.stats.hits == len(kept)
            with pytest.raises(StoreError, match=f"{disk}.*[Rr]ead-only"):
                emb.embed_documents_array(["a text that is not cached"])
        # SQLite (WAL) and diskcache need to write beside their file even to
        # read: on read-only media they cannot be opened (a clear error).
        for kind in ("sqlite", "diskcache"):
            with pytest.raises(StoreError, match=str(disk)):
                CachedEmbeddings(FakeEmbeddings(DIM), urls[kind]).close()
        # The index loads; a save, or an ingest that has work, fails clearly.
        assert index_size(index) == documents
        with VectorIndex.load(index) as loaded, pytest.raises(VectorIndexError, match=str(index)):
            loaded.save(index)
        assert cachedvec.ingest([corpus], **options).computed == 0  # nothing to do: fine
        with pytest.raises(StoreError, match=str(disk)):
            cachedvec.ingest([corpus], **{**options, "chunk_size": 40})
    finally:
        writable(disk)
    for url in urls.values():
        assert_cached_vectors_right(url, kept)
    assert index_size(index) == documents
    FIGURES.add("read-only folder: refusals checked (stores, index save, ingest)", 6)


# ---------------------------------------------------------- too many open files


def run_out_of_descriptors(
    server: ForkServer, tmp_path: Path, make_store_url: Callable[[str], str], save: bool
) -> None:
    """Use every store and the index with 0..7 spare descriptors; check what happened."""
    urls = {kind: make_store_url(kind) for kind in [*LOCAL_KINDS, "postgres"]}
    for url in urls.values():
        with CachedEmbeddings(FakeEmbeddings(DIM), url) as emb:
            emb.embed_documents_array(["kept one", "kept two"])
    index = tmp_path / "index"
    build_index(index, 30)
    out = server.run(fd_limit_job, urls=urls, index=str(index), save=save)
    assert out.returncode == 0, out.stderr
    outcomes = json.loads(out.stdout)
    failures = [o for o in outcomes if not o["ok"]]
    assert failures, "no attempt ran out of file descriptors"
    assert any(o["ok"] for o in outcomes), "no attempt succeeded even with spare descriptors"
    for failure in failures:
        assert failure["cachedvec"], f"{failure['type']} escaped: {failure['message']}"
        where = str(index) if failure["target"] == "index" else urls[failure["target"]]
        assert where.split("@")[-1] in failure["message"], failure
    FIGURES.add("too many open files: clear errors", len(failures))
    FIGURES.add("too many open files: attempts that succeeded", len(outcomes) - len(failures))
    # Nothing written before, or by the attempts that succeeded, is damaged.
    for kind, url in urls.items():
        done = [f"new text {o['free']}" for o in outcomes if o["ok"] and o["target"] == kind]
        assert_cached_vectors_right(url, ["kept one", "kept two", *done])
    assert index_size(index) == 30
    manifest = json.loads((index / "manifest.json").read_text())
    named = {entry["name"] for entry in manifest["files"].values()}
    assert {p.name for p in index.iterdir()} == {"manifest.json", ".lock", *named}


def test_too_many_open_files_is_a_clear_error_and_corrupts_nothing(
    server: ForkServer, tmp_path: Path, make_store_url: Callable[[str], str]
) -> None:
    run_out_of_descriptors(server, tmp_path, make_store_url, save=False)


def test_too_many_open_files_during_an_index_save_is_a_clear_error(
    server: ForkServer, tmp_path: Path, make_store_url: Callable[[str], str]
) -> None:
    run_out_of_descriptors(server, tmp_path, make_store_url, save=True)
