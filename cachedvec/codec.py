"""The byte layout of one cached vector: the only module that knows it.

Layout of format version 2, the one written (all little-endian)::

    offset  size   field
    0       2      magic  b"CV"
    2       1      format version (2)
    3       1      dtype code (1 = float32, 2 = float16)
    4       4      dim, uint32
    8       dim*w  the vector, raw
    8+dim*w 8      xxh3_64 digest of every byte before it, uint64

A 384-d float32 vector takes 1,552 bytes: 1.01x its raw size (LangChain's
JSON lists take ~5.5x). The digest makes a bit flip anywhere detectable and
costs ~0.1 us per 1.5 KB value, against ~0.7 us for the ``zlib`` CRC-32 of
version 1, which was the largest single cost of reading a warm batch. XXH3's
output is frozen since xxHash 0.8.0, so values stay readable across
``xxhash`` releases.
Data starts at offset 8, so float32 and float16 views are aligned and
decoding one value is a zero-copy ``numpy.frombuffer``.

Version 1 values (the same header, then a 4-byte CRC-32 of every byte before
it in place of the digest: 1,548 bytes for 384-d float32) are still read, so
caches written by earlier releases are not recomputed; they are never written.

Anything that fails a check is listed as corrupt by the batch API: the caller
counts it and recomputes it. A damaged value is never a result.
"""

from __future__ import annotations

import numbers
import struct
import zlib
from collections import Counter
from collections.abc import Callable, Sequence
from itertools import islice
from typing import Literal

import numpy as np
import numpy.typing as npt
from xxhash import xxh3_64_intdigest

from cachedvec.errors import CodecError, ConfigError

MAGIC = b"CV"
VERSION = 2
HEADER = struct.Struct("<2sBBI")
DIGEST = struct.Struct("<Q")
_CRC_RESIDUE = 0x2144DF1C  # CRC-32 of any message followed by its own CRC (version 1)
_DTYPES: dict[int, np.dtype] = {1: np.dtype("<f4"), 2: np.dtype("<f2")}
_CODES = {"float32": 1, "float16": 2}
_BLOCK_BYTES = 1 << 20  # values checked and copied per step of a batch decode
_DIM_SAMPLE = 101  # stored values whose claimed dimension votes, when none is known
# Fewer values decode one by one: the batch path's fixed cost (~9 us) is
# worth it from about 4 values (~2.5 us each alone), and single-query hits
# are latency-bound.
_BATCH_MIN = 4

Dtype = Literal["float32", "float16"]
Matrix = npt.NDArray[np.float32]


def _v1_intact(value: bytes) -> bool:
    return zlib.crc32(value) == _CRC_RESIDUE


def _v2_intact(value: bytes) -> bool:
    return (
        xxh3_64_intdigest(memoryview(value)[: -DIGEST.size])
        == DIGEST.unpack_from(value, len(value) - DIGEST.size)[0]
    )


# Per format version: the size of the check field after the vector, and its test.
_CHECKS: dict[int, tuple[int, Callable[[bytes], bool]]] = {
    1: (4, _v1_intact),
    2: (DIGEST.size, _v2_intact),
}


