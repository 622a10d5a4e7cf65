"""Incremental ingestion: bring an index in line with its source files.

Each run reads the sources, and for every one of them:

- **unchanged** (same bytes, same chunking settings as recorded): skipped
  without splitting it, embedding it or touching the index;
- **new or changed**: split into chunks; a chunk's id is a digest of its
  source and its exact text, so chunks whose text survived the edit keep
  their id and are left alone, new chunks are added (their vectors come from
  the cache when any run, under this model, embedded that text before) and
  chunks that disappeared are deleted;
- **gone** (cleanup): ``incremental`` deletes the chunks of sources that lived
  under the given paths but no longer exist; ``full`` deletes every source
  this run did not see; ``none`` deletes nothing.

Ordering makes a crash or Ctrl-C harmless: vectors are cached batch by batch
while embedding, the index folder is saved atomically once at the end, and
the source records (``ingest.json``) are written only after the index is
safe. A run cut short leaves the previous index and records intact, and the
next run recomputes only vectors that never reached the cache.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Union

from cachedvec.embeddings import CachedEmbeddings
from cachedvec.errors import ConfigError, IndexCorruptError
from cachedvec.index import VectorIndex, read_manifest
from cachedvec.index.faiss_index import check_metric
from cachedvec.jobs import (
    DEFAULT_INDEX,
    DEFAULT_STORE,
    embed_in_slices,
    index_job,
    progress,
    record_run,
)
from cachedvec.models import as_model
from cachedvec.sources import Chunk, Chunker, Source, find_files, read_source

#: One file or folder, or several.
Paths = Union[str, "os.PathLike[str]", Sequence[Union[str, "os.PathLike[str]"]]]

CLEANUP_MODES = ("incremental", "full", "none")
RECORDS_FILE = "ingest.json"
RECORDS_VERSION = 1
_EMPTY_HASH = hashlib.sha256(b"").hexdigest()


@dataclass
class SourceCounts:
    added: int = 0
    updated: int = 0
    skipped: int = 0
    deleted: int = 0


@dataclass
class IngestReport:
    """What one ingest did. Chunk counts are top level; source counts nested."""

    added: int = 0
    updated: int = 0
    skipped: int = 0
    deleted: int = 0
    cache_hits: int = 0
    computed: int = 0
    #: Chunks to embed whose exact text another chunk of this run also has:
    #: embedded once, so ``added + updated == cache_hits + computed + duplicates``.
    duplicates: int = 0
    sources: SourceCounts = field(default_factory=SourceCounts)
    documents: int = 0
    seconds: float = 0.0
    index: str = ""
    model: str = ""

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def chunk_id(source: str, text: str, occurrence: int) -> str:
    """Stable id of a chunk: its source, its exact text, and which repeat it is."""
    digest = hashlib.blake2b(
        f"{source}\0{text}".encode("utf-8", "surrogatepass"), digest_size=16
    ).hexdigest()
    return digest if occurrence == 0 else f"{digest}-{occurrence}"


def _identified(source: str, chunks: list[Chunk]) -> dict[str, Chunk]:
    seen: Counter[str] = Counter()
    out = {}
    for chunk in chunks:
        out[chunk_id(source, chunk.text, seen[chunk.text])] = chunk
        seen[chunk.text] += 1
    return out


def _version(src: Source, chunker: Chunker) -> str:
    settings = json.dumps(chunker.settings, sort_keys=True)
    return hashlib.sha256(f"{src.content_hash}\0{settings}".encode()).hexdigest()


def load_records(index_dir: Path) -> dict[str, dict[str, Any]]:
    """``{source: {"version": ..., "chunks": n}}`` from the last finished run."""
    path = index_dir / RECORDS_FILE
    try:
        data = json.loads(path.read_text("utf-8"))
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as exc:
        raise IndexCorruptError(f"cannot read ingestion records {path}: {exc}") from exc
    if not isinstance(data, dict):
        raise IndexCorruptError(f"ingestion records {path} are not a JSON object")
    sources = data.get("sources")
    if data.get("format_version") != RECORDS_VERSION or not isinstance(sources, dict):
        raise IndexCorruptError(f"ingestion records {path} are not in a known format")
    return {k: v for k, v in sources.items() if isinstance(v, dict)}


def _write_records(index_dir: Path, records: dict[str, dict[str, Any]]) -> None:
    path = index_dir / RECORDS_FILE
    tmp = path.with_name(f".{RECORDS_FILE}.{os.getpid()}.tmp")
    tmp.write_text(
        json.dumps({"format_version": RECORDS_VERSION, "sources": records}, sort_keys=True), "utf-8"
    )
    os.replace(tmp, path)


def as_paths(paths: Paths) -> list[str | os.PathLike[str]]:
    """``paths`` as a list: a str is a sequence too, but of letters, not of paths."""
    if isinstance(paths, (str, os.PathLike)):
        return [paths] if paths != "" else []  # "" names no file (Path("") is the cwd)
    return list(paths)


def check_index_type(index_dir: Path, factory: str | None, metric: str | None) -> None:
    """Refuse a factory or metric asked for that the existing index at ``index_dir`` lacks.

    Ingest only adds to an index as it is: keeping the old type silently would
    leave the caller with another index than the one asked for, and changing
    it means rebuilding every vector, which is :func:`cachedvec.reindex`'s job.
    """
    if metric is not None:
        check_metric(metric)  # a typo fails now, not after the model calls
    if not (index_dir / "manifest.json").exists():
        return
    manifest = read_manifest(index_dir)
    differences, options = [], ""
    if factory and factory != manifest.factory:
        differences.append(f"is {manifest.factory!r}, not {factory!r}")
        options += f" --factory '{factory}'"
    if metric and metric != manifest.metric:
        differences.append(f"uses the {manifest.metric!r} metric, not {metric!r}")
        options += f" --metric {metric}"
    if differences:
        raise ConfigError(
            f"index {index_dir} {' and '.join(differences)}: change its type "
            f"with: cachedvec reindex --index {index_dir}{options}"
        )


def check_new_index(
    index_dir: Path, factory: str | None, metric: str | None, dim: int | None
) -> None:
    """Refuse a factory FAISS cannot build, before any model call, when the index is new.

    Needs the dimension (from the model's fingerprint): without it the index
    is only made once the first vector gives it.
    """
    if dim is not None and not (index_dir / "manifest.json").exists():
        VectorIndex(dim, metric=metric or "cosine", factory=factory or "Flat").close()


def _under(source: str, roots: Sequence[Path]) -> bool:
    return any(source == str(r) or source.startswith(str(r) + os.sep) for r in roots)


def ingest(
    paths: Paths,
    *,
    index: str | os.PathLike[str] = DEFAULT_INDEX,
    store: str = DEFAULT_STORE,
    model: Any = None,
    chunk_size: int = 1000,
    chunk_overlap: int = 150,
    text_field: str = "text",
    cleanup: str = "incremental",
    factory: str | None = None,
    metric: str | None = None,
    batch_size: int = 64,
    show_progress: bool | None = None,
) -> IngestReport:
    """Bring the index at ``index`` in line with the files under ``paths`` (one or several).

    Creates the index (``factory``, default ``"Flat"``, and ``metric``,
    default ``"cosine"``) on first use; an existing index keeps its type, and
    a ``factory`` or ``metric`` other than its own is a :class:`ConfigError`
    (change the type with :func:`cachedvec.reindex`, which needs no model
    call). Raises
    :class:`SourceError` for unreadable, binary or non-UTF-8 files before
    changing anything, and :class:`IndexMismatchError` when the index was
    built with another model (switch models with :func:`cachedvec.reindex`).
    """
    started = time.perf_counter()
    if cleanup not in CLEANUP_MODES:
        raise ConfigError(f"cleanup must be one of {', '.join(CLEANUP_MODES)}, got {cleanup!r}")
    paths = as_paths(paths)
    if not paths:
        raise ConfigError("give at least one file or folder to ingest")
    chunker = Chunker(chunk_size, chunk_overlap, text_field)
    index_dir = Path(index)
    check_index_type(index_dir, factory, metric)
    # Built once here, so that its dimension (when its fingerprint knows it)
    # checks the factory of a new index before any cache is opened or made.
    embedding_model = as_model(model)
    check_new_index(index_dir, factory, metric, embedding_model.fingerprint.dim)
    roots = [Path(p).expanduser().resolve() for p in paths]
    files = find_files(paths)
    # Every file is read (and checked) before anything changes, but the text
    # of one the last run already ingested is let go at once: a nightly run
    # over a large, mostly unchanged corpus holds only what changed. The
    # records are read again under the job lock; these only save memory.
    last_run = load_records(index_dir)
    sources: list[Source] = []
    for file in progress(files, desc="reading", unit="file", enabled=show_progress):
        source = read_source(file)
        if last_run.get(source.name, {}).get("version") == _version(source, chunker):
            source = replace(source, data=b"")
        sources.append(source)

    with (
        index_job(index_dir),
        CachedEmbeddings(embedding_model, store, batch_size=batch_size) as emb,
    ):
        if (index_dir / "manifest.json").exists():
            vindex: VectorIndex | None = VectorIndex.load(index_dir, fingerprint=emb.fingerprint)
        else:
            vindex = None  # made in _apply once the first vector gives the dimension
        records = load_records(index_dir)
        before = dict(records)
        report = IngestReport(index=str(index_dir), model=emb.fingerprint.model)
        try:
            changed = _apply(
                sources,
                roots,
                chunker,
                emb,
                vindex,
                records,
                report,
                cleanup,
                factory,
                metric,
                show_progress,
            )
            if changed is not None:
                vindex = changed
                vindex.save(index_dir)
            if changed is not None or records != before:
                # Only after the index is safe: records never claim more than it holds.
                index_dir.mkdir(parents=True, exist_ok=True)
                _write_records(index_dir, records)
            report.documents = len(vindex) if vindex is not None else 0
        finally:
            if vindex is not None:
                vindex.close()
    report.seconds = round(time.perf_counter() - started, 3)
    if index_dir.exists():
        record_run(index_dir, "ingest", report.as_dict())
    return report


def _apply(
    sources: list[Source],
    roots: list[Path],
    chunker: Chunker,
    emb: CachedEmbeddings,
    vindex: VectorIndex | None,
    records: dict[str, dict[str, Any]],
    report: IngestReport,
    cleanup: str,
    factory: str | None,
    metric: str | None,
    show_progress: bool | None,
) -> VectorIndex | None:
    """Plan and apply the changes; returns the index to save, or None if nothing changed."""
    indexed = _indexed_chunks(vindex)
    to_add: dict[str, Chunk] = {}
    to_delete: list[str] = []
    seen: set[str] = set()
    for src in sources:
        name = src.name
        seen.add(name)
        version = _version(src, chunker)
        old = indexed.get(name, {})
        recorded = records.get(name, {})
        if recorded.get("version") == version and (name in indexed or recorded.get("chunks") == 0):
            report.sources.skipped += 1
            report.skipped += len(old)
            continue
        if not src.data and src.content_hash != _EMPTY_HASH:
            # Its text was let go as unchanged, but the index disagrees.
            src = read_source(src.path)
            version = _version(src, chunker)
        new = _identified(name, chunker.chunks(src))
        for cid, chunk in new.items():
            if cid not in old:
                to_add[cid] = chunk
                report.added += 1
            elif old[cid] != chunk.metadata:
                to_add[cid] = chunk
                report.updated += 1
            else:
                report.skipped += 1
        gone = [cid for cid in old if cid not in new]
        to_delete += gone
        report.deleted += len(gone)
        if name in indexed or name in records:
            report.sources.updated += 1
        else:
            report.sources.added += 1
        records[name] = {"version": version, "chunks": len(new)}

    if cleanup != "none":
        for name in set(indexed) | set(records):
            if name in seen or (cleanup == "incremental" and not _under(name, roots)):
                continue
            to_delete += list(indexed.get(name, {}))
            report.deleted += len(indexed.get(name, {}))
            report.sources.deleted += 1
            records.pop(name, None)

    if not to_add and not to_delete:
        return None
    ids = list(to_add)
    texts = [to_add[i].text for i in ids]
    # Slices of a few model batches, so the progress bar moves.
    vectors = embed_in_slices(emb, texts, emb.batch_size * 4, show_progress)
    report.cache_hits, report.computed = emb.stats.hits, emb.stats.computed
    report.duplicates = len(texts) - len(set(texts))
    if vindex is None:
        vindex = _new_index(emb, vectors.shape[1], factory, metric)
    if to_delete:
        vindex.delete(to_delete)
    if ids:
        vindex.add(
            vectors,
            texts,
            [to_add[i].metadata for i in ids],
            ids=ids,
            cache_keys=emb.document_keys(texts),
        )
    return vindex


def _new_index(
    emb: CachedEmbeddings, dim: int, factory: str | None, metric: str | None
) -> VectorIndex:
    return VectorIndex(
        dim, metric=metric or "cosine", factory=factory or "Flat", fingerprint=emb.fingerprint
    )


def _indexed_chunks(vindex: VectorIndex | None) -> dict[str, dict[str, dict[str, Any]]]:
    """``{source: {chunk id: metadata}}`` of what the index holds now."""
    out: dict[str, dict[str, dict[str, Any]]] = {}
    if vindex is not None:
        for record in vindex.records():
            if record.source is not None:
                out.setdefault(record.source, {})[record.id] = record.metadata
    return out
