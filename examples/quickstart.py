"""Quick start: embed the bundled corpus twice through a SQLite cache.

Each pass embeds every paragraph of the corpus and prints what it did. On a
new store the first pass runs the bundled all-MiniLM-L6-v2 model on every
distinct paragraph; the second finds every vector in the cache and makes no
model call (a fresh process would not even load the model). Run the script
again with the same store and both passes come from the cache: each pass is
labelled by its own counts, not by its turn. A paragraph that repeats an
earlier one in the same call is looked up once and counted as a duplicate,
so hits + misses + duplicates is the number of paragraphs.

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


def what_happened(hits: int, computed: int) -> str:
    """A pass's label, from its counts: a second run of the script computes nothing."""
    if computed == 0:
        return "all from the cache, no model call"
    if hits == 0:
        return "nothing cached yet, the model computed every vector"
    return f"partly cached, the model computed {computed}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--store", default="sqlite:///.cachedvec/quickstart.db")
    parser.add_argument("--corpus", type=Path, default=CORPUS, help="folder of .md/.txt files")
    args = parser.parse_args()
    if args.store.startswith("sqlite:///"):
        Path(args.store[len("sqlite:///") :]).parent.mkdir(parents=True, exist_ok=True)
    texts = paragraphs(args.corpus)
    distinct = len(set(texts))
    print(
        f"{len(texts)} paragraphs from {args.corpus}: {distinct} distinct, "
        f"{len(texts) - distinct} duplicates"
    )
    for run in (1, 2):
        with CachedEmbeddings(store=args.store) as emb:
            start = time.perf_counter()
            vectors = emb.embed_documents_array(texts)
            elapsed = time.perf_counter() - start
            s = emb.stats
            print(
                f"pass {run} ({what_happened(s.hits, s.computed)}): {vectors.shape[0]} vectors "
                f"of dim {vectors.shape[1]} in {elapsed:.2f}s ({len(texts) / elapsed:,.0f} "
                f"texts/s): {s.hits} hits, {s.misses} misses, {s.computed} computed, "
                f"{s.duplicates} duplicates"
            )


if __name__ == "__main__":
    main()
