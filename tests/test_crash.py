"""Kill cachedvec at random moments; nothing but the batch in flight may be lost.

Every loop here kills a real child process (``SIGKILL``, or ``SIGINT`` for
Ctrl-C) at a seeded random moment of its run, then checks what a user would
find afterwards:

- the store opens, and every value in it decodes to exactly the vector the
  fake model gives for its text (no foreign, torn or wrong value);
- of the batches the model finished before the kill (its log says which),
  only the last one may be missing from the store: a crash loses at most the
  batch in flight;
- the index folder loads (FAISS and docstore agree, checksums hold) and is
  either the last complete version or the one the interrupted run was
  writing, and its vectors are the model's;
- the next run completes and computes exactly the texts the cache lacks.

The normal run makes :data:`KILLS` kills per target (ingest, reindex, a
writer on each persistent store, index saves in two index types, Ctrl-C of
the CLI) through the preloaded fork server of ``tests/crash_harness.py``, plus
a handful of kills of the real ``cachedvec`` command with the real model.
``--run-slow`` adds soak runs of :data:`SOAK_KILLS` kills per target.
"""

from __future__ import annotations

import json
import random
import shutil
import signal
import sqlite3
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from cachedvec import open_store
from cachedvec.codec import VectorCodec
from cachedvec.index import VectorIndex
from cachedvec.keys import KeyEncoder
from cachedvec.testing import FakeEmbeddings
from tests.conftest import PERSISTENT_KINDS
from tests.crash_harness import (
    DIM,
    REPO,
    Figures,
    ForkServer,
    Outcome,
    cli_job,
    embed_job,
    ingest_job,
    read_log,
    reindex_job,
    run_and_signal,
    save_job,
    saved_version,
    truth,
)

KILLS = 25
SOAK_KILLS = 200
FIGURES = Figures("crash tests")
VOCABULARY = [
    f"{a}{b}"
    for a in ("ka", "lo", "mi", "nu", "pe", "ro", "si", "tu", "va", "ze")
    for b in (
        "bar",
        "cen",
        "dol",
        "fim",
        "gor",
        "hul",
        "jat",
        "kes",
        "lum",
        "nop",
        "pir",
        "qua",
        "ros",
        "sut",
        "tev",
    )
]


@pytest.fixture(scope="module", autouse=True)
def _report_figures() -> Iterator[None]:
    yield
    FIGURES.report()


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ForkServer]:
    forks = ForkServer(tmp_path_factory.mktemp("children"))
    yield forks
    forks.close()


# ------------------------------------------------------------------ checking


class Universe:
    """Every text a fake model computed in a test, by its cache key."""

    def __init__(self) -> None:
        self.texts: dict[str, str] = {}
        self._encoders: dict[str, KeyEncoder] = {}

    def encoder(self, model: str = "fake") -> KeyEncoder:
        if model not in self._encoders:
            namespace = FakeEmbeddings(DIM, name=model).fingerprint.namespace()
            self._encoders[model] = KeyEncoder(namespace, "doc")
        return self._encoders[model]

    def keys(self, texts: list[str], model: str = "fake") -> list[str]:
        return self.encoder(model).keys(texts)

    def learn(self, events: list[dict[str, Any]]) -> None:
        for event in events:
            if event["event"] == "batch":
                keys = self.keys(event["texts"], event["model"])
                self.texts.update(zip(keys, event["texts"], strict=True))


def check_store(url: str, universe: Universe, keys: list[str] | None = None) -> set[str]:
    """Open the store and prove its values are the right vectors; the keys present.

    Checks every entry, or only ``keys`` (what one run could have written).
    """
    with open_store(url) as store:
        if keys is None:
            keys = list(store.yield_keys())
            foreign = [k for k in keys if k not in universe.texts]
            assert not foreign, f"keys no model run computed: {foreign[:3]}"
        values = store.mget(keys)
    found = [(k, v) for k, v in zip(keys, values, strict=True) if v is not None]
    unexplained = [k for k, _ in found if k not in universe.texts]
    assert not unexplained, f"values no model call returned: {unexplained[:3]}"
    matrix, _, corrupt = VectorCodec(DIM).decode_many([v for _, v in found])
    assert not corrupt, f"{len(corrupt)} undecodable values after a kill"
    if found:
        expected = model_vectors([universe.texts[k] for k, _ in found])
        np.testing.assert_allclose(matrix, expected, rtol=0, atol=1e-6)
    FIGURES.add("values checked against the model after kills", len(found))
    return {k for k, _ in found}


