"""Ingestion and re-indexing benchmark: incremental ingest and reindex targets, in one run.

    .venv/bin/python bench/ingest_bench.py            # 5,000 chunks, real model
    .venv/bin/python bench/ingest_bench.py --chunks 500 --vectors 20000   # quick look

1. Builds a corpus of ``--chunks`` chunks (the bundled corpus's paragraphs,
   repeated with a numbered suffix so every chunk is unique), ingests it with
   the real bundled model, then ingests it again unchanged: the ratio of the
   two times (target >= 50x) and the vectors computed the second time
   (target 0).
2. Edits 1% of the source files and ingests again: vectors computed must be
   exactly the chunks whose text changed.
3. Caches ``--vectors`` random 384-d vectors in SQLite and times
   ``cachedvec reindex --factory HNSW32`` against building the same FAISS
   index from an in-memory array (target <= 1.5x).

All three ingests run in this one process, each timed once (wall clock). The
first one also loads the model (lazily, at its first batch); the re-ingest
finds it loaded and pays no interpreter start-up or imports, which a
``cachedvec ingest`` from the command line does (see the README). Step 3 is
one timing of each side, the in-memory build first; ``reindex`` also reads
the cache from SQLite and saves the new index (with fsync), the raw build
neither.
"""

from __future__ import annotations

import argparse
import random
import shutil
import tempfile
import time
from pathlib import Path

import faiss
import numpy as np

import cachedvec
from cachedvec.codec import VectorCodec
from cachedvec.index import VectorIndex
from cachedvec.stores import open_store

CORPUS = Path(__file__).resolve().parent.parent / "examples" / "corpus"
PER_FILE = 25  # chunks per generated source file


def paragraphs() -> list[str]:
    out = []
    for path in sorted(CORPUS.rglob("*.md")):
        out += [p.strip() for p in path.read_text("utf-8").split("\n\n") if len(p.strip()) > 400]
    return out


def write_corpus(folder: Path, chunks: int) -> list[Path]:
    """Files of PER_FILE paragraphs each, separated so each paragraph is one chunk."""
    base = paragraphs()
    folder.mkdir(parents=True)
    files = []
    for f in range(0, chunks, PER_FILE):
        texts = [
            f"{base[(f + i) % len(base)][:700]} (part {f + i})"
            for i in range(min(PER_FILE, chunks - f))
        ]
        path = folder / f"doc{f // PER_FILE:05d}.txt"
        path.write_text("\n\n".join(texts), "utf-8")
        files.append(path)
    return files


def timed(fn):  # type: ignore[no-untyped-def]
    start = time.perf_counter()
    result = fn()
    return result, time.perf_counter() - start


def ingest_part(work: Path, chunks: int) -> list[str]:
    corpus = work / "corpus"
    files = write_corpus(corpus, chunks)
    where = {
        "index": str(work / "index"),
        "store": f"sqlite:///{work}/cache.db",
        "chunk_size": 760,
        "chunk_overlap": 0,
    }
    first, t_first = timed(lambda: cachedvec.ingest([corpus], **where))
    again, t_again = timed(lambda: cachedvec.ingest([corpus], **where))
    edited = random.Random(0).sample(files, max(1, len(files) // 100))
    changed_chunks = 0
    for path in edited:
        parts = path.read_text("utf-8").split("\n\n")
        parts[0] += " (edited)"
        changed_chunks += 1
        path.write_text("\n\n".join(parts), "utf-8")
    third, _ = timed(lambda: cachedvec.ingest([corpus], **where))
    speedup = t_first / t_again
    return [
        f"| first ingest | {first.added:,} chunks | {first.computed:,} computed "
        f"| {t_first:.1f} s |",
        f"| unchanged re-ingest | {again.skipped:,} unchanged | {again.computed} computed "
        f"| {t_again:.2f} s ({speedup:.0f}x faster) |",
        f"| after editing {len(edited)} of {len(files)} files | {third.added} added, "
        f"{third.deleted} deleted | {third.computed} computed (expected {changed_chunks}) | |",
        f"{'PASS' if speedup >= 50 and again.computed == 0 else 'FAIL'}  unchanged re-ingest "
        f"{speedup:.0f}x faster, {again.computed} computed (target >= 50x, 0)",
        f"{'PASS' if third.computed == changed_chunks else 'FAIL'}  edit 1%: computed "
        f"{third.computed}, changed chunks {changed_chunks}",
    ]


def reindex_part(work: Path, n: int, dim: int = 384) -> list[str]:
    rng = np.random.default_rng(0)
    vectors = rng.standard_normal((n, dim)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    url = f"sqlite:///{work}/vectors.db"
    keys = [f"cv1:bench:0000000000000000:doc:{i:064x}" for i in range(n)]
    codec = VectorCodec(dim)
    with open_store(url) as store:
        for s in range(0, n, 5000):
            store.mset(
                list(zip(keys[s : s + 5000], codec.encode_many(vectors[s : s + 5000]), strict=True))
            )
    index = VectorIndex(dim, factory="Flat")
    index.add(vectors, [f"t{i}" for i in range(n)], ids=[str(i) for i in range(n)], cache_keys=keys)
    index.save(work / "vidx")
    index.close()

    def raw() -> None:
        idx = faiss.IndexIDMap2(faiss.index_factory(dim, "HNSW32", faiss.METRIC_INNER_PRODUCT))
        idx.add_with_ids(vectors, np.arange(n, dtype=np.int64))

    _, t_raw = timed(raw)
    report, t_ours = timed(lambda: cachedvec.reindex(work / "vidx", factory="HNSW32", store=url))
    ratio = t_ours / t_raw
    return [
        f"| reindex {n:,} cached vectors into HNSW32 | {report.computed} computed "
        f"| {t_ours:.1f} s | raw FAISS from memory {t_raw:.1f} s ({ratio:.2f}x) |",
        f"{'PASS' if ratio <= 1.5 and report.computed == 0 else 'FAIL'}  reindex / in-memory "
        f"build {ratio:.2f}x (target <= 1.5x), {report.computed} model calls",
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--chunks", type=int, default=5000)
    parser.add_argument("--vectors", type=int, default=100_000)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="cachedvec-ingest-bench-"))
    try:
        lines = ingest_part(work / "ingest", args.chunks) + reindex_part(work, args.vectors)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print("| step | what | model | time |\n|---|---|---|---|")
    print("\n".join(line for line in lines if line.startswith("|")))
    print()
    print("\n".join(line for line in lines if not line.startswith("|")))


if __name__ == "__main__":
    main()
