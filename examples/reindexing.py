"""Re-indexing from the cache: new FAISS index types with zero model calls.

Ingests part of the bundled corpus (the product manuals) with the bundled
all-MiniLM-L6-v2 model, then rebuilds the same index as HNSW32 and as an
IVF+PQ index. Each rebuild reads every vector back from the SQLite cache and
trains IVF/PQ on those cached vectors: the model is never called, so a
rebuild costs a fraction of the first ingest. The same question is asked of
each index to show the answers hold.

    python examples/reindexing.py [--workdir DIR] [--factory HNSW32 --factory IVF4,PQ16x4]

The work folder (index and cache) defaults to a fresh temporary folder, so
every run starts clean. A few hundred chunks are very few to train IVF/PQ
on, so cachedvec logs one warning on stderr, ``training IVF4,PQ16x4 on only
206 vectors: k-means wants 624 for 16 PQ centroids per sub-vector; ...``
(FAISS's own per-clustering warnings are silenced). The index still works:
its top answer is re-ranked with the exact vectors from the cache and scores
as on the Flat index. Real corpora have many thousand chunks; use more lists
(IVF1024) and 8-bit codes (PQ16).
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import cachedvec

CORPUS = Path(__file__).parent / "corpus" / "products"
QUESTION = "My kettle flashes red once and won't heat. What's wrong?"


def show_answer(index: Path, store: str) -> None:
    hits, _ = cachedvec.query(QUESTION, k=1, index=index, store=store)
    best = hits[0]
    print(f"  top answer: [{best.score:.3f}] {Path(best.metadata['source']).relative_to(CORPUS)}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--workdir",
        type=Path,
        default=None,
        help="Folder for the index and the cache (default: a new temp folder).",
    )
    parser.add_argument(
        "--factory",
        action="append",
        default=None,
        help="FAISS factory string to rebuild with (repeatable; default: HNSW32 and IVF4,PQ16x4).",
    )
    args = parser.parse_args()
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="cachedvec-reindexing-"))
    index, store = workdir / "index", f"sqlite:///{workdir / 'cache.db'}"
    factories = args.factory or ["HNSW32", "IVF4,PQ16x4"]

    # Smaller chunks than the default give IVF/PQ enough vectors to train on.
    first = cachedvec.ingest([CORPUS], index=index, store=store, chunk_size=500, chunk_overlap=50)
    print(
        f"ingest Flat: {first.documents} chunks, {first.computed} vectors computed, "
        f"{first.cache_hits} from the cache, in {first.seconds:.2f}s"
    )
    show_answer(index, store)

    for factory in factories:
        report = cachedvec.reindex(index, factory=factory, store=store)
        speedup = first.seconds / report.seconds if report.seconds else float("inf")
        print(
            f"reindex {factory}: {report.documents} chunks, {report.computed} vectors "
            f"computed, {report.cache_hits} from the cache, in {report.seconds:.2f}s "
            f"({speedup:.0f}x faster than the first ingest)"
        )
        show_answer(index, store)
    print(f"work folder: {workdir}")


if __name__ == "__main__":
    main()
