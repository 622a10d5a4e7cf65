"""Build a whole FAISS index from batches of vectors, in memory or on disk.

Rebuilding a large index must never hold every float32 vector at once: 1M
384-d vectors are 1.5 GB, 100M are 150 GB. :class:`IndexBuilder` is trained
on a sample, then takes the vectors batch by batch:

- ``layout="memory"``: each batch goes straight into the FAISS index, so the
  build needs the finished index plus one batch.
- ``layout="ondisk"`` (IVF factories only): batches fill *blocks*, each a
  copy of the trained, empty index that is written to a temporary file once
  it holds ``block_size`` vectors and then dropped. At the end FAISS's
  ``merge_ondisk`` merges the blocks' inverted lists into one
  ``lists-<token>.ivfdata`` file beside the index file, which keeps only the
  centroids, codebooks, list offsets and id map. FAISS memory-maps the lists
  file whenever the index is opened (``VectorIndex.load`` included), so the
  lists never have to fit in RAM, neither while building nor while serving.
  Such an index is for serving: it is read-only until rebuilt.

The documents do not move. A rebuild keeps the folder's docstore and gives
every vector the vector id the docstore already has, so :func:`save_rebuilt`
writes the folder with the usual atomic manifest swap (see ``persist.py``).

The lists file is named by its absolute path inside the index file (that is
how FAISS records it): move an on-disk index folder by rebuilding it, not
with ``mv``.
"""

from __future__ import annotations

import os
import re
import secrets
import shutil
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import faiss
import numpy as np
import numpy.typing as npt
from faiss.contrib.ondisk import merge_ondisk

from cachedvec.errors import ConfigError, IndexCorruptError
from cachedvec.index import persist
from cachedvec.index.docstore import DocStore
from cachedvec.index.faiss_index import FaissIndex
from cachedvec.index.rerank import scores_exactly

LAYOUTS = ("memory", "ondisk")
DEFAULT_BLOCK_SIZE = 1_000_000
_LISTS_FILE = re.compile(r"^lists-[0-9a-f]{16}\.ivfdata$")


class IndexBuilder:
    """Train once, add in batches, finish into one :class:`FaissIndex`.

    ``folder`` is the index folder the result will be saved to; the on-disk
    layout writes its blocks and lists file there (same filesystem, so no
    copy at the end). Use as a context manager so temporary blocks are
    removed whatever happens.
    """

    def __init__(
        self,
        dim: int,
        *,
        metric: str,
        factory: str,
        layout: str = "memory",
        folder: str | os.PathLike[str] | None = None,
        block_size: int = DEFAULT_BLOCK_SIZE,
        nprobe: int | None = None,
        ef_search: int | None = None,
    ) -> None:
        if layout not in LAYOUTS:
            raise ConfigError(f"layout must be one of {', '.join(LAYOUTS)}, got {layout!r}")
        if isinstance(block_size, bool) or not isinstance(block_size, int) or block_size < 1:
            raise ConfigError(f"block_size must be a positive integer, got {block_size!r}")
        self._target = FaissIndex(dim, metric, factory, nprobe=nprobe, ef_search=ef_search)
        self._nprobe, self._ef_search = nprobe, ef_search
        self.layout = layout
        self.block_size = block_size
        self._block: Any = None
        self._blocks: list[Path] = []
        self._flushed = 0  # vectors already written out in blocks
        self._scratch: Path | None = None
        self.lists_file: Path | None = None
        if layout == "ondisk":
            if faiss.try_extract_index_ivf(self._target.faiss_index) is None:
                raise ConfigError(
                    f"the on-disk layout stores IVF inverted lists; {factory!r} is not an IVF "
                    "index (try e.g. 'IVF4096,PQ48')"
                )
            if folder is None:
                raise ConfigError("the on-disk layout needs the index folder to write to")
            self._folder = Path(folder).resolve()

    @property
    def needs_training(self) -> bool:
        return not self._target.is_trained

    @property
    def scores_exactly(self) -> bool:
        """Whether the index scores with the exact float32 vectors (re-ranking changes nothing)."""
        return scores_exactly(self._target.faiss_index)

    @property
    def nlist(self) -> int:
        """Inverted lists of an IVF factory (0 for other index types)."""
        ivf = faiss.try_extract_index_ivf(self._target.faiss_index)
        return int(ivf.nlist) if ivf is not None else 0

    @property
    def ntotal(self) -> int:
        """Vectors added so far."""
        in_block = self._block.ntotal if self._block is not None else 0
        return self._target.ntotal + in_block + self._flushed

    def train(self, sample: npt.ArrayLike) -> None:
        """Train IVF/PQ/transforms on a sample of the vectors (before any add)."""
        if self.ntotal:
            raise ConfigError("train the builder before adding vectors")
        self._target.train(self._target.prepare(sample, "training vectors"))

    def add(self, vectors: npt.ArrayLike, vector_ids: npt.ArrayLike) -> None:
        """Add one batch under the given int64 ids (the docstore's vector ids)."""
        matrix = self._target.prepare(vectors)
        ids = np.ascontiguousarray(vector_ids, dtype=np.int64)
        if len(ids) != len(matrix):
            raise ConfigError(f"got {len(ids)} ids for {len(matrix)} vectors")
        if self.layout == "memory":
            self._target.add(matrix, ids)
            return
        if not self._target.is_trained:
            self._target.train(matrix)
        if self._block is None:
            self._block = faiss.clone_index(self._target.faiss_index)
        self._block.add_with_ids(matrix, ids)
        if self._block.ntotal >= self.block_size:
            self._flush()

    def _flush(self) -> None:
        """Write the current block to a temporary file and free it."""
        if self._block is None or self._block.ntotal == 0:
            return
        if self._scratch is None:
            self._scratch = self._folder / f".build-{secrets.token_hex(8)}"
            self._scratch.mkdir(parents=True)
        path = self._scratch / f"block-{len(self._blocks):05d}.faiss"
        faiss.write_index(self._block, str(path))
        self._blocks.append(path)
        self._flushed += int(self._block.ntotal)
        self._block = None

    def finish(self) -> FaissIndex:
        """The finished index (on disk: with its inverted lists merged into the lists file)."""
        if self.layout == "memory" or (not self._blocks and self._block is None):
            return self._target
        self._flush()
        index = self._target.faiss_index
        self.lists_file = self._folder / f"lists-{secrets.token_hex(8)}.ivfdata"
        with _quiet_stdout():
            merge_ondisk(index, [str(p) for p in self._blocks], str(self.lists_file))
        # The blocks' id maps are not merged: rebuild the id -> (list, offset)
        # hash table from the merged lists (changing the type forces a rebuild).
        ivf = faiss.extract_index_ivf(index)
        ivf.set_direct_map_type(faiss.DirectMap.NoMap)  # type: ignore[attr-defined]
        ivf.set_direct_map_type(faiss.DirectMap.Hashtable)  # type: ignore[attr-defined]
        self._remove_blocks()
        return FaissIndex.from_faiss(
            index,
            self._target.metric,
            self._target.factory,
            nprobe=self._nprobe,
            ef_search=self._ef_search,
        )

    def _remove_blocks(self) -> None:
        if self._scratch is not None:
            shutil.rmtree(self._scratch, ignore_errors=True)
            self._scratch = None
        self._blocks.clear()

    def close(self) -> None:
        """Remove temporary blocks (the lists file belongs to :func:`save_rebuilt`)."""
        self._remove_blocks()
        self._block = None

    def __enter__(self) -> IndexBuilder:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


