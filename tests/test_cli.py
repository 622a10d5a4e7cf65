"""The ``cachedvec`` command line: every command, its JSON, its errors, Ctrl-C.

Commands run in-process through click's ``CliRunner`` (the real model loads
once per session), except where a real process is the point: signals and
the terminal check for progress bars. Tests that embed with the real model
carry ``@pytest.mark.model``; bad-input tests build their indexes with the
fake model, or fail before any model is needed.
"""

from __future__ import annotations

import fcntl
import json
import os
import pty
import shutil
import signal
import sqlite3
import struct
import subprocess
import sys
import termios
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result

import cachedvec
from cachedvec import migrate, open_store
from cachedvec.cli import main
from cachedvec.index import VectorIndex, read_manifest
from cachedvec.ingestion import IngestReport
from cachedvec.models import DEFAULT_MODEL_NAME
from cachedvec.testing import FakeEmbeddings
from tests.conftest import PERSISTENT_KINDS, store_url

CLI = str(Path(sys.executable).with_name("cachedvec"))
ENCYCLOPEDIA = Path(__file__).parents[1] / "examples" / "corpus" / "encyclopedia"
# Small chunks so each paragraph below is one chunk.
CHUNKING = ["--chunk-size", "100", "--chunk-overlap", "0"]
KETTLE = [
    "# Kettle care and troubleshooting",
    "Descale the kettle every month: fill it with water and citric acid, boil, and rinse.",
    "Error E3 means the kettle is empty. Fill it above the minimum mark and press start.",
]
BEES = [
    "Honeybees share the direction of flowers with a waggle dance on the comb.",
    "A colony keeps its brood near 35 degrees by fanning wings and clustering.",
    "Drones do not sting; only workers and the queen carry a stinger.",
]
FAQ = [
    {"text": "Boil water for tea at 95 degrees for green tea.", "topic": "kettle"},
    {"text": "Bees make honey from nectar they bring back to the hive.", "topic": "bees"},
]
REPORT_FIELDS = {"added", "updated", "skipped", "deleted", "cache_hits", "computed"}


class Workspace:
    """A tiny corpus plus an index folder and a SQLite cache, all under tmp."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.corpus = root / "corpus"
        self.corpus.mkdir()
        (self.corpus / "kettle.md").write_text("\n\n".join(KETTLE) + "\n", "utf-8")
        (self.corpus / "bees.txt").write_text("\n\n".join(BEES) + "\n", "utf-8")
        (self.corpus / "faq.jsonl").write_text("".join(json.dumps(r) + "\n" for r in FAQ), "utf-8")
        self.index = root / "index"
        self.store = f"sqlite:///{root / 'cache.db'}"

    @property
    def where(self) -> list[str]:
        return ["--index", str(self.index), "--store", self.store]

    def ingest(self, *extra: str | Path) -> dict[str, Any]:
        return cli_json("ingest", self.corpus, *self.where, *CHUNKING, *extra)

    def fake_ingest(self) -> int:
        """Build the index with the fake model (no real model needed); its size."""
        return self.fake_ingest_report().documents

    def fake_ingest_report(self) -> IngestReport:
        return cachedvec.ingest(
            [self.corpus],
            index=self.index,
            store=self.store,
            model=FakeEmbeddings(384),
            chunk_size=100,
            chunk_overlap=0,
        )


@pytest.fixture
def ws(tmp_path: Path) -> Workspace:
    return Workspace(tmp_path)


def cli(*args: str | Path) -> Result:
    """Run ``cachedvec ARGS`` in-process; stdout and stderr kept apart."""
    return CliRunner().invoke(main, [str(a) for a in args])


def cli_json(*args: str | Path) -> dict[str, Any]:
    result = cli(*args, "--json")
    assert result.exit_code == 0, result.output
    # Not a terminal: no progress bar, nothing but the JSON object.
    assert result.stderr == ""
    return json.loads(result.stdout)


def error_line(result: Result) -> str:
    """Assert a handled error: exit 1, one ``error:`` line on stderr, no traceback."""
    assert result.exit_code == 1, result.output
    assert isinstance(result.exception, SystemExit), f"unhandled: {result.exception!r}"
    assert "Traceback" not in result.output
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert result.stdout == ""
    return lines[0]


def index_files(index: Path) -> dict[str, int]:
    """mtimes of the index's data files (the run history is appended on purpose)."""
    return {
        p.name: p.stat().st_mtime_ns
        for p in index.iterdir()
        if p.is_file() and p.name != "history.jsonl"
    }


