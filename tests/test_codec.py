"""The vector codec: exact round trips, and every damaged value detected."""

from __future__ import annotations

import struct
import zlib

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from xxhash import xxh3_64_intdigest

from cachedvec.codec import HEADER, Dtype, VectorCodec
from cachedvec.errors import CodecError, ConfigError

finite32 = st.floats(width=32, allow_nan=False, allow_infinity=False)


@given(
    hnp.arrays(np.float32, hnp.array_shapes(min_dims=2, max_dims=2, max_side=40), elements=finite32)
)
def test_float32_round_trip_is_exact(matrix: np.ndarray) -> None:
    codec = VectorCodec()
    values = codec.encode_many(matrix)
    decoded, missing, corrupt = codec.decode_many(values)
    assert missing == [] and corrupt == []
    np.testing.assert_array_equal(decoded.reshape(matrix.shape), matrix)
    for row, value in zip(matrix, values, strict=True):
        np.testing.assert_array_equal(codec.decode(value), row)


@given(hnp.arrays(np.float32, (3, 16), elements=st.floats(-1000, 1000, width=16)))
def test_float16_round_trip_within_half_precision(matrix: np.ndarray) -> None:
    codec = VectorCodec(16, "float16")
    decoded, _, corrupt = codec.decode_many(codec.encode_many(matrix))
    assert corrupt == []
    assert decoded.dtype == np.float32
    np.testing.assert_allclose(decoded, matrix.astype(np.float16).astype(np.float32))


def test_value_is_compact() -> None:
    codec = VectorCodec(384)
    value = codec.encode(np.ones(384, np.float32))
    assert len(value) == 384 * 4 + 16
    assert len(value) / (384 * 4) < 1.011


def test_decode_is_zero_copy() -> None:
    codec = VectorCodec(8)
    value = codec.encode(np.arange(8, dtype=np.float32))
    vec = codec.decode(value)
    assert not vec.flags.owndata  # a view on the bytes, not a copy


@settings(max_examples=500)
@given(st.data())
def test_any_single_byte_change_is_detected(data: st.DataObject) -> None:
    codec = VectorCodec(32)
    value = bytearray(codec.encode(np.linspace(-1, 1, 32, dtype=np.float32)))
    pos = data.draw(st.integers(0, len(value) - 1))
    flip = data.draw(st.integers(1, 255))
    value[pos] ^= flip
    with pytest.raises(CodecError):
        codec.decode(bytes(value))
    _, _, corrupt = codec.decode_many([bytes(value)])
    assert corrupt == [0]


@settings(max_examples=1000)
@given(st.binary(max_size=200))
def test_arbitrary_bytes_never_decode_to_a_vector(blob: bytes) -> None:
    codec = VectorCodec(8)
    matrix, missing, corrupt = codec.decode_many([blob, None])
    assert missing == [1]
    assert corrupt == [0]  # random bytes essentially never carry a valid CRC
    assert not matrix[0].any()


def test_truncated_and_wrong_dim_values_are_corrupt() -> None:
    good = VectorCodec(8).encode(np.ones(8))
    other_dim = VectorCodec(4).encode(np.ones(4))
    codec = VectorCodec(8)
    _, missing, corrupt = codec.decode_many([good, good[:-1], good[:5], other_dim, b"", None])
    assert missing == [5]
    assert corrupt == [1, 2, 3, 4]
    for bad in (good[:-1], other_dim, b"CV", good + b"x"):
        with pytest.raises(CodecError):
            codec.decode(bad)


def test_dimension_learned_from_first_clean_value() -> None:
    value = VectorCodec(5).encode(np.arange(5))
    codec = VectorCodec()
    matrix, _, corrupt = codec.decode_many([b"garbage", value])
    assert codec.dim == 5 and corrupt == [0]
    np.testing.assert_array_equal(matrix[1], np.arange(5))


def test_newer_format_version_is_refused() -> None:
    value = bytearray(VectorCodec(4).encode(np.ones(4)))
    value[2] = 99
    with pytest.raises(CodecError, match="version"):
        VectorCodec(4).decode(bytes(value))


def test_header_layout_is_stable() -> None:
    assert HEADER.size == 8
    value = VectorCodec(3).encode(np.array([1, 2, 3], np.float32))
    assert value[:8] == b"CV\x02\x01\x03\x00\x00\x00"
    assert value[8:20] == np.array([1, 2, 3], "<f4").tobytes()
    assert value[20:] == struct.pack("<Q", xxh3_64_intdigest(value[:20]))


