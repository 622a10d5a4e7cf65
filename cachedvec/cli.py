"""The ``cachedvec`` command: ingest, query, reindex, stats, prune, migrate.

Every command prints a readable summary, or one JSON object with ``--json``;
exits 0 on success and 1 with one ``error: ...`` line on a cachedvec error
(never a traceback for a user mistake) or any other failure, such as the
model's (``CACHEDVEC_TRACEBACK=1`` shows its traceback); 130 after Ctrl-C,
having left the index as it was.
"""

from __future__ import annotations

import json
import logging
import os
import re
import signal
import sys
from collections.abc import Callable, Sequence
from functools import wraps
from pathlib import Path
from typing import Any, TypeVar

import click

from cachedvec.errors import CachedVecError, ConfigError
from cachedvec.jobs import DEFAULT_INDEX, DEFAULT_STORE, read_history

F = TypeVar("F", bound=Callable[..., Any])
#: Set to 1 to get the traceback of an unexpected error instead of one line.
TRACEBACK_VARIABLE = "CACHEDVEC_TRACEBACK"
_DURATION = re.compile(r"^(\d+(?:\.\d+)?)([smhdw])$")
_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def _model_arg(value: str | None) -> Any:
    """``None``/``default`` -> the bundled model; anything else a path or cached name."""
    return None if value in (None, "default") else value


def _emit(as_json: bool, payload: dict[str, Any], text: str) -> None:
    click.echo(json.dumps(payload, default=str) if as_json else text)


class _Terminated(KeyboardInterrupt):
    """SIGTERM, handled like Ctrl-C: unwind, keep everything consistent, exit."""


def _on_sigterm(signum: int, frame: Any) -> None:
    raise _Terminated()


def _interrupt_behind(exc: BaseException) -> KeyboardInterrupt | None:
    """The Ctrl-C or SIGTERM that ``exc`` was raised while handling, if any.

    Cleanup code that runs as an interrupt unwinds (a connection pool
    disposing of a half-open connection, say) can fail in turn, and its
    error then hides the interrupt; the user still pressed Ctrl-C.
    """
    seen: set[int] = set()
    link: BaseException | None = exc
    while link is not None and id(link) not in seen:
        if isinstance(link, KeyboardInterrupt):
            return link
        seen.add(id(link))
        link = link.__cause__ or link.__context__
    return None


def _exit_interrupted(exc: KeyboardInterrupt) -> None:
    click.echo(
        "interrupted: the index was left as it was; vectors already "
        "cached are kept and the next run reuses them",
        err=True,
    )
    sys.exit(143 if isinstance(exc, _Terminated) else 130)


def handle_errors(func: F) -> F:
    """Turn library errors into one line and an exit code."""

    @wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        previous = signal.signal(signal.SIGTERM, _on_sigterm)
        try:
            return func(*args, **kwargs)
        except (CachedVecError, OSError, KeyboardInterrupt) as exc:
            interrupt = _interrupt_behind(exc)
            if interrupt is not None:
                _exit_interrupted(interrupt)
            if isinstance(exc, OSError) and not isinstance(exc, CachedVecError):
                where = f": {exc.filename}" if exc.filename else ""
                click.echo(f"error: {exc.strerror or exc}{where}", err=True)
            else:
                click.echo(f"error: {exc}", err=True)
            sys.exit(1)
        except (click.ClickException, click.exceptions.Exit, click.Abort):
            raise  # click's own, reported by _Group
        except Exception as exc:
            # Not ours: the model failing (out of memory, a provider's rate
            # limit), which the library passes through unchanged, or a bug.
            # One line too, unless the user asks for the traceback.
            interrupt = _interrupt_behind(exc)
            if interrupt is not None:
                _exit_interrupted(interrupt)
            if os.environ.get(TRACEBACK_VARIABLE, "").strip().lower() in ("1", "true", "yes"):
                raise
            message = (str(exc).strip().splitlines() or [""])[0]
            click.echo(
                f"error: {type(exc).__name__}{': ' + message if message else ''} "
                f"(set {TRACEBACK_VARIABLE}=1 for the traceback)",
                err=True,
            )
            sys.exit(1)
        finally:
            signal.signal(signal.SIGTERM, previous)

    return wrapper  # type: ignore[return-value]


