"""Scale benchmark: streaming IVF-PQ rebuilds from a large cache, Ray ingestion.

Run from the repository root::

    .venv/bin/python bench/scale_bench.py                # 1M vectors: ~5 GB of disk, ~10 min
    .venv/bin/python bench/scale_bench.py --n 100000     # quick mode, a few minutes
    .venv/bin/python bench/scale_bench.py --skip-ray --layouts memory

**Part 1, streaming rebuild.** ``--n`` synthetic 384-d unit vectors are
written to a SQLite cache under their keys, and a Flat index folder whose
docstore references them is saved (what ``cachedvec ingest`` leaves). Then
``cachedvec.reindex`` rebuilds it into ``large_index_factory(n)``
(``IVF{sqrt n},SQ8``, or ``--factory``) with the default streaming options, once per ``--layouts``
entry, each in a fresh child process that reports:

- wall time of the rebuild;
- peak memory growth over the child's memory just before the call:
  anonymous memory (what the build allocates; sampled every 20 ms, so a
  shorter spike can be missed: a lower bound) and
  resident memory (also counts pages of memory-mapped files: SQLite's
  mmap of the cache and the on-disk lists, which the kernel can drop);
- the final index size (FAISS file, plus the lists file for ``ondisk``)
  and the whole folder (with the docstore, which is loaded in memory);
- 10-recall@10: the overlap of the top 10 with the exact top 10 (brute
  force over all vectors) for ``--queries`` held-out queries, averaged;
  also 1-recall@10 (true nearest neighbour in the top 10) and queries/s
  (one batch of all queries, at the index's default ``nprobe``).

A last rebuild (``--compare``, default ``ivf_pq_factory(n, 384)``:
``IVF{sqrt n},PQ192np``, half the size) is built in memory for comparison:
the IVF-PQ index the scale target names. Its rebuild gets ``reindex``'s default
re-rank factor for PQ (``DEFAULT_PQ_RERANK``), so its row measures recall
and queries/s with exact re-ranking from the SQLite cache (the index opened
with the store, as ``cachedvec query`` does), judged against the 0.90
target; rows with re-rank "off" (no store attached) and other factors
(``--rerank-factors``) show what re-ranking buys and costs.

The vectors are *embedding-like*: unit vectors around 2,000 centres with a
power-law spectrum (variance of component i ~ i^-1.2) turned by a random
rotation, so nearest neighbours sit at cosine ~0.8 and random pairs at ~0;
uniform noise would make every ANN index look bad and real corpora differ
anyway. Recall on your data will differ: measure it.

**Part 2, Ray ingestion.** The same corpus (``--corpus``, default the
bundled examples) ingested with the default model into two empty
PostgreSQL caches (a throwaway server is started; ``--postgres URL`` uses
yours): once by the single-process path, once by ``--engine ray`` with
``--workers`` actors on a local Ray. Prints vectors computed per second for
both (Ray with and without cluster start-up) and their ratio. The single
process runs first, in this process, so it also reads the model files from
disk first; the ratio is informational (no target).

Prints Markdown tables and one PASS/FAIL line per scale target.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # for tests.postgres

from cachedvec.codec import VectorCodec  # noqa: E402
from cachedvec.index import VectorIndex  # noqa: E402
from cachedvec.keys import ModelFingerprint  # noqa: E402
from cachedvec.reindexing import ivf_pq_factory, large_index_factory  # noqa: E402
from cachedvec.stores import open_store  # noqa: E402

DIM = 384
BLOCK = 50_000
CENTRES = 2_000
FINGERPRINT = ModelFingerprint(model="bench/synthetic", revision="1", dim=DIM, normalize=True)
NAMESPACE = FINGERPRINT.namespace()
REPO = Path(__file__).resolve().parent.parent


# ------------------------------------------------------------------ data
class Synthetic:
    """Deterministic embedding-like vectors, generated block by block."""

    def __init__(self, seed: int = 0) -> None:
        rng = np.random.default_rng(seed)
        self.scale = (np.arange(DIM) + 1.0) ** -0.6
        self.rotation = np.linalg.qr(rng.standard_normal((DIM, DIM)))[0].astype(np.float32)
        self.centres = rng.standard_normal((CENTRES, DIM)) * self.scale

    def block(self, number: int, size: int) -> np.ndarray:
        rng = np.random.default_rng([7, number])
        points = self.centres[rng.integers(0, CENTRES, size)]
        points = points + 0.8 * rng.standard_normal((size, DIM)) * self.scale
        points = (points @ self.rotation).astype(np.float32)
        return points / np.linalg.norm(points, axis=1, keepdims=True)

    def blocks(self, n: int) -> Iterator[tuple[int, np.ndarray]]:
        for start in range(0, n, BLOCK):
            yield start, self.block(start // BLOCK, min(BLOCK, n - start))

    def queries(self, count: int) -> np.ndarray:
        return self.block(10**9, count)  # a block number no corpus reaches


def key(i: int) -> str:
    return f"{NAMESPACE}:doc:{i:064x}"


def build_cache_and_index(data: Synthetic, n: int, store: str, folder: Path) -> dict[str, float]:
    """The starting point: every vector cached, a Flat index referencing them."""
    codec = VectorCodec(DIM)
    started = time.perf_counter()
    with open_store(store) as opened:
        for start, vectors in data.blocks(n):
            keys = [key(i) for i in range(start, start + len(vectors))]
            opened.mset(list(zip(keys, codec.encode_many(vectors), strict=True)))
    cached = time.perf_counter() - started
    started = time.perf_counter()
    with VectorIndex(DIM, factory="Flat", fingerprint=FINGERPRINT) as vindex:
        for start, vectors in data.blocks(n):
            ids = range(start, start + len(vectors))
            vindex.add(
                vectors,
                [f"synthetic document {i}" for i in ids],
                None,
                ids=[f"d{i}" for i in ids],
                cache_keys=[key(i) for i in ids],
            )
        vindex.save(folder)
    return {"cache_seconds": cached, "index_seconds": time.perf_counter() - started}


def exact_top10(data: Synthetic, n: int, queries: np.ndarray) -> np.ndarray:
    best_scores = np.full((len(queries), 0), -np.inf, dtype=np.float32)
    best_ids = np.empty((len(queries), 0), dtype=np.int64)
    for start, vectors in data.blocks(n):
        scores = np.concatenate([best_scores, queries @ vectors.T], axis=1)
        ids = np.concatenate(
            [
                best_ids,
                np.broadcast_to(
                    np.arange(start, start + len(vectors)), (len(queries), len(vectors))
                ),
            ],
            axis=1,
        )
        order = np.argsort(-scores, axis=1)[:, :10]
        best_scores = np.take_along_axis(scores, order, axis=1)
        best_ids = np.take_along_axis(ids, order, axis=1)
    return best_ids


# ------------------------------------------------------- child: one rebuild
def _memory_kb(field: str) -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    return 0


def child_reindex(options: dict[str, Any]) -> None:
    """Run one rebuild in this fresh process and print what it cost as JSON."""
    from cachedvec.reindexing import reindex

    peak_anon = [0]
    done = threading.Event()

    def sample() -> None:
        while not done.wait(0.02):
            peak_anon[0] = max(peak_anon[0], _memory_kb("RssAnon"))

    base_rss, base_anon = _memory_kb("VmRSS"), _memory_kb("RssAnon")
    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    started = time.perf_counter()
    report = reindex(
        options["index"],
        store=options["store"],
        factory=options["factory"],
        layout=options["layout"],
        show_progress=False,
    )
    seconds = time.perf_counter() - started
    done.set()
    sampler.join()
    peak_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # kB on Linux
    print(
        json.dumps(
            {
                "seconds": seconds,
                "trained_on": report.trained_on,
                "peak_rss_growth": (peak_rss - base_rss) * 1024,
                "peak_anon_growth": (max(peak_anon[0], base_anon) - base_anon) * 1024,
            }
        )
    )


def rebuild(index: Path, store: str, factory: str, layout: str) -> dict[str, Any]:
    options = {"index": str(index), "store": store, "factory": factory, "layout": layout}
    result = subprocess.run(
        [sys.executable, __file__, "--child", json.dumps(options)],
        capture_output=True,
        text=True,
        check=False,
    )
    if result.returncode:
        raise SystemExit(f"rebuild failed:\n{result.stderr[-3000:]}")
    measured: dict[str, Any] = json.loads(result.stdout.strip().splitlines()[-1])
    files = {p.name: p.stat().st_size for p in index.iterdir() if p.is_file()}
    measured["index_bytes"] = sum(
        size for name, size in files.items() if name.startswith(("index-", "lists-"))
    )
    measured["folder_bytes"] = sum(
        size for name, size in files.items() if name.startswith(("index-", "lists-", "docstore-"))
    )
    return measured


def search_quality(
    index: Path,
    queries: np.ndarray,
    truth: np.ndarray,
    store: str | None = None,
    rerank: int | None = None,
) -> dict[str, float]:
    """Recall and queries/s; with ``store``, re-ranking from it (factor: saved, or ``rerank``)."""
    with (
        open_store(store) if store else _no_store() as opened,
        VectorIndex.load(index, cache=opened) as vindex,
    ):
        if rerank is not None:
            vindex.rerank = rerank
        factor = vindex.rerank if vindex.reranking else 0
        started = time.perf_counter()
        hits = vindex.search_batch(queries, 10)
        qps = len(queries) / (time.perf_counter() - started)
        nprobe = vindex.nprobe
    found = [[int(hit.id[1:]) for hit in row] for row in hits]
    overlap = [len(set(f) & set(t.tolist())) / 10 for f, t in zip(found, truth, strict=True)]
    first = [t[0] in f for f, t in zip(found, truth, strict=True)]
    return {
        "recall": float(np.mean(overlap)),
        "recall_1": float(np.mean(first)),
        "qps": qps,
        "nprobe": nprobe or 0,
        "rerank": factor or 0,
    }


@contextlib.contextmanager
def _no_store() -> Iterator[None]:
    yield None


def streaming_part(args: argparse.Namespace, work: Path) -> list[str]:
    n, factory = args.n, args.factory or large_index_factory(args.n)
    data = Synthetic(args.seed)
    store, folder = f"sqlite:///{work}/cache.db", work / "index"
    print(f"## Streaming rebuild: {n:,} cached {DIM}-d vectors into {factory}\n", flush=True)
    setup = build_cache_and_index(data, n, store, folder)
    print(
        f"cache written in {setup['cache_seconds']:.0f}s "
        f"({n / setup['cache_seconds']:,.0f} vectors/s; "
        f"{(work / 'cache.db').stat().st_size / 2**20:,.0f} MiB), Flat index saved in "
        f"{setup['index_seconds']:.0f}s",
        flush=True,
    )
    queries = data.queries(args.queries)
    started = time.perf_counter()
    truth = exact_top10(data, n, queries)
    print(
        f"exact top-10 of {args.queries} queries in {time.perf_counter() - started:.0f}s\n",
        flush=True,
    )
    matrix = n * DIM * 4
    rows, verdicts = [], []
    runs = [(factory, layout) for layout in args.layouts.split(",")]
    compare = ivf_pq_factory(n, DIM) if args.compare is None else args.compare
    if compare:
        runs.append((compare, "memory"))

    def row(built: str, layout: str, measured: dict[str, Any], quality: dict[str, float]) -> str:
        return (
            f"| {built} | {layout} | {measured['seconds']:.0f} | {measured['trained_on']:,} | "
            f"{measured['index_bytes'] / 2**20:,.0f} | {measured['folder_bytes'] / 2**20:,.0f} | "
            f"{measured['peak_anon_growth'] / 2**20:,.0f} | "
            f"{measured['peak_rss_growth'] / 2**20:,.0f} | "
            f"{quality['recall']:.3f} | {quality['recall_1']:.3f} | {quality['nprobe']} | "
            f"{quality['rerank'] or 'off'} | {quality['qps']:,.0f} |"
        )

    for built, layout in runs:
        measured = rebuild(folder, store, built, layout)
        quality = search_quality(folder, queries, truth, store)
        rows.append(row(built, layout, measured, quality))
        ratio = measured["peak_anon_growth"] / measured["folder_bytes"]
        if built != factory:
            plain = search_quality(folder, queries, truth)  # no store: no re-ranking
            rows.append(row(built, layout, measured, plain))
            for factor in args.rerank_factors:
                if factor != quality["rerank"]:
                    rows.append(
                        row(
                            built,
                            layout,
                            measured,
                            search_quality(folder, queries, truth, store, factor),
                        )
                    )
            if quality["rerank"]:
                verdicts.append(
                    f"{'PASS' if quality['recall'] >= 0.90 else 'FAIL'} [{built}, comparison] "
                    f"10-recall@10 {quality['recall']:.3f} with the default re-rank "
                    f"({quality['rerank']} candidates per result from the cache; "
                    f"{quality['qps']:,.0f} queries/s) against {plain['recall']:.3f} without "
                    f"({plain['qps']:,.0f} queries/s) (target >= 0.90 at 1M; this run: {n:,})"
                )
            below = " (below 0.90)" if plain["recall"] < 0.90 else ""
            verdicts.append(
                f"INFO [{built}, comparison] without re-ranking 10-recall@10 "
                f"{plain['recall']:.3f}{below}, 1-recall@10 {plain['recall_1']:.3f}, "
                f"index {measured['index_bytes'] / 2**20:,.0f} MiB, peak anonymous "
                f"memory growth {ratio:.2f}x the folder"
            )
            continue
        verdicts.append(
            f"{'PASS' if ratio < 2 else 'FAIL'} [{layout}] peak anonymous memory "
            f"growth {ratio:.2f}x the final index folder (target < 2x; "
            f"{measured['peak_anon_growth'] / measured['index_bytes']:.2f}x the "
            f"FAISS files alone; the float32 matrix would be "
            f"{matrix / measured['folder_bytes']:.1f}x the folder)"
        )
        if args.factory is None:
            verdicts.append(
                f"{'PASS' if quality['recall'] >= 0.90 else 'FAIL'} [{layout}] "
                f"10-recall@10 {quality['recall']:.3f} (1-recall@10 "
                f"{quality['recall_1']:.3f}) with default settings "
                f"(target >= 0.90 at 1M; this run: {n:,})"
            )
    print(
        "| factory | layout | rebuild s | trained on | index MiB | folder MiB | peak anon MiB | "
        "peak RSS MiB | 10-recall@10 | 1-recall@10 | nprobe | rerank | queries/s |"
    )
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    print("\n".join(rows))
    print(f"\n(float32 matrix of all vectors: {matrix / 2**20:,.0f} MiB)\n")
    return verdicts


# ------------------------------------------------------------ part 2: Ray
def ray_part(args: argparse.Namespace) -> list[str]:
    from cachedvec import distributed, ingest, migrate

    print(
        f"## Ray ingestion: {args.corpus} with the default model, {args.workers} workers\n",
        flush=True,
    )
    server = None
    if args.postgres:
        base = args.postgres
    else:
        from tests.postgres import PostgresServer

        if not PostgresServer.available():
            return ["SKIP Ray ingestion: no PostgreSQL binaries (pass --postgres URL)"]
        server = PostgresServer().start()
        base = server.url("postgres")
    try:
        urls = {}
        for side in ("local", "ray"):
            name = f"scale_bench_{side}"
            if server is not None:
                server.create_database(name)
                urls[side] = server.url(name)
            else:
                urls[side] = base.rsplit("/", 1)[0] + "/" + name  # must exist already
            migrate.upgrade(urls[side])
        with tempfile.TemporaryDirectory() as scratch:
            local = ingest(
                [args.corpus], index=f"{scratch}/local", store=urls["local"], show_progress=False
            )
            started = time.perf_counter()
            distributed.connect(None, workers=args.workers)
            startup = time.perf_counter() - started
            try:
                on_ray = distributed.ingest(
                    [args.corpus],
                    index=f"{scratch}/ray",
                    store=urls["ray"],
                    workers=args.workers,
                    show_progress=False,
                )
            finally:
                import ray

                ray.shutdown()
    finally:
        if server is not None:
            server.stop()
    local_rate = local.computed / local.seconds
    ray_rate = on_ray.computed / on_ray.seconds
    with_startup = on_ray.computed / (on_ray.seconds + startup)
    print("| path | vectors computed | seconds | vectors/s |")
    print("|---|---|---|---|")
    print(f"| single process | {local.computed} | {local.seconds:.1f} | {local_rate:,.1f} |")
    print(
        f"| Ray, {args.workers} workers | {on_ray.computed} | {on_ray.seconds:.1f} "
        f"| {ray_rate:,.1f} |"
    )
    print(
        f"| Ray incl. start-up ({startup:.1f}s) | {on_ray.computed} | "
        f"{on_ray.seconds + startup:.1f} | {with_startup:,.1f} |\n"
    )
    same = local.computed == on_ray.computed and local.documents == on_ray.documents
    return [
        f"{'PASS' if same else 'FAIL'} Ray computed each of the {local.computed} unique "
        f"texts once ({on_ray.computed}) and indexed the same {local.documents} chunks",
        f"INFO Ray/single-process throughput: {ray_rate / local_rate:.2f}x "
        f"({with_startup / local_rate:.2f}x with cluster start-up)",
    ]


def main() -> int:
    if len(sys.argv) == 3 and sys.argv[1] == "--child":
        child_reindex(json.loads(sys.argv[2]))
        return 0
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=1_000_000, help="cached vectors (default 1M)")
    parser.add_argument("--factory", help="FAISS factory (default: large_index_factory(n))")
    parser.add_argument("--layouts", default="memory,ondisk", help="comma-separated")
    parser.add_argument(
        "--compare",
        help="also build this factory, in memory, for comparison "
        "(default: ivf_pq_factory(n, 384); '' to skip)",
    )
    parser.add_argument("--queries", type=int, default=500, help="recall queries")
    parser.add_argument(
        "--rerank-factors",
        type=lambda s: [int(f) for f in s.split(",") if f],
        default=[2, 8],
        help="also search the comparison index re-ranking this "
        "many candidates per result (comma-separated; '' for none)",
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workdir", help="keep the cache and index here (default: a temp dir)")
    parser.add_argument("--skip-ray", action="store_true", help="only the streaming part")
    parser.add_argument("--skip-streaming", action="store_true", help="only the Ray part")
    parser.add_argument("--corpus", default=str(REPO / "examples" / "corpus"))
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--postgres", help="an existing server URL for the Ray part")
    args = parser.parse_args()
    work = Path(args.workdir or tempfile.mkdtemp(prefix="cachedvec-scale-"))
    work.mkdir(parents=True, exist_ok=True)
    print(f"# cachedvec scale benchmark ({os.cpu_count()} CPUs, workdir {work})\n", flush=True)
    verdicts = []
    try:
        if not args.skip_streaming:
            verdicts += streaming_part(args, work)
        if not args.skip_ray:
            verdicts += ray_part(args)
    finally:
        if not args.workdir:
            shutil.rmtree(work, ignore_errors=True)
    print("\n".join(verdicts))
    return 0 if not any(v.startswith("FAIL") for v in verdicts) else 1


if __name__ == "__main__":
    sys.exit(main())