def cached_keys(url: str, keys: list[str] | None = None) -> set[str]:
    """The keys a store holds, or which of ``keys`` it holds (the state a run starts from)."""
    with open_store(url) as store:
        if keys is None:
            return set(store.yield_keys())
        return {k for k, v in zip(keys, store.mget(keys), strict=True) if v is not None}


_VECTORS: dict[str, np.ndarray] = {}


def model_vectors(texts: list[str]) -> np.ndarray:
    """``truth(texts)``, remembering each text's vector: stores are checked again and again."""
    new = [t for t in dict.fromkeys(texts) if t not in _VECTORS]
    if new:
        _VECTORS.update(zip(new, truth(new), strict=True))
    return np.stack([_VECTORS[t] for t in texts])


def lost_in_flight(
    events: list[dict[str, Any]], present: set[str], universe: Universe, batch_size: int
) -> int:
    """How many computed vectors a killed run lost; only its last batch may be short."""
    batches = [universe.keys(e["texts"], e["model"]) for e in events if e["event"] == "batch"]
    for keys in batches[:-1]:
        assert set(keys) <= present, "a batch finished before the last one was lost"
    lost = len(set(batches[-1]) - present) if batches else 0
    assert lost <= batch_size
    return lost


def index_state(folder: Path) -> dict[str, Any] | None:
    """What an index folder holds (None: no index yet), after checking its vectors."""
    if not (folder / "manifest.json").exists():
        return None
    with VectorIndex.load(folder) as index:
        records = list(index.records())
        vectors, missing = index.get_vectors([r.id for r in records])
        assert not missing, "docstore ids without vectors"
        if records:
            np.testing.assert_allclose(vectors, model_vectors([r.text for r in records]), atol=1e-5)
        return {
            "model": index.fingerprint.model if index.fingerprint else None,
            "factory": index.factory,
            "docs": {r.id: r.text for r in records},
        }


class Corpus:
    """Seeded text files that change a little between ingests."""

    def __init__(self, root: Path, rng: random.Random, files: int = 8, paragraphs: int = 5) -> None:
        self.root, self.rng, self.made, self.paragraphs = root, rng, 0, paragraphs
        root.mkdir(parents=True)
        for _ in range(files):
            self.add()

    def paragraph(self) -> str:
        words = self.rng.choices(VOCABULARY, k=self.rng.randint(12, 16))
        return " ".join(words).capitalize() + "."

    def add(self) -> None:
        self.made += 1
        self.write(self.root / f"doc{self.made:03d}.txt", self.new_paragraphs())

    def new_paragraphs(self) -> list[str]:
        return [self.paragraph() for _ in range(self.paragraphs)]

    @staticmethod
    def write(path: Path, paragraphs: list[str]) -> None:
        path.write_text("\n\n".join(paragraphs) + "\n")

    def mutate(self) -> None:
        """Rewrite two files, edit one paragraph of another, maybe add or delete one."""
        files = sorted(self.root.glob("*.txt"))
        for path in self.rng.sample(files, 2):
            self.write(path, self.new_paragraphs())
        edited = self.rng.choice(files)
        paragraphs = edited.read_text().strip().split("\n\n")
        paragraphs[self.rng.randrange(len(paragraphs))] = self.paragraph()
        self.write(edited, paragraphs)
        if len(files) > 5 and self.rng.random() < 0.3:
            self.rng.choice(files).unlink()
        if self.rng.random() < 0.5:
            self.add()


class Runner:
    """Runs one job repeatedly with a fresh log each time, learning what it computed."""

    def __init__(
        self, server: ForkServer, tmp: Path, universe: Universe, job: Any, **kwargs: Any
    ) -> None:
        self.server, self.tmp, self.universe, self.job = server, tmp, universe, job
        self.kwargs = kwargs
        self.runs = 0

    def __call__(
        self, kill_after: float | None = None, sig: int = signal.SIGKILL, **kwargs: Any
    ) -> tuple[Outcome, list[dict[str, Any]]]:
        self.runs += 1
        log = self.tmp / f"{self.job.__name__}-{self.runs}.log"
        out = self.server.run(
            self.job, kill_after=kill_after, sig=sig, log=str(log), **{**self.kwargs, **kwargs}
        )
        events = read_log(log)
        self.universe.learn(events)
        return out, events


