"""Run cachedvec work in a child process and kill it at chosen moments.

Starting a fresh Python for every kill would cost a second or more of
imports (numpy, FAISS, SQLAlchemy, LangChain) per kill, which is why crash
loops are usually short. :class:`ForkServer` pays for the imports once: it
starts ``python -m tests.crash_harness``, which imports everything the jobs
need and then forks one child per job. The test kills that child with a real
signal (``SIGKILL``: no ``finally``, no ``atexit``, no flush; or ``SIGINT``)
so the kernel does to it exactly what it does to a crashed ``cachedvec``.
The server never runs FAISS or opens a database before forking, so the
children start with no threads and no connections to inherit.

The jobs (:func:`ingest_job`, :func:`reindex_job`, :func:`embed_job`,
:func:`save_job`, :func:`cli_job`) use :class:`LoggingFake`: the fast
deterministic ``FakeEmbeddings(dim)`` with a short sleep per call standing in
for model time, which appends the texts of every batch it returned to a log
file in one ``write`` (all or nothing, even under ``SIGKILL``). After a kill
the log says what the model computed, so a test can prove that a crash lost
at most the batch in flight.

:func:`run_and_signal` does the same for any command line (the real
``cachedvec`` CLI with the real model).

:class:`Figures` collects the counts the reliability report quotes.
"""

from __future__ import annotations

import importlib
import json
import os
import signal
import subprocess
import sys
import time
import traceback
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from cachedvec.testing import FakeEmbeddings

REPO = Path(__file__).resolve().parent.parent
DIM = 32
FIGURES_ENV = "CACHEDVEC_RELIABILITY_FIGURES"

# ------------------------------------------------------------------------- figures


class Figures:
    """Named counters of one test module, printed (``-s``) and saved at its end.

    Set ``CACHEDVEC_RELIABILITY_FIGURES=path.json`` to merge them into a file;
    ``docs/reliability.md`` quotes such a file.
    """

    def __init__(self, title: str) -> None:
        self.title = title
        self.counts: Counter[str] = Counter()

    def add(self, name: str, n: int = 1) -> None:
        self.counts[name] += n

    def report(self) -> None:
        if not self.counts:
            return
        lines = [f"\n== reliability figures: {self.title} =="]
        lines += [f"  {name:<55} {value:>8}" for name, value in sorted(self.counts.items())]
        print("\n".join(lines))
        target = os.environ.get(FIGURES_ENV)
        if target:
            path = Path(target)
            data = json.loads(path.read_text()) if path.exists() else {}
            section = data.setdefault(self.title, {})
            for name, value in self.counts.items():
                section[name] = section.get(name, 0) + value
            path.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")


# --------------------------------------------------------------------- the model


class LoggingFake(FakeEmbeddings):
    """``FakeEmbeddings(dim)`` (same fingerprint, same vectors) that logs its batches."""

    def __init__(self, log: str | None, *, sleep: float = 0.0, name: str = "fake") -> None:
        super().__init__(DIM, name=name)
        self.sleep = sleep
        self._log = os.open(log, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644) if log else None

    def embed_array(self, texts: Sequence[str]) -> np.ndarray:
        if self.sleep:
            time.sleep(self.sleep)
        out = super().embed_array(texts)
        if self._log is not None:
            line = json.dumps(
                {"event": "batch", "model": self.name, "texts": list(texts)}, ensure_ascii=True
            )
            os.write(self._log, (line + "\n").encode())
        return out


def truth(texts: Sequence[str]) -> np.ndarray:
    """The vectors every fake model here must produce for ``texts``."""
    return FakeEmbeddings(DIM).embed_array(list(texts))


def read_log(path: Path) -> list[dict[str, Any]]:
    """Events of a job log, oldest first (absent file: none).

    A kill can cut a long ``write`` short (Linux stops copying when a fatal
    signal is pending), so a last line without its newline is an event that
    never completed: the model call it records had not returned.
    """
    try:
        lines = path.read_text().split("\n")
    except FileNotFoundError:
        return []
    return [json.loads(line) for line in lines[:-1] if line]


def log_event(path: str, **event: Any) -> None:
    with open(path, "a") as handle:
        handle.write(json.dumps(event) + "\n")


# ------------------------------------------------------------------------- jobs
# Each job runs in a forked child; what it prints goes to the child's stdout file.


