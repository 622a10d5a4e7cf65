"""Nothing cachedvec loads from disk can run code."""

from __future__ import annotations

import ast
import pickle
from pathlib import Path

import diskcache

from cachedvec import CachedEmbeddings, open_store
from cachedvec.testing import FakeEmbeddings

PACKAGE = Path(__file__).resolve().parent.parent / "cachedvec"
FORBIDDEN_MODULES = {"pickle", "marshal", "dill", "cloudpickle", "shelve", "joblib"}
FORBIDDEN_CALLS = {"eval", "exec", "compile", "__import__"}


class _Boom:
    """Unpickling this would create a file: proof that code ran."""

    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self):  # type: ignore[no-untyped-def]
        return (Path.touch, (Path(self.path),))


def test_package_never_imports_pickle_or_calls_eval() -> None:
    offenders = []
    for path in PACKAGE.rglob("*.py"):
        tree = ast.parse(path.read_text("utf-8"), str(path))
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                names = {a.name.split(".")[0] for a in node.names}
            elif isinstance(node, ast.ImportFrom):
                names = {(node.module or "").split(".")[0]}
            elif isinstance(node, ast.Call) and isinstance(node.func, ast.Name):
                names = {node.func.id} & FORBIDDEN_CALLS
            else:
                continue
            if names & (FORBIDDEN_MODULES | FORBIDDEN_CALLS):
                offenders.append(f"{path.relative_to(PACKAGE)}:{node.lineno}")
    assert offenders == []


def test_planted_pickle_in_a_diskcache_store_is_never_loaded(tmp_path: Path) -> None:
    folder, marker = tmp_path / "dc", tmp_path / "code-ran"
    emb = CachedEmbeddings(FakeEmbeddings(8), f"diskcache://{folder}")
    key = emb.document_keys(["hello"])[0]
    emb.close()
    # Plant a pickled value under the key, the way plain diskcache would store it.
    with diskcache.Cache(str(folder)) as raw:
        raw.set(key, _Boom(str(marker)))
        raw.set(("tuple", "key"), b"pickled key")
    with CachedEmbeddings(FakeEmbeddings(8), f"diskcache://{folder}") as emb:
        emb.embed_documents(["hello"])
        assert emb.stats.hits == 0 and emb.stats.computed == 1
        assert sorted(emb.store.yield_keys()) == [key]
    assert not marker.exists()


def test_planted_files_in_a_file_store_are_ignored(tmp_path: Path) -> None:
    root, marker = tmp_path / "fs", tmp_path / "code-ran"
    with open_store(f"file://{root}") as store:
        store.mset([("a", b"1")])
    (root / "evil.pkl").write_bytes(pickle.dumps(_Boom(str(marker))))
    (root / "00").mkdir(exist_ok=True)
    (root / "00" / "__init__.py").write_text("raise SystemExit('ran')")
    with open_store(f"file://{root}") as store:
        assert sorted(store.yield_keys()) == ["a"]
        assert store.mget(["evil.pkl"]) == [None]
    assert not marker.exists()
