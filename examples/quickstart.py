"""Quick start: embed the bundled corpus twice through a SQLite cache.

The first pass runs the bundled all-MiniLM-L6-v2 model on every chunk; the
second finds every vector in the cache and makes no model call (a fresh
process would not even load the model).

    python examples/quickstart.py [--store sqlite:///.cachedvec/quickstart.db] [--corpus DIR]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from cachedvec import CachedEmbeddings

CORPUS = Path(__file__).parent / "corpus"


def paragraphs(corpus: Path) -> list[str]:
    """The corpus split on blank lines: small enough chunks for a quick demo."""
    texts = []
    for path in sorted(corpus.rglob("*.md")) + sorted(corpus.rglob("*.txt")):
        if path.name == "README.md":
            continue
        texts += [p.strip() for p in path.read_text("utf-8").split("\n\n") if p.strip()]
    return texts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--store", default="sqlite:///.cachedvec/quickstart.db")
    parser.add_argument("--corpus", type=Path, default=CORPUS, help="folder of .md/.txt files")
    args = parser.parse_args()
    if args.store.startswith("sqlite:///"):
        Path(args.store[len("sqlite:///") :]).parent.mkdir(parents=True, exist_ok=True)
    texts = paragraphs(args.corpus)
    print(f"{len(texts)} paragraphs from {args.corpus}")
    for run in ("first", "second"):
        with CachedEmbeddings(store=args.store) as emb:
            start = time.perf_counter()
            vectors = emb.embed_documents_array(texts)
            elapsed = time.perf_counter() - start
            s = emb.stats
            print(
                f"{run} pass: {vectors.shape[0]} vectors of dim {vectors.shape[1]} in "
                f"{elapsed:.2f}s ({len(texts) / elapsed:,.0f} texts/s): "
                f"{s.hits} hits, {s.misses} misses, {s.computed} computed"
            )


if __name__ == "__main__":
    main()
