"""The Ray engine on a local 2-CPU Ray and the throwaway PostgreSQL.

Two actors embed overlapping corpora into one shared cache; the results must
be those of the single-process job (same ids, same vectors), each unique
text computed once, a second run computing nothing, and a worker that dies
mid-batch costing nothing but a retry.
"""

from __future__ import annotations

import functools
import importlib.util
import os
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from click.testing import CliRunner

if importlib.util.find_spec("ray") is None:
    # ray comes with the dev extra: CI must run these tests, not skip them.
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail("ray is not installed; CI must run the distributed tests", pytrace=False)
    pytest.skip("ray is not installed (pip install 'cachedvec[ray]')", allow_module_level=True)

import ray  # noqa: E402
import sqlalchemy as sa  # noqa: E402

import cachedvec  # noqa: E402
from cachedvec import distributed  # noqa: E402
from cachedvec.cli import main  # noqa: E402
from cachedvec.errors import (  # noqa: E402
    ClusterError,
    ConfigError,
    IndexMismatchError,
    InvalidURLError,
    SourceError,
)
from cachedvec.index import VectorIndex  # noqa: E402
from cachedvec.testing import FakeEmbeddings  # noqa: E402

pytestmark = pytest.mark.postgres

DIM = 32
CHUNKING = {"chunk_size": 120, "chunk_overlap": 0}
PARAGRAPHS = [
    f"Paragraph {i} tells of topic {i} with words alpha{i} beta{i} gamma{i}." for i in range(40)
]


def fake_model(name: str) -> functools.partial[FakeEmbeddings]:
    """What Ray workers get: a recipe, so each builds its own model (same fingerprint)."""
    return functools.partial(FakeEmbeddings, DIM, name=name)


class DiesOnce(FakeEmbeddings):
    """A model whose first call kills its worker process (as an OOM kill would)."""

    def __init__(self, marker: str) -> None:
        super().__init__(DIM, name="dies-once")
        self.marker = marker

    def embed_array(self, texts: Any) -> np.ndarray:
        if not os.path.exists(self.marker):
            Path(self.marker).touch()
            os._exit(1)
        return super().embed_array(texts)


@pytest.fixture(scope="module")
def local_ray() -> Iterator[None]:
    # Workers unpickle DiesOnce by value: they cannot import the tests package.
    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    ray.data.DataContext.get_current().enable_progress_bars = False
    yield
    ray.shutdown()


def write_corpus(root: Path, paragraphs: list[str], files: int) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    for f in range(files):
        (root / f"doc{f}.md").write_text("\n\n".join(paragraphs[f::files]))
    return root


def stored_keys(url: str) -> list[str]:
    engine = sa.create_engine(url)
    try:
        with engine.connect() as conn:
            return [row[0] for row in conn.execute(sa.text("SELECT key FROM cachedvec_entries"))]
    finally:
        engine.dispose()


def index_contents(folder: Path) -> dict[str, tuple[str, dict, np.ndarray]]:
    with VectorIndex.load(folder) as vindex:
        records = list(vindex.records())
        vectors, missing = vindex.get_vectors([r.id for r in records])
    assert not missing
    return {r.id: (r.text, r.metadata, v) for r, v in zip(records, vectors, strict=True)}


def assert_same_index(left: Path, right: Path) -> None:
    a, b = index_contents(left), index_contents(right)
    assert sorted(a) == sorted(b)
    for doc_id, (text, metadata, vector) in a.items():
        assert (text, metadata) == b[doc_id][:2]
        np.testing.assert_array_equal(vector, b[doc_id][2])


