"""Incremental ingestion and re-indexing through the Python API (fake model)."""

from __future__ import annotations

import json
import multiprocessing
import re
import threading
from pathlib import Path

import numpy as np
import pytest

import cachedvec
from cachedvec.errors import (
    ConfigError,
    IndexMismatchError,
    MissingVectorsError,
    SourceError,
)
from cachedvec.index import VectorIndex
from cachedvec.jobs import index_job
from cachedvec.stores import open_store
from cachedvec.testing import FakeEmbeddings

PARAGRAPHS = [f"Paragraph {i} is about subject {i}: words alpha{i} beta{i}." for i in range(9)]


@pytest.fixture
def corpus(tmp_path: Path) -> Path:
    root = tmp_path / "corpus"
    (root / "sub").mkdir(parents=True)
    (root / "a.md").write_text("# A\n\n" + "\n\n".join(PARAGRAPHS[:3]))
    (root / "b.txt").write_text("\n\n".join(PARAGRAPHS[3:6]))
    (root / "sub" / "c.md").write_text("\n\n".join(PARAGRAPHS[6:]))
    (root / "faq.jsonl").write_text(
        json.dumps({"text": "How to boil water: use a kettle.", "topic": "kettle"})
        + "\n"
        + json.dumps({"text": "Bees dance to share directions.", "topic": "bees"})
        + "\n"
    )
    (root / "image.png").write_bytes(b"\x89PNG\x00\x00")  # not a text suffix: ignored
    return root


@pytest.fixture
def setup(tmp_path: Path) -> dict:
    return {
        "index": str(tmp_path / "idx"),
        "store": f"sqlite:///{tmp_path}/cache.db",
        "model": FakeEmbeddings(32),
        "chunk_size": 120,
        "chunk_overlap": 0,
    }


def test_first_ingest_then_nothing_to_do(corpus: Path, setup: dict) -> None:
    first = cachedvec.ingest([corpus], **setup)
    assert first.sources.added == 4 and first.added == first.computed > 0
    assert first.documents == first.added
    model = setup["model"]
    calls = model.calls
    again = cachedvec.ingest([corpus], **setup)
    assert model.calls == calls
    assert (again.added, again.updated, again.deleted, again.computed) == (0, 0, 0, 0)
    assert again.sources.skipped == 4 and again.skipped == first.added


def test_an_unchanged_source_the_index_lost_is_read_again_and_restored(
    corpus: Path, setup: dict
) -> None:
    # The records say b.txt is ingested as it is, but its chunks are gone
    # from the index (deleted behind ingest's back): its text, let go while
    # reading as unchanged, must be read again and indexed as before.
    first = cachedvec.ingest([corpus], **setup)
    name = str((corpus / "b.txt").resolve())
    with VectorIndex.load(setup["index"]) as vindex:
        before = sorted((r.id, r.text) for r in vindex.records() if r.source == name)
        assert len(before) == 2 and vindex.delete_sources([name])
        vindex.save(setup["index"])
    report = cachedvec.ingest([corpus], **setup)
    assert (report.sources.updated, report.sources.skipped) == (1, 3)
    assert (report.added, report.cache_hits, report.computed) == (2, 2, 0)
    with VectorIndex.load(setup["index"]) as vindex:
        assert sorted((r.id, r.text) for r in vindex.records() if r.source == name) == before
        assert len(vindex) == first.documents


def test_editing_a_source_replaces_exactly_its_changed_chunks(corpus: Path, setup: dict) -> None:
    cachedvec.ingest([corpus], **setup)
    model = setup["model"]
    model.texts_embedded = 0
    (corpus / "b.txt").write_text(
        "\n\n".join([PARAGRAPHS[3], "A brand new paragraph here.", PARAGRAPHS[5]])
    )
    report = cachedvec.ingest([corpus], **setup)
    assert report.sources.updated == 1 and report.sources.skipped == 3
    # Only the middle paragraph of b.txt changed: one chunk out, one chunk in,
    # one embedding computed, and the other seven chunks left as they were.
    assert (report.added, report.deleted, report.computed, report.skipped) == (1, 1, 1, 7)
    assert report.updated == 0 and report.cache_hits == 0
    assert model.texts_embedded == 1
    with VectorIndex.load(setup["index"]) as vindex:
        texts = [r.text for r in vindex.records()]
    assert any("brand new" in t for t in texts)
    assert not any(PARAGRAPHS[4] in t for t in texts)