def finished(out: Outcome) -> dict[str, Any]:
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout.strip().splitlines()[-1])  # type: ignore[no-any-return]


def count_missing(
    universe: Universe, texts: list[str], before: set[str], model: str = "fake"
) -> int:
    unique = sorted(set(texts))
    return sum(key not in before for key in universe.keys(unique, model))


def note_kill(target: str, lost: int | None = None) -> None:
    FIGURES.add(f"{target}: SIGKILLs survived")
    if lost is not None:
        FIGURES.add(f"{target}: vectors lost in flight (at most one batch each)", lost)


# --------------------------------------------------------------------- ingest


def ingest_loop(server: ForkServer, tmp: Path, kills: int, seed: int) -> None:
    rng = random.Random(seed)
    corpus = Corpus(tmp / "corpus", rng)
    index, store = tmp / "index", f"sqlite:///{tmp}/cache.db"
    universe = Universe()
    run = Runner(
        server,
        tmp,
        universe,
        ingest_job,
        corpus=str(corpus.root),
        index=str(index),
        store=store,
        batch_size=4,
    )
    out, _ = run()
    finished(out)
    window, good = out.seconds, index_state(index)
    landed: list[dict[str, Any] | None] = []  # index states right after kills
    killed = attempts = 0
    while killed < kills:
        attempts += 1
        assert attempts <= 4 * kills, "the kills keep missing the runs"
        before = cached_keys(store)
        out, events = run(kill_after=rng.uniform(0, window))
        if out.killed:
            killed += 1
            present = check_store(store, universe)
            note_kill("ingest", lost_in_flight(events, present, universe, 4))
            landed.append(index_state(index))
            if rng.random() < 0.3:
                continue  # crash again before any run completes
            before = present
            out, events = run()
        report = finished(out)
        window = out.seconds
        current = index_state(index)
        assert current is not None
        texts = list(current["docs"].values())
        assert report["computed"] == count_missing(universe, texts, before)
        assert report["documents"] == len(texts)
        for state in landed:
            assert state in (good, current), "a killed ingest left a third index version"
            FIGURES.add(
                "ingest: kills that left the previous index"
                if state == good
                else "ingest: kills after the new index was committed"
            )
        good, landed = current, []
        corpus.mutate()
    finished(run()[0])  # the corpus as the last round changed it
    report = finished(run()[0])  # then nothing is left to do
    assert (report["added"], report["updated"], report["deleted"], report["computed"]) == (
        0,
        0,
        0,
        0,
    )


def test_ingest_survives_sigkill(server: ForkServer, tmp_path: Path) -> None:
    ingest_loop(server, tmp_path, KILLS, seed=61)


@pytest.mark.slow
def test_ingest_soak(server: ForkServer, tmp_path: Path) -> None:
    ingest_loop(server, tmp_path, SOAK_KILLS, seed=610)


# -------------------------------------------------------------------- reindex

FACTORIES = ("Flat", "HNSW16", "IVF4,Flat")