def doc_entries(store: str) -> int:
    with open_store(store) as opened:
        return sum(s.entries for ns, s in opened.namespace_stats().items() if ns.endswith(":doc:"))


# ----------------------------------------------------------------- help


@pytest.mark.parametrize("command", sorted(main.commands))
def test_every_command_help_shows_examples(command: str) -> None:
    result = cli(command, "--help")
    assert result.exit_code == 0, result.output
    assert "Examples:" in result.stdout and f"cachedvec {command}" in result.stdout


def test_top_level_help_lists_every_command() -> None:
    result = cli("--help")
    assert result.exit_code == 0
    for command in main.commands:
        assert command in result.stdout


# ----------------------------------------------------------------- ingest


@pytest.mark.model
def test_ingest_reports_counts_and_a_second_run_does_nothing(ws: Workspace) -> None:
    first = ws.ingest()
    assert REPORT_FIELDS <= set(first)
    chunks = len(KETTLE) + len(BEES) + len(FAQ)
    assert first["added"] == first["computed"] == first["documents"] == chunks
    assert (first["updated"], first["skipped"], first["deleted"], first["cache_hits"]) == (0,) * 4
    assert first["sources"] == {"added": 3, "updated": 0, "skipped": 0, "deleted": 0}
    assert first["model"] == DEFAULT_MODEL_NAME

    before = index_files(ws.index)
    again = ws.ingest()
    assert again["skipped"] == chunks and again["sources"]["skipped"] == 3
    assert {k: again[k] for k in REPORT_FIELDS - {"skipped"}} == dict.fromkeys(
        REPORT_FIELDS - {"skipped"}, 0
    )
    assert index_files(ws.index) == before  # unchanged sources: no index write at all