def test_removed_sources_are_deleted_by_cleanup_mode(corpus: Path, setup: dict) -> None:
    cachedvec.ingest([corpus], **setup)
    (corpus / "sub" / "c.md").unlink()
    kept = cachedvec.ingest([corpus], **setup, cleanup="none")
    assert kept.sources.deleted == 0
    gone = cachedvec.ingest([corpus], **setup)
    assert gone.sources.deleted == 1 and gone.deleted > 0
    # incremental leaves sources outside the given paths alone; full does not.
    only_a = cachedvec.ingest([corpus / "a.md"], **setup)
    assert only_a.sources.deleted == 0
    full = cachedvec.ingest([corpus / "a.md"], **setup, cleanup="full")
    assert full.sources.deleted == 2
    with VectorIndex.load(setup["index"]) as vindex:
        assert {r.source for r in vindex.records()} == {str((corpus / "a.md").resolve())}


def test_a_second_job_on_an_index_waits_for_the_first(
    corpus: Path, setup: dict, caplog: pytest.LogCaptureFixture
) -> None:
    # Each job loads, changes and saves the index: without the lock, the last
    # save silently dropped the other job's chunks.
    finished = threading.Event()

    def second() -> None:
        cachedvec.ingest([corpus / "sub"], **setup)
        finished.set()

    with index_job(Path(setup["index"])):
        worker = threading.Thread(target=second)
        worker.start()
        assert not finished.wait(1.0)  # blocked on the lock
    worker.join(60)
    assert finished.is_set()
    assert any("waiting for another cachedvec job" in r.getMessage() for r in caplog.records)


def test_two_ingest_processes_on_one_index_keep_both_sets(corpus: Path, setup: dict) -> None:
    context = multiprocessing.get_context("fork")
    jobs = [
        context.Process(target=cachedvec.ingest, args=([corpus / part],), kwargs=setup)
        for part in ("a.md", "b.txt")
    ]
    for job in jobs:
        job.start()
    for job in jobs:
        job.join(120)
        assert job.exitcode == 0
    with VectorIndex.load(setup["index"]) as index:
        assert sorted(index.sources()) == sorted(str(corpus / p) for p in ("a.md", "b.txt"))
    assert len(json.loads((Path(setup["index"]) / "ingest.json").read_text())["sources"]) == 2


def test_a_byte_order_mark_is_not_text(tmp_path: Path, setup: dict) -> None:
    corpus = tmp_path / "bom"
    corpus.mkdir()
    (corpus / "notes.txt").write_bytes("\ufeffBOM aardvark text".encode())
    (corpus / "rows.jsonl").write_bytes(
        ("\ufeff" + json.dumps({"text": "A row after a BOM.", "topic": "t"}) + "\n").encode()
    )
    cachedvec.ingest([corpus], **setup)
    with VectorIndex.load(setup["index"]) as index:
        texts = sorted(r.text for r in index.records())
    assert texts == ["A row after a BOM.", "BOM aardvark text"]


def test_one_path_may_be_given_alone(corpus: Path, setup: dict) -> None:
    assert cachedvec.ingest(str(corpus), **setup).sources.added == 4  # not the letters of it
    assert cachedvec.ingest(corpus, **setup).sources.skipped == 4
    together = cachedvec.ingest((corpus / "a.md", str(corpus / "b.txt")), **setup)
    assert (together.sources.skipped, together.sources.deleted) == (2, 0)
    # The one path is the root cleanup works under: the other sources stay.
    alone = cachedvec.ingest(str(corpus / "a.md"), **setup)
    assert (alone.sources.skipped, alone.sources.deleted) == (1, 0)
    with VectorIndex.load(setup["index"]) as vindex:
        assert len({r.source for r in vindex.records()}) == 4
    with pytest.raises(ConfigError, match="at least one"):
        cachedvec.ingest("", **setup)


