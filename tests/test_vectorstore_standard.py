"""LangChain's own conformance suite for vector stores, sync and async."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from langchain_tests.integration_tests.vectorstores import VectorStoreIntegrationTests

from cachedvec import CachedVectorStore


class TestCachedVectorStoreSync(VectorStoreIntegrationTests):
    @property
    def has_async(self) -> bool:
        return False

    @pytest.fixture
    def vectorstore(self) -> Iterator[CachedVectorStore]:  # type: ignore[override]
        store = CachedVectorStore(embedding=self.get_embeddings())
        yield store
        store.close()


class TestCachedVectorStoreAsync(VectorStoreIntegrationTests):
    @property
    def has_sync(self) -> bool:
        return False

    @pytest.fixture
    def vectorstore(self) -> Iterator[CachedVectorStore]:  # type: ignore[override]
        store = CachedVectorStore(embedding=self.get_embeddings(), factory="HNSW16")
        yield store
        store.close()