def ingest_job(
    corpus: str,
    index: str,
    store: str,
    log: str,
    sleep: float = 0.01,
    batch_size: int = 4,
    chunk_size: int = 120,
) -> None:
    import cachedvec

    report = cachedvec.ingest(
        [corpus],
        index=index,
        store=store,
        model=LoggingFake(log, sleep=sleep),
        chunk_size=chunk_size,
        chunk_overlap=0,
        batch_size=batch_size,
    )
    print(json.dumps(report.as_dict()))


def reindex_job(
    index: str,
    store: str,
    log: str,
    model: str | None = None,
    factory: str | None = None,
    sleep: float = 0.01,
) -> None:
    import cachedvec

    fake = LoggingFake(log, sleep=sleep, name=model) if model else None
    report = cachedvec.reindex(index, factory=factory, store=store, model=fake)
    print(json.dumps(report.as_dict()))


def embed_job(
    store: str, texts: list[str], log: str, sleep: float = 0.002, batch_size: int = 8
) -> None:
    from cachedvec import CachedEmbeddings

    model = LoggingFake(log, sleep=sleep)
    with CachedEmbeddings(model, store, batch_size=batch_size) as emb:
        emb.embed_documents_array(texts)
        print(json.dumps(emb.stats.as_dict()))


SAVE_WINDOW = 400  # documents alive in each version of the save loop
SAVE_STEP = 40  # documents replaced between two versions


def save_version_ids(version: int) -> list[int]:
    """Document numbers held by version ``version`` of the save loop's index."""
    return list(range(version * SAVE_STEP, version * SAVE_STEP + SAVE_WINDOW))


def save_text(number: int) -> str:
    return f"document {number} words w{number % 97} w{number % 89} w{number % 13}"


def save_job(folder: str, log: str, versions: int, factory: str = "Flat") -> None:
    """Load the folder's index (or start one), then save ``versions`` newer versions."""
    from cachedvec.index import VectorIndex

    path = Path(folder)
    model = FakeEmbeddings(DIM)
    if (path / "manifest.json").exists():
        index = VectorIndex.load(path)
        version = saved_version(index)
    else:
        index = VectorIndex(DIM, factory=factory, fingerprint=model.fingerprint)
        version = -1
    with index:
        for _ in range(versions):
            version += 1
            wanted = save_version_ids(version)
            held = set(save_version_ids(version - 1)) if version > 0 else set()
            index.delete([f"d{n}" for n in sorted(held - set(wanted))])
            new = [n for n in wanted if n not in held]
            texts = [save_text(n) for n in new]
            index.add(
                model.embed_array(texts), texts, [{"n": n} for n in new], ids=[f"d{n}" for n in new]
            )
            log_event(log, event="saving", version=version)
            index.save(path)
            log_event(log, event="saved", version=version)


def saved_version(index: Any) -> int:
    """Which version of the save loop an index holds (from its document ids)."""
    numbers = sorted(int(r.id[1:]) for r in index.records())
    version = numbers[0] // SAVE_STEP
    assert numbers == save_version_ids(version), "ids match no version of the save loop"
    return version


def cli_job(
    argv: list[str], log: str, sleep: float = 0.01, interrupt_store_close: bool = False
) -> None:
    """``cachedvec ARGV`` in this process, with ``--model fake`` meaning :class:`LoggingFake`.

    Only the model argument is swapped (the real model takes seconds to
    load); parsing, the job and the error handling are the real CLI's.
    ``interrupt_store_close`` delivers a Ctrl-C at the moment the first SQL
    store closes its database connection, deterministically.
    """
    from cachedvec import cli

    real = cli._model_arg
    cli._model_arg = lambda value: LoggingFake(log, sleep=sleep) if value == "fake" else real(value)
    if interrupt_store_close:
        _interrupt_first_store_close()
    cli.main(args=argv, prog_name="cachedvec")


def _interrupt_first_store_close() -> None:
    from sqlalchemy.engine.default import DefaultDialect

    from cachedvec.stores.sql import SQLStore

    real_store_close, real_do_close = SQLStore.close, DefaultDialect.do_close

    def interrupted(dialect: Any, connection: Any) -> None:
        DefaultDialect.do_close = real_do_close  # type: ignore[method-assign]
        real_do_close(dialect, connection)
        raise KeyboardInterrupt

    def store_close(store: Any) -> None:
        SQLStore.close = real_store_close  # type: ignore[method-assign]
        DefaultDialect.do_close = interrupted  # type: ignore[method-assign]
        real_store_close(store)

    SQLStore.close = store_close  # type: ignore[method-assign]