def test_jsonl_fields_become_metadata_and_filters_work(corpus: Path, setup: dict) -> None:
    cachedvec.ingest([corpus], **setup)
    hits, _ = cachedvec.query(
        "kettle water",
        index=setup["index"],
        store=setup["store"],
        model=setup["model"],
        k=3,
        filter={"topic": "kettle"},
    )
    assert [h.metadata["topic"] for h in hits] == ["kettle"]


def test_query_vectors_are_cached(corpus: Path, setup: dict) -> None:
    from cachedvec.search import query

    cachedvec.ingest([corpus], **setup)
    _, cached = query(
        PARAGRAPHS[4], index=setup["index"], store=setup["store"], model=setup["model"]
    )
    assert not cached
    hits, cached = query(
        PARAGRAPHS[4], index=setup["index"], store=setup["store"], model=setup["model"], k=1
    )
    assert cached and PARAGRAPHS[4] in hits[0].text


def test_query_refuses_a_rerank_factor_an_exact_index_cannot_use(corpus: Path, setup: dict) -> None:
    from cachedvec.search import query

    cachedvec.ingest([corpus], **setup)  # Flat: scores with the exact vectors
    where = {"index": setup["index"], "store": setup["store"], "model": setup["model"]}
    with pytest.raises(ConfigError, match="already scores exactly"):
        query(PARAGRAPHS[4], rerank=4, **where)
    assert query(PARAGRAPHS[4], k=1, **where)[0]


def test_an_index_from_another_model_is_refused(corpus: Path, setup: dict) -> None:
    cachedvec.ingest([corpus], **setup)
    with pytest.raises(IndexMismatchError):
        cachedvec.ingest([corpus], **{**setup, "model": FakeEmbeddings(32, name="other")})


def test_another_metric_on_an_existing_index_is_refused_with_a_reindex_hint(
    corpus: Path, setup: dict
) -> None:
    cachedvec.ingest([corpus], **setup)  # no metric: a new index is cosine
    manifest = (Path(setup["index"]) / "manifest.json").read_bytes()
    calls = setup["model"].calls
    (corpus / "new.md").write_text("Text that no run embedded yet.")
    with pytest.raises(
        ConfigError,
        match=r"'cosine' metric, not 'l2'.*"
        rf"cachedvec reindex --index {re.escape(setup['index'])} --metric l2$",
    ):
        cachedvec.ingest([corpus], **setup, metric="l2")
    with pytest.raises(
        ConfigError,
        match=r"is 'Flat', not 'HNSW32' and uses the 'cosine' "
        r"metric, not 'ip'.*--factory 'HNSW32' --metric ip$",
    ):
        cachedvec.ingest([corpus], **setup, factory="HNSW32", metric="ip")
    assert (Path(setup["index"]) / "manifest.json").read_bytes() == manifest
    assert setup["model"].calls == calls
    assert cachedvec.ingest([corpus], **setup, metric="cosine").sources.added == 1

    # Following the hint switches the metric; from then on no metric keeps l2.
    cachedvec.reindex(setup["index"], metric="l2", store=setup["store"])
    (corpus / "newer.md").write_text("Another text that no run embedded yet.")
    assert cachedvec.ingest([corpus], **setup).sources.added == 1
    assert cachedvec.ingest([corpus], **setup, metric="l2").sources.skipped == 6
    with VectorIndex.load(setup["index"]) as vindex:
        assert vindex.metric == "l2"


def test_an_unknown_metric_is_refused_before_any_model_call(corpus: Path, setup: dict) -> None:
    with pytest.raises(ConfigError, match="unknown metric 'hamming'"):
        cachedvec.ingest([corpus], **setup, metric="hamming")
    assert setup["model"].calls == 0 and not Path(setup["index"]).exists()


@pytest.mark.parametrize("factory", ["HNSW32", "IVF4,Flat", "PCA4,Flat"])
def test_reindex_uses_the_cache_and_no_model(corpus: Path, setup: dict, factory: str) -> None:
    cachedvec.ingest([corpus], **setup)
    with VectorIndex.load(setup["index"]) as vindex:
        before = sorted(r.id for r in vindex.records())
    report = cachedvec.reindex(setup["index"], factory=factory, store=setup["store"])
    assert report.computed == 0 and report.factory == factory
    with VectorIndex.load(setup["index"]) as vindex:
        assert vindex.factory == factory
        assert sorted(r.id for r in vindex.records()) == before
        probe = setup["model"].embed_array([PARAGRAPHS[7]])[0]
        assert PARAGRAPHS[7] in vindex.search(probe, 1)[0].text


