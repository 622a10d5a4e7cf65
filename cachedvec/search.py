"""Asking an index a question: the query job behind ``cachedvec query``."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from cachedvec.embeddings import CachedEmbeddings
from cachedvec.index import Hit, VectorIndex, read_manifest
from cachedvec.index.rerank import check_rerank, needless_rerank
from cachedvec.index.vector_index import check_search_options
from cachedvec.jobs import DEFAULT_INDEX, DEFAULT_STORE, record_run
from cachedvec.stores import open_store


def query(
    text: str,
    *,
    k: int = 5,
    index: str | os.PathLike[str] = DEFAULT_INDEX,
    store: str = DEFAULT_STORE,
    model: Any = None,
    filter: dict[str, Any] | None = None,
    rerank: int | None = None,
) -> tuple[list[Hit], bool]:
    """The ``k`` best chunks for ``text``, and whether its vector was a cache hit.

    The query vector goes through the cache's query namespace, so a question
    asked before costs no model call (and does not even load the model).
    Raises :class:`IndexMismatchError` if the index was built with another model.
    The index's saved re-rank setting (or ``rerank``) re-ranks from ``store``.
    """
    read_manifest(index)  # with nothing ingested yet, say that before anything about the cache
    # Bad options are refused before any loading: checked by the search, they
    # came after the model call and after the question was written to the cache.
    check_rerank(rerank)
    check_search_options(k, filter, None)
    # The cache must exist: a mistyped URL would otherwise start an empty one,
    # miss every re-rank vector and cache the question where no one looks.
    with open_store(store, create=False) as opened, CachedEmbeddings(model, opened) as emb:
        vindex = VectorIndex.load(Path(index), fingerprint=emb.fingerprint, cache=emb.store)
        try:
            if rerank is not None:
                if vindex.scores_exactly:  # as reindex refuses it
                    raise needless_rerank(vindex.factory)
                vindex.rerank = rerank
            vector = emb.embed_query_array(text)
            hits = vindex.search(vector, k, filter=filter)
        finally:
            vindex.close()
        cached = emb.stats.hits == 1
    record_run(index, "query", {"cache_hits": int(cached), "computed": int(not cached)})
    return hits, cached
