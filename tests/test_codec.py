"""The data-only value encoding: faithful round trips, refusals, and hostile frames."""

from __future__ import annotations

import math
import struct

import numpy as np
import pytest
import scipy.sparse as sp
import sympy

from scicode.codec import MAGIC, DecodeError, FrameReader, Value, decode_value, encode_frame


def roundtrip(value):
    frame = encode_frame({"x": Value(value)})
    ((header, buffers),) = FrameReader(frame, max_bytes=1 << 30).frames()
    node = header["x"]
    if "v" not in node:
        raise ValueError(node["unencodable"])
    return decode_value(node["v"], buffers)


@pytest.mark.parametrize(
    "value",
    [
        None,
        True,
        0,
        -(2**100),
        1.5,
        float("inf"),
        1 + 2j,
        "λ",
        b"\x00\xff",
        [1, [2, (3,)]],
        (1.0, "a"),
        {1: "a", (2, 3): [4], "k": {"n": None}},
        {1, 2},
        frozenset({3}),
        range(1, 9, 2),
        slice(1, None, 2),
        np.float64(0.1),
        np.float32(0.1),
        np.int32(-7),
        np.bool_(False),
        np.complex128(1j),
        np.str_("s"),
        np.arange(12, dtype=np.int16).reshape(3, 4),
        np.zeros((0, 3)),
        np.array(["ab", "c"]),
        np.array([1, "x", None], dtype=object),
        np.ones((2, 2), dtype=np.complex64)[:, ::-1],
        sp.csr_matrix(np.eye(3)),
        sp.csc_matrix(np.eye(2)),
        sp.coo_matrix(np.eye(2)),
        sp.csr_array(np.eye(2)),
        sympy.Symbol("x"),
        sympy.Symbol("y", positive=True) ** 2 + sympy.Rational(1, 3),
        sympy.pi,
        sympy.sin(sympy.Symbol("t")) * sympy.Float("1.5", 30) - 2 * sympy.I,
        sympy.Matrix([[1, 2]]).as_immutable(),
    ],
)
def test_roundtrip_preserves_type_and_value(value) -> None:
    out = roundtrip(value)
    assert type(out) is type(value)
    if isinstance(value, np.ndarray):
        assert out.dtype == value.dtype and out.shape == value.shape
        assert (out == value).all() if value.dtype != object else list(out) == list(value)
    elif sp.issparse(value):
        assert (out.toarray() == value.toarray()).all()
    else:
        assert out == value


def test_nan_survives() -> None:
    assert math.isnan(roundtrip(float("nan")))
    assert np.isnan(roundtrip(np.array([np.nan]))).all()


class Sneaky(float):
    """A float that claims to equal everything: it crosses as a plain float."""

    def __eq__(self, other):
        return True

    __hash__ = float.__hash__


def test_subclasses_cross_as_their_plain_base_type() -> None:
    out = roundtrip(Sneaky(2.0))
    assert type(out) is float and out == 2.0 and out != 3.0
    out = roundtrip(np.ma.masked_array([1.0, 2.0]))
    assert type(out) is np.ndarray


class Anything:
    def __eq__(self, other):
        return True

    def __array__(self, dtype=None):
        return np.zeros(3)


@pytest.mark.parametrize(
    "value", [Anything(), object(), (x for x in range(3)), lambda: 1, np.array([(1, 2)], dtype="i4,i4")]
)
def test_unknown_objects_are_refused(value) -> None:
    with pytest.raises(ValueError, match="cannot be judged"):
        roundtrip(value)


def test_cycles_are_refused() -> None:
    a: list = []
    a.append(a)
    with pytest.raises(ValueError, match="deep"):
        roundtrip(a)


def test_truncated_frame_is_dropped_and_garbage_is_an_error() -> None:
    frame = encode_frame({"ev": "done"})
    assert FrameReader(frame + frame[:7], max_bytes=1 << 20).frames() == [({"ev": "done"}, [])]
    with pytest.raises(DecodeError, match="bad frame marker"):
        FrameReader(b"JUNK" + frame, max_bytes=1 << 20).frames()
    with pytest.raises(DecodeError, match="exceeds the limit"):
        FrameReader(frame * 100, max_bytes=10).frames()


@pytest.mark.parametrize(
    "node",
    [
        ["nd", "|O8", [1], 0],  # object dtype from raw bytes
        ["nd", "<f8", [2], 0],  # shape does not match the buffer
        ["nd", "<f8", [-1], 0],
        ["bytes", 5],  # no such buffer
        ["pickle", "x"],
        ["sympy", ["call", "__import__", [["Symbol", "os", {}]]]],
        ["sympy", ["S", "__class__"]],
        ["sympy", ["call", "lambdify", []]],
        ["dict", [[["list", []], ["int", "1"]]]],  # unhashable key
        ["int", 1],  # wrong payload type
    ],
)
def test_hostile_nodes_are_refused(node) -> None:
    with pytest.raises(DecodeError):
        decode_value(node, [b"\x00" * 8])


def test_header_must_be_an_object() -> None:
    body = b"[1]"
    frame = MAGIC + struct.pack("<I", len(body)) + body + struct.pack("<I", 0)
    with pytest.raises(DecodeError, match="not an object"):
        FrameReader(frame, max_bytes=1 << 20).frames()