def test_reindex_stops_when_vectors_are_missing(corpus: Path, setup: dict, tmp_path: Path) -> None:
    cachedvec.ingest([corpus], **setup)
    manifest = (Path(setup["index"]) / "manifest.json").read_bytes()
    empty = f"sqlite:///{tmp_path}/empty.db"
    open_store(empty).close()  # a cache that exists but lacks the vectors
    with pytest.raises(MissingVectorsError) as info:
        cachedvec.reindex(setup["index"], factory="HNSW32", store=empty)
    assert info.value.missing > 0
    assert (Path(setup["index"]) / "manifest.json").read_bytes() == manifest  # untouched
    report = cachedvec.reindex(
        setup["index"], store=empty, compute_missing=True, model=setup["model"]
    )
    assert report.computed == info.value.missing


def test_reindex_can_switch_models_computing_only_what_is_missing(
    corpus: Path, setup: dict
) -> None:
    cachedvec.ingest([corpus], **setup)
    other = FakeEmbeddings(16, name="other")
    first = cachedvec.reindex(setup["index"], store=setup["store"], model=other)
    assert first.computed > 0 and first.model == "cachedvec-fake/other"
    again = cachedvec.reindex(setup["index"], store=setup["store"], model=other)
    assert again.computed == 0
    with VectorIndex.load(setup["index"]) as vindex:
        assert vindex.dim == 16


def test_bad_sources_fail_before_anything_changes(corpus: Path, setup: dict) -> None:
    cachedvec.ingest([corpus], **setup)
    manifest = (Path(setup["index"]) / "manifest.json").read_bytes()
    (corpus / "latin1.txt").write_bytes("caf\xe9".encode("latin-1"))
    with pytest.raises(SourceError, match="not UTF-8"):
        cachedvec.ingest([corpus], **setup)
    (corpus / "latin1.txt").write_bytes(b"bin\x00ary")
    with pytest.raises(SourceError, match="binary"):
        cachedvec.ingest([corpus], **setup)
    with pytest.raises(SourceError, match="no such"):
        cachedvec.ingest([corpus / "missing"], **setup)
    with pytest.raises(ConfigError):
        cachedvec.ingest([corpus], **{**setup, "cleanup": "sometimes"})
    assert (Path(setup["index"]) / "manifest.json").read_bytes() == manifest


def test_chunk_settings_change_rechunks_with_cached_vectors(corpus: Path, setup: dict) -> None:
    first = cachedvec.ingest([corpus], **setup)
    assert first.computed == 8
    report = cachedvec.ingest([corpus], **{**setup, "chunk_size": 4000})
    assert report.sources.updated == 4
    # Bigger chunks merge the paragraphs: new texts, so new vectors.
    assert (report.added, report.deleted, report.computed) == (3, 6, 3)
    merged = cachedvec.ingest([corpus], **{**setup, "chunk_size": 4000})
    assert merged.sources.skipped == 4
    assert (merged.added, merged.deleted, merged.computed) == (0, 0, 0)
    # Back to the first settings: the six paragraph chunks are re-created from
    # the cache, not re-embedded.
    model = setup["model"]
    model.texts_embedded = 0
    back = cachedvec.ingest([corpus], **setup)
    assert back.sources.updated == 4
    assert back.computed == 0 and back.cache_hits == 6
    assert model.texts_embedded == 0
    assert (back.added, back.deleted, back.documents) == (6, 3, 8)


def test_vectors_in_the_index_equal_the_model(corpus: Path, setup: dict) -> None:
    cachedvec.ingest([corpus], **setup)
    with VectorIndex.load(setup["index"]) as vindex:
        records = list(vindex.records())
        stored, missing = vindex.get_vectors([r.id for r in records])
    assert missing == []
    np.testing.assert_allclose(
        stored, setup["model"].embed_array([r.text for r in records]), atol=1e-6
    )


