"""Cache benchmark: cachedvec against LangChain and a hand-written ceiling, in one run.

Run from the repository root::

    .venv/bin/python bench/cache_bench.py                       # 20k texts, best of 3
    .venv/bin/python bench/cache_bench.py --n 5000 --repeat 1 --stores memory,sqlite
    .venv/bin/python bench/cache_bench.py --stores memory --clock cpu   # on a busy machine

The full run takes 10-25 minutes on 2 cores, most of it in LangChain's file
and SQL stores; ``--stores`` and ``--n`` make quick runs. The exit status is 0
only when every target passes.

Three contenders embed the same deterministic texts (~50 words each, made from
``--seed``; the bundled corpus is not read) with the same fast fake model
(:class:`HashEmbedder`, ~2 us per text, so it never hides cache overhead) over
the same store kinds (``memory``, ``file``, ``sqlite``):

- **cachedvec**: ``CachedEmbeddings(model, url)``, array path
  (``embed_documents_array``), list path (``embed_documents``) and ``embed_query``;
- **LangChain**: langchain-classic's ``CacheBackedEmbeddings.from_bytes_store(...,
  key_encoder="sha256")`` over ``InMemoryByteStore``, ``LocalFileStore`` and
  langchain-community's ``SQLStore``;
- **hand-written**: the least work that can do the job, as the physical ceiling:
  sha256 each text, read raw float32 blobs from a dict, one file per key, or a
  plain ``sqlite3`` table (``SELECT key, value ... IN``, 999 keys per chunk, the
  same file settings as cachedvec's SQL store), and copy them into one matrix
  with ``np.frombuffer(b"".join(...))``. No header, no checksum, no
  de-duplication, no batching, no atomic file writes.

Measured: cold, warm (all hits) and 50%-hit throughput; cold overhead per text
over the raw model; bytes on disk per vector after close (the bytes the store
wrote, i.e. apparent file sizes, as the target and LangChain's 5.5x figure
count them; allocated blocks shown too);
model calls per unique text with 10% duplicates; ``embed_query`` hit and miss
median latency; the list API against the array path plus ``ndarray.tolist()``.
Every figure is the best of ``--repeat`` runs (the machine is shared and noisy;
warm passes run twice per run for every side; the sides take turns in an
order rotated per run) with the garbage collector paused inside timed
regions, as ``timeit`` does; freeing a pass's result is timed too (as in
``timeit``), which costs the float-list paths more than an array.

Read the ratios with two differences in mind. "array / LangChain" sets
cachedvec's ndarray path against LangChain's float lists (its only output);
the like-for-like list API is the "cachedvec list" column. And each side
keeps its own defaults on SQLite: cachedvec WAL with ``synchronous=NORMAL``,
LangChain's ``SQLStore`` SQLite's rollback journal with ``synchronous=FULL``
(a sync per commit: LangChain writes a whole pass in one commit, but each
query miss in its own, hence most of its SQLite miss latency); the warm
(read-only) figures are not affected.
The script prints Markdown tables, ratios, and one PASS/FAIL line per cache
target. It needs the ``langchain-classic`` and ``langchain-community`` extras.
"""

from __future__ import annotations

import argparse
import gc
import hashlib
import os
import shutil
import sqlite3
import statistics
import sys
import tempfile
import time
import warnings
import zlib
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from langchain_core.embeddings import Embeddings
from langchain_core.stores import InMemoryByteStore

from cachedvec import CachedEmbeddings
from cachedvec.keys import ModelFingerprint

with warnings.catch_warnings():
    # langchain-community warns on import that it is being sunset; it is only
    # the reference here.
    warnings.simplefilter("ignore")
    from langchain_classic.embeddings import CacheBackedEmbeddings
    from langchain_classic.storage import LocalFileStore
    from langchain_community.storage import SQLStore

DIM = 384
RAW_BYTES = DIM * 4
STORES = ("memory", "file", "sqlite")
SIDES = ("cachedvec", "cachedvec-list", "langchain", "hand-written")
QUERY_POOL = 200  # distinct cached queries cycled through for hit latency
QUERY_HITS = 2000  # timed query hits per run
QUERY_MISSES = 100  # timed query misses per run (each one writes)
SQLITE_MAX_PARAMS = 999