@pytest.mark.parametrize("kwargs", [{"dtype": "float64"}, {"dim": 0}, {"dim": -3}])
def test_bad_codec_settings(kwargs: dict) -> None:
    with pytest.raises(ConfigError):
        VectorCodec(**kwargs)


# ------------------------------------------------- format version 1 (read only)


def v1_value(vector: np.ndarray, code: int = 1) -> bytes:
    """A value as version 1 wrote it, built here without the codec: header, data, CRC-32."""
    dtype = {1: "<f4", 2: "<f2"}[code]
    body = struct.pack("<2sBBI", b"CV", 1, code, len(vector)) + vector.astype(dtype).tobytes()
    return body + struct.pack("<I", zlib.crc32(body))


def test_version_1_values_are_still_read() -> None:
    rng = np.random.default_rng(1)
    vectors = rng.standard_normal((4, 16)).astype(np.float32)
    old = [v1_value(v) for v in vectors]
    assert len(old[0]) == 8 + 16 * 4 + 4
    codec = VectorCodec(16)
    for value, vector in zip(old, vectors, strict=True):
        np.testing.assert_array_equal(codec.decode(value), vector)
    matrix, missing, corrupt = codec.decode_many(old)
    assert missing == [] and corrupt == []
    np.testing.assert_array_equal(matrix, vectors)


def test_a_batch_mixing_versions_and_gaps_decodes() -> None:
    rng = np.random.default_rng(2)
    vectors = rng.standard_normal((10, 8)).astype(np.float32)
    codec = VectorCodec(8)
    values = [
        v1_value(vectors[0]),
        codec.encode(vectors[1]),
        None,
        v1_value(vectors[3].astype(np.float16), code=2),
        *codec.encode_many(vectors[4:]),
    ]
    matrix, missing, corrupt = codec.decode_many(values)
    assert missing == [2] and corrupt == []
    keep = [0, 1, *range(4, 10)]
    np.testing.assert_array_equal(matrix[keep], vectors[keep])
    assert not matrix[2].any()
    np.testing.assert_array_equal(matrix[3], vectors[3].astype(np.float16).astype(np.float32))


def test_version_1_dimension_is_learned() -> None:
    codec = VectorCodec()
    matrix, _, corrupt = codec.decode_many([v1_value(np.arange(6, dtype=np.float32))])
    assert codec.dim == 6 and corrupt == []
    np.testing.assert_array_equal(matrix[0], np.arange(6))


@settings(max_examples=300)
@given(st.data())
def test_any_single_byte_change_to_a_version_1_value_is_detected(data: st.DataObject) -> None:
    value = bytearray(v1_value(np.linspace(-1, 1, 32, dtype=np.float32)))
    pos = data.draw(st.integers(0, len(value) - 1))
    value[pos] ^= data.draw(st.integers(1, 255))
    with pytest.raises(CodecError):
        VectorCodec(32).decode(bytes(value))
    assert VectorCodec(32).decode_many([bytes(value)])[2] == [0]


def test_versions_do_not_pass_for_each_other() -> None:
    vector = np.ones(8, np.float32)
    current = VectorCodec(8).encode(vector)
    relabelled_old = bytearray(v1_value(vector))
    relabelled_old[2] = 2  # a version 1 value claiming version 2: 4 bytes short, CRC not a digest
    relabelled_new = bytearray(current)
    relabelled_new[2] = 1  # a version 2 value claiming version 1: 4 bytes long
    for bad in (bytes(relabelled_old), bytes(relabelled_new)):
        with pytest.raises(CodecError):
            VectorCodec(8).decode(bad)
        assert VectorCodec(8).decode_many([current, bad])[2] == [1]


# --------------------------------------------------- format version 2 digests


def test_a_wrong_digest_is_corrupt() -> None:
    codec = VectorCodec(8)
    value = codec.encode(np.arange(8, dtype=np.float32))
    other = codec.encode(np.arange(8, dtype=np.float32) + 1)
    wrong_digest = value[:-8] + other[-8:]  # right size and header, digest of another vector
    zero_digest = value[:-8] + bytes(8)
    for bad in (wrong_digest, zero_digest):
        with pytest.raises(CodecError, match="checksum"):
            codec.decode(bad)
    _, _, corrupt = codec.decode_many([value, wrong_digest, other, zero_digest])
    assert corrupt == [1, 3]


def test_one_corrupt_value_in_a_large_batch_is_found_alone() -> None:
    rng = np.random.default_rng(3)
    vectors = rng.standard_normal((500, 24)).astype(np.float32)
    codec = VectorCodec(24)
    values = codec.encode_many(vectors)
    damaged = bytearray(values[321])
    damaged[100] ^= 0x10  # inside the vector: only the digest can tell
    values[321] = bytes(damaged)
    matrix, missing, corrupt = codec.decode_many(values)
    assert missing == [] and corrupt == [321]
    keep = np.arange(500) != 321
    np.testing.assert_array_equal(matrix[keep], vectors[keep])
    assert not matrix[321].any()