def test_an_unknown_factory_is_refused_before_any_model_call(corpus: Path, setup: dict) -> None:
    # A new index is built empty before embedding: FAISS's refusal must not
    # come after the whole corpus went through the model.
    with pytest.raises(ConfigError, match="unknown FAISS factory string 'Bogus'"):
        cachedvec.ingest([corpus], **setup, factory="Bogus")
    assert setup["model"].calls == 0 and not Path(setup["index"]).exists()
    with pytest.raises(ConfigError, match="PQ5"):  # 5 does not divide the dimension, 32
        cachedvec.ingest([corpus], **setup, factory="PQ5")
    assert setup["model"].calls == 0


def test_repeated_chunk_texts_are_looked_up_once_across_slices(tmp_path: Path, setup: dict) -> None:
    # Far more repeats than one embedding slice (batch_size * 4 texts): the
    # counts must not depend on where the slices fall.
    root = tmp_path / "repeats"
    root.mkdir()
    (root / "same.txt").write_text("\n\n".join(["the same line again"] * 50 + ["one other line"]))
    model = setup["model"]
    report = cachedvec.ingest([root], **{**setup, "batch_size": 2, "chunk_size": 20})
    assert (report.added, report.computed, report.cache_hits, report.duplicates) == (51, 2, 0, 49)
    assert report.added + report.updated == report.cache_hits + report.computed + report.duplicates
    assert model.texts_embedded == 2
    with VectorIndex.load(setup["index"]) as vindex:
        records = list(vindex.records())
        stored, _ = vindex.get_vectors([r.id for r in records])
    assert len(records) == 51
    np.testing.assert_allclose(stored, model.embed_array([r.text for r in records]), atol=1e-6)


def test_no_supported_file_is_a_warning_and_no_index(
    tmp_path: Path, setup: dict, caplog: pytest.LogCaptureFixture
) -> None:
    root = tmp_path / "pdfs"
    root.mkdir()
    (root / "manual.pdf").write_bytes(b"%PDF-1.7")
    with caplog.at_level("WARNING", logger="cachedvec"):
        report = cachedvec.ingest([root], **setup)
    assert report.documents == 0 and not Path(setup["index"]).exists()
    (message,) = [r.getMessage() for r in caplog.records]
    assert message.startswith(f"no text, Markdown or JSON Lines files under {root}")
    assert ".jsonl" in message and ".md" in message


def test_each_folder_without_a_supported_file_is_named(
    tmp_path: Path, setup: dict, caplog: pytest.LogCaptureFixture
) -> None:
    texts, scans = tmp_path / "docs" / "texts", tmp_path / "scans"
    texts.mkdir(parents=True)
    scans.mkdir()
    (texts / "a.txt").write_text("A paragraph about kettles.\n", "utf-8")
    (scans / "manual.pdf").write_bytes(b"%PDF-1.7")
    with caplog.at_level("WARNING", logger="cachedvec"):
        report = cachedvec.ingest([texts, scans], **setup)
    assert report.documents == 1
    (message,) = [r.getMessage() for r in caplog.records]
    assert message.startswith(f"no text, Markdown or JSON Lines files under {scans} ")
    # A folder whose files another path also names is not empty.
    caplog.clear()
    with caplog.at_level("WARNING", logger="cachedvec"):
        cachedvec.ingest([tmp_path / "docs", texts, texts / "a.txt"], **setup)
    assert not caplog.records


def test_switching_models_looks_each_repeated_text_up_once(tmp_path: Path, setup: dict) -> None:
    # More chunks than one reindex slice (1,024 texts), most of them repeats.
    root = tmp_path / "repeats"
    root.mkdir()
    lines = [f"line {i % 7} of the log" for i in range(1500)]
    (root / "log.txt").write_text("\n\n".join(lines))
    first = cachedvec.ingest([root], **{**setup, "chunk_size": 18})
    assert (first.added, first.computed, first.duplicates) == (1500, 7, 1493)
    other = FakeEmbeddings(16, name="other")
    report = cachedvec.reindex(setup["index"], store=setup["store"], model=other)
    assert (report.documents, report.computed, report.cache_hits, report.duplicates) == (
        1500,
        7,
        0,
        1493,
    )
    assert other.texts_embedded == 7
    again = cachedvec.reindex(setup["index"], store=setup["store"], model=other)
    assert (again.computed, again.cache_hits, again.duplicates) == (0, 7, 1493)
