"""The data-only value encoding: faithful round trips, refusals, and hostile frames."""

from __future__ import annotations

import array
import collections
import decimal
import fractions
import math
import struct
import time
import tracemalloc

import numpy as np
import pytest
import scipy.sparse as sp
import sympy

from scicode.codec import MAGIC, DecodeBudget, DecodeError, FrameReader, Value, decode_value, encode_frame


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


# ---------------------------------------------------------------------------------------------
# Honest values the official comparisons accept cross as plain, rebuilt types
# ---------------------------------------------------------------------------------------------

Point = collections.namedtuple("Point", "x y")


class MyList(list):
    pass


class MyDict(dict):
    pass


HONEST = {
    "array.array d": (array.array("d", [1.5, -2.0, 3.25]), array.array),
    "array.array i": (array.array("i", [1, -2, 3]), array.array),
    "array.array B": (array.array("B", b"abc"), array.array),
    "deque": (collections.deque([1.0, 2.0, 3.0]), collections.deque),
    "deque maxlen": (collections.deque([1, 2], maxlen=4), collections.deque),
    "range": (range(3, 100_000, 7), range),
    "memoryview of floats": (memoryview(np.arange(6.0).reshape(2, 3)), memoryview),
    "memoryview of bytes": (memoryview(b"xyz"), memoryview),
    "OrderedDict": (collections.OrderedDict([("b", 1.0), ("a", 2.0)]), collections.OrderedDict),
    "defaultdict": (collections.defaultdict(list, {"k": [1.0, 2.0]}), collections.defaultdict),
    "Counter": (collections.Counter("abracadabra"), collections.Counter),
    "namedtuple": (Point(1.0, 2.5), tuple),
    "list subclass": (MyList([1.0, 2.0]), list),
    "dict subclass": (MyDict(a=1.0), dict),
    "Fraction": (fractions.Fraction(1, 3), fractions.Fraction),
    "Decimal": (decimal.Decimal("0.1"), decimal.Decimal),
    "numpy matrix": (np.matrix([[1.0, 2.0], [3.0, 4.0]]), np.matrix),
    "masked array without a mask": (np.ma.masked_array([1.0, 2.0]), np.ndarray),
    "1e5 floats": ([i / 7 for i in range(100_000)], list),
    "1e5 mixed numbers": ([i / 7 if i % 2 else i for i in range(100_000)], list),
    "tuple of ints": (tuple(range(50)), tuple),
    "int beyond int64": (3**30, int),
    "huge negative int": (-(2**4000), int),  # np.allclose overflows on it, officially too
    "lil": (sp.lil_matrix(np.eye(3)), sp.lil_matrix),
    "dia": (sp.dia_matrix(np.eye(3)), sp.dia_matrix),
    "bsr": (sp.bsr_matrix(np.eye(4), blocksize=(2, 2)), sp.bsr_matrix),
    "dok": (sp.dok_matrix(np.eye(2)), sp.dok_matrix),
    "sympy root": (sympy.sqrt(2) / 2 + sympy.Symbol("x") ** 2 * sympy.cbrt(3), sympy.Add),
    "sympy pi power": (sympy.pi**2, sympy.Pow),
}


def _same(a, b) -> bool:
    if sp.issparse(b):
        return (a.toarray() == b.toarray()).all()
    if isinstance(b, (np.ndarray, memoryview)):
        return bool((np.asarray(a) == np.asarray(b)).all())
    return bool(a == b)


@pytest.mark.parametrize(("value", "kind"), HONEST.values(), ids=HONEST.keys())
def test_honest_values_cross_and_compare_the_same(value, kind) -> None:
    out = roundtrip(value)
    assert type(out) is kind
    assert _same(out, value)
    numeric = not isinstance(value, (dict, str, sympy.Basic, fractions.Fraction, decimal.Decimal)) and not sp.issparse(
        value
    )
    numeric = numeric and not (isinstance(value, int) and abs(value) > 2**1000)
    if numeric:
        assert np.allclose(out, value) and np.allclose(value, out)
        assert np.shape(out) == np.shape(value)