def test_ray_ingest_equals_the_single_process_job_and_reruns_compute_nothing(
    local_ray: None, postgres_store_url: str, tmp_path: Path
) -> None:
    # Two files repeat texts of others: the same vector must be computed once.
    corpus = write_corpus(tmp_path / "corpus", PARAGRAPHS[:30], files=6)
    (corpus / "copy.txt").write_text("\n\n".join(PARAGRAPHS[:5]))
    ray_index = tmp_path / "ray-index"
    # One path alone, as a str: the same as a list of it.
    run = functools.partial(
        distributed.ingest,
        str(corpus),
        index=ray_index,
        store=postgres_store_url,
        model=fake_model("shared"),
        workers=2,
        **CHUNKING,
    )
    first = run()
    local = cachedvec.ingest(
        [corpus],
        index=tmp_path / "local-index",
        store=f"sqlite:///{tmp_path}/local.db",
        model=FakeEmbeddings(DIM, name="shared"),
        **CHUNKING,
    )
    assert first.computed == local.computed == len(stored_keys(postgres_store_url)) == 30
    assert (first.added, first.documents, first.sources.added) == (
        local.added,
        local.documents,
        local.sources.added,
    )
    assert_same_index(ray_index, tmp_path / "local-index")

    again = run()
    assert (again.computed, again.added, again.sources.skipped) == (0, 0, 7)

    # Overlap: one new file with 5 new texts and 5 already cached.
    (corpus / "more.md").write_text("\n\n".join(PARAGRAPHS[25:35]))
    grown = run()
    assert (grown.computed, grown.sources.added) == (5, 1)
    assert grown.cache_hits == 5
    keys = stored_keys(postgres_store_url)
    assert len(keys) == len(set(keys)) == 35  # each unique text stored once
    local = cachedvec.ingest(
        [corpus],
        index=tmp_path / "local-index",
        store=f"sqlite:///{tmp_path}/local.db",
        model=FakeEmbeddings(DIM, name="shared"),
        **CHUNKING,
    )
    assert_same_index(ray_index, tmp_path / "local-index")


def test_building_blocks_read_embed_and_index_a_dataset(
    local_ray: None, postgres_store_url: str, tmp_path: Path
) -> None:
    corpus = write_corpus(tmp_path / "corpus", PARAGRAPHS[:24], files=4)
    model = fake_model("blocks")
    chunks = distributed.read_sources(str(corpus), **CHUNKING)  # one path alone
    embedded = distributed.embed_dataset(
        chunks, store=postgres_store_url, model=model, workers=2, batch_size=4
    ).materialize()
    rows = embedded.take_all()
    assert sum(row["computed"] for row in rows) == 24 == len(stored_keys(postgres_store_url))
    again = distributed.embed_dataset(chunks, store=postgres_store_url, model=model, workers=2)
    assert again.sum("computed") == 0

    folder = tmp_path / "from-dataset"
    assert distributed.build_index(embedded, folder, store=postgres_store_url, model=model) == 24
    local = tmp_path / "local"
    cachedvec.ingest(
        [corpus],
        index=local,
        store=f"sqlite:///{tmp_path}/local.db",
        model=FakeEmbeddings(DIM, name="blocks"),
        **CHUNKING,
    )
    assert_same_index(folder, local)