# --------------------------------------------------------------------- data
def make_texts(n: int, seed: int, words: int = 50) -> list[str]:
    """``n`` distinct texts of ``words`` +/- 10 pseudo-words, the same for a seed."""
    rng = np.random.default_rng(seed)
    letters = np.array(list("abcdefghijklmnopqrstuvwxyz"))
    vocab = ["".join(rng.choice(letters, rng.integers(2, 10))) for _ in range(5000)]
    out: list[str] = []
    seen: set[str] = set()
    while len(out) < n:
        picks = rng.integers(0, len(vocab), words + 10)
        text = " ".join(vocab[i] for i in picks[: rng.integers(words - 10, words + 11)])
        if text not in seen:
            seen.add(text)
            out.append(text)
    return out


def with_duplicates(texts: list[str], share: float, seed: int) -> tuple[list[str], int]:
    """A shuffled list where ``share`` of the items repeat others; and the unique count."""
    rng = np.random.default_rng(seed)
    unique = texts[: round(len(texts) * (1 - share))]
    repeats = [unique[i] for i in rng.integers(0, len(unique), len(texts) - len(unique))]
    mixed = unique + repeats
    order = rng.permutation(len(mixed))
    return [mixed[i] for i in order], len(unique)


class HashEmbedder(Embeddings):
    """A fake model as cheap as possible: a text's CRC-32 picks three table rows.

    Deterministic, ~2 us per text. It serves both sides: LangChain through
    ``embed_documents``/``embed_query`` (float lists, as any LangChain model),
    cachedvec and the hand-written pipeline through ``embed_documents_array``.
    """

    def __init__(self, dim: int = DIM, seed: int = 0) -> None:
        self.table = np.random.default_rng(seed).standard_normal((4096, dim)).astype(np.float32)
        self.fingerprint = ModelFingerprint(
            model="bench/hash-embedder", revision=f"seed={seed}", dim=dim, normalize=False
        )
        self.texts_embedded = 0

    def embed_documents_array(self, texts: Sequence[str]) -> np.ndarray:
        self.texts_embedded += len(texts)
        h = np.fromiter((zlib.crc32(t.encode()) for t in texts), np.uint32, len(texts))
        out = self.table[h & 4095]
        out += self.table[(h >> 10) & 4095]
        out += self.table[h >> 20]
        return out

    embed_queries_array = embed_documents_array

    def embed_documents(self, texts: list[str]) -> list[list[float]]:
        return self.embed_documents_array(texts).tolist()  # type: ignore[no-any-return]

    def embed_query(self, text: str) -> list[float]:
        return self.embed_documents_array([text])[0].tolist()  # type: ignore[no-any-return]


# ------------------------------------------------------- hand-written ceiling
class DictBlobs:
    def __init__(self, folder: Path) -> None:
        self.data: dict[str, bytes] = {}

    def get_many(self, keys: list[str]) -> list[bytes | None]:
        get = self.data.get
        return [get(k) for k in keys]

    def put_many(self, pairs: list[tuple[str, bytes]]) -> None:
        self.data.update(pairs)

    def close(self) -> None:
        pass


class FileBlobs:
    """One file per key in 256 shard folders, written in place (not crash-safe)."""

    def __init__(self, folder: Path) -> None:
        self.root = str(folder)
        self.shards: set[str] = set()  # one mkdir per shard, as cachedvec's file store

    def get_many(self, keys: list[str]) -> list[bytes | None]:
        out: list[bytes | None] = []
        root, join = self.root, os.path.join
        for k in keys:
            try:
                with open(join(root, k[:2], k), "rb") as f:
                    out.append(f.read())
            except FileNotFoundError:
                out.append(None)
        return out

    def put_many(self, pairs: list[tuple[str, bytes]]) -> None:
        for k, v in pairs:
            shard = os.path.join(self.root, k[:2])
            if shard not in self.shards:
                os.makedirs(shard, exist_ok=True)
                self.shards.add(shard)
            with open(os.path.join(shard, k), "wb") as f:
                f.write(v)

    def close(self) -> None:
        pass