class VectorCodec:
    """Encodes float vectors of one dimension to bytes and back.

    ``dtype`` is the storage precision; vectors always come back as float32.
    ``dim`` may be ``None`` until the first vector fixes it.
    """

    __slots__ = ("dtype", "dim", "_code", "_dtype", "_header", "_size")

    def __init__(self, dim: int | None = None, dtype: Dtype = "float32") -> None:
        if dtype not in _CODES:
            raise ConfigError(f"unknown vector dtype {dtype!r}: use 'float32' or 'float16'")
        self.dtype: Dtype = dtype
        self._code = _CODES[dtype]
        self._dtype = _DTYPES[self._code]
        self.dim: int | None = None
        self._header = b""
        self._size = 0
        if dim is not None:
            self.set_dim(dim)

    def set_dim(self, dim: int) -> None:
        """Fix the dimension, replacing one learned from stored values.

        The model's output is the authority on its dimension: a codec that
        learned another one from a stale or foreign value is corrected here.
        """
        if isinstance(dim, bool) or not isinstance(dim, numbers.Integral) or not 0 < dim < 2**31:
            raise ConfigError(f"vector dimension must be a positive int, got {dim!r}")
        self._fix_dim(int(dim))

    def _fix_dim(self, dim: int) -> None:
        self.dim = dim
        self._header = HEADER.pack(MAGIC, VERSION, self._code, dim)
        self._size = HEADER.size + dim * self._dtype.itemsize + DIGEST.size

    @property
    def value_size(self) -> int:
        """Bytes per encoded vector (0 while the dimension is unknown)."""
        return self._size

    def encode_many(self, vectors: Matrix) -> list[bytes]:
        """Encode each row of a 2-d array; the caller has validated values."""
        if vectors.ndim != 2:
            raise CodecError(f"expected a 2-d array of vectors, got shape {vectors.shape}")
        if self.dim is None:
            if vectors.shape[1] == 0:
                raise CodecError("cannot encode vectors of dimension 0")
            self.set_dim(int(vectors.shape[1]))
        if vectors.shape[1] != self.dim:
            raise CodecError(f"expected vectors of dim {self.dim}, got {vectors.shape[1]}")
        raw = np.ascontiguousarray(vectors, dtype=self._dtype)
        header, digest, pack = self._header, xxh3_64_intdigest, DIGEST.pack
        out = []
        for row in raw:
            body = header + row.tobytes()
            out.append(body + pack(digest(body)))
        return out

    def round_trip(self, vectors: Matrix) -> Matrix:
        """What ``vectors`` decode to after storage: float16 storage rounds them.

        Callers return this on a miss so a vector never changes between the
        call that computed it and the calls that read it back. Values beyond
        float16's range come back infinite: callers must check before storing.
        """
        if self._code == 1:
            return vectors
        with np.errstate(over="ignore"):  # beyond float16's range: inf, for the caller to refuse
            return vectors.astype(self._dtype).astype(np.float32)

    def encode(self, vector: npt.ArrayLike) -> bytes:
        """Encode one vector."""
        return self.encode_many(np.asarray(vector, dtype=np.float32).reshape(1, -1))[0]

    @staticmethod
    def peek_dim(value: bytes | None) -> int | None:
        """The dimension a value's header claims, or None if it has no valid header."""
        if value is None or len(value) < HEADER.size or value[:2] != MAGIC:
            return None
        return int(HEADER.unpack_from(value)[3])

    def decode(self, value: bytes) -> Matrix:
        """Decode one value (either format version) or raise :class:`CodecError` saying why."""
        if len(value) < HEADER.size:
            raise CodecError(f"value too short to be a vector ({len(value)} bytes)")
        magic, version, code, dim = HEADER.unpack_from(value)
        if magic != MAGIC:
            raise CodecError("value is not a cachedvec vector (bad magic)")
        if version not in _CHECKS:
            raise CodecError(f"vector format version {version} is not supported")
        if code not in _DTYPES:
            raise CodecError(f"unknown dtype code {code}")
        if dim == 0 or (self.dim is not None and dim != self.dim):
            raise CodecError(f"vector has dim {dim}, expected {self.dim or 'at least 1'}")
        check_size, intact = _CHECKS[version]
        if len(value) != HEADER.size + dim * _DTYPES[code].itemsize + check_size:
            raise CodecError("value is truncated or has trailing bytes")
        if not intact(value):
            raise CodecError("vector checksum mismatch (value is corrupted)")
        vec = np.frombuffer(value, dtype=_DTYPES[code], count=dim, offset=HEADER.size)
        return vec if code == 1 else vec.astype(np.float32)

    def _learn_dim(self, values: Sequence[bytes | None]) -> None:
        """Fix the dimension most values claim, from the first of them that decodes cleanly.

        The most common one, not the first: one stale value of another
        dimension must not make every other value of the batch corrupt. The
        vote takes a sample (the first stored values), so a large first
        read does not pay a Python call per value.
        """
        present = (v for v in values if v is not None)
        claims = Counter(map(self.peek_dim, islice(present, _DIM_SAMPLE)))
        claims.pop(None, None)
        for dim, _ in claims.most_common():
            for v in values:
                if v is not None and self.peek_dim(v) == dim:
                    try:
                        self._fix_dim(len(self.decode(v)))
                        return
                    except CodecError:
                        continue

    def _decode_into(self, values: Sequence[bytes], out: Matrix, rows: list[int] | None) -> bool:
        """Decode ``values`` into ``out`` (row ``rows[i]``, or ``i`` if ``rows`` is None).

        Returns False, leaving ``out`` part-filled, unless every value is an
        intact value of the format written now. Each check runs at C speed,
        with no Python frame per value: lengths through ``map(len)``; then,
        block by block, one join, the headers as one numpy comparison, the
        digests recomputed by mapping xxh3 over the rows of the joined block
        (each row is one value, so no slice is copied) and compared with the
        stored ones read as one uint64 column, and one copy into ``out``.
        Blocks of ~1 MiB stay in the CPU cache from join to copy, and keep the
        only large allocation the result's: a whole-batch join would be a
        second one, which costs a page fault per 4 KiB every call. Version 1
        values have another size and take the caller's value-by-value path.
        """
        size = self._size
        if set(map(len, values)) != {size}:
            return False
        header = np.frombuffer(self._header, np.uint8)
        body_end = size - DIGEST.size
        step = max(1, _BLOCK_BYTES // size)
        for start in range(0, len(values), step):
            block = values[start : start + step]
            raw = np.frombuffer(b"".join(block), np.uint8).reshape(len(block), size)
            if not (raw[:, : HEADER.size] == header).all():
                return False
            digests = np.fromiter(map(xxh3_64_intdigest, raw[:, :body_end]), np.uint64, len(block))
            if not (digests == raw[:, body_end:].view("<u8")[:, 0]).all():
                return False
            where = slice(start, start + len(block)) if rows is None else rows[start : start + step]
            out[where] = raw[:, HEADER.size : body_end].view(self._dtype)
        return True

    def decode_many(self, values: Sequence[bytes | None]) -> tuple[Matrix, list[int], list[int]]:
        """Decode a batch into one float32 matrix.

        Returns ``(matrix, missing, corrupt)``: row ``i`` of the matrix holds
        ``values[i]`` when it decoded; ``missing`` lists positions whose value
        was ``None`` and ``corrupt`` those that failed a check. Their rows are
        zero and must be filled by the caller. A codec with no dimension yet
        takes the one most values claim (see :meth:`_learn_dim`); when no
        value decodes, the matrix has no columns.
        """
        n = len(values)
        if None in values:
            present = [i for i, v in enumerate(values) if v is not None]
            missing = [i for i, v in enumerate(values) if v is None]
        else:
            present, missing = list(range(n)), []
        if self.dim is None:
            self._learn_dim(values)
        if self.dim is None:
            # Nothing decodes, so nothing tells us the dimension: all corrupt.
            return np.zeros((n, 0), np.float32), missing, present
        if not present:
            return np.zeros((n, self.dim), np.float32), missing, []
        if len(present) >= _BATCH_MIN:
            if missing:
                out = np.zeros((n, self.dim), np.float32)
                given = [values[i] for i in present]
                decoded = self._decode_into(given, out, present)  # type: ignore[arg-type]
            else:
                out = np.empty((n, self.dim), np.float32)
                decoded = self._decode_into(values, out, None)  # type: ignore[arg-type]
            if decoded:
                return out, missing, []
        # A few values, or something damaged or in format version 1: value by
        # value, from zeros again, as the batch attempt may have filled rows.
        out = np.zeros((n, self.dim), np.float32)
        corrupt = []
        for i in present:
            try:
                out[i] = self.decode(values[i])  # type: ignore[arg-type]
            except CodecError:
                corrupt.append(i)
        return out, missing, corrupt