def test_defaultdict_keeps_a_builtin_factory_only() -> None:
    assert roundtrip(collections.defaultdict(int))["missing"] == 0
    assert roundtrip(collections.defaultdict(lambda: 5)).default_factory is None


def test_a_probe_sized_array_decodes() -> None:
    limit = 64 << 20
    value = np.arange((limit - 4096) // 8, dtype=np.float64)
    frame = encode_frame({"x": Value(value)})
    ((header, buffers),) = FrameReader(frame, max_bytes=limit).frames()
    out = decode_value(header["x"]["v"], buffers, DecodeBudget.for_probe(limit))
    assert out.shape == value.shape and out[-1] == value[-1] and out.flags.writeable


def test_huge_ints_are_refused_in_the_sandbox() -> None:
    with pytest.raises(ValueError, match="too large"):
        roundtrip(1 << 100_000)


# ---------------------------------------------------------------------------------------------
# Hostile records: refused quickly, within bounded memory
# ---------------------------------------------------------------------------------------------


def raw_frame(body: bytes, buffers=()) -> bytes:
    parts = [MAGIC, struct.pack("<I", len(body)), body, struct.pack("<I", len(buffers))]
    for b in buffers:
        parts += [struct.pack("<Q", len(b)), b]
    return b"".join(parts)


def _nested(depth: int):
    node: list = ["none"]
    for _ in range(depth):
        node = ["list", [node]]
    return node


ONE = np.ones(1).tobytes()
ZERO = np.zeros(1, np.int64).tobytes()
SPARSE_PARTS = [["nd", "<f8", [1], 0], ["nd", "<i8", [1], 1], ["nd", "<i8", [1], 2]]
_sin_chain = ["Symbol", "x", {}]
for _ in range(300):
    _sin_chain = ["call", "sin", [_sin_chain]]

HOSTILE = {
    "range of 10**9": (["range", "0x0", hex(10**9), "0x1"], []),
    "range of 10**18, JSON ints": (["range", 0, 10**18, 1], []),
    "lil with a huge shape": (["sparse", "lil", "matrix", [10**9, 10**9], SPARSE_PARTS, None], [ONE, ZERO, ZERO]),
    "lil of 10**9 empty rows": (["sparse", "lil", "matrix", [10**9, 0], SPARSE_PARTS, None], [ONE, ZERO, ZERO]),
    "csr of huge shape": (["sparse", "csr", "array", [2**40, 2], SPARSE_PARTS, None], [ONE, ZERO, ZERO]),
    "bsr of huge blocks": (
        ["sparse", "bsr", "matrix", [2**30, 2**30], SPARSE_PARTS, [2**15, 2**15]],
        [ONE, ZERO, ZERO],
    ),
    "sparse index out of range": (["sparse", "coo", "matrix", [1, 1], SPARSE_PARTS, None], [ONE, ONE, ZERO]),
    "one buffer decoded 100 times": (["list", [["nd", "<f8", [4 << 20], 0]] * 100], [bytes(32 << 20)]),
    "deeply nested value": (_nested(5000), []),
    "deeply nested sympy": (["sympy", _sin_chain], []),
    "object array of 10**18 items": (["ndobj", [10**9, 10**9], []], []),
    "shape overflowing int64": (["nd", "<f8", [3, 12297829382473034411], 0], [ONE]),
    "zero-size dtype, huge shape": (["nd", "<U0", [10**9, 10**9], 0], [b""]),
    "subarray dtype": (["nd", "(1000000000,)f8", [1], 0], [b""]),
    "colliding int keys": (["set", [["int", hex(k * (2**61 - 1))] for k in range(1, 2000)]], []),
    "colliding complex keys": (
        ["dict", [[["complex", float.hex(-1000003.0 * k), float.hex(float(k))], ["none"]] for k in range(1, 5000)]],
        [],
    ),
    "int of 70,000 bits": (["int", hex(1 << 70_000)], []),
    "many big ints": (["list", [["int", hex(1 << 65_000)]] * 100], []),
    "decimal int over 4300 digits": (["int", "9" * 5000], []),
    "Decimal with a huge exponent": (["decimal", "1e999999999999"], []),
    "sympy 10**(10**9)": (["sympy", ["call", "Pow", [["Integer", "0xa"], ["Integer", hex(10**9)]]]], []),
    "sympy sqrt(3)**(10**9)": (
        [
            "sympy",
            [
                "call",
                "Pow",
                [["call", "Pow", [["Integer", "0x3"], ["Rational", "0x1", "0x2"]]], ["Integer", hex(10**9)]],
            ],
        ],
        [],
    ),
    "sympy product of big numbers": (["sympy", ["call", "Mul", [["Integer", hex(3**4000)]] * 200]], []),
    "Counter of unhashables": (["counter", [[["list", []], ["int", "0x1"]]]], []),
    "defaultdict of eval": (["defaultdict", "eval", []], []),
    "array.array overflowing its type": (["array", "b", "<i8", 0], [np.array([1000]).tobytes()]),
    "packed floats of odd size": (["floats", "list", 0], [b"\x00" * 7]),
    "buffer index as a bool": (["bytes", True], [b"x"]),
}


@pytest.mark.parametrize(("node", "buffers"), HOSTILE.values(), ids=HOSTILE.keys())
def test_hostile_values_are_refused_quickly(node, buffers) -> None:
    start = time.process_time()
    with pytest.raises(DecodeError):
        decode_value(node, buffers)
    assert time.process_time() - start < 3


HOSTILE_STREAMS = {
    "header nested 10**5 deep": raw_frame(b"[" * 100_000 + b"]" * 100_000),
    "header of 64 MiB of {}": raw_frame(b"[" + b"{}," * 21_000_000 + b"{}]"),
    "300,000 frames": raw_frame(b"{}") * 300_000,
    "4M buffers": MAGIC + struct.pack("<I", 2) + b"{}" + struct.pack("<I", 4_000_000) + bytes(8 * 4_000_000),
    "JSON int of 5000 digits": raw_frame(b'{"a":' + b"9" * 5000 + b"}"),
    "not UTF-8": raw_frame(b'{"a":"\xff"}'),
}


@pytest.mark.parametrize("data", HOSTILE_STREAMS.values(), ids=HOSTILE_STREAMS.keys())
def test_hostile_streams_are_refused_quickly(data) -> None:
    start = time.process_time()
    with pytest.raises(DecodeError):
        FrameReader(data, max_bytes=128 << 20).frames()
    assert time.process_time() - start < 5


def test_headers_are_refused_before_they_expand() -> None:
    data = raw_frame(b"[" + b"{}," * 21_000_000 + b"{}]")  # 64 MiB, ~1.7 GB once parsed
    tracemalloc.start()
    try:
        with pytest.raises(DecodeError, match="values"):
            FrameReader(data, max_bytes=128 << 20).frames()
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 2 * len(data) + (16 << 20)  # a copy of the input, not an expansion of it


def test_the_budget_is_shared_by_a_stream() -> None:
    budget = DecodeBudget(max_bytes=1000)
    decode_value(["bytes", 0], [b"x" * 600], budget)
    with pytest.raises(DecodeError, match="MiB allowed"):
        decode_value(["bytes", 0], [b"x" * 600], budget)


def test_a_used_up_cpu_budget_fails_closed() -> None:
    budget = DecodeBudget(cpu_seconds=-1.0)
    with pytest.raises(DecodeError, match="CPU time"):
        decode_value(["none"], [], budget)
