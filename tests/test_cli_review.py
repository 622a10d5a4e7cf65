"""Command-line defects found by a fresh-eyes review, each with the test that shows it fixed.

Same conventions as ``tests/test_cli.py``: commands run in-process through
click's ``CliRunner``; tests that embed with the real model carry
``@pytest.mark.model``.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest

from cachedvec.cli import main
from tests.test_cli import Workspace, cli, cli_json, error_line


@pytest.fixture
def ws(tmp_path: Path) -> Workspace:
    return Workspace(tmp_path)


@pytest.mark.parametrize("text", ["", "   \n\t"])
def test_an_empty_question_is_one_error_line(tmp_path: Path, text: str) -> None:
    # Refused before the index or the store is opened: no other error hides it.
    line = error_line(cli("query", text, "--index", tmp_path / "idx"))
    assert line == "error: the question is empty: give the text to search for"


def test_a_folder_without_supported_files_warns_and_makes_no_index(tmp_path: Path) -> None:
    corpus = tmp_path / "scans"
    corpus.mkdir()
    (corpus / "manual.pdf").write_bytes(b"%PDF-1.7")
    index = tmp_path / "idx"
    result = cli(
        "ingest", corpus, "--index", index, "--store", f"sqlite:///{tmp_path / 'c.db'}", "--json"
    )
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["documents"] == 0  # stdout stays one JSON object
    (warning,) = result.stderr.splitlines()
    assert warning.startswith(f"warning: no text, Markdown or JSON Lines files under {corpus}")
    assert not index.exists()


@pytest.mark.model
def test_ingest_reports_repeated_texts_embedded_once(tmp_path: Path) -> None:
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    same = "Descale the kettle every month with citric acid."
    (corpus / "notes.txt").write_text("\n\n".join([same, same, "Bees dance.", same]), "utf-8")
    where = ["--index", tmp_path / "idx", "--store", f"sqlite:///{tmp_path / 'c.db'}"]
    chunking = ["--chunk-size", "60", "--chunk-overlap", "0"]

    result = cli("ingest", corpus, *where, *chunking)
    assert result.exit_code == 0, result.output
    assert "chunks:  4 added" in result.stdout
    assert "vectors: 0 from the cache, 2 computed, 2 repeated texts reused" in result.stdout

    (corpus / "notes.txt").write_text("\n\n".join([same, "Bees dance.", same]), "utf-8")
    again = cli("ingest", corpus, *where, *chunking, "--json")
    report = json.loads(again.stdout)
    # Only the last repeat's id is gone; nothing to embed, nothing repeated.
    assert (report["deleted"], report["computed"], report["duplicates"]) == (1, 0, 0)


def readme_json_fields() -> dict[str, dict[str, set[str]]]:
    """``{command: {field: nested fields}}`` from the README's table of ``--json`` fields."""
    readme = (Path(__file__).parents[1] / "README.md").read_text("utf-8")
    table: dict[str, dict[str, set[str]]] = {}
    for command, cells in re.findall(r"^\| `(\w+)` \| (.+) \|$", readme, re.M):
        table[command] = {
            name: set(re.findall(r"`(\w+)`", inside))
            for name, inside in re.findall(r"`(\w+)`(?: \(([^)]*)\))?", cells)
        }
    return table


def fields(payload: dict[str, Any], documented: dict[str, set[str]]) -> dict[str, set[str]]:
    """``payload``'s keys, each with its own keys where the README lists nested ones."""
    out = {}
    for name, value in payload.items():
        sample = value[0] if isinstance(value, list) and value else value
        out[name] = set(sample) if documented.get(name) and isinstance(sample, dict) else set()
    return out


@pytest.mark.model
def test_the_readme_lists_every_json_field_of_every_command(ws: Workspace) -> None:
    documented = readme_json_fields()
    assert set(documented) == set(main.commands)
    ws.ingest()
    payloads = {
        "ingest": ws.ingest(),
        "query": cli_json("query", "How do I descale the kettle?", *ws.where),
        "reindex": cli_json("reindex", *ws.where, "--factory", "HNSW32"),
        "stats": cli_json("stats", *ws.where),
        "prune": cli_json("prune", *ws.where, "--dry-run"),
        "migrate": cli_json("migrate", "--store", ws.store),
    }
    for command, payload in payloads.items():
        assert fields(payload, documented[command]) == documented[command], command