class SqliteBlobs:
    """A plain ``sqlite3`` table, with the file settings cachedvec's SQL store uses.

    WAL, ``synchronous=NORMAL`` (no sync per commit), 16 KiB pages and
    memory-mapped reads: the ceiling should measure code, not tuning.
    """

    def __init__(self, folder: Path) -> None:
        self.conn = sqlite3.connect(folder / "blobs.db", isolation_level=None)
        self.conn.execute("PRAGMA page_size=16384")
        self.conn.execute("PRAGMA mmap_size=1073741824")
        self.conn.execute("PRAGMA journal_mode=WAL")
        self.conn.execute("PRAGMA synchronous=NORMAL")
        self.conn.execute("CREATE TABLE IF NOT EXISTS t (key TEXT PRIMARY KEY, value BLOB)")

    def get_many(self, keys: list[str]) -> list[bytes | None]:
        found: dict[str, bytes] = {}
        for start in range(0, len(keys), SQLITE_MAX_PARAMS):
            chunk = keys[start : start + SQLITE_MAX_PARAMS]
            marks = ",".join("?" * len(chunk))
            found.update(
                self.conn.execute(f"SELECT key, value FROM t WHERE key IN ({marks})", chunk)
            )
        get = found.get
        return [get(k) for k in keys]

    def put_many(self, pairs: list[tuple[str, bytes]]) -> None:
        with self.conn:
            self.conn.execute("BEGIN")
            self.conn.executemany("INSERT OR REPLACE INTO t VALUES (?, ?)", pairs)

    def close(self) -> None:
        self.conn.close()


def matrix(blobs: Sequence[Any]) -> np.ndarray:
    """Raw float32 blobs as one ``(n, DIM)`` matrix: one join, one view."""
    return np.frombuffer(b"".join(blobs), np.float32).reshape(len(blobs), DIM)


class HandWritten:
    """The minimal pipeline: hash, read blobs, join into one matrix; embed what is missing."""

    BACKENDS: dict[str, Callable[[Path], Any]] = {
        "memory": DictBlobs,
        "file": FileBlobs,
        "sqlite": SqliteBlobs,
    }

    def __init__(self, model: HashEmbedder, kind: str, folder: Path) -> None:
        self.model = model
        self.blobs = self.BACKENDS[kind](folder)

    def embed_documents_array(self, texts: list[str]) -> np.ndarray:
        sha = hashlib.sha256
        keys = [sha(t.encode()).hexdigest() for t in texts]
        blobs = self.blobs.get_many(keys)
        missing = [i for i, b in enumerate(blobs) if b is None]
        if not missing:
            return matrix(blobs)
        out = np.empty((len(texts), DIM), np.float32)
        hits = [i for i, b in enumerate(blobs) if b is not None]
        if hits:
            out[hits] = matrix([blobs[i] for i in hits])
        vectors = self.model.embed_documents_array([texts[i] for i in missing])
        out[missing] = vectors
        self.blobs.put_many([(keys[i], v.tobytes()) for i, v in zip(missing, vectors, strict=True)])
        return out

    def embed_query(self, text: str) -> list[float]:
        key = hashlib.sha256(text.encode()).hexdigest()
        (blob,) = self.blobs.get_many([key])
        if blob is not None:
            return np.frombuffer(blob, np.float32).tolist()  # type: ignore[no-any-return]
        vector = self.model.embed_documents_array([text])[0]
        self.blobs.put_many([(key, vector.tobytes())])
        return vector.tolist()  # type: ignore[no-any-return]

    def close(self) -> None:
        self.blobs.close()