def reindex_loop(server: ForkServer, tmp: Path, kills: int, seed: int) -> None:
    rng = random.Random(seed)
    # Over 256 chunks: a model switch embeds them in two batches.
    corpus = Corpus(tmp / "corpus", rng, files=12, paragraphs=22)
    index, store = tmp / "index", f"sqlite:///{tmp}/cache.db"
    universe = Universe()
    finished(
        Runner(
            server,
            tmp,
            universe,
            ingest_job,
            corpus=str(corpus.root),
            index=str(index),
            store=store,
        )()[0]
    )
    run = Runner(server, tmp, universe, reindex_job, index=str(index), store=store)
    out, _ = run(model="m0", factory="Flat")
    finished(out)
    window, good = out.seconds, index_state(index)
    assert good is not None
    texts = list(good["docs"].values())
    killed = attempts = 0
    while killed < kills:
        attempts += 1
        assert attempts <= 4 * kills, "the kills keep missing the runs"
        # Mostly switch to a new model (every vector computed, batch by batch),
        # sometimes only change the index type (zero model calls).
        model = f"m{attempts}" if rng.random() < 0.7 else None
        factory = rng.choice(FACTORIES)
        touched = universe.keys(texts, model or "fake")
        before = cached_keys(store, touched)
        out, events = run(kill_after=rng.uniform(0, window), model=model, factory=factory)
        if out.killed:
            killed += 1
            present = check_store(store, universe, None if killed % 5 == 0 else touched)
            if model is None:
                assert not events, "a reindex from the cache called the model"
            note_kill("reindex", lost_in_flight(events, present, universe, 256))
            landed = index_state(index)
            assert landed is not None and landed["docs"] == good["docs"]
            if landed == good:
                FIGURES.add("reindex: kills that left the previous index")
            else:
                assert landed["factory"] == factory
                assert landed["model"] == (f"cachedvec-fake/{model}" if model else good["model"])
                FIGURES.add("reindex: kills after the new index was committed")
            good = landed
            if rng.random() < 0.6:
                continue  # the next round starts from whatever the kill left
            before = cached_keys(store, touched)
            out, events = run(model=model, factory=factory)
        report = finished(out)
        current = index_state(index)
        assert current is not None and current["docs"] == good["docs"]
        assert current["factory"] == factory
        if model is None:
            assert report["computed"] == 0 and not events
            assert current["model"] == good["model"]
        else:
            window = out.seconds
            assert current["model"] == f"cachedvec-fake/{model}"
            assert report["computed"] == count_missing(universe, texts, before, model)
        good = current
    check_store(store, universe)


def test_reindex_survives_sigkill(server: ForkServer, tmp_path: Path) -> None:
    reindex_loop(server, tmp_path, KILLS, seed=62)


@pytest.mark.slow
def test_reindex_soak(server: ForkServer, tmp_path: Path) -> None:
    reindex_loop(server, tmp_path, SOAK_KILLS, seed=620)


# ----------------------------------------------------------------- store writers


def random_text(rng: random.Random) -> str:
    return " ".join(rng.choices(VOCABULARY, k=rng.randint(3, 12)))


def store_loop(server: ForkServer, tmp: Path, url: str, kind: str, kills: int, seed: int) -> None:
    rng = random.Random(seed)
    universe = Universe()
    run = Runner(server, tmp, universe, embed_job, store=url, batch_size=4)
    old: list[str] = []
    pending: list[str] = []  # texts of killed runs, asked for again until a run completes
    window: float | None = None
    killed = attempts = 0
    while killed < kills:
        attempts += 1
        assert attempts <= 4 * kills, "the kills keep missing the runs"
        fresh = [random_text(rng) for _ in range(24)]
        texts = pending + fresh + rng.sample(old, min(8, len(old)))
        keys = universe.keys(texts)
        before = cached_keys(url, keys)
        complete_now = window is None or attempts % 6 == 0
        out, events = run(kill_after=None if complete_now else rng.uniform(0, window), texts=texts)
        old += fresh
        if out.killed:
            killed += 1
            # Every entry now and then (a crash might damage what it did not
            # write); the run's own keys after every kill.
            present = check_store(url, universe, None if killed % 5 == 0 else keys)
            note_kill(f"{kind} store writer", lost_in_flight(events, present, universe, 4))
            pending = texts
            continue
        stats = finished(out)
        assert stats["computed"] == count_missing(universe, texts, before)
        window, pending = out.seconds, []
    check_store(url, universe)


@pytest.mark.parametrize("kind", PERSISTENT_KINDS)
def test_store_writers_survive_sigkill(
    kind: str, server: ForkServer, tmp_path: Path, make_store_url: Callable[[str], str]
) -> None:
    url = make_store_url(kind)
    store_loop(server, tmp_path, url, kind, KILLS, seed=63 + PERSISTENT_KINDS.index(kind))
    if kind == "file":
        leftovers = [p for p in (tmp_path / "files").rglob(".tmp-*")]
        FIGURES.add("file store: temp files left behind by kills", len(leftovers))


