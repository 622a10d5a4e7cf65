"""Reading sources: JSON Lines records and which files a folder yields.

Everything runs on real files under ``tmp_path``. The JSON Lines checks go
through ``Chunker`` directly and, for ``--text-field``, through the CLI
with the bundled model's namespace filled in advance (see
``tests.test_models.seed_default_cache``), so no model is loaded.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest

from cachedvec.errors import SourceError
from cachedvec.index import VectorIndex
from cachedvec.sources import Chunker, find_files, read_source
from tests.test_cli import cli, cli_json, error_line
from tests.test_models import seed_default_cache


def jsonl(path: Path, *records: Any) -> Path:
    """Write one JSON value a line (strings are written as they are)."""
    lines = [r if isinstance(r, str) else json.dumps(r) for r in records]
    path.write_text("\n".join(lines) + "\n", "utf-8")
    return path


def chunks_of(path: Path, **options: Any) -> list[tuple[str, dict[str, Any]]]:
    chunker = Chunker(chunk_size=200, chunk_overlap=0, **options)
    return [(c.text, c.metadata) for c in chunker.chunks(read_source(path))]


# ----------------------------------------------------------------- JSON Lines


def test_text_field_chooses_what_is_embedded_and_the_rest_is_metadata(tmp_path: Path) -> None:
    rows = jsonl(
        tmp_path / "rows.jsonl",
        {"text": "the summary", "body": "The full body of the first record.", "n": 1},
        {"text": "another summary", "body": "The second body.", "n": 2},
    )
    source = str(rows.resolve())
    assert chunks_of(rows, text_field="body") == [
        ("The full body of the first record.", {"text": "the summary", "n": 1, "source": source}),
        ("The second body.", {"text": "another summary", "n": 2, "source": source}),
    ]
    # The default field is "text", and then "body" is plain metadata.
    assert [t for t, _ in chunks_of(rows)] == ["the summary", "another summary"]
    assert chunks_of(rows)[0][1]["body"] == "The full body of the first record."


def test_a_line_that_is_not_json_names_the_file_and_line(tmp_path: Path) -> None:
    rows = jsonl(
        tmp_path / "rows.jsonl",
        {"text": "fine"},
        "",  # blank lines are skipped but still counted
        {"text": "also fine"},
        '{"text": "torn',
    )
    with pytest.raises(SourceError, match=r"rows\.jsonl:4: not valid JSON"):
        chunks_of(rows)


@pytest.mark.parametrize(
    "record",
    [
        {"body": "no text field at all"},
        {"text": None},
        {"text": 42},
        {"text": ["a", "list"]},
        {"text": {"nested": "object"}},
        ["not", "an", "object"],
        "just a string",
    ],
    ids=["missing", "null", "number", "list", "object", "array-line", "string-line"],
)
def test_a_missing_or_non_string_text_field_is_a_clear_error(tmp_path: Path, record: Any) -> None:
    rows = jsonl(tmp_path / "rows.jsonl", {"text": "the first line is fine"}, json.dumps(record))
    with pytest.raises(SourceError) as caught:
        chunks_of(rows)
    message = str(caught.value)
    assert "rows.jsonl:2:" in message and "string 'text' field" in message


def test_only_scalar_fields_become_metadata(tmp_path: Path) -> None:
    rows = jsonl(
        tmp_path / "rows.jsonl",
        {
            "text": "A record with every kind of field.",
            "title": "t",
            "year": 2024,
            "score": 0.5,
            "draft": False,
            "tags": ["a", "b"],
            "author": {"name": "x"},
            "editor": None,
        },
    )
    ((_, metadata),) = chunks_of(rows)
    assert metadata == {
        "title": "t",
        "year": 2024,
        "score": 0.5,
        "draft": False,
        "source": str(rows.resolve()),
    }


def test_a_records_own_source_is_replaced_by_the_file_path(tmp_path: Path) -> None:
    rows = jsonl(
        tmp_path / "rows.jsonl",
        {"text": "Copied from elsewhere.", "source": "https://example.com/page", "id": "r1"},
    )
    ((_, metadata),) = chunks_of(rows)
    assert metadata == {"source": str(rows.resolve()), "id": "r1"}


def test_a_line_separator_inside_a_json_string_is_text(tmp_path: Path) -> None:
    rows = tmp_path / "rows.jsonl"
    records = [{"text": "first part\u2028second part"}, {"text": "next\u0085record"}]
    rows.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records), "utf-8")
    assert [t for t, _ in chunks_of(rows)] == ["first part\u2028second part", "next\u0085record"]


def test_cli_text_field_ingests_that_field(tmp_path: Path) -> None:
    rows = jsonl(
        tmp_path / "rows.jsonl",
        {"title": "Kettle", "body": "Descale the kettle every month with citric acid."},
        {"title": "Bees", "body": "Bees dance to tell the hive where flowers are."},
    )
    store, index = f"sqlite:///{tmp_path / 'cache.db'}", tmp_path / "index"
    bodies = [
        "Descale the kettle every month with citric acid.",
        "Bees dance to tell the hive where flowers are.",
    ]
    seed_default_cache(store, documents=bodies)
    report = cli_json(
        "ingest", rows, "--text-field", "body", "--index", index, "--store", store
    )  # every vector is cached: the bundled model is never loaded
    assert (report["added"], report["computed"], report["cache_hits"]) == (2, 0, 2)
    with VectorIndex.load(index) as vindex:
        records = sorted((r.text, r.metadata["title"]) for r in vindex.records())
    assert records == [(bodies[1], "Bees"), (bodies[0], "Kettle")]


def test_cli_text_field_missing_from_a_record_is_one_error_line(tmp_path: Path) -> None:
    rows = jsonl(tmp_path / "rows.jsonl", {"text": "has text but no body"})
    index = tmp_path / "index"
    line = error_line(
        cli(
            "ingest",
            rows,
            "--text-field",
            "body",
            "--index",
            index,
            "--store",
            f"sqlite:///{tmp_path / 'cache.db'}",
        )  # fmt: skip
    )
    assert "rows.jsonl:1:" in line and "'body'" in line
    assert not index.exists()


# ----------------------------------------------------------------- finding files


def test_hidden_files_and_folders_are_skipped(tmp_path: Path) -> None:
    (tmp_path / ".git").mkdir()
    (tmp_path / ".git" / "notes.md").write_text("hidden folder")
    (tmp_path / "sub" / ".cache").mkdir(parents=True)
    (tmp_path / "sub" / ".cache" / "deep.txt").write_text("hidden folder deeper down")
    (tmp_path / ".draft.md").write_text("hidden file")
    (tmp_path / "sub" / ".env.txt").write_text("hidden file in a subfolder")
    (tmp_path / "visible.md").write_text("kept")
    (tmp_path / "sub" / "kept.txt").write_text("kept")
    found = find_files([tmp_path])
    assert sorted(found) == sorted(
        p.resolve() for p in [tmp_path / "visible.md", tmp_path / "sub" / "kept.txt"]
    )


def test_a_file_named_directly_is_kept_whatever_its_suffix(tmp_path: Path) -> None:
    for name in ("notes.log", "README", ".hidden.md"):
        (tmp_path / name).write_text(f"text of {name}")
    # In a folder only known suffixes count...
    assert find_files([tmp_path]) == []
    # ...but a file the user names is always read, as text.
    named = [tmp_path / "notes.log", tmp_path / "README", tmp_path / ".hidden.md"]
    assert find_files(named) == [p.resolve() for p in named]
    assert [read_source(p).kind for p in named] == ["text", "text", "markdown"]


@pytest.mark.parametrize(
    ("name", "kind"),
    [
        ("a.md", "markdown"),
        ("a.markdown", "markdown"),
        ("A.MARKDOWN", "markdown"),
        ("a.txt", "text"),
        ("a.text", "text"),
        ("a.rst", "text"),
        ("a.jsonl", "jsonl"),
    ],
)
def test_every_supported_suffix_is_found_and_read_as_its_kind(
    tmp_path: Path, name: str, kind: str
) -> None:
    path = tmp_path / name
    path.write_text('{"text": "x"}\n' if kind == "jsonl" else "# Title\n\nSome text.\n")
    (tmp_path / "ignored.html").write_text("<p>not a supported suffix</p>")
    assert find_files([tmp_path]) == [path.resolve()]
    assert read_source(path).kind == kind


@pytest.mark.parametrize("name", ["doc.md", "doc.markdown"])
def test_markdown_chunks_break_before_headings(tmp_path: Path, name: str) -> None:
    text = "# One\n" + "alpha " * 25 + "\n## Two\n" + "beta " * 25 + "\n"
    (tmp_path / name).write_text(text)
    pieces = [t for t, _ in chunks_of(tmp_path / name)]
    assert [p.splitlines()[0] for p in pieces] == ["# One", "## Two"]


def test_a_symlinked_file_counts_once_as_its_target(tmp_path: Path) -> None:
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    target = corpus / "real.md"
    target.write_text("the one and only text")
    (corpus / "alias.md").symlink_to(target)
    outside = tmp_path / "outside.txt"
    outside.write_text("a file outside the folder")
    (corpus / "link-out.txt").symlink_to(outside)
    assert sorted(find_files([corpus])) == sorted([outside.resolve(), target.resolve()])
    # Named directly too, and together with its folder: still once.
    assert sorted(find_files([corpus / "alias.md", corpus])) == sorted(
        [target.resolve(), outside.resolve()]
    )


def test_a_symlinked_folder_is_not_followed(tmp_path: Path) -> None:
    corpus, elsewhere = tmp_path / "corpus", tmp_path / "elsewhere"
    corpus.mkdir()
    elsewhere.mkdir()
    (elsewhere / "far.md").write_text("reachable only through the link")
    (corpus / "near.md").write_text("in the folder")
    (corpus / "linked").symlink_to(elsewhere, target_is_directory=True)
    (corpus / "loop").symlink_to(corpus, target_is_directory=True)  # would never end
    assert find_files([corpus]) == [(corpus / "near.md").resolve()]


def test_a_missing_path_is_a_source_error(tmp_path: Path) -> None:
    with pytest.raises(SourceError, match="no such file or folder"):
        find_files([tmp_path / "nope"])


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"GIF89a\x00\x01\x02", "looks binary"),
        ("caf\u00e9 cr\u00e8me".encode("latin-1"), "is not UTF-8 text (bad byte at offset 3)"),
        (b"valid start \xff\xfe", "is not UTF-8 text"),
    ],
    ids=["nul", "latin-1", "bad-tail"],
)
def test_binary_and_non_utf8_files_are_source_errors(
    tmp_path: Path, data: bytes, message: str
) -> None:
    path = tmp_path / "file.txt"
    path.write_bytes(data)
    with pytest.raises(SourceError) as caught:
        read_source(path)
    assert str(path) in str(caught.value) and message in str(caught.value)


@pytest.mark.parametrize("name", ["notes.txt", "notes.md"])
def test_a_byte_order_mark_is_stripped_from_text(tmp_path: Path, name: str) -> None:
    path = tmp_path / name
    path.write_bytes(b"\xef\xbb\xbfFirst words of the file.")
    ((text, _),) = chunks_of(path)
    assert text == "First words of the file."
    # Same text without the mark: the same chunk, so the same cache key.
    plain = tmp_path / f"plain-{name}"
    plain.write_bytes(b"First words of the file.")
    assert chunks_of(plain)[0][0] == text


def test_a_byte_order_mark_does_not_break_the_first_json_line(tmp_path: Path) -> None:
    path = tmp_path / "rows.jsonl"
    path.write_bytes(b"\xef\xbb\xbf" + json.dumps({"text": "first row", "k": "v"}).encode())
    assert chunks_of(path) == [("first row", {"k": "v", "source": str(path.resolve())})]


@pytest.mark.parametrize(
    ("encoding", "name"), [("utf-16", "UTF-16"), ("utf-32", "UTF-32")], ids=["utf16", "utf32"]
)
def test_utf16_and_utf32_files_are_named_as_such(tmp_path: Path, encoding: str, name: str) -> None:
    # Windows tools write UTF-16 with a byte-order mark; "looks binary" would mislead.
    path = tmp_path / "notes.txt"
    path.write_bytes("Windows notes".encode(encoding))
    with pytest.raises(SourceError, match=f"is {name} text; only UTF-8 is ingested"):
        read_source(path)


def test_a_named_pipe_in_a_folder_is_skipped_not_read(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # Reading a FIFO blocks until someone writes to it: the run would hang forever.
    (tmp_path / "a.txt").write_text("a file", "utf-8")
    os.mkfifo(tmp_path / "pipe.txt")
    with caplog.at_level("WARNING", logger="cachedvec"):
        assert find_files([tmp_path]) == [(tmp_path / "a.txt").resolve()]
    (skipped,) = [r.getMessage() for r in caplog.records]
    assert skipped.startswith(f"skipping {tmp_path / 'pipe.txt'}: not a regular file")


def test_a_named_pipe_named_directly_is_a_source_error(tmp_path: Path) -> None:
    os.mkfifo(tmp_path / "pipe.txt")
    with pytest.raises(SourceError, match="pipe.txt is not a regular file or a folder"):
        find_files([tmp_path / "pipe.txt"])
