"""Index folders: round trips, atomic saves, and every kind of damage refused."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sqlite3
import threading
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import xxhash
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cachedvec.errors import (
    IndexCorruptError,
    IndexMismatchError,
    VectorIndexError,
)
from cachedvec.index import VectorIndex, persist, read_manifest
from cachedvec.keys import ModelFingerprint

DIM = 16
FINGERPRINT = ModelFingerprint(model="org/model-a", revision="r1", dim=DIM, normalize=True)


def vectors(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((n, DIM)).astype(np.float32)


def make_index(factory: str = "Flat", n: int = 300, **options: Any) -> VectorIndex:
    index = VectorIndex(DIM, factory=factory, fingerprint=FINGERPRINT, **options)
    index.add(
        vectors(n),
        [f"text {i}" for i in range(n)],
        [{"n": i, "source": f"s{i % 3}"} for i in range(n)],
        ids=[f"d{i}" for i in range(n)],
        cache_keys=[f"k{i}" for i in range(n)],
    )
    return index


def results(index: VectorIndex, queries: np.ndarray) -> list[list[tuple[str, float]]]:
    return [[(h.id, round(h.score, 5)) for h in hits] for hits in index.search_batch(queries, 5)]


def data_files(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.startswith(("index-", "docstore-")))


def rewrite_manifest(folder: Path, change: Any) -> None:
    """Edit the manifest and re-seal its checksum, as an attacker could."""
    path = folder / "manifest.json"
    data = json.loads(path.read_text())
    change(data)
    body = {key: value for key, value in data.items() if key != "manifest_sha256"}
    canonical = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    data["manifest_sha256"] = hashlib.sha256(canonical.encode()).hexdigest()
    path.write_text(json.dumps(data))


def reseal_file(folder: Path, role: str) -> None:
    """Recompute the checksum of a data file after editing it."""
    name = json.loads((folder / "manifest.json").read_text())["files"][role]["name"]
    content = (folder / name).read_bytes()

    def update(data: dict[str, Any]) -> None:
        data["files"][role]["bytes"] = len(content)
        data["files"][role]["xxh3_128"] = xxhash.xxh3_128(content).hexdigest()

    rewrite_manifest(folder, update)


def replace_in(path: Path, old: str, new: str) -> None:
    path.write_text(path.read_text().replace(old, new))


def file_of(folder: Path, role: str) -> Path:
    return folder / json.loads((folder / "manifest.json").read_text())["files"][role]["name"]


# -- round trips ---------------------------------------------------------------------


@pytest.mark.parametrize("factory", ["Flat", "HNSW16", "IVF8,Flat", "PQ4np", "PCA8,HNSW16"])
def test_round_trip_keeps_results_ids_tombstones_and_settings(factory: str, tmp_path: Path) -> None:
    index = make_index(factory)
    index.delete([f"d{i}" for i in range(0, 300, 3)])
    queries = vectors(10, seed=1)
    manifest = index.save(tmp_path / "idx")
    loaded = VectorIndex.load(tmp_path / "idx", fingerprint=FINGERPRINT, dim=DIM)
    assert results(loaded, queries) == results(index, queries)
    assert len(loaded) == len(index) == 200
    assert loaded.tombstones == index.tombstones
    assert (loaded.factory, loaded.metric, loaded.dim) == (factory, "cosine", DIM)
    assert (loaded.ef_search, loaded.nprobe) == (index.ef_search, index.nprobe)
    assert loaded.fingerprint == FINGERPRINT
    assert manifest.counts == {
        "documents": 200,
        "vectors": 200 + index.tombstones,
        "tombstones": index.tombstones,
    }
    (record,) = loaded.get(["d1"])
    assert (record.text, record.metadata, record.cache_key, record.source) == (
        "text 1",
        {"n": 1, "source": "s1"},
        "k1",
        "s1",
    )
    # Writing after a load never reuses an id, tombstoned or not.
    new_ids = loaded.add(vectors(5, seed=2), ["new"] * 5)
    assert len(loaded) == 205
    top = loaded.search(vectors(5, seed=2)[0], 1)[0]
    assert top.id == new_ids[0]
    assert not {h.id for h in loaded.search(vectors(1, seed=3)[0], 50)} & {"d0", "d3", "d6"}


def test_loaded_index_is_independent_of_its_folder(tmp_path: Path) -> None:
    make_index().save(tmp_path)
    loaded = VectorIndex.load(tmp_path)
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    loaded.add(vectors(3, seed=5), ["a", "b", "c"])
    loaded.delete(["d1"])
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before
    assert len(VectorIndex.load(tmp_path)) == 300


def test_manifest_describes_the_index(tmp_path: Path) -> None:
    index = make_index("HNSW16", ef_search=40)
    index.save(tmp_path)
    raw = json.loads((tmp_path / "manifest.json").read_text())
    assert raw["format"] == "cachedvec-index" and raw["format_version"] == 2
    assert raw["fingerprint"] == FINGERPRINT.to_dict()
    assert (raw["dim"], raw["metric"], raw["factory"]) == (DIM, "cosine", "HNSW16")
    assert raw["search"] == {"ef_search": 40}
    for entry in raw["files"].values():
        content = (tmp_path / entry["name"]).read_bytes()
        assert entry["bytes"] == len(content)
        assert entry["xxh3_128"] == xxhash.xxh3_128(content).hexdigest()
    manifest = read_manifest(tmp_path)
    assert manifest.counts["documents"] == 300


def test_saving_again_replaces_the_files_and_keeps_foreign_ones(tmp_path: Path) -> None:
    index = make_index()
    index.save(tmp_path)
    first = data_files(tmp_path)
    (tmp_path / "notes.txt").write_text("mine")
    (tmp_path / "index-0123456789abcdef.faiss").write_bytes(b"leftover of a crashed save")
    index.delete(["d0"])
    index.save(tmp_path)
    second = data_files(tmp_path)
    assert len(second) == 2 and not set(first) & set(second)
    assert (tmp_path / "notes.txt").read_text() == "mine"
    assert len(VectorIndex.load(tmp_path)) == 299


def test_an_empty_index_round_trips(tmp_path: Path) -> None:
    VectorIndex(DIM, factory="IVF4,Flat").save(tmp_path)
    loaded = VectorIndex.load(tmp_path)
    assert len(loaded) == 0 and loaded.search(vectors(1)[0], 3) == []
    loaded.add(vectors(100), ["t"] * 100)  # trains now
    assert len(loaded.search(vectors(1)[0], 3)) == 3


# -- atomicity -------------------------------------------------------------------------


def test_loads_racing_saves_into_the_same_folder_always_succeed(tmp_path: Path) -> None:
    """A save deletes the files of the previous one; a load that verified them
    and then found one gone called the folder corrupt ("docstore ... is not
    readable SQLite") in about one load of 25, instead of reading the new one."""
    index = make_index(n=2000)
    folder = tmp_path / "idx"
    index.save(folder)
    expected = results(index, vectors(3, seed=9))
    saves = 0

    def save_repeatedly() -> None:
        nonlocal saves
        for _ in range(150):
            index.save(folder)
            saves += 1

    saver = threading.Thread(target=save_repeatedly)
    saver.start()
    loads = 0
    try:
        while saver.is_alive() or loads == 0:
            with VectorIndex.load(folder, fingerprint=FINGERPRINT) as loaded:
                assert results(loaded, vectors(3, seed=9)) == expected
            loads += 1
    finally:
        saver.join()
    assert saves == 150 and loads > 1


def test_a_save_that_fails_before_the_swap_leaves_the_old_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    index = make_index()
    index.save(tmp_path)
    files_before = data_files(tmp_path)
    index.delete([f"d{i}" for i in range(100)])

    def crash(*args: Any) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(persist.os, "replace", crash)
    with pytest.raises(VectorIndexError, match="No space left"):
        index.save(tmp_path)
    monkeypatch.undo()
    assert data_files(tmp_path) == files_before
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]
    assert len(VectorIndex.load(tmp_path)) == 300