@pytest.mark.slow
@pytest.mark.parametrize("kind", PERSISTENT_KINDS)
def test_store_writers_soak(
    kind: str, server: ForkServer, tmp_path: Path, make_store_url: Callable[[str], str]
) -> None:
    url = make_store_url(kind)
    store_loop(server, tmp_path, url, kind, SOAK_KILLS, seed=630 + PERSISTENT_KINDS.index(kind))


# ------------------------------------------------------------------ index saves


def data_files(folder: Path) -> list[str]:
    """Files of an index folder besides the manifest and the lock."""
    return sorted(p.name for p in folder.iterdir() if p.name not in ("manifest.json", ".lock"))


def save_loop(server: ForkServer, tmp: Path, factory: str, kills: int, seed: int) -> None:
    rng = random.Random(seed)
    folder, log = tmp / "index", tmp / "saves.log"

    def run(kill_after: float | None = None, versions: int = 3) -> tuple[Outcome, list[Any]]:
        start = len(read_log(log))
        out = server.run(
            save_job,
            kill_after=kill_after,
            folder=str(folder),
            log=str(log),
            versions=versions,
            factory=factory,
        )
        return out, read_log(log)[start:]

    out, _ = run()
    assert out.returncode == 0, out.stderr
    window, committed = out.seconds, 2
    killed = attempts = 0
    while killed < kills:
        attempts += 1
        assert attempts <= 4 * kills, "the kills keep missing the runs"
        complete_now = attempts % 6 == 0
        out, events = run(kill_after=None if complete_now else rng.uniform(0, window))
        saved = [e["version"] for e in events if e["event"] == "saved"]
        saving = [e["version"] for e in events if e["event"] == "saving"]
        with VectorIndex.load(folder) as index:
            version = saved_version(index)
        assert index_state(folder) is not None  # vectors are the model's
        allowed = {saved[-1] if saved else committed} | set(saving[-1:])
        assert version in allowed, f"version {version} on disk, expected one of {allowed}"
        committed = version
        if out.killed:
            killed += 1
            note_kill(f"index save ({factory})")
            if saving and (not saved or saving[-1] != saved[-1]):
                FIGURES.add(f"index save ({factory}): kills during a save")
        else:
            assert out.returncode == 0, out.stderr
            window = out.seconds
            # A completed save removes whatever killed saves left behind.
            names = data_files(folder)
            assert len(names) == 2 and names[0].startswith("docstore-"), names


def test_a_save_removes_journals_of_killed_saves(tmp_path: Path) -> None:
    index = VectorIndex(DIM, fingerprint=FakeEmbeddings(DIM).fingerprint)
    index.add(truth(["a text"]), ["a text"], ids=["a"])
    index.save(tmp_path)
    # What SIGKILL during the docstore backup leaves (seen in the save loop).
    leftovers = [
        tmp_path / "docstore-0123456789abcdef.sqlite",
        tmp_path / "docstore-0123456789abcdef.sqlite-journal",
    ]
    for path in leftovers:
        path.write_bytes(b"\0" * 512)
    index.save(tmp_path)
    assert [p.name for p in leftovers if p.exists()] == []


@pytest.mark.parametrize("factory", ["Flat", "HNSW16"])
def test_index_saves_survive_sigkill(factory: str, server: ForkServer, tmp_path: Path) -> None:
    save_loop(server, tmp_path, factory, KILLS, seed=64)


@pytest.mark.slow
@pytest.mark.parametrize("factory", ["Flat", "HNSW16"])
def test_index_saves_soak(factory: str, server: ForkServer, tmp_path: Path) -> None:
    save_loop(server, tmp_path, factory, SOAK_KILLS, seed=640)


# ------------------------------------------------------------------ Ctrl-C (CLI)


def assert_clean_interrupt(out: Outcome) -> None:
    """Ctrl-C: exit 130 and one readable line, never a traceback.

    (Just ``interrupted`` when it lands while click parses the arguments.)
    """
    assert out.returncode == 130, (out.returncode, out.stderr)
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("interrupted"), out.stderr
    assert "Traceback" not in out.stderr