def test_a_worker_dying_mid_batch_is_retried_and_loses_nothing(
    local_ray: None, postgres_store_url: str, tmp_path: Path
) -> None:
    corpus = write_corpus(tmp_path / "corpus", PARAGRAPHS[:16], files=4)
    marker = tmp_path / "died"
    report = distributed.ingest(
        [corpus],
        index=tmp_path / "index",
        store=postgres_store_url,
        model=functools.partial(DiesOnce, str(marker)),
        workers=2,
        batch_size=4,
        **CHUNKING,
    )
    assert marker.exists()  # a worker did die
    assert report.documents == 16 and report.computed == 16
    assert len(stored_keys(postgres_store_url)) == 16
    assert len(index_contents(tmp_path / "index")) == 16


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_bad_setups_fail_before_any_work(
    local_ray: None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    corpus = write_corpus(tmp_path / "corpus", PARAGRAPHS[:4], files=1)
    common = {"index": tmp_path / "index", "model": fake_model("bad")}
    with pytest.raises(ConfigError, match="inside one process"):
        distributed.ingest([corpus], store="memory://", **common)
    with pytest.raises(ConfigError, match="zero-argument callable"):
        distributed.ingest(
            [corpus],
            store=f"sqlite:///{tmp_path}/c.db",
            index=tmp_path / "i",
            model=FakeEmbeddings(DIM),
        )
    with pytest.raises(ClusterError, match="cannot reach the Ray cluster"):
        distributed.ingest(
            [corpus],
            store=f"sqlite:///{tmp_path}/c.db",
            address=f"127.0.0.1:{free_port()}",
            **common,
        )
    # A file-backed cache is fine on one machine, not across several.
    assert distributed.shared_store_url("sqlite:///rel.db") == f"sqlite:///{Path.cwd()}/rel.db"
    nodes = ray.nodes()
    monkeypatch.setattr(ray, "nodes", lambda: nodes + [{**nodes[0], "NodeID": "other"}])
    with pytest.raises(ConfigError, match="2 node"):
        distributed.ingest([corpus], store=f"sqlite:///{tmp_path}/c.db", **common)
    assert not (tmp_path / "index").exists() and not (tmp_path / "c.db").exists()


@pytest.mark.parametrize(
    ("option", "value"),
    [("workers", w) for w in (0, -1, -2, 1.5, "2", True)]
    + [("retries", r) for r in (-1, 1.5, True)],
)
def test_a_bad_worker_or_retry_count_is_refused_before_any_work(
    tmp_path: Path, option: str, value: Any
) -> None:
    # New text to embed: Ray itself would take workers=-1 and choke on -2 with
    # a traceback, and read retries=-1 as "retry forever".
    corpus = write_corpus(tmp_path / "corpus", PARAGRAPHS[:4], files=1)
    with pytest.raises(ConfigError, match=f"{option} must be "):
        distributed.ingest(
            [corpus],
            index=tmp_path / "index",
            store=f"sqlite:///{tmp_path}/c.db",
            model=fake_model("bad"),
            **{option: value},
        )
    assert not (tmp_path / "index").exists() and not (tmp_path / "c.db").exists()


def test_another_metric_is_refused_before_the_cluster_embeds(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    corpus = write_corpus(tmp_path / "corpus", PARAGRAPHS[:4], files=1)
    store = f"sqlite:///{tmp_path}/c.db"
    cachedvec.ingest(
        [corpus],
        index=tmp_path / "index",
        store=store,
        model=FakeEmbeddings(DIM, name="metric"),
        **CHUNKING,
    )
    cached = stored_keys(store)
    (corpus / "new.md").write_text("Text that no run embedded yet.")
    monkeypatch.setattr(distributed, "connect", lambda *a, **k: pytest.fail("connected"))
    with pytest.raises(ConfigError, match="'cosine' metric, not 'l2'.*--metric l2$"):
        distributed.ingest(
            [corpus],
            index=tmp_path / "index",
            store=store,
            model=fake_model("metric"),
            metric="l2",
            **CHUNKING,
        )
    assert stored_keys(store) == cached


def test_a_sqlite_url_with_a_host_is_refused_as_locally(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Made absolute for the workers, it once became <cwd>/ost/x.db.
    corpus = write_corpus(tmp_path / "corpus", PARAGRAPHS[:4], files=1)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(distributed, "connect", lambda *a, **k: pytest.fail("connected"))
    with pytest.raises(InvalidURLError, match="never a host"):
        distributed.ingest(
            [corpus], index=tmp_path / "index", store="sqlite://host/x.db", model=fake_model("h")
        )
    assert sorted(p.name for p in tmp_path.iterdir()) == ["corpus"]


@pytest.mark.parametrize("factory", ["Bogus", "IVF7,PQ5"])
def test_a_factory_faiss_refuses_fails_before_the_cluster_embeds(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, factory: str
) -> None:
    corpus = write_corpus(tmp_path / "corpus", PARAGRAPHS[:4], files=1)
    monkeypatch.setattr(distributed, "connect", lambda *a, **k: pytest.fail("connected"))
    with pytest.raises(ConfigError, match="factory"):
        distributed.ingest(
            [corpus],
            index=tmp_path / "index",
            store=f"sqlite:///{tmp_path}/c.db",
            model=fake_model("factory"),
            factory=factory,
        )
    assert not (tmp_path / "index").exists() and not (tmp_path / "c.db").exists()


def test_cli_engine_options(local_ray: None, tmp_path: Path) -> None:
    corpus = write_corpus(tmp_path / "corpus", PARAGRAPHS[:4], files=1)
    runner = CliRunner()
    at = ["--index", str(tmp_path / "index"), "--store", f"sqlite:///{tmp_path}/c.db"]
    unreachable = runner.invoke(
        main,
        ["ingest", str(corpus), *at, "--engine", "ray", "--address", f"127.0.0.1:{free_port()}"],
    )
    assert unreachable.exit_code == 1
    assert unreachable.output.startswith("error: cannot reach the Ray cluster at 127.0.0.1:")
    private = runner.invoke(
        main,
        [
            "ingest",
            str(corpus),
            "--engine",
            "ray",
            "--store",
            "memory://",
            "--index",
            str(tmp_path / "index"),
        ],
    )
    assert private.exit_code == 1 and "inside one process" in private.output
    local = runner.invoke(main, ["ingest", str(corpus), *at, "--workers", "3"])
    assert local.exit_code == 1 and "--engine ray" in local.output
    for count in ("-2", "0"):
        refused = runner.invoke(
            main, ["ingest", str(corpus), *at, "--engine", "ray", "--workers", count]
        )
        assert refused.exit_code == 1
        assert refused.output == f"error: workers must be a positive integer, got {count}\n"


@pytest.fixture
def not_ray() -> Iterator[str]:
    """An open port where an HTTP server answers, as a dashboard or a web server would."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen()
    server.settimeout(0.1)  # so the loop sees the end of the test (close does not wake accept)
    done = threading.Event()

    def serve() -> None:
        while not done.is_set():
            try:
                conn, _ = server.accept()
            except OSError:  # a timeout: look at `done` again
                continue
            with conn:
                conn.settimeout(5)
                conn.recv(1024)
                conn.sendall(b"HTTP/1.0 400 Bad Request\r\nContent-Length: 0\r\n\r\n")

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    yield f"127.0.0.1:{server.getsockname()[1]}"
    done.set()
    thread.join(timeout=5)
    assert not thread.is_alive()
    server.close()


def test_an_open_port_that_is_not_ray_is_refused_without_ray_s_wait(
    not_ray: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with pytest.raises(ClusterError, match=f"^{not_ray} does not answer as a Ray cluster"):
        distributed.connect(not_ray)
    # RAY_ADDRESS is the address when none is given, and named as such.
    monkeypatch.setenv("RAY_ADDRESS", not_ray)
    with pytest.raises(ClusterError, match=rf"^{not_ray} \(from RAY_ADDRESS\) does not answer"):
        distributed.connect()
    corpus = write_corpus(tmp_path / "corpus", PARAGRAPHS[:4], files=1)
    result = CliRunner().invoke(
        main,
        [
            "ingest",
            str(corpus),
            "--engine",
            "ray",
            "--index",
            str(tmp_path / "index"),
            "--store",
            f"sqlite:///{tmp_path}/c.db",
        ],
    )
    assert result.exit_code == 1
    assert result.output.startswith(f"error: {not_ray} (from RAY_ADDRESS) does not answer")
    assert len(result.output.splitlines()) == 1


def test_a_real_ray_head_passes_the_check(local_ray: None, monkeypatch: pytest.MonkeyPatch) -> None:
    gcs = ray.get_runtime_context().gcs_address
    assert distributed.connect(gcs) is False  # answered; Ray was already initialised here
    monkeypatch.setenv("RAY_ADDRESS", gcs)
    assert distributed.connect() is False
    monkeypatch.setenv("RAY_ADDRESS", f"127.0.0.1:{free_port()}")
    with pytest.raises(ClusterError, match=r"cannot reach .* \(from RAY_ADDRESS\)"):
        distributed.connect()


def test_address_local_starts_a_ray_of_its_own_whatever_ray_address_says(tmp_path: Path) -> None:
    # In a fresh process: ray.init runs for real (this one may have Ray up already).
    corpus = write_corpus(tmp_path / "corpus", PARAGRAPHS[:4], files=1)
    script = (
        "import functools, sys\n"
        "from cachedvec import distributed\n"
        "from cachedvec.testing import FakeEmbeddings\n"
        "report = distributed.ingest(sys.argv[1], index=sys.argv[2], store=sys.argv[3],\n"
        f"    model=functools.partial(FakeEmbeddings, {DIM}), address='local', workers=1,\n"
        "    chunk_size=120, chunk_overlap=0)\n"
        "print(report.computed)\n"
    )
    env = {**os.environ, "RAY_ADDRESS": f"127.0.0.1:{free_port()}"}
    done = subprocess.run(
        [
            sys.executable,
            "-c",
            script,
            str(corpus),
            str(tmp_path / "i"),
            f"sqlite:///{tmp_path}/c.db",
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.split()[-1] == "4"


def test_mistakes_fail_before_connecting_and_a_run_with_nothing_to_compute_needs_no_cluster(
    tmp_path: Path,
) -> None:
    # Nothing answers at this address: a connection attempt would be a ClusterError.
    corpus = write_corpus(tmp_path / "corpus", PARAGRAPHS[:4], files=1)
    store = f"sqlite:///{tmp_path}/c.db"
    run = functools.partial(
        distributed.ingest,
        index=tmp_path / "index",
        store=store,
        model=fake_model("early"),
        address=f"127.0.0.1:{free_port()}",
    )
    with pytest.raises(SourceError, match="no such file or folder"):
        run([tmp_path / "missing"])
    binary = tmp_path / "binary"
    binary.mkdir()
    (binary / "x.txt").write_bytes(b"abc\x00def")
    with pytest.raises(SourceError, match="looks binary"):
        run([binary])
    with pytest.raises(ConfigError, match="chunk size must be positive"):
        run([corpus], chunk_size=0)
    with pytest.raises(ConfigError, match="cleanup must be one of"):
        run([corpus], cleanup="sometimes")
    with pytest.raises(ConfigError, match="'sqlite://' names no file"):
        run([corpus], store="sqlite://")
    with pytest.raises(ConfigError, match="'file://' names no folder"):
        run([corpus], store="file://")
    if importlib.util.find_spec("grpc") is None:
        with pytest.raises(ClusterError, match=r'pip install "ray\[client\]"'):
            run([corpus], address="ray://127.0.0.1:10001")
    with pytest.raises(ConfigError, match="not host:port"):
        run([corpus], address="http://127.0.0.1:8265")
    assert not (tmp_path / "index").exists() and not (tmp_path / "c.db").exists()

    # An index of another model is refused before the cluster embeds for it.
    cachedvec.ingest(
        [corpus], index=tmp_path / "index", store=store, model=FakeEmbeddings(DIM, name="early")
    )
    with pytest.raises(IndexMismatchError, match="built by model"):
        run([corpus], model=fake_model("another"))
    # Every vector cached (by the local engine): Ray is not even contacted.
    (corpus / "new.md").write_text("A text the local engine embeds.")
    cachedvec.ingest(
        [corpus],
        index=tmp_path / "other",
        store=store,
        model=FakeEmbeddings(DIM, name="early"),
    )
    report = run([corpus])
    assert (report.computed, report.cache_hits, report.sources.added) == (0, 1, 1)


def test_cli_an_empty_sqlite_path_gets_the_local_engine_s_error(tmp_path: Path) -> None:
    corpus = write_corpus(tmp_path / "corpus", PARAGRAPHS[:4], files=1)
    args = ["ingest", str(corpus), "--index", str(tmp_path / "index"), "--store", "sqlite://"]
    runner = CliRunner()
    local, on_ray = runner.invoke(main, args), runner.invoke(main, [*args, "--engine", "ray"])
    assert local.exit_code == on_ray.exit_code == 1
    assert on_ray.output == local.output
    assert on_ray.output.startswith("error: 'sqlite://' names no file")