@pytest.mark.model
def test_a_failing_model_is_one_error_line_and_keeps_nothing_half_done(
    ws: Workspace, monkeypatch: pytest.MonkeyPatch
) -> None:
    from cachedvec.models import default_model

    def out_of_memory(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("CUDA out of memory.\nTried to allocate 2 GiB")

    # The library passes the model's own exception through; the CLI, which
    # no caller catches around, turns it into one line.
    monkeypatch.setattr(default_model().model, "encode", out_of_memory)
    line = error_line(cli("ingest", ws.corpus, *ws.where))
    assert line.startswith("error: RuntimeError: CUDA out of memory.")
    assert "CACHEDVEC_TRACEBACK=1" in line
    assert not ws.index.exists()
    monkeypatch.setenv("CACHEDVEC_TRACEBACK", "1")
    result = cli("ingest", ws.corpus, *ws.where)
    assert isinstance(result.exception, RuntimeError) and result.exit_code == 1

    def no_message(*args: Any, **kwargs: Any) -> Any:
        raise MemoryError

    monkeypatch.setattr(default_model().model, "encode", no_message)
    monkeypatch.setenv("CACHEDVEC_TRACEBACK", "0")  # off, as unset
    line = error_line(cli("ingest", ws.corpus, *ws.where))
    assert line == "error: MemoryError (set CACHEDVEC_TRACEBACK=1 for the traceback)"


@pytest.mark.model
def test_ingest_replaces_exactly_the_changed_chunks(ws: Workspace) -> None:
    ws.ingest()
    bees = ws.corpus / "bees.txt"
    edited = [BEES[0], "Bumblebees can buzz-pollinate tomatoes by vibrating flowers.", BEES[2]]
    bees.write_text("\n\n".join(edited) + "\n", "utf-8")
    report = ws.ingest()
    assert (report["added"], report["deleted"], report["computed"]) == (1, 1, 1)
    assert report["skipped"] == len(KETTLE) + len(FAQ) + 2
    assert report["sources"] == {"added": 0, "updated": 1, "skipped": 2, "deleted": 0}

    # Putting the old paragraph back: a new chunk again, but its vector is cached.
    bees.write_text("\n\n".join(BEES) + "\n", "utf-8")
    report = ws.ingest()
    assert (report["added"], report["deleted"], report["cache_hits"], report["computed"]) == (
        1,
        1,
        1,
        0,
    )


@pytest.mark.model
def test_ingest_cleanup_deletes_removed_sources(ws: Workspace) -> None:
    ws.ingest()
    (ws.corpus / "faq.jsonl").unlink()
    kept = ws.ingest("--cleanup", "none")
    assert kept["deleted"] == 0 and kept["documents"] == len(KETTLE) + len(BEES) + len(FAQ)
    gone = ws.ingest()
    assert gone["sources"]["deleted"] == 1 and gone["deleted"] == len(FAQ)
    assert gone["documents"] == len(KETTLE) + len(BEES)


@pytest.mark.model
def test_ingest_and_query_use_dot_cachedvec_by_default(
    ws: Workspace, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(ws.root)
    report = cli_json("ingest", "corpus", *CHUNKING)
    assert report["index"] == os.path.join(".cachedvec", "index")
    assert (ws.root / ".cachedvec" / "index" / "manifest.json").is_file()
    assert (ws.root / ".cachedvec" / "cache.db").is_file()
    found = cli_json("query", "How do I descale the kettle?", "-k", "1")
    assert found["results"][0]["metadata"]["source"] == str(ws.corpus / "kettle.md")


# ----------------------------------------------------------------- query


@pytest.mark.model
def test_query_returns_ranked_results_and_caches_the_question(ws: Workspace) -> None:
    ws.ingest()
    question = ("query", "How do I descale the kettle?", "-k", "3", *ws.where)
    first = cli_json(*question)
    results = first["results"]
    assert len(results) == 3
    for hit in results:
        assert {"text", "score", "metadata"} <= set(hit)
        assert isinstance(hit["score"], float) and "source" in hit["metadata"]
    assert [h["score"] for h in results] == sorted((h["score"] for h in results), reverse=True)
    assert results[0]["text"] == KETTLE[1]
    assert first["query_cached"] is False and first["metric"] == "cosine"
    again = cli_json(*question)
    assert again["query_cached"] is True and again["results"] == results


@pytest.mark.model
def test_query_filter_and_text_output(ws: Workspace) -> None:
    ws.ingest()
    found = cli_json(
        "query", "boiling water", "-k", "5", *ws.where, "--filter", '{"topic": "bees"}'
    )
    assert [h["metadata"]["topic"] for h in found["results"]] == ["bees"]
    text = cli("query", "How do I descale the kettle?", "-k", "1", *ws.where)
    assert text.exit_code == 0 and text.stderr == ""
    assert text.stdout.startswith("1. [") and "kettle.md" in text.stdout


@pytest.mark.model
def test_query_says_when_scores_are_distances(ws: Workspace) -> None:
    ws.ingest("--metric", "l2")
    found = cli_json("query", "How do I descale the kettle?", "-k", "3", *ws.where)
    scores = [h["score"] for h in found["results"]]
    assert found["metric"] == "l2" and scores == sorted(scores)  # nearest first
    assert found["results"][0]["text"] == KETTLE[1]
    text = cli("query", "How do I descale the kettle?", "-k", "1", *ws.where)
    assert text.stdout.startswith("1. [squared distance ")

    # LSH scores count the bits two binary codes differ in, until re-ranking
    # re-scores the candidates with the cached vectors.
    cli_json("reindex", *ws.where, "--factory", "LSH")
    lsh = cli("query", "How do I descale the kettle?", "-k", "1", *ws.where)
    assert lsh.stdout.startswith("1. [bits apart ") and lsh.stdout.split()[3].endswith(".000]")
    again = cli("query", "How do I descale the kettle?", "-k", "1", *ws.where, "--rerank", "4")
    assert again.stdout.startswith("1. [squared distance ")


# ----------------------------------------------------------------- reindex


@pytest.mark.model
def test_reindex_rebuilds_from_the_cache_with_zero_model_calls(ws: Workspace) -> None:
    documents = ws.ingest()["documents"]
    report = cli_json("reindex", *ws.where, "--factory", "HNSW32")
    assert report["factory"] == "HNSW32" and report["metric"] == "cosine"
    assert (report["documents"], report["cache_hits"], report["computed"]) == (
        documents,
        documents,
        0,
    )
    assert read_manifest(ws.index).factory == "HNSW32"
    top = cli_json("query", "How do I descale the kettle?", "-k", "1", *ws.where)
    assert top["results"][0]["text"] == KETTLE[1]


@pytest.mark.model
def test_reindex_computes_missing_vectors_only_when_asked(ws: Workspace) -> None:
    documents = ws.ingest()["documents"]
    empty_cache = f"sqlite:///{ws.root / 'other.db'}"
    open_store(empty_cache).close()  # a plain reindex refuses a store that does not exist
    line = error_line(
        cli("reindex", "--index", ws.index, "--store", empty_cache, "--factory", "HNSW32")
    )
    assert f"{documents} of {documents} vectors are not in the cache" in line
    assert read_manifest(ws.index).factory == "Flat"  # nothing changed
    report = cli_json(
        "reindex",
        "--index",
        ws.index,
        "--store",
        empty_cache,
        "--factory",
        "HNSW32",
        "--compute-missing",
    )
    assert (report["computed"], report["cache_hits"]) == (documents, 0)


# ----------------------------------------------------------------- stats, prune, migrate


@pytest.mark.model
@pytest.mark.parametrize("kind", PERSISTENT_KINDS)
def test_stats_prune_and_migrate(
    ws: Workspace, kind: str, make_store_url: Callable[[str], str]
) -> None:
    ws.store = make_store_url(kind)
    documents = ws.ingest()["documents"]
    cli_json("query", "How do I descale the kettle?", *ws.where)

    stats = cli_json("stats", "--store", ws.store, "--index", ws.index)
    kinds = {n["kind"]: n for n in stats["namespaces"]}
    assert kinds["doc"]["entries"] == documents and kinds["query"]["entries"] == 1
    assert kinds["doc"]["dim"] == 384 and kinds["doc"]["bytes"] > 0
    (index,) = stats["indexes"]
    assert (index["factory"], index["metric"], index["dim"]) == ("Flat", "cosine", 384)
    assert index["counts"]["documents"] == documents and index["model"] == DEFAULT_MODEL_NAME
    assert index["runs"] == 2 and index["hit_rate"] == 0.0

    # The question's vector is the one entry no index uses.
    dry = cli_json("prune", "--store", ws.store, "--index", ws.index, "--dry-run")
    assert (dry["pruned"], dry["kept"], dry["dry_run"]) == (1, documents, True)
    assert doc_entries(ws.store) == documents
    done = cli_json("prune", "--store", ws.store, "--index", ws.index)
    assert done["pruned"] == 1
    after = cli_json("stats", "--store", ws.store)
    assert [n["kind"] for n in after["namespaces"]] == ["doc"]
    assert cli_json("reindex", *ws.where)["computed"] == 0  # what the index uses survived

    if kind in ("sqlite", "postgres"):
        migrated = cli_json("migrate", "--store", ws.store)
        assert migrated["revision"] == migrate.head()


def test_prune_needs_an_index_or_an_age(ws: Workspace) -> None:
    assert "--index" in error_line(cli("prune", "--store", ws.store))
    assert "duration" in error_line(cli("prune", "--store", ws.store, "--older-than", "3x"))


def test_migrate_creates_and_reports_a_fresh_sqlite_cache(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'fresh.db'}"
    assert cli_json("migrate", "--store", url) == {"store": url, "revision": migrate.head()}


# ----------------------------------------------------------------- bad input


def test_missing_path(ws: Workspace) -> None:
    line = error_line(cli("ingest", ws.root / "nope", *ws.where))
    assert "no such file or folder" in line and "nope" in line


def test_training_on_few_vectors_is_one_warning_line(
    ws: Workspace, capfd: pytest.CaptureFixture[str]
) -> None:
    documents = ws.fake_ingest()
    result = cli("reindex", *ws.where, "--factory", "IVF2,Flat")
    assert result.exit_code == 0, result.output
    warning = result.stderr.splitlines()
    assert len(warning) == 1 and warning[0].startswith("warning: training IVF2,Flat")
    assert f"only {documents} vectors" in warning[0]
    assert "WARNING clustering" not in capfd.readouterr().err  # FAISS's own lines
    # Fewer vectors than lists: FAISS refuses, and that error is the only line.
    refused = cli("reindex", *ws.where, "--factory", f"IVF{documents + 1},Flat")
    assert refused.exit_code == 1 and len(refused.stderr.splitlines()) == 1
    assert refused.stderr.startswith("error: cannot train")


def test_binary_file_changes_nothing(ws: Workspace) -> None:
    documents = ws.fake_ingest()
    before = index_files(ws.index)
    (ws.corpus / "logo.txt").write_bytes(b"GIF89a\x00\x01\x02")
    line = error_line(cli("ingest", ws.corpus, *ws.where))
    assert "logo.txt" in line and "binary" in line
    assert index_files(ws.index) == before
    with VectorIndex.load(ws.index) as vindex:
        assert len(vindex) == documents


def test_file_that_is_not_utf8(ws: Workspace) -> None:
    (ws.corpus / "latin1.txt").write_bytes("café crème".encode("latin-1"))
    line = error_line(cli("ingest", ws.corpus, *ws.where))
    assert "latin1.txt" in line and "not UTF-8" in line
    assert not ws.index.exists()


def test_unreadable_file(ws: Workspace) -> None:
    (ws.corpus / "gone.md").symlink_to(ws.root / "deleted-target.md")
    assert "cannot read" in error_line(cli("ingest", ws.corpus, *ws.where))
    assert not ws.index.exists()


@pytest.mark.parametrize("command", ["ingest", "query", "stats"])
def test_store_that_cannot_be_opened(ws: Workspace, command: str) -> None:
    if command == "query":
        ws.fake_ingest()  # without an index, query fails on it before opening the store
    (ws.root / "plain-file").write_text("not a folder")
    args: dict[str, list[str | Path]] = {"ingest": [ws.corpus], "query": ["a question"]}
    url = f"sqlite:///{ws.root / 'plain-file' / 'cache.db'}"
    line = error_line(cli(command, *args.get(command, []), "--index", ws.index, "--store", url))
    assert line.startswith(f"error: cannot open store {url}: "), line


@pytest.mark.parametrize("command", ["ingest", "query", "stats", "prune", "reindex"])
def test_unknown_store_scheme(ws: Workspace, command: str) -> None:
    ws.fake_ingest()
    at: list[str | Path] = ["--index", ws.index]
    args: dict[str, list[str | Path]] = {
        "ingest": [ws.corpus, *at],
        "query": ["a question", *at],
        "reindex": at,
        "prune": ["--older-than", "1d"],
    }
    line = error_line(cli(command, *args.get(command, []), "--store", "bogus://cache"))
    assert "unknown store scheme 'bogus'" in line


@pytest.mark.parametrize("command", ["ingest", "query"])
def test_index_built_by_another_model(ws: Workspace, command: str) -> None:
    ws.fake_ingest()
    before = index_files(ws.index)
    args = [ws.corpus] if command == "ingest" else ["a question"]
    line = error_line(cli(command, *args, *ws.where))
    assert "cachedvec-fake/fake" in line and "reindex --model" in line
    assert index_files(ws.index) == before


@pytest.mark.parametrize("filter_json", ["{bad", "[1, 2]", '{"topic": {"$near": 1}}'])
def test_bad_filter(ws: Workspace, filter_json: str) -> None:
    ws.fake_ingest()
    line = error_line(cli("query", "a question", *ws.where, "--filter", filter_json))
    assert "filter" in line


def test_reindex_with_vectors_missing_says_how_many(ws: Workspace) -> None:
    documents = ws.fake_ingest()
    line = error_line(
        cli("reindex", "--index", ws.index, "--store", "memory://", "--factory", "HNSW32")
    )
    assert f"{documents} of {documents} vectors are not in the cache" in line
    assert "--compute-missing" in line


def test_missing_index(ws: Workspace) -> None:
    open_store(ws.store).close()
    for command in (["query", "a question"], ["reindex"], ["stats"]):
        assert "no cachedvec index" in error_line(cli(*command, *ws.where))


@pytest.mark.parametrize("kind", ["sqlite", "file", "diskcache"])
def test_commands_that_only_read_the_cache_never_create_one(ws: Workspace, kind: str) -> None:
    # A mistyped --store must not pass as an empty cache (and leave one behind).
    ws.fake_ingest()
    typo = store_url(kind, ws.root / "typo")
    for command in (
        ["stats"],
        ["prune", "--older-than", "30d", "--dry-run"],
        ["query", "a question", "--index", ws.index],
    ):
        assert "no cache has been written there" in error_line(cli(*command, "--store", typo))
    assert not (ws.root / "typo").exists()


def test_stats_refuses_a_damaged_index_and_describes_the_default_one(
    ws: Workspace, monkeypatch: pytest.MonkeyPatch
) -> None:
    ws.fake_ingest()
    monkeypatch.chdir(ws.root)
    shutil.copytree(ws.index, ws.root / ".cachedvec" / "index")
    (default,) = cli_json("stats", "--store", ws.store)["indexes"]
    assert default["index"] == ".cachedvec/index" and default["counts"]["documents"] > 0

    faiss_file = read_manifest(ws.index).files["index"]["name"]
    with open(ws.index / faiss_file, "r+b") as f:
        f.truncate(100)
    line = error_line(cli("stats", *ws.where))
    assert faiss_file in line and "damaged" in line


@pytest.mark.model
def test_ingest_keeps_the_metric_of_an_existing_index_unless_told_otherwise(
    ws: Workspace,
) -> None:
    ws.ingest("--metric", "l2")
    (ws.corpus / "more.txt").write_text("A new paragraph about kettles and tea.\n", "utf-8")
    assert ws.ingest()["added"] == 1  # no --metric: the index keeps its own
    assert read_manifest(ws.index).metric == "l2"
    line = error_line(cli("ingest", ws.corpus, *ws.where, *CHUNKING, "--metric", "cosine"))
    assert "reindex" in line and "cosine" in line
    assert read_manifest(ws.index).metric == "l2"


@pytest.mark.parametrize(
    "option", [["--chunk-size", "0"], ["--chunk-overlap", "5000"], ["--factory", "NoSuchIndex7"]]
)
def test_bad_ingest_options(ws: Workspace, option: list[str]) -> None:
    error_line(cli("ingest", ws.corpus, *ws.where, *option))
    assert not ws.index.exists()
    assert not (ws.root / "cache.db").exists()  # refused before a cache is made


@pytest.mark.parametrize("url", ["memory://", "bogus://x"])
def test_migrate_a_store_that_is_not_sql(url: str) -> None:
    assert "SQL" in error_line(cli("migrate", "--store", url))


@pytest.mark.parametrize(
    "url",
    [
        "postgres://u:secret@127.0.0.1:1/db",
        "sqlitex:///a.db",
        "postgresql+psycopg://u:secret@127.0.0.1:abc/db",
        "postgresql+psycopg2://u:secret@127.0.0.1/db",
    ],
)
def test_migrate_bad_sql_urls_are_one_line(url: str) -> None:
    line = error_line(cli("migrate", "--store", url))
    assert "secret" not in line


def test_migrate_down_to_base_and_back(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'cache.db'}"
    assert cli_json("migrate", "--store", url)["revision"] == migrate.head()
    assert cli_json("migrate", "--store", url, "--revision", "base")["revision"] is None
    assert migrate.current(url) is None  # the tables are gone, not just the report
    assert "no cachedvec tables" in cli("migrate", "--store", url, "--revision", "base").stdout
    assert cli_json("migrate", "--store", url)["revision"] == migrate.head()


def _sqlite_cache(folder: Path, *statements: str) -> str:
    """A SQLite cache holding one entry, then changed behind cachedvec's back."""
    url = f"sqlite:///{folder / 'cache.db'}"
    with open_store(url) as opened:
        opened.mset([("k", b"v")])
    _sqlite_execute(folder / "cache.db", *statements)
    return url


def _sqlite_execute(path: Path, *statements: str) -> None:
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        for statement in statements:
            conn.execute(statement)
    finally:
        conn.close()


@pytest.mark.parametrize("recorded", ["0002", "deadbeef"])
@pytest.mark.parametrize("target", ["head", "base"])
def test_migrate_a_cache_at_a_revision_unknown_to_the_code(
    tmp_path: Path, recorded: str, target: str
) -> None:
    update = f"UPDATE cachedvec_alembic_version SET version_num = '{recorded}'"
    url = _sqlite_cache(tmp_path, update)
    line = error_line(cli("migrate", "--store", url, "--revision", target))
    assert f"revision '{recorded}', unknown to this cachedvec" in line
    assert "upgrade cachedvec" in line


@pytest.mark.parametrize("target", ["", "9999", "-1"])
def test_migrate_an_empty_or_unknown_revision_is_one_line(tmp_path: Path, target: str) -> None:
    url = _sqlite_cache(tmp_path)
    line = error_line(cli("migrate", "--store", url, "--revision", target))
    assert f"'{target}' is not a cachedvec schema revision: use head, base or one of" in line


def test_migrate_recreates_a_table_dropped_behind_its_back(tmp_path: Path) -> None:
    url = _sqlite_cache(tmp_path, "DROP TABLE cachedvec_entries")
    result = cli("migrate", "--store", url)
    assert result.exit_code == 0, result.output
    assert "tables are missing: starting again from no tables" in result.stderr
    assert result.stdout == f"{url} is at revision {migrate.head()}\n"
    assert cli_json("stats", "--store", url)["namespaces"] == []


def test_migrate_names_a_foreign_table_of_the_same_name(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'app.db'}"
    _sqlite_execute(tmp_path / "app.db", "CREATE TABLE cachedvec_entries (id INTEGER)")
    line = error_line(cli("migrate", "--store", url))
    assert "has a table cachedvec_entries that cachedvec did not create" in line


@pytest.mark.parametrize("kind", PERSISTENT_KINDS)
@pytest.mark.parametrize("age", ["99999999999999999w", "9" * 400 + "s"])
def test_prune_with_an_age_beyond_any_entry_drops_nothing(
    kind: str, age: str, make_store_url: Callable[[str], str]
) -> None:
    url = make_store_url(kind)
    with open_store(url) as opened:
        opened.mset([("k", b"v")])
    assert cli_json("prune", "--store", url, "--older-than", age)["pruned"] == 0
    with open_store(url) as opened:
        assert opened.mget(["k"]) == [b"v"]


def test_an_empty_source_is_recorded_once(ws: Workspace) -> None:
    ws.fake_ingest()
    (ws.corpus / "blank.txt").write_text("   \n", "utf-8")
    ws.fake_ingest()
    again = ws.fake_ingest_report()
    assert again.sources.added == 0 and again.sources.skipped == 4


def test_an_edit_that_keeps_every_chunk_is_recorded_once(ws: Workspace) -> None:
    ws.fake_ingest()
    with open(ws.corpus / "bees.txt", "a", encoding="utf-8") as f:
        f.write("\n\n\n")
    ws.fake_ingest()
    again = cachedvec.ingest(
        [ws.corpus],
        index=ws.index,
        store=ws.store,
        model=FakeEmbeddings(384),
        chunk_size=100,
        chunk_overlap=0,
    )
    assert again.sources.updated == 0 and again.sources.skipped == 3


@pytest.mark.model
def test_reindex_model_default_switches_to_the_bundled_model(ws: Workspace) -> None:
    documents = ws.fake_ingest()
    report = cli_json("reindex", *ws.where, "--model", "default")
    assert report["model"] == DEFAULT_MODEL_NAME and report["computed"] == documents


@pytest.mark.postgres
def test_stats_never_prints_a_password(postgres_url: str) -> None:
    from urllib.parse import urlsplit

    password = urlsplit(postgres_url).password
    assert password
    result = cli("stats", "--store", postgres_url)
    assert result.exit_code == 0, result.output
    assert password not in result.output
    assert password not in cli("stats", "--store", postgres_url, "--json").output


# ----------------------------------------------------------------- real processes


def _until(condition: Any, process: subprocess.Popen[str], timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if process.poll() is not None or time.monotonic() > deadline:
            process.kill()
            out, err = process.communicate()
            pytest.fail(f"never reached the point to interrupt (rc {process.returncode}):\n{err}")
        time.sleep(0.1)


def _start(*args: str | Path) -> subprocess.Popen[str]:
    # Reset SIGINT in the child: a shell running pytest in the background
    # leaves it ignored, and Python would then never raise KeyboardInterrupt.
    return subprocess.Popen(
        [CLI, *map(str, args)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )


def test_an_interrupt_hidden_behind_a_cleanup_error_still_exits_as_an_interrupt(
    capsys: pytest.CaptureFixture[str],
) -> None:
    # Ctrl-C while a store opens: the pool's cleanup fails as the interrupt
    # unwinds, and open_store wraps that failure in a StoreError.
    from cachedvec.cli import handle_errors
    from cachedvec.errors import StoreError

    @handle_errors
    def opening() -> None:
        try:
            try:
                raise KeyboardInterrupt
            except KeyboardInterrupt:
                raise RuntimeError()  # noqa: B904 (the implicit context is the point)
        except RuntimeError as exc:
            raise StoreError("cannot open store 'sqlite:///x.db': ") from exc

    @handle_errors
    def failing() -> None:
        raise StoreError("cannot open store 'sqlite:///x.db': locked")

    with pytest.raises(SystemExit) as interrupted:
        opening()
    assert interrupted.value.code == 130
    assert capsys.readouterr().err.startswith("interrupted")
    with pytest.raises(SystemExit) as failed:
        failing()
    assert failed.value.code == 1
    assert capsys.readouterr().err == "error: cannot open store 'sqlite:///x.db': locked\n"


@pytest.mark.model
def test_ctrl_c_leaves_the_index_whole_and_the_next_run_finishes(ws: Workspace) -> None:
    ws.ingest()
    # Each round adds about 240 chunks, embedded one by one: many seconds of
    # work after the first vector is cached, when the Ctrl-C is sent. A run
    # that still finished first (pytest paused) is a miss: go again with new files.
    rounds = [
        ["tides.md", "volcanoes.md", "lighthouses.md"],
        ["photosynthesis.md", "typography.md", "water-cycle.md"],
        ["bread-baking.md", "chess-openings.md", "solar-eclipses.md"],
    ]
    for added in rounds:
        documents = read_manifest(ws.index).counts["documents"]
        records = (ws.index / "ingest.json").read_text()
        sources_before = len(list(ws.corpus.iterdir()))
        for name in added:
            shutil.copy(ENCYCLOPEDIA / name, ws.corpus / name)
        cached = doc_entries(ws.store)
        process = _start("ingest", ws.corpus, *ws.where, *CHUNKING, "--batch-size", "1")
        # mid-way through embedding
        _until(lambda cached=cached: doc_entries(ws.store) > cached, process)
        process.send_signal(signal.SIGINT)
        out, err = process.communicate(timeout=60)
        if process.returncode != 0:
            break
    else:
        pytest.fail("every run finished before its Ctrl-C")
    assert process.returncode == 130, err
    assert out == "" and "Traceback" not in err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("interrupted"), err

    # The index and its records are exactly as the last finished run left them.
    with VectorIndex.load(ws.index) as vindex:
        assert len(vindex) == documents
    assert (ws.index / "ingest.json").read_text() == records

    # The next run reuses every vector the interrupted run cached, computes the rest.
    saved = doc_entries(ws.store) - cached
    report = ws.ingest()
    assert report["sources"] == {
        "added": len(added),
        "updated": 0,
        "skipped": sources_before,
        "deleted": 0,
    }
    with VectorIndex.load(ws.index) as vindex:
        new_texts = [r.text for r in vindex.records() if Path(r.metadata["source"]).name in added]
    assert report["added"] == len(new_texts) > saved >= 1
    assert report["cache_hits"] == saved
    assert report["computed"] == len(set(new_texts)) - saved


def test_kill_prints_one_line_and_exits_non_zero(ws: Workspace) -> None:
    # Enough text (embedded one by one) that the run cannot finish before the signal.
    for name in ("tides.md", "volcanoes.md"):
        shutil.copy(ENCYCLOPEDIA / name, ws.corpus / name)
    process = _start("ingest", ws.corpus, *ws.where, *CHUNKING, "--batch-size", "1")
    # The cache exists once the job runs (the model is not loaded yet).
    _until(lambda: (ws.root / "cache.db").exists(), process)
    process.send_signal(signal.SIGTERM)
    out, err = process.communicate(timeout=60)
    assert process.returncode == 143, err  # SIGTERM is handled like Ctrl-C
    assert out == "" and "Traceback" not in err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("interrupted: the index was left as it was"), err
    assert not (ws.index / "manifest.json").exists()


def test_progress_bar_only_on_a_terminal(ws: Workspace) -> None:
    ws.fake_ingest()
    plain = subprocess.run([CLI, "reindex", *ws.where], capture_output=True, text=True, check=True)
    assert plain.stderr == "" and plain.stdout.startswith("rebuilt ")

    leader, follower = pty.openpty()
    # A terminal of zero columns gets an empty bar: give it a real size.
    fcntl.ioctl(follower, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 100, 0, 0))
    try:
        terminal = subprocess.run(
            [CLI, "reindex", *ws.where],
            stdout=subprocess.PIPE,
            stderr=follower,
            text=True,
            check=True,
        )
    finally:
        os.close(follower)
    shown = b""
    try:
        while chunk := os.read(leader, 4096):
            shown += chunk
    except OSError:  # EIO once the terminal has been read dry
        pass
    finally:
        os.close(leader)
    assert terminal.stdout.startswith("rebuilt ")
    assert b"reading" in shown or b"indexing" in shown