def fd_limit_job(urls: dict[str, str], index: str, save: bool, limit: int = 256) -> None:
    """Use every store and load (and ``save``) the index with 0, 1, 2... descriptors to spare.

    Prints one JSON list of outcomes: ``{"free", "target", "ok"}`` plus, for
    a failure, the exception's type, whether it is a cachedvec error, and
    its message.
    """
    import gc
    import resource

    from cachedvec import CachedEmbeddings
    from cachedvec.errors import CachedVecError
    from cachedvec.index import VectorIndex

    resource.setrlimit(resource.RLIMIT_NOFILE, (limit, limit))
    model = FakeEmbeddings(DIM)  # before the descriptors run out: it imports numpy.random
    outcomes = []

    def attempt(free: int, target: str, work: Callable[[], Any]) -> None:
        outcome: dict[str, Any] = {"free": free, "target": target, "ok": True}
        try:
            work()
        except Exception as exc:
            outcome.update(
                ok=False,
                type=type(exc).__name__,
                message=str(exc),
                cachedvec=isinstance(exc, CachedVecError),
            )
        outcomes.append(outcome)
        gc.collect()  # what a failed attempt opened is released before the next

    def embed(url: str, free: int) -> None:
        with CachedEmbeddings(model, url) as emb:
            emb.embed_documents_array(["kept one", "kept two", f"new text {free}"])

    def load_and_save() -> None:
        with VectorIndex.load(index) as loaded:
            if save:
                loaded.save(index)

    for free in range(8):
        held = []
        try:
            while True:
                held.append(os.open(os.devnull, os.O_RDONLY))
        except OSError:
            pass
        for fd in held[len(held) - free :]:
            os.close(fd)
        for kind, url in sorted(urls.items()):
            attempt(free, kind, lambda url=url, free=free: embed(url, free))
        attempt(free, "index", load_and_save)
        for fd in held[: len(held) - free]:
            os.close(fd)
    print(json.dumps(outcomes))


# ------------------------------------------------------------------ fork server

_PRELOAD = (
    "cachedvec",
    "cachedvec.cli",
    "cachedvec.embeddings",
    "cachedvec.ingestion",
    "cachedvec.reindexing",
    "cachedvec.index",
    "cachedvec.stores.file",
    "cachedvec.stores.sql",
    "cachedvec.stores.diskcache",
    "cachedvec.sources",
    "cachedvec.migrate",
    "faiss",
    "psycopg",
    "langchain_text_splitters",
    "sqlalchemy.dialects.sqlite",
    "sqlalchemy.dialects.postgresql",
    "tests.crash_harness",
)


@dataclass
class Outcome:
    """How a child ended: killed by our signal, or exited on its own first."""

    returncode: int  # like subprocess: -N for a signal
    stdout: str
    stderr: str
    seconds: float
    signalled: bool  # a signal was sent while the child was still running

    @property
    def killed(self) -> bool:
        return self.signalled and self.returncode == -signal.SIGKILL