@contextmanager
def _quiet_stdout() -> Iterator[None]:
    """Silence C-level printf (FAISS reports each lists-file resize on stdout)."""
    # stdout may carry a command's --json output: nothing else may reach it.
    sys.stdout.flush()
    saved = os.dup(1)
    try:
        with open(os.devnull, "wb") as devnull:
            os.dup2(devnull.fileno(), 1)
        yield
    finally:
        os.dup2(saved, 1)
        os.close(saved)


def open_docstore(folder: str | os.PathLike[str]) -> tuple[DocStore, persist.Manifest]:
    """A saved folder's docstore, verified, without reading its (maybe huge) FAISS file."""
    path = Path(folder)
    manifest = persist.read_manifest(path)
    entry = manifest.files["docstore"]
    try:
        persist._verify_file(path, entry)
    except FileNotFoundError:
        raise IndexCorruptError(
            f"index folder {path} is missing a file its manifest names"
        ) from None
    docstore = DocStore.open_copy(path / entry["name"])
    if len(docstore) != manifest.counts["documents"]:
        docstore.close()
        raise IndexCorruptError(
            f"index {path}: the docstore does not hold the documents its manifest counts"
        )
    return docstore, manifest


def save_rebuilt(
    folder: str | os.PathLike[str],
    index: FaissIndex,
    docstore: DocStore,
    *,
    fingerprint: dict[str, Any] | None,
    lists_file: Path | None = None,
    rerank: int | None = None,
) -> persist.Manifest:
    """Save a rebuilt index with its docstore (atomic swap), then drop stale lists files.

    ``index`` must hold exactly the docstore's vector ids. On failure the
    new lists file is removed and the folder keeps its previous index.
    ``rerank``: the re-rank factor saved with the search settings.
    """
    settings = {
        name: value
        for name, value in (
            ("ef_search", index.ef_search),
            ("nprobe", index.nprobe),
            ("rerank", rerank),
        )
        if value is not None
    }
    try:
        manifest = persist.save_folder(
            folder,
            index=index.faiss_index,
            docstore=docstore,
            dim=index.dim,
            metric=index.metric,
            factory=index.factory,
            search=settings,
            fingerprint=fingerprint,
            counts={"documents": len(docstore), "vectors": index.ntotal, "tombstones": 0},
        )
    except BaseException:
        if lists_file is not None:
            lists_file.unlink(missing_ok=True)
        raise
    # The manifest swap committed: lists files of earlier builds (or of
    # crashed ones) are no longer named by any index file we would open.
    keep = lists_file.name if lists_file is not None else None
    for entry in Path(folder).iterdir():
        if _LISTS_FILE.match(entry.name) and entry.name != keep:
            entry.unlink(missing_ok=True)
    return manifest