def test_ctrl_c_on_the_cli_exits_cleanly(server: ForkServer, tmp_path: Path) -> None:
    rng = random.Random(65)
    corpus = Corpus(tmp_path / "corpus", rng)
    index, store = tmp_path / "index", f"sqlite:///{tmp_path}/cache.db"
    universe = Universe()
    common = ["--index", str(index), "--store", store, "--model", "fake", "--json"]
    ingest = [
        "ingest",
        str(corpus.root),
        "--chunk-size",
        "120",
        "--chunk-overlap",
        "0",
        "--batch-size",
        "4",
        *common,
    ]
    run = Runner(server, tmp_path, universe, cli_job)
    out, _ = run(argv=ingest)
    finished(out)
    window, good = out.seconds, index_state(index)
    interrupted = attempts = 0
    while interrupted < KILLS:
        attempts += 1
        assert attempts <= 4 * KILLS, "the interrupts keep missing the runs"
        corpus.mutate()
        if attempts % 4 == 0:  # reindex reads the cache and rewrites the index
            # (Not IVF: FAISS prints a warning when it trains on this few vectors.)
            argv = ["reindex", "--factory", rng.choice(["Flat", "HNSW16"]), *common[:4], "--json"]
        else:
            argv = ingest
        before = cached_keys(store)
        out, events = run(kill_after=rng.uniform(0.005, window), sig=signal.SIGINT, argv=argv)
        if out.signalled and out.returncode != 0:
            assert_clean_interrupt(out)
            interrupted += 1
            FIGURES.add("CLI: Ctrl-C exits (130, one line, no traceback)")
            present = check_store(store, universe)
            lost_in_flight(events, present, universe, 4)
            landed = index_state(index)
            before = present
            out, events = run(argv=argv)
        else:
            landed = None
        report = finished(out)
        current = index_state(index)
        assert current is not None
        if argv is ingest:
            window = out.seconds
            texts = list(current["docs"].values())
            assert report["computed"] == count_missing(universe, texts, before)
        if landed is not None:
            assert landed in (good, current), "an interrupted run left a third index version"
        good = current


def test_ctrl_c_just_after_the_commit_keeps_a_loadable_index(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import os

    from cachedvec.index import persist

    index = VectorIndex(DIM, fingerprint=FakeEmbeddings(DIM).fingerprint)
    index.add(truth(["first"]), ["first"], ids=["a"])
    index.save(tmp_path)
    index.add(truth(["second"]), ["second"], ids=["b"])
    real_replace = os.replace

    def replace_then_ctrl_c(source: Any, target: Any) -> None:
        real_replace(source, target)
        raise KeyboardInterrupt  # SIGINT arriving while the rename runs

    monkeypatch.setattr(persist.os, "replace", replace_then_ctrl_c)
    with pytest.raises(KeyboardInterrupt):
        index.save(tmp_path)
    monkeypatch.undo()
    # The interrupt came after the rename: the new version is the index, and
    # the save must not have deleted the files it now names.
    with VectorIndex.load(tmp_path) as loaded:
        assert len(loaded) == 2
        assert {r.id: r.text for r in loaded.records()} == {"a": "first", "b": "second"}


def test_ctrl_c_while_a_store_closes_prints_one_line(server: ForkServer, tmp_path: Path) -> None:
    corpus = Corpus(tmp_path / "corpus", random.Random(67), files=2)
    out = server.run(
        cli_job,
        log=str(tmp_path / "log"),
        interrupt_store_close=True,
        argv=[
            "ingest",
            str(corpus.root),
            "--index",
            str(tmp_path / "index"),
            "--model",
            "fake",
            "--store",
            f"sqlite:///{tmp_path}/cache.db",
            "--chunk-size",
            "120",
            "--chunk-overlap",
            "0",
        ],
    )
    assert_clean_interrupt(out)


# ------------------------------------------- the real command with the real model


def _cached_rows(db: Path) -> int:
    try:
        with sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=0.1) as connection:
            return int(connection.execute("SELECT count(*) FROM cachedvec_entries").fetchone()[0])
    except sqlite3.Error:
        return 0