class ForkServer:
    """A preloaded Python that forks one child per job (see the module docs)."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        workdir.mkdir(parents=True, exist_ok=True)
        env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
        self._proc = subprocess.Popen(
            [sys.executable, "-m", "tests.crash_harness"],
            cwd=REPO,
            env=env,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            bufsize=1,
        )
        self._ask({"op": "ping"})
        self._count = 0

    def _ask(self, request: dict[str, Any]) -> dict[str, Any]:
        assert self._proc.stdin is not None and self._proc.stdout is not None
        self._proc.stdin.write(json.dumps(request) + "\n")
        self._proc.stdin.flush()
        line = self._proc.stdout.readline()
        if not line:
            raise RuntimeError(f"fork server died (exit {self._proc.wait()})")
        return json.loads(line)  # type: ignore[no-any-return]

    def run(
        self,
        job: Callable[..., Any],
        *,
        kill_after: float | None = None,
        sig: int = signal.SIGKILL,
        timeout: float = 120,
        **kwargs: Any,
    ) -> Outcome:
        """Run ``job(**kwargs)`` in a child; send ``sig`` after ``kill_after`` seconds."""
        self._count += 1
        out = self.workdir / f"child-{self._count}.out"
        err = self.workdir / f"child-{self._count}.err"
        # Created here: a child killed before it opens them still leaves them.
        out.write_text("")
        err.write_text("")
        started = time.monotonic()
        pid = self._ask(
            {
                "op": "fork",
                "job": f"{job.__module__}:{job.__name__}",
                "kwargs": kwargs,
                "stdout": str(out),
                "stderr": str(err),
            }
        )["pid"]
        signalled = False
        if kill_after is not None:
            # The server reaps a child only when asked (below), so until then
            # this pid is ours even if the child already exited: no pid reuse.
            time.sleep(kill_after)
            signalled = not self._ask({"op": "poll", "pid": pid})["exited"]
            os.kill(pid, sig)
        status = self._ask({"op": "wait", "pid": pid, "timeout": timeout})
        if status.get("timeout"):
            os.kill(pid, signal.SIGKILL)
            self._ask({"op": "wait", "pid": pid, "timeout": 30})
            raise TimeoutError(f"{job.__name__} did not finish in {timeout}s")
        return Outcome(
            status["returncode"],
            out.read_text(),
            err.read_text(),
            time.monotonic() - started,
            signalled,
        )

    def close(self) -> None:
        if self._proc.poll() is None:
            assert self._proc.stdin is not None
            self._proc.stdin.close()
            try:
                self._proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()


def _serve() -> None:
    """The fork server's loop: JSON requests on stdin, JSON answers on stdout."""
    for name in _PRELOAD:
        importlib.import_module(name)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # only children take Ctrl-C
    exited: dict[int, int] = {}
    for line in sys.stdin:
        request = json.loads(line)
        op = request["op"]
        if op == "ping":
            answer: dict[str, Any] = {"ok": True}
        elif op == "fork":
            answer = {"pid": _fork(request)}
        elif op == "poll":
            pid = request["pid"]
            # Peek without reaping (WNOWAIT): the pid stays reserved for the kill.
            info = os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT)
            answer = {"exited": info is not None}
        else:  # wait
            pid = request["pid"]
            deadline = time.monotonic() + request["timeout"]
            answer = {"timeout": True}
            while time.monotonic() < deadline:
                done, status = os.waitpid(pid, os.WNOHANG)
                if done:
                    exited[pid] = status
                    answer = {"returncode": _returncode(status)}
                    break
                time.sleep(0.005)
        sys.stdout.write(json.dumps(answer) + "\n")
        sys.stdout.flush()


def _returncode(status: int) -> int:
    if os.WIFSIGNALED(status):
        return -os.WTERMSIG(status)
    return os.WEXITSTATUS(status)


def _fork(request: dict[str, Any]) -> int:
    pid = os.fork()
    if pid:
        return pid
    # The child: its own stdio, default signal handling, then the job.
    code = 1
    try:
        signal.signal(signal.SIGINT, signal.default_int_handler)
        null = os.open(os.devnull, os.O_RDONLY)
        os.dup2(null, 0)
        for fd, path in ((1, request["stdout"]), (2, request["stderr"])):
            target = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
            os.dup2(target, fd)
            os.close(target)
        module, name = request["job"].split(":")
        getattr(importlib.import_module(module), name)(**request["kwargs"])
        code = 0
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    except KeyboardInterrupt:
        # What an unhandled Ctrl-C does to a real Python: traceback, then die by SIGINT.
        traceback.print_exc()
        sys.stderr.flush()
        signal.signal(signal.SIGINT, signal.SIG_DFL)
        os.kill(os.getpid(), signal.SIGINT)
    except BaseException:
        traceback.print_exc()
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)


# --------------------------------------------------------------- plain processes


def run_and_signal(
    argv: Sequence[str],
    *,
    kill_after: float | None,
    sig: int = signal.SIGKILL,
    cwd: Path | None = None,
    env: dict[str, str] | None = None,
    timeout: float = 300,
    until: Callable[[], bool] | None = None,
) -> Outcome:
    """Run a command; send ``sig`` ``kill_after`` seconds after start (or after ``until()``).

    With ``until``, the clock starts when ``until()`` first returns true
    (polled every 20 ms), so a kill can be aimed past a slow start-up.
    """
    started = time.monotonic()
    # SIGINT back to its default in the child: a shell running pytest in the
    # background leaves it ignored, and Python would never see the Ctrl-C.
    proc = subprocess.Popen(
        list(argv),
        cwd=cwd,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    signalled = False
    if kill_after is not None:
        while until is not None and proc.poll() is None and not until():
            time.sleep(0.02)
        try:
            proc.wait(timeout=kill_after)
        except subprocess.TimeoutExpired:
            proc.send_signal(sig)
            signalled = True
    try:
        stdout, stderr = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.communicate()
        raise
    return Outcome(proc.returncode, stdout, stderr, time.monotonic() - started, signalled)


if __name__ == "__main__":
    _serve()
