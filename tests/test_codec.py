"""The vector codec: exact round trips, and every damaged value detected."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from cachedvec.codec import HEADER, VectorCodec
from cachedvec.errors import CodecError, ConfigError

finite32 = st.floats(width=32, allow_nan=False, allow_infinity=False)


@given(hnp.arrays(np.float32, hnp.array_shapes(min_dims=2, max_dims=2, max_side=40),
                  elements=finite32))
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
    assert len(value) == 384 * 4 + 12
    assert len(value) / (384 * 4) < 1.01


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
    assert value[:8] == b"CV\x01\x01\x03\x00\x00\x00"


@pytest.mark.parametrize("kwargs", [{"dtype": "float64"}, {"dim": 0}, {"dim": -3}])
def test_bad_codec_settings(kwargs: dict) -> None:
    with pytest.raises(ConfigError):
        VectorCodec(**kwargs)