class _WarningLines(logging.Handler):
    """The library's warnings as ``warning: ...`` lines on the current stderr."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)

    def emit(self, record: logging.LogRecord) -> None:
        click.echo(f"{record.levelname.lower()}: {record.getMessage()}", err=True)


def _show_library_warnings() -> None:
    library = logging.getLogger("cachedvec")
    if not any(isinstance(h, _WarningLines) for h in library.handlers):
        library.addHandler(_WarningLines())


class _Group(click.Group):
    """Usage mistakes get the same one ``error:`` line as library errors."""

    def main(
        self,
        args: Sequence[str] | None = None,
        prog_name: str | None = None,
        complete_var: str | None = None,
        standalone_mode: bool = True,
        **extra: Any,
    ) -> Any:
        # Errors reach the user as one line from us; a library logging the
        # same failure (SQLAlchemy's pool on an interrupted close) would add
        # a traceback.
        logging.getLogger("sqlalchemy").addHandler(logging.NullHandler())
        logging.getLogger("sqlalchemy").propagate = False
        _show_library_warnings()
        if not standalone_mode:
            return super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        try:
            code = super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        except click.UsageError as exc:
            hint = (
                f" (see: cachedvec {exc.ctx.command_path.split(' ', 1)[-1]} --help)"
                if exc.ctx and " " in exc.ctx.command_path
                else " (see: cachedvec --help)"
            )
            click.echo(f"error: {exc.format_message()}{hint}", err=True)
            sys.exit(exc.exit_code)
        except click.Abort:
            click.echo("interrupted", err=True)
            sys.exit(130)
        sys.exit(code if isinstance(code, int) else 0)


index_option = click.option(
    "--index",
    "index",
    default=DEFAULT_INDEX,
    show_default=True,
    type=click.Path(file_okay=False),
    help="Index folder.",
)
store_option = click.option(
    "--store",
    default=DEFAULT_STORE,
    show_default=True,
    help="Cache URL: memory://, file:///dir, sqlite:///file.db, "
    "postgresql+psycopg://..., diskcache:///dir.",
)
model_option = click.option(
    "--model",
    default=None,
    help="Model folder or locally cached name; default: the bundled all-MiniLM-L6-v2.",
)
json_option = click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="cachedvec")
def main() -> None:
    """cachedvec: cached embeddings and vector search.

    \b
    Quick start (uses ./.cachedvec for the cache and the index):
      cachedvec ingest examples/corpus
      cachedvec query "How do I descale the kettle?"
    """


@main.command()
@click.argument("paths", nargs=-1, required=True, type=click.Path())
@index_option
@store_option
@model_option
@click.option("--chunk-size", default=1000, show_default=True, help="Characters per chunk.")
@click.option("--chunk-overlap", default=150, show_default=True, help="Characters of overlap.")
@click.option(
    "--text-field",
    default="text",
    show_default=True,
    help="Field holding the text in JSON Lines files.",
)
@click.option(
    "--cleanup",
    type=click.Choice(["incremental", "full", "none"]),
    default="incremental",
    show_default=True,
    help="incremental: delete sources gone from the given paths; full: delete every "
    "source not seen in this run; none: never delete.",
)
@click.option(
    "--factory",
    default=None,
    help="FAISS factory string for a new index (default Flat; HNSW32, IVF256,Flat...). "
    "To change an existing index, use reindex.",
)
@click.option(
    "--metric",
    type=click.Choice(["cosine", "ip", "l2"]),
    default=None,
    help="Metric for a new index (default cosine). To change an existing index, use reindex.",
)
@click.option("--batch-size", default=64, show_default=True, help="Texts per model call.")
@click.option(
    "--engine",
    type=click.Choice(["local", "ray"]),
    default="local",
    show_default=True,
    help="ray: compute missing vectors on a Ray actor pool sharing --store "
    "(SQLite on one machine, PostgreSQL across machines); needs cachedvec[ray].",
)
@click.option(
    "--address",
    default=None,
    help="Ray cluster to join: the head node's host:6379; auto: the one `ray start` ran on "
    "this machine; local: a new local Ray, the default unless $RAY_ADDRESS is set.",
)
@click.option(
    "--workers",
    type=int,
    default=None,
    help="Ray actors embedding at once, each loading the model (default 2).",
)
@json_option
@handle_errors
def ingest(
    paths: tuple[str, ...],
    index: str,
    store: str,
    model: str | None,
    chunk_size: int,
    chunk_overlap: int,
    text_field: str,
    cleanup: str,
    factory: str | None,
    metric: str | None,
    batch_size: int,
    engine: str,
    address: str | None,
    workers: int | None,
    as_json: bool,
) -> None:
    """Bring an index in line with text, Markdown and JSON Lines files.

    Unchanged files cost nothing; changed files replace exactly their chunks
    (unchanged chunk texts are cache hits); removed files are deleted.

    \b
    Examples:
      cachedvec ingest docs/ notes.md
      cachedvec ingest data.jsonl --text-field body --index idx --store sqlite:///cache.db
      cachedvec ingest docs/ --cleanup full --json
      cachedvec ingest docs/ --engine ray --address head:6379 --workers 8 \\
          --store postgresql+psycopg://cache@db/cache
    """
    options: dict[str, Any] = {}
    run: Callable[..., Any]
    if engine == "ray":
        from cachedvec import distributed

        run = distributed.ingest
        options = {
            "address": address,
            "workers": distributed.DEFAULT_WORKERS if workers is None else workers,
        }
    elif address is not None or workers is not None:
        raise ConfigError("--address and --workers apply to --engine ray")
    else:
        from cachedvec import ingestion

        run = ingestion.ingest

    report = run(
        paths,
        index=index,
        store=store,
        model=_model_arg(model),
        chunk_size=chunk_size,
        chunk_overlap=chunk_overlap,
        text_field=text_field,
        cleanup=cleanup,
        factory=factory,
        metric=metric,
        batch_size=batch_size,
        **options,
    )
    s = report.sources
    _emit(
        as_json,
        report.as_dict(),
        f"sources: {s.added} added, {s.updated} updated, {s.skipped} unchanged, "
        f"{s.deleted} deleted\n"
        f"chunks:  {report.added} added, {report.updated} updated, {report.skipped} unchanged, "
        f"{report.deleted} deleted\n"
        f"vectors: {report.cache_hits} from the cache, {report.computed} computed"
        + (f", {report.duplicates} repeated texts reused" if report.duplicates else "")
        + "\n"
        f"index:   {report.index} ({report.documents} chunks) in {report.seconds:.2f}s",
    )


@main.command()
@click.argument("text")
@click.option("-k", "k", default=5, show_default=True, help="How many results.")
@index_option
@store_option
@model_option
@click.option(
    "--filter",
    "filter_json",
    default=None,
    help='Metadata filter as JSON, e.g. \'{"topic": {"$in": ["kettle", "tea"]}}\'.',
)
@click.option(
    "--rerank",
    type=int,
    default=None,
    help="Candidates per result re-scored exactly from --store, at least 32 per query "
    "(default: the index's setting).",
)
@json_option
@handle_errors
def query(
    text: str,
    k: int,
    index: str,
    store: str,
    model: str | None,
    filter_json: str | None,
    rerank: int | None,
    as_json: bool,
) -> None:
    """Print the chunks that best answer TEXT.

    Scores are similarities (higher is closer) for cosine and ip indexes, and
    squared distances (lower is closer) for l2 ones.

    \b
    Examples:
      cachedvec query "How do I descale the kettle?"
      cachedvec query "vacation carry-over" -k 3 --json
      cachedvec query "error E3" --filter '{"topic": "kettle"}'
    """
    from cachedvec.index import read_manifest
    from cachedvec.search import query as run

    if not text.strip():
        raise ConfigError("the question is empty: give the text to search for")
    try:
        filter_ = json.loads(filter_json) if filter_json else None
    except (ValueError, RecursionError) as exc:
        raise ConfigError(f"--filter is not valid JSON: {exc}") from exc
    hits, cached = run(
        text, k=k, index=index, store=store, model=_model_arg(model), filter=filter_, rerank=rerank
    )
    manifest = read_manifest(index)
    metric = manifest.metric
    results = [{"id": h.id, "score": h.score, "text": h.text, "metadata": h.metadata} for h in hits]
    # LSH (l2 only) scores by the bits its binary codes differ in, unless
    # candidates are re-scored from the cache's float vectors.
    reranked = rerank if rerank is not None else manifest.search.get("rerank", 0)
    hamming = "LSH" in manifest.factory.upper() and not reranked
    label = "bits apart " if hamming else "squared distance " if metric == "l2" else ""
    lines = []
    for rank, h in enumerate(hits, 1):
        snippet = " ".join(h.text.split())
        snippet = snippet[:200] + ("..." if len(snippet) > 200 else "")
        lines.append(f"{rank}. [{label}{h.score:.3f}] {h.metadata.get('source', '')}\n   {snippet}")
    _emit(
        as_json,
        {"query": text, "query_cached": cached, "metric": metric, "results": results},
        "\n".join(lines) or "no results",
    )


@main.command()
@index_option
@click.option(
    "--factory",
    default=None,
    help="New FAISS factory string (default: keep), e.g. HNSW32, IVF1024,PQ16, PCA128,HNSW32.",
)
@click.option(
    "--metric",
    type=click.Choice(["cosine", "ip", "l2"]),
    default=None,
    help="New metric (default: keep).",
)
@store_option
@click.option(
    "--model",
    default=None,
    help="Re-embed under another model (a folder, a cached name, or 'default' for "
    "the bundled one); only vectors missing under it are computed.",
)
@click.option(
    "--compute-missing",
    is_flag=True,
    help="Embed vectors missing from the cache instead of stopping.",
)
@click.option(
    "--layout",
    type=click.Choice(["memory", "ondisk"]),
    default="memory",
    show_default=True,
    help="ondisk (IVF only): inverted lists in a memory-mapped file beside the index, "
    "for indexes larger than RAM; read-only until rebuilt.",
)
@click.option(
    "--batch-size",
    default=20_000,
    show_default=True,
    help="Vectors read from the cache and added at a time.",
)
@click.option(
    "--train-size",
    type=int,
    default=None,
    help="Cached vectors sampled to train IVF/PQ (default 65536, or 40 per IVF list).",
)
@click.option(
    "--nprobe",
    type=int,
    default=None,
    help="IVF lists searched per query (default: 1/16 of them, at least 32).",
)
@click.option(
    "--rerank",
    type=int,
    default=None,
    help="Candidates per result that searches re-score exactly with the vectors "
    "in the cache, at least 32 per query (default: 4 for PQ factories, else off).",
)
@click.option("--no-rerank", is_flag=True, help="Never re-rank (not even PQ factories).")
@json_option
@handle_errors
def reindex(
    index: str,
    factory: str | None,
    metric: str | None,
    store: str,
    model: str | None,
    compute_missing: bool,
    layout: str,
    batch_size: int,
    train_size: int | None,
    nprobe: int | None,
    rerank: int | None,
    no_rerank: bool,
    as_json: bool,
) -> None:
    """Rebuild an index from cached vectors, with zero model calls.

    From the cache the rebuild streams: it trains on a sample and adds the
    vectors in batches, never holding them all in memory.

    \b
    Examples:
      cachedvec reindex --factory HNSW32
      cachedvec reindex --factory "IVF256,PQ16" --json   # re-ranks 4 per result
      cachedvec reindex --factory "IVF1024,PQ192np" --rerank 8
      cachedvec reindex --factory "IVF1024,SQ8" --layout ondisk --train-size 200000
      cachedvec reindex --model /models/bge-small   # switch models
    """
    from cachedvec.reindexing import reindex as run

    if model == "default":
        from cachedvec.models import default_model

        switch_to: Any = default_model()
    else:
        switch_to = model  # None keeps the index's model
    if no_rerank and rerank is not None:
        raise ConfigError("--rerank and --no-rerank contradict each other")
    report = run(
        index,
        factory=factory,
        metric=metric,
        store=store,
        model=switch_to,
        compute_missing=compute_missing,
        layout=layout,
        batch_size=batch_size,
        train_size=train_size,
        nprobe=nprobe,
        rerank=False if no_rerank else rerank,
    )
    _emit(
        as_json,
        report.as_dict(),
        f"rebuilt {report.index}: {report.documents} chunks into {report.factory} "
        f"({report.metric}) in {report.seconds:.2f}s; {report.cache_hits} vectors from the "
        f"cache, {report.computed} computed"
        + (f", {report.duplicates} repeated texts reused" if report.duplicates else "")
        + (
            f"; searches re-rank {report.rerank} candidates per result from the cache"
            if report.rerank
            else ""
        ),
    )


@main.command()
@store_option
@click.option(
    "--index",
    "indexes",
    multiple=True,
    type=click.Path(file_okay=False),
    help=f"Index folder(s) to describe too (default: {DEFAULT_INDEX}, if it exists).",
)
@json_option
@handle_errors
def stats(store: str, indexes: tuple[str, ...], as_json: bool) -> None:
    """Describe the cache (namespaces, entries, bytes) and indexes.

    \b
    Examples:
      cachedvec stats
      cachedvec stats --store sqlite:///cache.db --index idx --json
    """
    from cachedvec.codec import VectorCodec
    from cachedvec.index import check_file_sizes, read_manifest
    from cachedvec.stores import open_store, redact_url

    if not indexes and (Path(DEFAULT_INDEX) / "manifest.json").exists():
        indexes = (DEFAULT_INDEX,)
    payload: dict[str, Any] = {"store": redact_url(store), "namespaces": [], "indexes": []}
    lines = [f"cache {redact_url(store)}"]
    with open_store(store, create=False) as opened:
        for ns, st in opened.namespace_stats().items():
            parts = ns.split(":")
            model = parts[1] if len(parts) >= 4 else ns
            kind = parts[3] if len(parts) >= 4 else ""
            dim = (
                VectorCodec.peek_dim(
                    next(iter(opened.mget([next(opened.yield_keys(prefix=ns), "")])), None)
                )
                if len(parts) >= 4
                else None
            )
            payload["namespaces"].append(
                {
                    "namespace": ns,
                    "model": model,
                    "kind": kind,
                    "dim": dim,
                    "entries": st.entries,
                    "bytes": st.bytes,
                }
            )
            lines.append(f"  {ns:<60} dim {dim}  {st.entries:>9,} entries  {st.bytes:>13,} B")
    for folder in indexes:
        manifest = read_manifest(folder)
        check_file_sizes(folder, manifest)
        runs = [r for r in read_history(folder) if r.get("job") in ("ingest", "query")]
        hits = sum(int(r.get("cache_hits", 0)) for r in runs)
        computed = sum(int(r.get("computed", 0)) for r in runs)
        rate = hits / (hits + computed) if hits + computed else None
        info = {
            "index": folder,
            "factory": manifest.factory,
            "metric": manifest.metric,
            "dim": manifest.dim,
            "counts": manifest.counts,
            "model": (manifest.fingerprint or {}).get("model"),
            "bytes": sum(p.stat().st_size for p in Path(folder).iterdir() if p.is_file()),
            "runs": len(runs),
            "hit_rate": rate,
        }
        payload["indexes"].append(info)
        lines.append(
            f"index {folder}: {manifest.factory} ({manifest.metric}, dim {manifest.dim}),"
            f" {manifest.counts.get('documents', 0):,} chunks, model {info['model']}, "
            f"{info['bytes']:,} B; hit rate over {len(runs)} runs: "
            + ("n/a" if rate is None else f"{rate:.1%}")
        )
    _emit(as_json, payload, "\n".join(lines))


def _parse_duration(text: str | None) -> float | None:
    if text is None:
        return None
    match = _DURATION.match(text.strip())
    if not match:
        raise ConfigError(
            f"--older-than takes a duration like 90s, 30m, 12h, 7d or 2w; got {text!r}"
        )
    return float(match.group(1)) * _SECONDS[match.group(2)]


@main.command()
@store_option
@click.option(
    "--index",
    "indexes",
    multiple=True,
    type=click.Path(file_okay=False),
    help="Keep every vector these indexes use (repeatable; with --older-than alone: "
    f"{DEFAULT_INDEX}, if it exists).",
)
@click.option(
    "--older-than",
    default=None,
    help="Only drop entries not written or read for this long (30m, 12h, 7d...).",
)
@click.option("--dry-run", is_flag=True, help="Count what would be dropped; drop nothing.")
@json_option
@handle_errors
def prune(
    store: str, indexes: tuple[str, ...], older_than: str | None, dry_run: bool, as_json: bool
) -> None:
    """Drop cache entries no given index references (or older than --older-than).

    \b
    Examples:
      cachedvec prune --index .cachedvec/index --dry-run
      cachedvec prune --store sqlite:///cache.db --index a --index b --older-than 30d
    """
    from cachedvec.index import VectorIndex
    from cachedvec.stores import open_store, redact_url

    age = _parse_duration(older_than)
    if not indexes and age is None:
        raise ConfigError("give --index (keep what indexes use) and/or --older-than")
    if not indexes and (Path(DEFAULT_INDEX) / "manifest.json").exists():
        # Unchanged chunks are never read again after their ingest: without
        # this, "--older-than 30d" would drop the vectors of every stable
        # document, and the next reindex would need the model for them.
        indexes = (DEFAULT_INDEX,)
    keep: set[str] = set()
    for folder in indexes:
        with VectorIndex.load(folder) as vindex:
            keep.update(r.cache_key for r in vindex.records() if r.cache_key)
    with open_store(store, create=False) as opened:
        dropped = opened.prune(age or 0.0, keep=keep, dry_run=dry_run)
    verb = "would drop" if dry_run else "dropped"
    _emit(
        as_json,
        {
            "store": redact_url(store),
            "pruned": dropped,
            "kept": len(keep),
            "dry_run": dry_run,
            "indexes": list(indexes),
        },
        f"{verb} {dropped} entries; kept {len(keep)} used by {len(indexes)} index(es)",
    )


@main.command()
@click.option(
    "--store", required=True, help="SQL cache URL (sqlite:///..., postgresql+psycopg://...)."
)
@click.option(
    "--revision",
    default="head",
    show_default=True,
    help="Target Alembic revision; an older one (or 'base', which drops "
    "cachedvec's tables) downgrades.",
)
@json_option
@handle_errors
def migrate(store: str, revision: str, as_json: bool) -> None:
    """Upgrade a SQL cache's schema to this version of cachedvec.

    \b
    Examples:
      cachedvec migrate --store postgresql+psycopg://cache@db/cache
      cachedvec migrate --store sqlite:///cache.db --revision base   # drop the tables
    """
    from cachedvec import migrate as migrations
    from cachedvec.stores import redact_url

    if not store.lower().startswith(("sqlite", "postgresql", "postgres")):
        raise ConfigError(
            f"migrate works on SQL caches (sqlite:///..., postgresql+psycopg://...);"
            f" {redact_url(store)!r} has no schema to migrate"
        )
    current = migrations.move_to(store, revision)
    _emit(
        as_json,
        {"store": redact_url(store), "revision": current},
        f"{redact_url(store)} is at revision {current}"
        if current
        else f"{redact_url(store)} has no cachedvec tables (revision base)",
    )


if __name__ == "__main__":  # pragma: no cover
    main()