def test_batch_result_is_a_writable_contiguous_copy() -> None:
    codec = VectorCodec(4)
    values = codec.encode_many(np.ones((3, 4), np.float32))
    matrix, _, _ = codec.decode_many(values)
    assert matrix.flags.c_contiguous and matrix.flags.writeable
    matrix[0, 0] = 5.0  # must not touch the stored bytes
    np.testing.assert_array_equal(codec.decode_many(values)[0], np.ones((3, 4)))


@pytest.mark.parametrize("dtype", ["float32", "float16"])
def test_batches_larger_than_one_decode_block(dtype: Dtype) -> None:
    # 16 KiB values: a batch of 200 spans several of the decoder's ~1 MiB blocks.
    rng = np.random.default_rng(4)
    vectors = rng.standard_normal((200, 4096)).astype(np.float32)
    codec = VectorCodec(4096, dtype)
    expected = codec.round_trip(vectors)
    values: list[bytes | None] = list(codec.encode_many(vectors))
    matrix, missing, corrupt = codec.decode_many(values)
    assert missing == [] and corrupt == []
    np.testing.assert_array_equal(matrix, expected)

    gaps = [3, 64, 130, 199]
    for i in gaps:
        values[i] = None
    matrix, missing, corrupt = codec.decode_many(values)
    assert missing == gaps and corrupt == []
    keep = np.isin(np.arange(200), gaps, invert=True)
    np.testing.assert_array_equal(matrix[keep], expected[keep])
    assert not matrix[gaps].any()

    damaged = bytearray(values[180])  # type: ignore[arg-type]
    damaged[-20] ^= 1
    values[180] = bytes(damaged)
    matrix, missing, corrupt = codec.decode_many(values)
    assert missing == gaps and corrupt == [180]
    keep[180] = False
    np.testing.assert_array_equal(matrix[keep], expected[keep])
    assert not matrix[180].any()


@pytest.mark.parametrize("dim", [0, -1, True, 2**31, 2.0, "8"])
def test_a_bad_dimension_is_a_config_error(dim: object) -> None:
    with pytest.raises(ConfigError, match="dimension"):
        VectorCodec(dim)  # type: ignore[arg-type]


def test_a_numpy_integer_dimension_is_accepted() -> None:
    assert VectorCodec(np.int64(4)).dim == 4  # type: ignore[arg-type]


def test_vectors_of_dimension_zero_are_never_encoded() -> None:
    codec = VectorCodec()
    with pytest.raises(CodecError, match="dimension 0"):
        codec.encode(np.array([], np.float32))
    assert codec.dim is None  # the codec did not learn a dimension of 0


def test_set_dim_replaces_a_dimension_learned_from_a_stored_value() -> None:
    codec = VectorCodec()
    four, eight = VectorCodec(4).encode(np.ones(4)), VectorCodec(8).encode(np.ones(8))
    assert codec.decode_many([four, eight])[2] == [1] and codec.dim == 4
    codec.set_dim(8)
    matrix, _, corrupt = codec.decode_many([four, eight])
    assert corrupt == [0] and matrix.shape == (2, 8)
    np.testing.assert_array_equal(matrix[1], np.ones(8))


def test_float16_round_trip_of_out_of_range_values_is_infinite_without_a_warning() -> None:
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        out = VectorCodec(2, "float16").round_trip(np.array([[1e6, 1.0]], np.float32))
    assert np.isinf(out[0, 0]) and out[0, 1] == 1.0


def test_the_most_common_dimension_is_learned_not_the_first() -> None:
    stale = VectorCodec(4).encode(np.ones(4))
    good = VectorCodec(8).encode_many(np.arange(24, dtype=np.float32).reshape(3, 8))
    codec = VectorCodec()
    matrix, _, corrupt = codec.decode_many([stale, *good])
    assert codec.dim == 8 and corrupt == [0]
    np.testing.assert_array_equal(matrix[1:], np.arange(24).reshape(3, 8))


def test_an_intact_value_of_dimension_zero_is_corrupt() -> None:
    body = HEADER.pack(b"CV", 2, 1, 0)
    value = body + struct.pack("<Q", xxh3_64_intdigest(body))
    codec = VectorCodec()
    with pytest.raises(CodecError, match="dim 0"):
        codec.decode(value)
    assert codec.decode_many([value])[2] == [0] and codec.dim is None