# ------------------------------------------------------------------- sides
class Side:
    """One contender on one store kind in its own folder: embed, query, close."""

    def __init__(self, side: str, kind: str, folder: Path, model: HashEmbedder) -> None:
        self.side, self.kind, self.folder = side, kind, folder
        folder.mkdir(parents=True)
        if side.startswith("cachedvec"):
            url = {
                "memory": "memory://",
                "file": f"file://{folder}/store",
                "sqlite": f"sqlite:///{folder}/cache.db",
            }[kind]
            self.impl: Any = CachedEmbeddings(model, url)
            self.documents = (
                self.impl.embed_documents
                if side == "cachedvec-list"
                else self.impl.embed_documents_array
            )
        elif side == "langchain":
            if kind == "memory":
                store: Any = InMemoryByteStore()
            elif kind == "file":
                store = LocalFileStore(folder / "store")
            else:
                store = SQLStore(namespace="bench", db_url=f"sqlite:///{folder}/cache.db")
                store.create_schema()
            self.lc_store = store
            self.impl = CacheBackedEmbeddings.from_bytes_store(
                model,
                store,
                namespace="bench-hash-embedder",
                key_encoder="sha256",
                query_embedding_cache=True,
            )
            self.documents = self.impl.embed_documents
        else:
            self.impl = HandWritten(model, kind, folder)
            self.documents = self.impl.embed_documents_array
        self.query = self.impl.embed_query

    def close(self) -> None:
        if self.side == "langchain":
            if self.kind == "sqlite":
                self.lc_store.engine.dispose()
        else:
            self.impl.close()


# ------------------------------------------------------------------ timing
class CLOCK:
    """What "time" means: wall clock, or this process's CPU time (``--clock cpu``).

    CPU time ignores other processes competing for the cores (steadier on a
    shared machine) but also every wait for the disk, such as fsync. It only
    times whole passes: per-query latencies stay on the wall clock, because
    reading a process's CPU time is a system call that itself costs
    microseconds.
    """

    seconds: Callable[[], float] = time.perf_counter

    @classmethod
    def use_cpu(cls) -> None:
        cls.seconds = time.process_time


def timed(fn: Callable[..., Any], *args: Any) -> float:
    """Seconds for one call, with the collector paused (as ``timeit`` does).

    The result is dropped before returning, so no contender pays for a big
    result of the previous call still being alive while it allocates its own.
    """
    gc.collect()
    gc.disable()
    try:
        start = CLOCK.seconds()
        fn(*args)
        return CLOCK.seconds() - start
    finally:
        gc.enable()


def latencies_us(fn: Callable[[str], Any], texts: Sequence[str]) -> list[float]:
    gc.collect()
    gc.disable()
    clock = time.perf_counter_ns
    out = []
    try:
        for t in texts:
            start = clock()
            fn(t)
            out.append((clock() - start) / 1000)
    finally:
        gc.enable()
    return out


def disk_usage(folder: Path) -> tuple[int, int]:
    """(allocated bytes of files and folders, apparent bytes of files) under ``folder``."""
    allocated = apparent = 0
    for root, dirs, files in os.walk(folder):
        for name in dirs:
            allocated += os.lstat(os.path.join(root, name)).st_blocks * 512
        for name in files:
            st = os.lstat(os.path.join(root, name))
            allocated += st.st_blocks * 512
            apparent += st.st_size
    return allocated, apparent


def as_matrix(result: Any) -> np.ndarray:
    return result if isinstance(result, np.ndarray) else np.asarray(result, np.float32)


class Results:
    """Best-of-repeats figures: ``best[(metric, kind, side)]``."""

    def __init__(self) -> None:
        self.best: dict[tuple[str, str, str], float] = {}

    def low(self, metric: str, kind: str, side: str, value: float) -> None:
        key = (metric, kind, side)
        self.best[key] = min(value, self.best.get(key, float("inf")))

    def get(self, metric: str, kind: str, side: str) -> float | None:
        return self.best.get((metric, kind, side))


