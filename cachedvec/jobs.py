"""Defaults and plumbing shared by the main jobs (ingest, query, reindex)."""

from __future__ import annotations

import fcntl
import json
import logging
import os
import time
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import numpy as np
from tqdm import tqdm

if TYPE_CHECKING:
    from cachedvec.embeddings import CachedEmbeddings

DEFAULT_HOME = Path(".cachedvec")
DEFAULT_INDEX = str(DEFAULT_HOME / "index")
DEFAULT_STORE = f"sqlite:///{DEFAULT_HOME / 'cache.db'}"
HISTORY_FILE = "history.jsonl"

T = TypeVar("T")

log = logging.getLogger(__name__)


@contextmanager
def index_job(index_dir: Path) -> Iterator[None]:
    """Hold an index's job lock: one ingest or reindex per index at a time.

    A job loads the index, changes it and saves it; two at once would each
    save their own version and the last save would silently drop the other's
    changes. The second job waits (and says so), then starts from the first
    one's result. The lock file sits beside the folder, as ``.<name>.lock``,
    so a job that fails before its first save leaves no index folder behind.
    Readers (queries) take no lock: a save swaps the folder in atomically.
    """
    index_dir = Path(index_dir)
    path = index_dir.parent / f".{index_dir.name}.lock"
    try:
        index_dir.parent.mkdir(parents=True, exist_ok=True)
        handle = open(path, "a")
    except OSError:
        try:
            handle = open(path)  # flock needs no write access, only the file
        except OSError:
            # Nothing can be created here (a read-only disk): no other job can
            # change the index either, and a save would fail with a clear error.
            yield
            return
    with handle:
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            log.warning("waiting for another cachedvec job on %s to finish", index_dir)
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)


def progress(
    items: Iterable[T],
    *,
    total: int | None = None,
    desc: str = "",
    enabled: bool | None = None,
    unit: str = "it",
) -> Iterator[T]:
    """A progress bar on a terminal (stderr), nothing otherwise."""
    # tqdm's disable=None means: only when stderr is a TTY.
    return iter(
        tqdm(
            items,
            total=total,
            desc=desc,
            unit=unit,
            leave=False,
            disable=None if enabled is None else not enabled,
        )
    )


def slices(items: Sequence[T], size: int) -> Iterator[Sequence[T]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def embed_in_slices(
    emb: CachedEmbeddings, texts: Sequence[str], step: int, show_progress: bool | None
) -> np.ndarray:
    """``texts`` through ``emb``, ``step`` unique texts at a time, with a progress bar.

    Each slice is cached as it finishes, so an interrupted job loses at most
    one slice. Repeated texts are looked up once (de-duplicated here, across
    slices, not only within each), so ``emb.stats`` counts each text once
    whatever the slice size.
    """
    if not texts:
        return np.empty((0, emb.dim or 0), np.float32)
    unique = list(dict.fromkeys(texts))
    parts = [
        emb.embed_documents_array(part)
        for part in progress(
            list(slices(unique, step)), desc="embedding", unit="batch", enabled=show_progress
        )
    ]
    vectors = np.concatenate(parts)
    if len(unique) == len(texts):
        return vectors
    row = {text: i for i, text in enumerate(unique)}
    return vectors[[row[text] for text in texts]]


def record_run(index_dir: str | os.PathLike[str], job: str, report: dict[str, Any]) -> None:
    """Append one line to the index folder's run history (read by ``stats``).

    The history is plain JSON Lines beside the index files; the index loader
    ignores it, and losing it loses only statistics.
    """
    entry = {"time": time.time(), "job": job, **report}
    line = json.dumps(entry, default=str) + "\n"
    try:
        with open(Path(index_dir) / HISTORY_FILE, "a+b") as f:
            # After a crash mid-write the last line is torn: start a new one,
            # or this run would be glued to it and skipped with it.
            if f.tell() and (f.seek(-1, os.SEEK_END) or f.read(1) != b"\n"):
                line = "\n" + line
            f.write(line.encode("utf-8"))
    except OSError:
        pass  # statistics are best effort; the job itself succeeded


def read_history(index_dir: str | os.PathLike[str], limit: int = 1000) -> list[dict[str, Any]]:
    path = Path(index_dir) / HISTORY_FILE
    runs = []
    try:
        lines = path.read_text("utf-8").splitlines()[-limit:]
    except (OSError, UnicodeDecodeError):
        return []
    for line in lines:
        try:
            entry = json.loads(line)
        except ValueError:
            continue  # a torn last line after a crash
        if isinstance(entry, dict) and all(
            isinstance(entry.get(count, 0), int) for count in ("cache_hits", "computed")
        ):
            runs.append(entry)  # (a line edited by hand into something else is skipped)
    return runs