def test_an_interrupt_after_the_commit_keeps_the_new_files(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    index = make_index(n=5)
    index.save(tmp_path)
    index.add(vectors(1, seed=9), ["sixth"], ids=["d5"])
    real_replace = os.replace

    def replace_then_interrupt(source: Any, target: Any) -> None:
        real_replace(source, target)
        raise KeyboardInterrupt  # Ctrl-C landing as the rename returns

    monkeypatch.setattr(persist.os, "replace", replace_then_interrupt)
    with pytest.raises(KeyboardInterrupt):
        index.save(tmp_path)
    monkeypatch.undo()
    assert len(VectorIndex.load(tmp_path)) == 6


def test_leftovers_of_killed_saves_are_removed_by_the_next_save(tmp_path: Path) -> None:
    index = make_index(n=5)
    index.save(tmp_path)
    token = "0123456789abcdef"
    leftovers = [
        f"docstore-{token}.sqlite",
        f"docstore-{token}.sqlite-journal",
        f"index-{token}.faiss",
        f"manifest.json.{token}.tmp",
    ]
    for name in leftovers:
        (tmp_path / name).write_bytes(b"\0" * 64)
    (tmp_path / f"notes-{token}.sqlite-journal").write_text("not ours")
    index.save(tmp_path)
    assert not [name for name in leftovers if (tmp_path / name).exists()]
    assert (tmp_path / f"notes-{token}.sqlite-journal").exists()
    assert not [
        p for p in tmp_path.iterdir() if p.name.endswith("-journal") and "docstore" in p.name
    ]


@pytest.mark.parametrize(
    ("old", "new"),
    [(b"text 3", b"t\xffxt 3"), (b'{"n": 3, "source": "s0"}', b'{"n": 3, "source": "s0"]')],
    ids=["text-not-utf8", "metadata-not-json"],
)
def test_a_damaged_row_behind_a_valid_checksum_is_a_corrupt_error(
    old: bytes, new: bytes, tmp_path: Path
) -> None:
    make_index(n=10).save(tmp_path)
    path = file_of(tmp_path, "docstore")
    content = path.read_bytes()
    assert content.count(old) == 1
    path.write_bytes(content.replace(old, new))
    reseal_file(tmp_path, "docstore")
    loaded = VectorIndex.load(tmp_path)
    with pytest.raises(IndexCorruptError, match="docstore"):
        list(loaded.records())
    with pytest.raises(IndexCorruptError, match="docstore"):
        loaded.search(vectors(10)[3], 10, filter={"n": {"$gte": 0}})
    with pytest.raises(IndexCorruptError, match="docstore"):
        loaded.search(vectors(10)[3], 10)


def test_a_save_into_an_unwritable_place_is_a_clear_error(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    with pytest.raises(VectorIndexError, match="cannot save index"):
        make_index(n=5).save(blocker / "idx")


# -- refusals ------------------------------------------------------------------------------


def test_another_model_or_dimension_is_refused(tmp_path: Path) -> None:
    make_index().save(tmp_path)
    other = ModelFingerprint(model="org/model-b", revision="r1", dim=DIM, normalize=True)
    with pytest.raises(IndexMismatchError, match="model-b"):
        VectorIndex.load(tmp_path, fingerprint=other)
    with pytest.raises(IndexMismatchError, match="16-d"):
        VectorIndex.load(tmp_path, dim=32)
    assert len(VectorIndex.load(tmp_path, fingerprint=FINGERPRINT, dim=DIM)) == 300


def test_a_newer_format_version_is_refused(tmp_path: Path) -> None:
    make_index(n=5).save(tmp_path)
    rewrite_manifest(tmp_path, lambda data: data.update(format_version=3))
    with pytest.raises(IndexMismatchError, match="upgrade"):
        VectorIndex.load(tmp_path)


def test_a_version_1_folder_with_sha256_checksums_still_loads_and_is_still_verified(
    tmp_path: Path,
) -> None:
    make_index(n=5).save(tmp_path)

    def as_version_1(data: dict[str, Any]) -> None:
        data["format_version"] = 1
        for entry in data["files"].values():
            del entry["xxh3_128"]
            entry["sha256"] = hashlib.sha256((tmp_path / entry["name"]).read_bytes()).hexdigest()

    rewrite_manifest(tmp_path, as_version_1)
    with VectorIndex.load(tmp_path) as loaded:
        assert len(loaded) == 5
    docstore = (
        tmp_path / json.loads((tmp_path / "manifest.json").read_text())["files"]["docstore"]["name"]
    )
    content = bytearray(docstore.read_bytes())
    content[-1] ^= 1
    docstore.write_bytes(bytes(content))
    with pytest.raises(IndexCorruptError, match="sha256"):
        VectorIndex.load(tmp_path)


def test_no_index_here(tmp_path: Path) -> None:
    with pytest.raises(IndexCorruptError, match="no cachedvec index"):
        VectorIndex.load(tmp_path / "nothing")
    with pytest.raises(IndexCorruptError):
        VectorIndex.load(tmp_path)


@pytest.mark.parametrize(
    "damage",
    [
        pytest.param(lambda m: m.write_bytes(m.read_bytes()[: len(m.read_bytes()) // 2]), id="cut"),
        pytest.param(lambda m: replace_in(m, '"dim": 16', '"dim": 8'), id="dim"),
        pytest.param(lambda m: replace_in(m, "Flat", "HNSW32"), id="factory"),
        pytest.param(lambda m: m.write_bytes(b"\xff\xfe garbage"), id="binary"),
        pytest.param(lambda m: m.write_text("[]"), id="list"),
        pytest.param(lambda m: m.write_text("{}"), id="empty"),
        pytest.param(lambda m: m.write_bytes(b" " * (2 << 20)), id="huge"),
        pytest.param(lambda m: m.unlink(), id="missing"),
    ],
)
def test_a_damaged_manifest_is_refused(damage: Any, tmp_path: Path) -> None:
    make_index(n=5).save(tmp_path)
    damage(tmp_path / "manifest.json")
    with pytest.raises(IndexCorruptError):
        VectorIndex.load(tmp_path)


@pytest.mark.parametrize(
    "change",
    [
        pytest.param(lambda d: d["files"]["index"].update(name="../../etc/passwd"), id="escape"),
        pytest.param(lambda d: d["files"]["docstore"].update(name="docstore.sqlite"), id="name"),
        pytest.param(lambda d: d.update(dim="16"), id="dim-type"),
        pytest.param(lambda d: d.update(dim=0), id="dim-zero"),
        pytest.param(lambda d: d.update(metric="hamming"), id="metric"),
        pytest.param(lambda d: d["counts"].update(documents=-1), id="count"),
        pytest.param(lambda d: d["counts"].update(documents=299), id="count-lies"),
        pytest.param(lambda d: d["counts"].pop("vectors"), id="count-missing"),
        pytest.param(lambda d: d.update(fingerprint=[1]), id="fingerprint"),
        pytest.param(lambda d: d.update(search={"nprobe": 4}), id="search-setting"),
        pytest.param(lambda d: d.update(dim=8), id="dim-lies"),
        pytest.param(lambda d: d.update(factory="HNSW32"), id="factory-lies"),
        pytest.param(lambda d: d.update(metric="l2"), id="metric-lies"),
        pytest.param(lambda d: d["files"]["index"].update(xxh3_128="0" * 32), id="digest"),
        pytest.param(lambda d: d["files"]["index"].update(xxh3_128="0" * 64), id="digest-form"),
        pytest.param(lambda d: d["files"]["index"].pop("xxh3_128"), id="digest-missing"),
        pytest.param(lambda d: d.pop("files"), id="files-missing"),
    ],
)
def test_a_resealed_but_inconsistent_manifest_is_refused(change: Any, tmp_path: Path) -> None:
    make_index().save(tmp_path)
    rewrite_manifest(tmp_path, change)
    with pytest.raises(IndexCorruptError):
        VectorIndex.load(tmp_path)


@pytest.mark.parametrize("role", ["index", "docstore"])
@pytest.mark.parametrize("damage", ["truncate", "flip", "remove", "empty"])
def test_damaged_data_files_are_refused(role: str, damage: str, tmp_path: Path) -> None:
    make_index().save(tmp_path)
    path = file_of(tmp_path, role)
    content = bytearray(path.read_bytes())
    if damage == "truncate":
        path.write_bytes(content[: len(content) - 100])
    elif damage == "flip":
        content[len(content) // 2] ^= 0x10
        path.write_bytes(bytes(content))
    elif damage == "remove":
        path.unlink()
    else:
        path.write_bytes(b"")
    with pytest.raises(IndexCorruptError):
        VectorIndex.load(tmp_path)


@pytest.mark.parametrize("role", ["index", "docstore"])
def test_damage_behind_a_valid_checksum_is_still_refused(role: str, tmp_path: Path) -> None:
    """Truncated files whose checksums were recomputed: FAISS/SQLite must not be trusted."""
    make_index().save(tmp_path)
    path = file_of(tmp_path, role)
    path.write_bytes(path.read_bytes()[:1000])
    reseal_file(tmp_path, role)
    with pytest.raises(IndexCorruptError):
        VectorIndex.load(tmp_path)


def test_a_docstore_from_another_index_is_refused(tmp_path: Path) -> None:
    make_index(n=300).save(tmp_path / "a")
    make_index(n=299).save(tmp_path / "b")
    other = file_of(tmp_path / "b", "docstore").read_bytes()
    file_of(tmp_path / "a", "docstore").write_bytes(other)
    reseal_file(tmp_path / "a", "docstore")
    with pytest.raises(IndexCorruptError, match="disagree"):
        VectorIndex.load(tmp_path / "a")


@pytest.mark.parametrize(
    "statement",
    [
        "CREATE TRIGGER t AFTER INSERT ON documents BEGIN SELECT 1; END",
        "CREATE VIEW v AS SELECT * FROM documents",
        "CREATE TABLE extra (x)",
        "PRAGMA user_version = 7",
    ],
)
def test_a_docstore_with_unexpected_schema_is_refused(statement: str, tmp_path: Path) -> None:
    make_index(n=5).save(tmp_path)
    path = file_of(tmp_path, "docstore")
    connection = sqlite3.connect(path)
    connection.execute(statement)
    connection.commit()
    connection.close()
    reseal_file(tmp_path, "docstore")
    with pytest.raises(IndexCorruptError, match="schema"):
        VectorIndex.load(tmp_path)


def test_planted_files_are_never_executed(tmp_path: Path) -> None:
    make_index(n=5).save(tmp_path)
    marker = tmp_path / "pwned"
    # A protocol-0 pickle that would create the marker file if unpickled.
    payload = f"cos\nsystem\n(S'touch {marker}'\ntR.".encode()
    for name in ("index.pkl", "index.faiss", "docstore.pkl", "__init__.py", "manifest.py"):
        (tmp_path / name).write_bytes(payload)
    (tmp_path / "sitecustomize.py").write_text(f"open({str(marker)!r}, 'w')")
    loaded = VectorIndex.load(tmp_path)
    assert len(loaded) == 5
    assert not marker.exists()


json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-3, 400) | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner),
    max_leaves=10,
)
manifest_fields = st.sampled_from(
    ["format_version", "dim", "metric", "factory", "search", "fingerprint", "counts", "files"]
)


@pytest.fixture(scope="module")
def saved_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("template")
    make_index(n=5).save(folder)
    return folder


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    changes=st.dictionaries(manifest_fields, json_values, max_size=3),
    raw=st.binary(max_size=64),
)
def test_any_manifest_gives_a_clear_error_or_a_valid_index(
    changes: dict[str, Any],
    raw: bytes,
    saved_template: Path,
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    folder = tmp_path_factory.mktemp("fuzz")
    shutil.copytree(saved_template, folder, dirs_exist_ok=True)
    rewrite_manifest(folder, lambda data: data.update(changes))
    for _ in range(2):
        try:
            loaded = VectorIndex.load(folder)
        except (IndexCorruptError, IndexMismatchError):
            pass
        else:
            with loaded:  # it loaded: then it is the saved index, and it works
                assert len(loaded) == 5
                assert loaded.dim == DIM
                (hits,) = loaded.search_batch(vectors(1, seed=7), 5)
                assert sorted(h.id for h in hits) == [f"d{i}" for i in range(5)]
                assert loaded.get_vectors(["d3"])[0].shape == (1, DIM)
        (folder / "manifest.json").write_bytes(raw)  # then arbitrary bytes