def run_store(
    kind: str, texts: list[str], queries: list[str], repeat: int, work: Path, res: Results
) -> None:
    model = HashEmbedder()
    expected = model.embed_documents_array(texts)
    for r in range(repeat):
        # The raw model is timed in every run too, so the overheads subtract a
        # cost measured under the same machine load.
        res.low("raw_array", "-", "-", timed(model.embed_documents_array, texts))
        res.low("raw_list", "-", "-", timed(model.embed_documents, texts))
        misses = make_texts(QUERY_MISSES, seed=1000 + r, words=12)
        # Interleave the sides inside each run so drifting machine load hits all
        # alike, and rotate their order per run so no side always goes first (on
        # disk stores a side's timing also absorbs the writeback of the sides
        # before it).
        shift = r % len(SIDES)
        for side in SIDES[shift:] + SIDES[:shift]:
            s = Side(side, kind, work / f"{kind}-{side}-{r}-full", model)
            res.low("cold", kind, side, timed(s.documents, texts))
            for _ in range(2):
                res.low("warm", kind, side, timed(s.documents, texts))
            if r == 0 and not np.allclose(as_matrix(s.documents(texts)), expected, atol=1e-6):
                raise SystemExit(f"{side} on {kind} returned wrong vectors")
            if side == "cachedvec":
                # The list API against its floor, measured back to back on one store.
                # These array timings are kept apart from "warm": counted there they
                # gave cachedvec four warm samples per run against the others' two.
                for _ in range(2):
                    res.low("pair_array", kind, side, timed(s.documents, texts))
                    res.low("tolist", kind, side, timed(s.documents(texts).tolist))
                    res.low("list", kind, side, timed(s.impl.embed_documents, texts))
            if side != "cachedvec-list":
                for q in queries:
                    s.query(q)
                hits = latencies_us(s.query, [queries[i % len(queries)] for i in range(QUERY_HITS)])
                res.low("query_hit_us", kind, side, statistics.median(hits))
                res.low(
                    "query_miss_us", kind, side, statistics.median(latencies_us(s.query, misses))
                )
            s.close()
            if kind != "memory" and side != "cachedvec-list":
                allocated, apparent = disk_usage(s.folder)
                # Query rows were written too: count every stored vector.
                stored = len(texts) + len(queries) + len(misses)
                res.low("disk_B", kind, side, allocated / stored)
                res.low("apparent_B", kind, side, apparent / stored)
            shutil.rmtree(s.folder)

            s = Side(side, kind, work / f"{kind}-{side}-{r}-half", model)
            s.documents(texts[::2])
            res.low("half", kind, side, timed(s.documents, texts))
            s.close()
            shutil.rmtree(s.folder)


def run_duplicates(texts: list[str], work: Path, res: Results) -> None:
    mixed, unique = with_duplicates(texts, 0.10, seed=7)
    for side in ("cachedvec", "cachedvec-list", "langchain"):
        model = HashEmbedder()
        s = Side(side, "memory", work / f"dups-{side}", model)
        s.documents(mixed)
        res.low("calls_per_unique", "memory", side, model.texts_embedded / unique)
        s.close()


# ------------------------------------------------------------------ report
def fmt(value: float | None, digits: int = 0) -> str:
    if value is None:
        return "-"
    return f"{value:,.{digits}f}"


def ratio(a: float | None, b: float | None) -> str:
    return "-" if a is None or b is None or b == 0 else f"{a / b:.2f}x"


