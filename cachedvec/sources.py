"""Reading ingestion sources and splitting them into chunks.

A *source* is one file: Markdown (``.md``, ``.markdown``), plain text
(``.txt``, ``.text``, ``.rst``) or JSON Lines (``.jsonl``: one object a line,
its ``text`` field embedded and its other scalar fields kept as metadata,
except ``source``, which is always the file's path; lists, objects and
nulls are left out). A source's identity is its resolved absolute path
(a symlink counts as its target; symlinked folders are not followed) and
its version is the sha256 of its bytes: an unchanged file is recognised
without splitting it. A leading byte-order mark is not part of the text.

Splitting uses langchain-text-splitters (Markdown-aware for Markdown files),
so chunk boundaries follow headings, paragraphs and sentences.
"""

from __future__ import annotations

import codecs
import hashlib
import json
import logging
import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cachedvec.errors import ConfigError, SourceError

TEXT_SUFFIXES = {
    ".md": "markdown",
    ".markdown": "markdown",
    ".txt": "text",
    ".text": "text",
    ".rst": "text",
    ".jsonl": "jsonl",
}
_SNIFF = 8192

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Chunk:
    """One piece of a source, ready to embed.

    Metadata carries no position: a chunk whose text did not change keeps
    its identity when text is inserted before it, so it is not rewritten.
    """

    text: str
    metadata: dict[str, Any] = field(default_factory=dict)


@dataclass
class Source:
    """One file to ingest: where it is, what version it is, how to read it."""

    path: Path
    kind: str
    content_hash: str
    data: bytes

    @property
    def name(self) -> str:
        return str(self.path)


def find_files(paths: Iterable[str | os.PathLike[str]]) -> list[Path]:
    """Every supported file under ``paths`` (files named directly are always kept).

    Only regular files are read: a named pipe would block the run forever
    and a device never ends, so one named directly is a :class:`SourceError`,
    and one met in a folder is skipped with a warning. A folder holding no
    supported file is a warning too: with incremental cleanup its chunks
    would silently leave the index.
    """
    found: dict[Path, None] = {}
    for given in paths:
        path = Path(given).expanduser()
        if not path.exists():
            raise SourceError(f"no such file or folder: {given}")
        if path.is_file():
            found[path.resolve()] = None
            continue
        if not path.is_dir():
            raise SourceError(f"{given} is not a regular file or a folder; only files are ingested")
        matched = 0  # supported files under this folder, also ones another path gave
        for dirpath, dirnames, filenames in os.walk(path):
            dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
            for name in sorted(filenames):
                if name.startswith(".") or Path(name).suffix.lower() not in TEXT_SUFFIXES:
                    continue
                file = Path(dirpath) / name
                if file.is_file() or not file.exists():  # a broken link fails as unreadable
                    found[file.resolve()] = None
                    matched += 1
                else:
                    log.warning("skipping %s: not a regular file (a pipe, a socket...)", file)
        if not matched:
            log.warning(
                "no text, Markdown or JSON Lines files under %s (suffixes: %s)",
                given,
                " ".join(sorted(TEXT_SUFFIXES)),
            )
    return list(found)


def read_source(path: Path) -> Source:
    """Read a file and hash it; binary or non-UTF-8 files raise :class:`SourceError`."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise SourceError(f"cannot read {path}: {exc.strerror or exc}") from exc
    if data.startswith((codecs.BOM_UTF32_LE, codecs.BOM_UTF32_BE)):
        raise SourceError(f"{path} is UTF-32 text; only UTF-8 is ingested (convert it first)")
    if data.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
        raise SourceError(f"{path} is UTF-16 text; only UTF-8 is ingested (convert it first)")
    if b"\x00" in data[:_SNIFF]:
        raise SourceError(f"{path} looks binary (it contains NUL bytes); only text is ingested")
    try:
        data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise SourceError(f"{path} is not UTF-8 text (bad byte at offset {exc.start})") from exc
    kind = TEXT_SUFFIXES.get(path.suffix.lower(), "text")
    return Source(path, kind, hashlib.sha256(data).hexdigest(), data)


#: Changes when the same settings would split a file differently.
SPLITTER_VERSION = 2


class Chunker:
    """Splits sources into :class:`Chunk` objects of bounded size."""

    def __init__(
        self, chunk_size: int = 1000, chunk_overlap: int = 150, text_field: str = "text"
    ) -> None:
        if chunk_size < 1:
            raise ConfigError(f"chunk size must be positive, got {chunk_size}")
        if not 0 <= chunk_overlap < chunk_size:
            raise ConfigError(
                f"chunk overlap must be between 0 and the chunk size, got {chunk_overlap}"
            )
        from langchain_text_splitters import Language, RecursiveCharacterTextSplitter

        self.chunk_size, self.chunk_overlap, self.text_field = chunk_size, chunk_overlap, text_field
        self._splitters = {
            # Not MarkdownTextSplitter: it takes its heading patterns as plain
            # text (is_separator_regex=False), so it never splits at a heading.
            "markdown": RecursiveCharacterTextSplitter.from_language(
                Language.MARKDOWN, chunk_size=chunk_size, chunk_overlap=chunk_overlap
            ),
            "text": RecursiveCharacterTextSplitter(
                chunk_size=chunk_size, chunk_overlap=chunk_overlap
            ),
        }

    @property
    def settings(self) -> dict[str, Any]:
        """What changes the chunks: part of a source's recorded version."""
        # The splitter version: a new one re-splits every source once; chunks
        # whose text is unchanged keep their cached vectors.
        return {**self.options, "splitter": SPLITTER_VERSION}

    @property
    def options(self) -> dict[str, Any]:
        """The arguments that make an equal Chunker (in another process, say)."""
        return {
            "chunk_size": self.chunk_size,
            "chunk_overlap": self.chunk_overlap,
            "text_field": self.text_field,
        }

    def chunks(self, source: Source) -> list[Chunk]:
        base = {"source": source.name}
        if source.kind == "jsonl":
            return list(self._jsonl_chunks(source, base))
        # utf-8-sig: a byte-order mark (Windows editors write one) is not text,
        # and would change the first chunk's vector and break JSON Lines.
        text = source.data.decode("utf-8-sig")
        pieces = self._splitters[source.kind].split_text(text)
        return [Chunk(p, dict(base)) for p in pieces if p.strip()]

    def _jsonl_chunks(self, source: Source, base: dict[str, Any]) -> Iterator[Chunk]:
        # Split on "\n" only: str.splitlines() also breaks on U+2028 and kin,
        # which JSON allows unescaped inside strings.
        text = source.data.decode("utf-8-sig")
        for lineno, line in enumerate(text.split("\n"), 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except ValueError as exc:
                raise SourceError(f"{source.name}:{lineno}: not valid JSON ({exc})") from exc
            if not isinstance(record, dict) or not isinstance(record.get(self.text_field), str):
                raise SourceError(
                    f"{source.name}:{lineno}: expected an object with a string "
                    f"{self.text_field!r} field"
                )
            extra = {
                k: v
                for k, v in record.items()
                if k != self.text_field and isinstance(v, (str, int, float, bool)) and k not in base
            }
            for piece in self._splitters["text"].split_text(record[self.text_field]):
                if piece.strip():
                    yield Chunk(piece, {**extra, **base})
