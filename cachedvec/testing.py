"""A fast, deterministic fake embedder for tests, examples and benchmarks.

:class:`FakeEmbeddings` hashes each lower-cased word to a row of a fixed
random table and sums the rows, so texts that share words get similar
vectors (retrieval tests have meaningful answers) and the same text always
gets the same vector. It counts calls so tests can assert how often the
"model" ran. It is not a language model: use it only where semantics do not
matter.
"""

from __future__ import annotations

import zlib
from collections.abc import Sequence
from typing import cast

import numpy as np
from langchain_core.embeddings import Embeddings

from cachedvec.keys import ModelFingerprint

_TABLE_BITS = 14


class FakeEmbeddings(Embeddings):
    """Bag-of-words hash embeddings; unit-length float32 vectors of ``dim``."""

    def __init__(self, dim: int = 384, *, seed: int = 0, name: str = "fake") -> None:
        self.dim = dim
        self.name = name
        rng = np.random.default_rng(seed)
        self._table = rng.standard_normal((1 << _TABLE_BITS, dim)).astype(np.float32)
        self.fingerprint = ModelFingerprint(
            model=f"cachedvec-fake/{name}", revision=f"seed={seed}", dim=dim, normalize=True
        )
        self.calls = 0
        self.texts_embedded = 0

    def embed_array(self, texts: Sequence[str]) -> np.ndarray:
        """Embed texts into an ``(n, dim)`` float32 matrix."""
        self.calls += 1
        self.texts_embedded += len(texts)
        mask = (1 << _TABLE_BITS) - 1
        out = np.empty((len(texts), self.dim), dtype=np.float32)
        table = self._table
        for i, text in enumerate(texts):
            words = text.lower().split() or [text]
            rows = [zlib.crc32(w.encode("utf-8", "surrogatepass")) & mask for w in words]
            out[i] = table[rows].sum(axis=0)
        norms = np.linalg.norm(out, axis=1, keepdims=True)
        out /= np.where(norms == 0, 1.0, norms)
        return out

    # The model protocol cachedvec.models uses (arrays, no float lists).
    def embed_documents_array(self, texts: Sequence[str]) -> np.ndarray:
        return self.embed_array(texts)

    def embed_queries_array(self, texts: Sequence[str]) -> np.ndarray:
        return self.embed_array(texts)

    # The LangChain Embeddings interface.
    def embed_documents(self, texts: list[str]) -> list[list[float]]:
        return cast("list[list[float]]", self.embed_array(texts).tolist())

    def embed_query(self, text: str) -> list[float]:
        return cast("list[float]", self.embed_array([text])[0].tolist())