def report(
    res: Results, kinds: list[str], n: int, repeat: int, clock: str
) -> list[tuple[str, bool]]:
    def tput(metric: str, kind: str, side: str) -> float | None:
        t = res.get(metric, kind, side)
        return n / t if t else None

    print(
        f"\n## cachedvec cache benchmark: {n:,} texts, dim {DIM}, best of {repeat}, {clock} clock\n"
    )
    print(
        "Throughput, texts/s (array = `embed_documents_array`, list = `embed_documents`; "
        "LangChain = `CacheBackedEmbeddings.embed_documents`):\n"
    )
    print(
        "| store | pass | cachedvec array | cachedvec list | LangChain | hand-written "
        "| array / LangChain | array / hand-written |"
    )
    print("|---|---|---:|---:|---:|---:|---:|---:|")
    for kind in kinds:
        for metric, label in (("cold", "cold"), ("warm", "warm"), ("half", "50% hits")):
            cv, cvl, lc, hw = (tput(metric, kind, s) for s in SIDES)
            print(
                f"| {kind} | {label} | {fmt(cv)} | {fmt(cvl)} | {fmt(lc)} | {fmt(hw)} "
                f"| {ratio(cv, lc)} | {ratio(cv, hw)} |"
            )

    raw_a, raw_l = res.get("raw_array", "-", "-"), res.get("raw_list", "-", "-")
    assert raw_a is not None and raw_l is not None

    def overhead(kind: str, side: str, raw: float) -> float | None:
        t = res.get("cold", kind, side)
        return None if t is None else (t - raw) / n * 1e6

    print(
        f"\nCold-path overhead over the raw model, us/text (raw model: "
        f"{raw_a / n * 1e6:.2f} us/text as an array, {raw_l / n * 1e6:.2f} as float lists; "
        "array paths are charged against the first, list paths against the second):\n"
    )
    print(
        "| store | cachedvec array | cachedvec list | LangChain | hand-written "
        "| LangChain / cachedvec array |"
    )
    print("|---|---:|---:|---:|---:|---:|")
    for kind in kinds:
        cv = overhead(kind, "cachedvec", raw_a)
        cvl = overhead(kind, "cachedvec-list", raw_l)
        lc = overhead(kind, "langchain", raw_l)
        hw = overhead(kind, "hand-written", raw_a)
        print(
            f"| {kind} | {fmt(cv, 1)} | {fmt(cvl, 1)} | {fmt(lc, 1)} | {fmt(hw, 1)} "
            f"| {ratio(lc, cv)} |"
        )

    print("\nList API against the array path plus `ndarray.tolist()` (warm, ms for all texts):\n")
    print(
        "| store | `embed_documents` | `embed_documents_array` | `.tolist()` "
        "| list / (array + tolist) |"
    )
    print("|---|---:|---:|---:|---:|")
    for kind in kinds:
        lst, arr = res.get("list", kind, "cachedvec"), res.get("pair_array", kind, "cachedvec")
        tol = res.get("tolist", kind, "cachedvec")
        floor = None if arr is None or tol is None else arr + tol
        print(
            f"| {kind} | {fmt(lst and lst * 1e3, 1)} | {fmt(arr and arr * 1e3, 1)} "
            f"| {fmt(tol and tol * 1e3, 1)} | {ratio(lst, floor)} |"
        )

    disk_kinds = [k for k in kinds if k != "memory"]
    if disk_kinds:
        print(
            f"\nBytes on disk per vector after close: the bytes the store wrote (apparent "
            f"file sizes), allocated blocks incl. folders in brackets; raw float32 = "
            f"{RAW_BYTES} B. Ratios are of the bytes written:\n"
        )
        print(
            "| store | cachedvec | LangChain | hand-written | cachedvec / raw "
            "| cachedvec / LangChain |"
        )
        print("|---|---:|---:|---:|---:|---:|")
        for kind in disk_kinds:
            cells = [
                f"{fmt(res.get('apparent_B', kind, s))} ({fmt(res.get('disk_B', kind, s))})"
                for s in ("cachedvec", "langchain", "hand-written")
            ]
            cv = res.get("apparent_B", kind, "cachedvec")
            lc = res.get("apparent_B", kind, "langchain")
            print(f"| {kind} | {' | '.join(cells)} | {ratio(cv, RAW_BYTES)} | {ratio(cv, lc)} |")
        print(
            f"\nAllocated space has a floor: a 4 KiB filesystem block per file makes any "
            f"one-file-per-key store at least {4096 / RAW_BYTES:.2f}x raw float32 at dim {DIM}."
        )

    print(
        f"\n`embed_query` median latency, wall-clock us ({QUERY_HITS} hits over {QUERY_POOL} "
        f"cached queries; {QUERY_MISSES} misses, each computed and written):\n"
    )
    print(
        "| store | cachedvec hit | LangChain hit | hand-written hit | cachedvec miss "
        "| LangChain miss | hand-written miss | hit: LangChain / cachedvec |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for kind in kinds:
        sides = ("cachedvec", "langchain", "hand-written")
        hit = [res.get("query_hit_us", kind, s) for s in sides]
        miss = [res.get("query_miss_us", kind, s) for s in sides]
        print(f"| {kind} | {' | '.join(fmt(v, 1) for v in hit + miss)} | {ratio(hit[1], hit[0])} |")

    calls = {
        s: res.get("calls_per_unique", "memory", s)
        for s in ("cachedvec", "cachedvec-list", "langchain")
    }
    print(
        "\nModel calls per unique text, 10% duplicate texts in one call (memory store): "
        + ", ".join(f"{s} {fmt(v, 3)}" for s, v in calls.items())
        + "\n"
    )

    def at_least(name: str, value: float | None, target: float, unit: str = "x") -> None:
        checks.append(
            (
                f"{name}: {fmt(value, 2)}{unit} (target >= {target:g}{unit})",
                value is not None and value >= target,
            )
        )

    def at_most(name: str, value: float | None, target: float, unit: str) -> None:
        checks.append(
            (
                f"{name}: {fmt(value, 2)}{unit} (target <= {target:g}{unit})",
                value is not None and value <= target,
            )
        )

    def speedup(kind: str, other: str) -> float | None:
        a, b = res.get("warm", kind, other), res.get("warm", kind, "cachedvec")
        return None if a is None or b is None else a / b

    checks: list[tuple[str, bool]] = []
    for kind, target in (("memory", 25), ("sqlite", 15)):
        if kind in kinds:
            at_least(f"warm array vs LangChain, {kind}", speedup(kind, "langchain"), target)
    for kind in ("memory", "sqlite"):
        if kind in kinds:
            at_least(
                f"warm array vs hand-written ceiling, {kind}", speedup(kind, "hand-written"), 0.6
            )
    for kind in kinds:
        lst, arr = res.get("list", kind, "cachedvec"), res.get("pair_array", kind, "cachedvec")
        tol = res.get("tolist", kind, "cachedvec")
        value = None if lst is None or arr is None or tol is None else lst / (arr + tol)
        at_most(f"list API / (array + tolist), {kind}", value, 1.3, "x")
    if "memory" in kinds:
        at_most(
            "cold overhead, array path, memory",
            overhead("memory", "cachedvec", raw_a),
            10,
            " us/text",
        )
    for kind in disk_kinds:
        cv = res.get("apparent_B", kind, "cachedvec")
        at_most(
            f"bytes written per vector / raw float32, {kind}",
            None if cv is None else cv / RAW_BYTES,
            1.4,
            "x",
        )
    for side in ("cachedvec", "cachedvec-list"):
        value = calls[side]
        checks.append(
            (f"model calls per unique text, {side}: {fmt(value, 3)} (target 1.000)", value == 1.0)
        )
    for kind, target in (("memory", 25), ("sqlite", 100)):
        if kind in kinds:
            at_most(
                f"embed_query hit median, {kind}",
                res.get("query_hit_us", kind, "cachedvec"),
                target,
                " us",
            )
    for line, ok in checks:
        print(f"{'PASS' if ok else 'FAIL'}  {line}")
    return checks


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=20_000, help="number of texts (default 20000)")
    parser.add_argument("--repeat", type=int, default=3, help="runs per figure, best kept")
    parser.add_argument(
        "--stores", default=",".join(STORES), help="comma-separated store kinds: memory,file,sqlite"
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of the generated texts")
    parser.add_argument(
        "--clock",
        choices=("wall", "cpu"),
        default="wall",
        help="wall clock (default) or this process's CPU time, which "
        "ignores other load on the machine but also disk waits",
    )
    args = parser.parse_args(argv)
    if args.clock == "cpu":
        CLOCK.use_cpu()
    kinds = [k.strip() for k in args.stores.split(",") if k.strip()]
    unknown = sorted(set(kinds) - set(STORES))
    if unknown or args.n < 2 or args.repeat < 1:
        parser.error(f"need --n >= 2, --repeat >= 1 and stores among {', '.join(STORES)}")

    texts = make_texts(args.n, args.seed)
    queries = make_texts(QUERY_POOL, args.seed + 1, words=12)
    res = Results()
    with tempfile.TemporaryDirectory(prefix="cachedvec-bench-") as tmp:
        work = Path(tmp)
        HashEmbedder().embed_documents(texts)  # untimed: fault the first big allocations in
        run_duplicates(texts, work, res)
        for kind in kinds:
            print(f"running {kind} store ...", file=sys.stderr, flush=True)
            run_store(kind, texts, queries, args.repeat, work, res)
    checks = report(res, kinds, args.n, args.repeat, args.clock)
    return 0 if all(ok for _, ok in checks) else 1


if __name__ == "__main__":
    sys.exit(main())