@pytest.mark.model
def test_the_real_command_with_the_real_model_survives_kills_and_ctrl_c(tmp_path: Path) -> None:
    from cachedvec.models import default_model
    from cachedvec.sources import Chunker, find_files, read_source

    rng = random.Random(66)
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    # About 290 chunks embedded one at a time: seconds of embedding, far longer
    # than the signal windows below, so a run rarely finishes before its signal.
    # (No chunk text repeats across these files: each cache hit is one key.)
    names = (
        "bird-migration.md",
        "composting.md",
        "lighthouses.md",
        "tides.md",
        "volcanoes.md",
        "water-cycle.md",
    )
    for name in names:
        source = REPO / "examples" / "corpus" / "encyclopedia" / name
        (corpus / name).write_bytes(source.read_bytes())
    index, db = tmp_path / "index", tmp_path / "cache.db"
    store = f"sqlite:///{db}"
    command = [
        str(Path(sys.executable).with_name("cachedvec")),
        "ingest",
        str(corpus),
        "--index",
        str(index),
        "--store",
        store,
        "--chunk-size",
        "200",
        "--chunk-overlap",
        "0",
        "--batch-size",
        "1",
        "--json",
    ]
    chunker = Chunker(200, 0)
    texts = sorted({c.text for f in find_files([corpus]) for c in chunker.chunks(read_source(f))})
    model = default_model()
    encoder = KeyEncoder(model.fingerprint.namespace(), "doc")
    by_key = dict(zip(encoder.keys(texts), texts, strict=True))

    def check_real_store() -> set[str]:
        with open_store(store) as opened:
            keys = set(opened.yield_keys())
            assert keys <= set(by_key), "keys of texts the corpus does not have"
            matrix, missing, corrupt = VectorCodec(384).decode_many(opened.mget(sorted(keys)))
        assert not missing and not corrupt
        if keys:
            np.testing.assert_allclose(np.linalg.norm(matrix, axis=1), 1.0, atol=1e-5)
        return keys

    # Early kills land in start-up or model loading; the others wait for the
    # first new vector to reach the cache, then strike while embedding.
    plan = [
        (signal.SIGKILL, "early"),
        (signal.SIGINT, "early"),
        (signal.SIGKILL, "embedding"),
        (signal.SIGKILL, "early"),
        (signal.SIGINT, "embedding"),
    ]

    def start_over() -> None:
        shutil.rmtree(index, ignore_errors=True)
        for leftover in tmp_path.glob("cache.db*"):
            leftover.unlink()

    for sig, when in plan:
        for _attempt in range(4):
            rows = _cached_rows(db)
            out = run_and_signal(
                command,
                sig=sig,
                cwd=tmp_path,
                kill_after=rng.uniform(0.3, 3.0) if when == "early" else rng.uniform(0.0, 0.6),
                until=None if when == "early" else (lambda rows=rows: _cached_rows(db) > rows),
            )
            if out.returncode != 0:
                break
            # A miss: the run finished before the signal (a fast machine, or
            # pytest itself paused). Start again from an empty cache and index.
            start_over()
        else:
            pytest.fail(f"four runs in a row finished before the {when} signal")
        assert out.signalled, f"the run failed before the {when} kill: {out.stderr}"
        if sig == signal.SIGINT:
            assert_clean_interrupt(out)
            FIGURES.add("real CLI + real model: Ctrl-C exits (130, one line)")
        else:
            assert out.returncode == -signal.SIGKILL
            FIGURES.add("real CLI + real model: SIGKILLs survived")
        check_real_store()
        assert not (index / "manifest.json").exists(), "a killed first ingest saved an index"
    before = check_real_store()
    out = run_and_signal(command, kill_after=None, cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    report = json.loads(out.stdout)
    assert report["computed"] == sum(key not in before for key in by_key), (
        report,
        len(before),
        out.stderr,
    )
    assert report["cache_hits"] == len(before)
    FIGURES.add("real CLI + real model: vectors computed before the kills, reused", len(before))
    # What the killed runs cached is what the model gives: compare with it here.
    with VectorIndex.load(index, fingerprint=model.fingerprint) as loaded:
        records = list(loaded.records())
        vectors, _ = loaded.get_vectors([r.id for r in records])
    assert {r.text for r in records} == set(texts)
    expected = model.embed_documents_array([r.text for r in records])
    np.testing.assert_allclose(vectors, expected, atol=1e-4)
