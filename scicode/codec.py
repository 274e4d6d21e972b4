"""A data-only encoding of the values a step program computes, for the trusted side to judge.

The sandbox encodes (`encode_frame`), the trusted process decodes (`FrameReader`, `decode_value`).
Only plain data crosses: None, bool, int, float, complex, str, bytes, numpy scalars, arrays and
matrices of numeric, bool, string or datetime dtypes (object arrays element by element), list,
tuple, set, frozenset, dict, OrderedDict, defaultdict (of a builtin factory), Counter, deque,
array.array, memoryview, range, slice, Fraction, Decimal, scipy.sparse matrices and arrays, and a
small set of sympy atoms and expressions. Never pickle. Decoding rebuilds values of exactly those
(standard library or numpy/scipy/sympy) types, so a comparison on the trusted side behaves as it
would have on the values themselves, while anything a model could hide behavior in (a custom
`__eq__`, `__array__`, `__bool__`…) is gone: such objects are either converted to their plain base
type in the sandbox (a namedtuple crosses as a tuple, a masked array as its data) or refused
there, and a refused value fails the step.

Frame layout: b"SCP1", u32 header length, header (UTF-8 JSON), u32 buffer count, then each buffer
as u64 length + bytes. Every field is bounds-checked on decode.

The probe bytes are written by the sandbox, so an adversary controls them. Decoding is total and
bounded: any input either decodes or raises `DecodeError`, and the work and memory it takes are
capped per probe stream (`FrameReader`'s limits, `DecodeBudget`), failing closed when a cap is hit.

This module runs inside the sandbox: it imports only the standard library and numpy at import
time (scipy and sympy lazily, when a value needs them).
"""

from __future__ import annotations

import array
import collections
import decimal
import fractions
import json
import math
import struct
import time
from typing import Any

import numpy as np

MAGIC = b"SCP1"

# ---------------------------------------------------------------------------------------------
# Caps. Per probe stream (one step's run) unless said otherwise; exceeding one fails the step.
# ---------------------------------------------------------------------------------------------

#: Nesting depth of one value. Honest results are a few levels deep; this also bounds recursion.
MAX_DEPTH = 64
#: Value nodes decoded per stream (each list item, dict entry, sympy node… counts one; a numpy
#: array or a packed list of floats counts one): at most ~2 s of decoding. The validation steps'
#: gold runs use at most 113.
MAX_NODES = 1_000_000
#: Sympy nodes per stream: rebuilding one costs ~20 µs, and sympy values are rare in SciCode.
MAX_SYMPY_NODES = 20_000
#: JSON values in the frame headers of a stream, bounded *before* parsing (by counting the bytes
#: `[ { , :`): a 64 MiB header of `[{},{},…]` would otherwise parse into ~1.7 GB of Python
#: objects. 2M values are at most ~150 MB; an honest list of 1e5 mixed numbers takes ~3e5.
MAX_HEADER_TOKENS = 2_000_000
#: Frames per stream: an honest run writes one per test, test-function call and site (at most
#: ~20 for the validation steps), not 10^5; parsing a frame costs a few µs.
MAX_FRAMES = 100_000
#: Buffers per stream (one per array, bytes value or sparse component).
MAX_BUFFERS = 200_000
#: Bytes that decoded values may take per stream: array and bytes data, strings, and what values
#: expand to on the trusted side (a range's elements, a sparse matrix's dense form, a packed
#: list's Python floats). A step's values are at most the probe's size (max_output_mb, 64 MiB by
#: default), so the budget is `EXPANSION_FACTOR` times the probe limit, and at least this much.
MAX_DECODED_BYTES = 256 << 20
EXPANSION_FACTOR = 4
#: Bits of one integer (~19,700 decimal digits), and of all integers wider than 64 bits in a
#: stream: arithmetic on big integers (a Fraction's gcd, a product) is superlinear in their size.
MAX_INT_BITS = 1 << 16
MAX_BIG_INT_BITS = 1 << 22
#: CPU seconds of the judging thread per stream, counted from the start of judging (so replaying
#: the asserts counts too), checked before each value is decoded and every 4096 nodes: a value
#: past it fails its site. Honest streams need milliseconds (the largest validation stream, 30 MB,
#: 5 ms), so this only stops pathological inputs the size caps let through. A single replayed
#: expression cannot be interrupted; its inputs are bounded by the caps instead.
DECODE_CPU_SECONDS = 20.0
#: A set or dict whose keys share one hash more than this often was crafted to make building it
#: quadratic (distinct ints, complexes or tuples can be chosen to collide); honest ones never do.
MAX_SAME_HASH = 16
#: Dimensions of an array (numpy allows 64).
MAX_NDIM = 32
#: A Decimal's exponent (that of the default context): beyond it, arithmetic raises or explodes.
MAX_DECIMAL_EXPONENT = 999_999

_ARRAY_KINDS = frozenset("biufcUSMm")
_SPARSE_FORMATS = ("csr", "csc", "coo", "bsr", "dia", "lil", "dok")
#: array.array type codes that cross ("u"/"w" are text; their arrays compare like str lists).
_ARRAY_TYPECODES = frozenset("bBhHiIlLqQfd")
#: defaultdict factories that cross by name (anything else crosses as default_factory=None).
_FACTORIES: dict[str, Any] = {
    f.__name__: f for f in (int, float, complex, str, bytes, bool, list, tuple, dict, set, frozenset)
}
_PACK_MIN = 8  # lists/tuples of at least this many plain floats (or int64 ints) cross as one buffer


class EncodeError(ValueError):
    """A value that cannot be sent as data (an unknown object, a cycle, too deep)."""


class DecodeError(ValueError):
    """A malformed frame, or one beyond the caps: the sandbox output is not trustworthy."""


# ---------------------------------------------------------------------------------------------
# Encoding (runs in the sandbox)
# ---------------------------------------------------------------------------------------------


def encode_frame(header: dict[str, Any]) -> bytes:
    """One frame; values to encode are `Value` wrappers anywhere inside `header`."""
    buffers: list[bytes] = []
    tree = _encode_header(header, buffers)
    body = json.dumps(tree, separators=(",", ":"), allow_nan=False).encode("utf-8")
    parts = [MAGIC, struct.pack("<I", len(body)), body, struct.pack("<I", len(buffers))]
    for buf in buffers:
        parts += [struct.pack("<Q", len(buf)), buf]
    return b"".join(parts)


class Value:
    """Marks a value to be encoded as data inside a frame header."""

    __slots__ = ("value",)

    def __init__(self, value: Any) -> None:
        self.value = value


def _encode_header(obj: Any, buffers: list[bytes]) -> Any:
    if isinstance(obj, Value):
        mark = len(buffers)
        try:
            return {"v": _Encoder(buffers).encode(obj.value, 0)}
        except EncodeError as e:
            del buffers[mark:]
            return {"unencodable": str(e)}
        except RecursionError:
            del buffers[mark:]
            return {"unencodable": "value nested too deeply"}
    if isinstance(obj, dict):
        return {k: _encode_header(v, buffers) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_encode_header(v, buffers) for v in obj]
    return obj


def _int_text(v: int) -> str:
    if v.bit_length() > MAX_INT_BITS:
        raise EncodeError(f"an integer of {v.bit_length()} bits is too large to judge (limit {MAX_INT_BITS})")
    return hex(v)


class _Encoder:
    def __init__(self, buffers: list[bytes]) -> None:
        self.buffers = buffers
        self.nodes = 0

    def buffer(self, data: bytes) -> int:
        self.buffers.append(data)
        return len(self.buffers) - 1

    def encode(self, v: Any, depth: int) -> Any:
        self.nodes += 1
        if depth > MAX_DEPTH or self.nodes > MAX_NODES:
            raise EncodeError("value nested too deeply or too large")
        t = type(v)
        if v is None:
            return ["none"]
        if v is Ellipsis:
            return ["ellipsis"]
        if t is bool:
            return ["bool", v]
        if isinstance(v, np.generic):
            return self.scalar(v)
        if isinstance(v, np.matrix):
            return ["matrix", self.array(np.asarray(v))]
        if isinstance(v, np.ndarray):
            return self.array(np.asarray(v))
        if isinstance(v, bool):  # a bool subclass cannot exist; kept for clarity of order
            return ["bool", bool(v)]
        module = t.__module__ or ""
        if module.startswith("scipy.sparse"):  # before dict: a dok matrix is a dict
            return self.sparse(v)
        if isinstance(v, int):
            return ["int", _int_text(int.__index__(v))]
        if isinstance(v, float):
            return ["float", float.hex(float(v))]
        if isinstance(v, complex):
            c = complex(v)
            return ["complex", float.hex(c.real), float.hex(c.imag)]
        if isinstance(v, str):
            return ["str", str.__str__(v)]
        if isinstance(v, (bytes, bytearray)):
            return ["bytes", self.buffer(bytes(v))]
        if isinstance(v, memoryview):
            return self.memoryview(v)
        if isinstance(v, tuple):
            return self.sequence("tuple", tuple.__iter__(v), depth)
        if isinstance(v, list):
            return self.sequence("list", list.__iter__(v), depth)
        if isinstance(v, dict):
            return self.mapping(v, depth)
        if isinstance(v, frozenset):
            return ["frozenset", [self.encode(x, depth + 1) for x in frozenset.__iter__(v)]]
        if isinstance(v, set):
            return ["set", [self.encode(x, depth + 1) for x in set.__iter__(v)]]
        if isinstance(v, collections.deque):
            maxlen = collections.deque.maxlen.__get__(v)
            return ["deque", [self.encode(x, depth + 1) for x in collections.deque.__iter__(v)], maxlen]
        if isinstance(v, array.array):
            return self.pyarray(v)
        if isinstance(v, range):
            return ["range", _int_text(v.start), _int_text(v.stop), _int_text(v.step)]
        if isinstance(v, slice):
            return ["slice", *(self.encode(x, depth + 1) for x in (v.start, v.stop, v.step))]
        if isinstance(v, fractions.Fraction):
            return ["fraction", _int_text(int(v.numerator)), _int_text(int(v.denominator))]
        if isinstance(v, decimal.Decimal):
            return ["decimal", decimal.Decimal.__str__(v)]
        if module.startswith("sympy"):
            return self.sympy(v)
        raise EncodeError(f"a value of type {module}.{t.__qualname__} cannot be judged")

    def sequence(self, tag: str, items: Any, depth: int) -> list[Any]:
        values = list(items)
        if len(values) >= _PACK_MIN:
            if all(type(x) is float for x in values):
                return ["floats", tag, self.buffer(array.array("d", values).tobytes())]
            if all(type(x) is int and -(1 << 63) <= x < (1 << 63) for x in values):
                return ["ints", tag, self.buffer(array.array("q", values).tobytes())]
        return [tag, [self.encode(x, depth + 1) for x in values]]

    def mapping(self, v: dict, depth: int) -> list[Any]:
        pairs = [[self.encode(k, depth + 1), self.encode(x, depth + 1)] for k, x in dict.items(v)]
        if isinstance(v, collections.Counter):
            return ["counter", pairs]
        if isinstance(v, collections.OrderedDict):
            return ["odict", pairs]
        if isinstance(v, collections.defaultdict):
            factory = v.default_factory
            name = next((n for n, f in _FACTORIES.items() if factory is f), None)
            return ["defaultdict", name, pairs]
        return ["dict", pairs]

    def memoryview(self, v: memoryview) -> list[Any]:
        try:
            arr = np.asarray(v)
        except (TypeError, ValueError) as e:
            raise EncodeError(f"memoryview of format {v.format!r} cannot be judged") from e
        if arr.dtype.kind not in "biufc" or arr.dtype.fields is not None:
            return ["bytes", self.buffer(v.tobytes())]
        return ["memoryview", self.array(arr)]

    def pyarray(self, v: array.array) -> list[Any]:
        if v.typecode not in _ARRAY_TYPECODES:
            return ["list", [self.encode(x, 1) for x in v.tolist()]]
        arr = np.frombuffer(v, dtype=v.typecode) if len(v) else np.zeros(0, dtype=v.typecode)
        return ["array", v.typecode, arr.dtype.str, self.buffer(arr.tobytes())]

    def scalar(self, v: np.generic) -> list[Any]:
        if v.dtype.kind not in _ARRAY_KINDS or v.dtype.fields is not None:
            raise EncodeError(f"numpy scalar of type {type(v).__name__} cannot be judged")
        arr = np.asarray(v, dtype=v.dtype)
        return ["npscalar", arr.dtype.str, arr.tobytes().hex()]

    def array(self, a: np.ndarray) -> list[Any]:
        if a.ndim > MAX_NDIM:
            raise EncodeError(f"a {a.ndim}-dimensional array cannot be judged")
        if a.dtype.kind == "O":
            items = [self.encode(x, 1) for x in a.ravel(order="C").tolist()]
            return ["ndobj", list(a.shape), items]
        if a.dtype.kind not in _ARRAY_KINDS or a.dtype.fields is not None or a.dtype.itemsize == 0:
            raise EncodeError(f"numpy array of dtype {a.dtype} cannot be judged")
        return ["nd", a.dtype.str, list(a.shape), self.buffer(np.ascontiguousarray(a).tobytes())]

    def sparse(self, m: Any) -> list[Any]:
        import scipy.sparse as sp

        if not sp.issparse(m):
            raise EncodeError(f"a value of type {type(m).__name__} cannot be judged")
        fmt = m.format
        if fmt not in _SPARSE_FORMATS or len(m.shape) != 2:
            raise EncodeError(f"sparse format {fmt!r} of shape {m.shape} cannot be judged")
        coo = m.tocoo()
        kind = "array" if isinstance(m, sp.sparray) else "matrix"
        parts = [self.array(np.asarray(x)) for x in (coo.data, coo.row, coo.col)]
        extra = list(m.blocksize) if fmt == "bsr" else None
        return ["sparse", fmt, kind, list(m.shape), parts, extra]

    def sympy(self, v: Any) -> list[Any]:
        import sympy

        if not isinstance(v, sympy.Basic):
            raise EncodeError(f"a value of type {type(v).__name__} cannot be judged")
        return ["sympy", self.sympy_node(v, sympy, 0)]

    def sympy_node(self, v: Any, sympy: Any, depth: int) -> list[Any]:
        """A sympy object as (class, args) in its true args order, so it rebuilds identically."""
        self.nodes += 1
        if depth > MAX_DEPTH or self.nodes > MAX_NODES:
            raise EncodeError("value nested too deeply or too large")
        if isinstance(v, sympy.Symbol) and type(v) is sympy.Symbol:
            assumptions = {k: bool(x) for k, x in v._assumptions_orig.items() if x is not None}
            return ["Symbol", v.name, assumptions]
        if isinstance(v, sympy.Integer):
            return ["Integer", _int_text(int(v))]
        if isinstance(v, sympy.Rational):
            return ["Rational", _int_text(int(v.p)), _int_text(int(v.q))]
        if isinstance(v, sympy.Float):
            return ["Float", str(v), int(v._prec)]
        if not v.args:
            return ["S", type(v).__name__]
        return ["call", v.func.__name__, [self.sympy_node(a, sympy, depth + 1) for a in v.args]]


# ---------------------------------------------------------------------------------------------
# Decoding (runs on the trusted side)
# ---------------------------------------------------------------------------------------------


class DecodeBudget:
    """What decoding may still spend; one per probe stream, shared by every value decoded from it.

    Raises `DecodeError` (through its `charge_*` methods) once a cap is exceeded.
    """

    def __init__(
        self,
        *,
        max_bytes: int = MAX_DECODED_BYTES,
        max_nodes: int = MAX_NODES,
        max_sympy_nodes: int = MAX_SYMPY_NODES,
        max_big_int_bits: int = MAX_BIG_INT_BITS,
        cpu_seconds: float = DECODE_CPU_SECONDS,
    ) -> None:
        self.bytes_left = max_bytes
        self.nodes_left = max_nodes
        self.sympy_left = max_sympy_nodes
        self.big_int_bits_left = max_big_int_bits
        self.max_bytes = max_bytes
        self.deadline = time.thread_time() + cpu_seconds
        self._tick = 0

    @classmethod
    def for_probe(cls, max_probe_bytes: int) -> DecodeBudget:
        """The budget of a stream read with `FrameReader(max_bytes=max_probe_bytes)`."""
        return cls(max_bytes=max(MAX_DECODED_BYTES, EXPANSION_FACTOR * max_probe_bytes))

    def check_time(self) -> None:
        """Fail once the judging thread has used its CPU time."""
        if time.thread_time() > self.deadline:
            raise DecodeError(f"decoding the recorded values took over {DECODE_CPU_SECONDS:.0f} s of CPU time")

    def charge_nodes(self, n: int = 1) -> None:
        """Count `n` value nodes (and look at the clock now and then)."""
        self.nodes_left -= n
        if self.nodes_left < 0:
            raise DecodeError(f"the recorded values have more than {MAX_NODES} parts")
        self._tick += n
        if self._tick >= 4096:
            self._tick = 0
            self.check_time()

    def charge_bytes(self, n: int, what: str = "the recorded values") -> None:
        """Count `n` bytes of decoded data, or of what a value expands to when compared."""
        if n > self.bytes_left:
            raise DecodeError(f"{what} would take more than the {self.max_bytes >> 20} MiB allowed to decoded values")
        self.bytes_left -= n

    def charge_sympy(self) -> None:
        """Count one sympy node."""
        self.sympy_left -= 1
        if self.sympy_left < 0:
            raise DecodeError(f"the recorded sympy values have more than {MAX_SYMPY_NODES} nodes")
        self.charge_nodes()

    def charge_int(self, bits: int) -> None:
        """Count an integer of `bits` bits."""
        if bits > MAX_INT_BITS:
            raise DecodeError(f"an integer of {bits} bits is too large (limit {MAX_INT_BITS})")
        if bits > 64:
            self.big_int_bits_left -= bits
            if self.big_int_bits_left < 0:
                raise DecodeError(f"the recorded integers wider than 64 bits exceed {MAX_BIG_INT_BITS} bits in all")


def parse_int(text: Any, budget: DecodeBudget) -> int:
    """An integer from its encoded text ("0x…" hex as encoded, or decimal), within the caps.

    Raises:
        DecodeError: not such a text, or too large.
    """
    if type(text) is not str or not text or len(text) > MAX_INT_BITS // 3 + 8:
        raise DecodeError("malformed integer")
    body = text[1:] if text[0] == "-" else text
    try:
        value = int(text, 16) if body[:2] in ("0x", "0X") else int(text, 10)
    except ValueError as e:
        raise DecodeError(f"malformed integer: {e}") from e
    budget.charge_int(value.bit_length())
    return value


class FrameReader:
    """Parses a probe stream into frames: (header, buffers) pairs, strictly bounded.

    Besides the stream's size (`max_bytes`), the number of frames, of buffers and of JSON values
    in the headers are capped (the module constants by default), so that a hostile stream cannot
    make parsing use much more time or memory than its size.
    """

    def __init__(
        self,
        data: bytes,
        *,
        max_bytes: int,
        max_frames: int = MAX_FRAMES,
        max_buffers: int = MAX_BUFFERS,
        max_header_tokens: int = MAX_HEADER_TOKENS,
    ) -> None:
        if len(data) > max_bytes:
            raise DecodeError(f"probe output of {len(data)} bytes exceeds the limit of {max_bytes}")
        self.data = memoryview(data)
        self.pos = 0
        self.frames_left = max_frames
        self.buffers_left = max_buffers
        self.tokens_left = max_header_tokens

    def frames(self) -> list[tuple[dict[str, Any], list[bytes]]]:
        """Every complete frame; a truncated trailing frame (a killed writer) is dropped.

        Raises:
            DecodeError: a malformed frame, or one beyond the caps.
        """
        out = []
        while self.pos < len(self.data):
            frame = self._next()
            if frame is None:
                break
            out.append(frame)
        return out

    def _take(self, n: int) -> bytes | None:
        if n < 0 or self.pos + n > len(self.data):
            return None
        chunk = bytes(self.data[self.pos : self.pos + n])
        self.pos += n
        return chunk

    def _next(self) -> tuple[dict[str, Any], list[bytes]] | None:
        start = self.pos
        magic = self._take(4)
        if magic is None:
            return None
        if magic != MAGIC:
            raise DecodeError(f"bad frame marker at byte {start}")
        self.frames_left -= 1
        if self.frames_left < 0:
            raise DecodeError(f"the probe holds more than {MAX_FRAMES} frames")
        raw = self._take(4)
        body = self._take(struct.unpack("<I", raw)[0]) if raw else None
        raw_count = self._take(4) if body is not None else None
        if raw_count is None:
            return None
        count = struct.unpack("<I", raw_count)[0]
        if count > len(self.data) - self.pos:  # each buffer takes at least 8 bytes
            return None
        self.buffers_left -= count
        if self.buffers_left < 0:
            raise DecodeError(f"the probe holds more than {MAX_BUFFERS} buffers")
        buffers = []
        for _ in range(count):
            raw_len = self._take(8)
            buf = self._take(struct.unpack("<Q", raw_len)[0]) if raw_len else None
            if buf is None:
                return None
            buffers.append(buf)
        assert body is not None
        # An upper bound on the JSON values the body parses into, before parsing it.
        tokens = body.count(b"[") + body.count(b"{") + body.count(b",") + body.count(b":") + 1
        self.tokens_left -= tokens
        if self.tokens_left < 0:
            raise DecodeError(f"the probe's frame headers hold more than {MAX_HEADER_TOKENS} values")
        try:
            header = json.loads(body.decode("utf-8"))
        except (ValueError, RecursionError) as e:  # also UnicodeDecodeError, JSONDecodeError
            raise DecodeError(f"unreadable frame header at byte {start}: {_short(e)}") from e
        if not isinstance(header, dict):
            raise DecodeError(f"frame header at byte {start} is not an object")
        return header, buffers


def decode_value(node: Any, buffers: list[bytes], budget: DecodeBudget | None = None) -> Any:
    """Rebuild a value from its encoded tree.

    `budget` is shared by all values of one stream; without one, this value gets a fresh one.

    Raises:
        DecodeError: the tree is malformed, too deep, beyond the budget, or names a type outside
            the allowed set.
    """
    budget = budget if budget is not None else DecodeBudget()
    budget.check_time()
    try:
        return _Decoder(buffers, budget).decode(node, 0)
    except DecodeError:
        raise
    except (RecursionError, MemoryError) as e:  # not expected within the caps; fail closed anyway
        raise DecodeError(f"the recorded value cannot be decoded ({type(e).__name__})") from e


_DECODED_TYPES = {"list": list, "tuple": tuple, "set": set, "frozenset": frozenset}
_MALFORMED = (IndexError, TypeError, ValueError, OverflowError, KeyError, AttributeError, ArithmeticError)


class _Decoder:
    def __init__(self, buffers: list[bytes], budget: DecodeBudget) -> None:
        self.buffers = buffers
        self.budget = budget

    def buf(self, index: Any) -> bytes:
        if type(index) is not int or not 0 <= index < len(self.buffers):
            raise DecodeError(f"bad buffer reference {_short(index)}")
        data = self.buffers[index]
        self.budget.charge_bytes(len(data))
        return data

    def decode(self, node: Any, depth: int) -> Any:
        self.budget.charge_nodes()
        if depth > MAX_DEPTH + 2:
            raise DecodeError("value nested too deeply")
        if type(node) is not list or not node or type(node[0]) is not str:
            raise DecodeError(f"malformed value node {_short(node)}")
        tag, args = node[0], node[1:]
        try:
            value = self.dispatch(tag, args, depth)
        except DecodeError:
            raise
        except _MALFORMED as e:
            raise DecodeError(f"malformed {tag[:20]!r} value: {_short(e)}") from e
        if value is _UNKNOWN:
            raise DecodeError(f"unknown value tag {tag[:20]!r}")
        return value

    def dispatch(self, tag: str, args: list[Any], depth: int) -> Any:
        if tag == "none":
            return None
        if tag == "ellipsis":
            return Ellipsis
        if tag == "bool":
            return _expect(args[0], bool)
        if tag == "int":
            return parse_int(args[0], self.budget)
        if tag == "float":
            return float.fromhex(self.text(args[0]))
        if tag == "complex":
            return complex(float.fromhex(self.text(args[0])), float.fromhex(self.text(args[1])))
        if tag == "str":
            return self.text(args[0])
        if tag == "bytes":
            return self.buf(args[0])
        if tag in _DECODED_TYPES:
            items = self.items(args[0], depth)
            if tag in ("set", "frozenset"):
                _check_hashes(items)
            return _DECODED_TYPES[tag](items)
        if tag in ("floats", "ints"):
            return self.packed(tag, args[0], args[1])
        if tag in ("dict", "odict", "counter"):
            mapping = dict(self.pairs(args[0], depth))
            return {"dict": dict, "odict": collections.OrderedDict, "counter": collections.Counter}[tag](mapping)
        if tag == "defaultdict":
            name = args[0]
            if name is not None and name not in _FACTORIES:
                raise DecodeError(f"defaultdict factory {_short(name)} is not allowed")
            return collections.defaultdict(_FACTORIES.get(name), self.pairs(args[1], depth))
        if tag == "deque":
            maxlen = args[1]
            if maxlen is not None and (type(maxlen) is not int or maxlen < 0):
                raise DecodeError("malformed deque length")
            return collections.deque(self.items(args[0], depth), maxlen)
        if tag == "range":
            return self.range(args[:3])
        if tag == "slice":
            return slice(*(self.decode(a, depth + 1) for a in args[:3]))
        if tag == "fraction":
            return fractions.Fraction(parse_int(args[0], self.budget), parse_int(args[1], self.budget))
        if tag == "decimal":
            return self.decimal(args[0])
        if tag == "npscalar":
            payload = args[1]
            data = self.hex(payload) if type(payload) is str else self.buf(payload)
            return self.ndarray(args[0], [], data)[()]
        if tag == "nd":
            return self.ndarray(args[0], args[1], self.buf(args[2]))
        if tag == "ndobj":
            return self.object_array(args[0], args[1], depth)
        if tag == "matrix":
            inner = self.decode(args[0], depth + 1)
            if type(inner) is not np.ndarray or inner.ndim != 2:
                raise DecodeError("malformed numpy matrix")
            return inner.view(np.matrix)  # np.matrix(…) would warn that the class is deprecated
        if tag == "memoryview":
            inner = self.decode(args[0], depth + 1)
            if type(inner) is not np.ndarray or inner.dtype.kind not in "biufc":
                raise DecodeError("malformed memoryview")
            return memoryview(inner)  # type: ignore[arg-type]  # numpy arrays export the buffer protocol
        if tag == "array":
            return self.pyarray(args[0], args[1], args[2])
        if tag == "sparse":
            return self.sparse(*args[:5], depth=depth)
        if tag == "sympy":
            from scicode.sympy_safe import build_sympy

            return build_sympy(args[0], budget=self.budget)
        return _UNKNOWN

    def text(self, value: Any) -> str:
        text = _expect(value, str)
        self.budget.charge_bytes(len(text))
        return text

    def hex(self, value: Any) -> bytes:
        return bytes.fromhex(self.text(value))

    def items(self, value: Any, depth: int) -> list[Any]:
        nodes = _expect(value, list)
        self.budget.charge_bytes(8 * len(nodes))
        return [self.decode(x, depth + 1) for x in nodes]

    def pairs(self, value: Any, depth: int) -> list[tuple[Any, Any]]:
        nodes = _expect(value, list)
        self.budget.charge_bytes(16 * len(nodes))
        pairs = []
        for pair in nodes:
            if type(pair) is not list or len(pair) != 2:
                raise DecodeError("malformed dict entry")
            pairs.append((self.decode(pair[0], depth + 1), self.decode(pair[1], depth + 1)))
        _check_hashes([k for k, _ in pairs])
        return pairs

    def packed(self, tag: str, container: Any, index: Any) -> Any:
        if container not in ("list", "tuple"):
            raise DecodeError(f"malformed packed {tag}")
        data = self.buf(index)
        if len(data) % 8:
            raise DecodeError(f"packed {tag} of {len(data)} bytes")
        self.budget.charge_bytes(4 * len(data), "a packed list")  # a Python number and a pointer per 8 bytes
        values = array.array("d" if tag == "floats" else "q")
        if values.itemsize != 8:
            raise DecodeError("this platform cannot decode packed values")
        values.frombytes(data)
        return values.tolist() if container == "list" else tuple(values.tolist())

    def range(self, args: list[Any]) -> range:
        if len(args) != 3:
            raise DecodeError("malformed range")
        if all(type(a) is int for a in args):  # an older encoding: JSON numbers
            bounds = args
            for a in bounds:
                self.budget.charge_int(a.bit_length())
        else:
            bounds = [parse_int(a, self.budget) for a in args]
        r = range(*bounds)
        try:
            length = len(r)
        except OverflowError:
            length = 1 << 64
        # Nothing is allocated yet, but comparing a range (np.allclose, ==) with an array makes one.
        self.budget.charge_bytes(8 * length, f"a range of {length} elements")
        return r

    def decimal(self, value: Any) -> decimal.Decimal:
        text = self.text(value)
        if len(text) > 10_000:
            raise DecodeError("decimal literal too long")
        d = decimal.Decimal(text)
        if d.is_finite() and abs(d.adjusted()) > MAX_DECIMAL_EXPONENT:
            raise DecodeError("decimal exponent out of range")
        return d

    def ndarray(self, dtype_str: Any, shape: Any, data: bytes) -> np.ndarray:
        text = _expect(dtype_str, str)
        if len(text) > 32:
            raise DecodeError("malformed dtype")
        dtype = np.dtype(text)
        if (
            dtype.kind not in _ARRAY_KINDS
            or dtype.fields is not None
            or dtype.subdtype is not None
            or dtype.itemsize == 0
        ):
            raise DecodeError(f"dtype {text!r} is not allowed")
        dims = self.dims(shape)
        if math.prod(dims) * dtype.itemsize != len(data):
            raise DecodeError(f"array of shape {dims} and dtype {dtype} does not match {len(data)} bytes")
        return np.frombuffer(data, dtype=dtype).reshape(dims).copy()

    @staticmethod
    def dims(shape: Any) -> tuple[int, ...]:
        dims = tuple(_expect(d, int) for d in _expect(shape, list))
        if len(dims) > MAX_NDIM or any(d < 0 or d >= 1 << 62 for d in dims):
            raise DecodeError(f"bad array shape {_short(list(dims))}")
        return dims

    def object_array(self, shape: Any, items: Any, depth: int) -> np.ndarray:
        dims = self.dims(shape)
        nodes = _expect(items, list)
        if math.prod(dims) != len(nodes):
            raise DecodeError(f"object array of shape {_short(list(dims))} has {len(nodes)} items")
        values = self.items(nodes, depth)
        out = np.empty(len(values), dtype=object)
        for i, v in enumerate(values):
            out[i] = v
        return out.reshape(dims)

    def pyarray(self, typecode: Any, dtype_str: Any, index: Any) -> array.array:
        if typecode not in _ARRAY_TYPECODES:
            raise DecodeError(f"array typecode {_short(typecode)} is not allowed")
        dtype = np.dtype(_expect(dtype_str, str))
        native = np.dtype(typecode)
        data = self.buf(index)
        if dtype.kind != native.kind or dtype.itemsize == 0 or len(data) % dtype.itemsize:
            raise DecodeError("malformed array.array")
        values = np.frombuffer(data, dtype=dtype)
        converted = values.astype(native)
        if not np.array_equal(converted, values, equal_nan=native.kind == "f"):
            raise DecodeError("array.array values do not fit its type code")
        out = array.array(typecode)
        out.frombytes(converted.tobytes())
        return out

    def sparse(self, fmt: Any, kind: Any, shape: Any, parts: Any, extra: Any, *, depth: int) -> Any:
        import scipy.sparse as sp

        if fmt not in _SPARSE_FORMATS or kind not in ("matrix", "array"):
            raise DecodeError(f"sparse {_short(fmt)}/{_short(kind)} is not allowed")
        dims = self.dims(shape)
        nodes = _expect(parts, list)
        if len(dims) != 2 or len(nodes) != 3 or any(type(p) is not list or p[:1] != ["nd"] for p in nodes):
            raise DecodeError("malformed sparse value")
        data, row, col = (self.decode(p, depth + 1) for p in nodes)
        if data.dtype.kind not in "biufc" or row.dtype.kind not in "iu" or col.dtype.kind not in "iu":
            raise DecodeError("sparse components must be numeric data and integer indices")
        if not data.ndim == row.ndim == col.ndim == 1:
            raise DecodeError("sparse components must be integer-indexed vectors")
        if not len(data) == len(row) == len(col):
            raise DecodeError("sparse components of different lengths")
        if len(row) and (min(row.min(), col.min()) < 0 or row.max() >= dims[0] or col.max() >= dims[1]):
            raise DecodeError("sparse index out of range")
        blocksize = None
        if fmt == "bsr":
            blocksize = tuple(_expect(b, int) for b in _expect(extra, list))
            if len(blocksize) != 2 or min(blocksize) < 1 or dims[0] % blocksize[0] or dims[1] % blocksize[1]:
                raise DecodeError("malformed bsr block size")
        self.budget.charge_bytes(self.sparse_cost(fmt, dims, data, row, col, blocksize), f"a sparse {fmt} value")
        coo = getattr(sp, f"coo_{kind}")((data, (row, col)), shape=dims)
        if fmt == "bsr":
            return getattr(sp, f"bsr_{kind}")(coo, blocksize=blocksize)
        return getattr(sp, f"{fmt}_{kind}")(coo)

    @staticmethod
    def sparse_cost(
        fmt: str, dims: tuple[int, ...], data: np.ndarray, row: np.ndarray, col: np.ndarray, blocksize: Any
    ) -> int:
        """Bytes a sparse value takes in its format plus as a dense array (the comparison helpers make one).

        A 100-byte record of a lil matrix of 10^9 rows would otherwise decode into 10^9 lists.
        """
        rows, cols = dims
        itemsize = max(data.dtype.itemsize, 1)
        nnz = len(data)
        cost = rows * cols * itemsize + nnz * (itemsize + 16)
        if fmt == "lil":
            cost += rows * 128  # two Python lists per row
        elif fmt in ("csr", "csc", "bsr"):
            cost += (max(rows, cols) + 1) * 8
        elif fmt == "dok":
            cost += nnz * 128
        elif fmt == "dia" and nnz:
            offsets = len(np.unique(col.astype(np.int64) - row.astype(np.int64)))
            cost += offsets * cols * itemsize
        elif fmt == "bsr" and nnz:
            r, c = blocksize
            blocks = len(np.unique((row.astype(np.int64) // r) * (cols // c + 1) + col.astype(np.int64) // c))
            cost += blocks * r * c * itemsize
        return cost


_UNKNOWN = object()


def _check_hashes(keys: list[Any]) -> None:
    """Refuse keys crafted to collide (building the set or dict would take quadratic time)."""
    if len(keys) <= MAX_SAME_HASH:
        return
    counts = collections.Counter(hash(k) for k in keys)
    if max(counts.values()) > MAX_SAME_HASH:
        raise DecodeError("the recorded set or dict has keys crafted to collide")


def _expect(value: Any, kind: type) -> Any:
    if type(value) is not kind:
        raise DecodeError(f"expected {kind.__name__}, got {type(value).__name__}")
    return value


def _short(value: Any) -> str:
    """A short description of a value from a hostile tree, never the whole of it."""
    if isinstance(value, BaseException):
        return type(value).__name__ + ": " + _short_text(value)
    if value is None or isinstance(value, (bool, int, float)):
        text = repr(value) if not isinstance(value, int) or value.bit_length() < 256 else "a huge integer"
        return text
    if isinstance(value, str):
        return repr(value[:40]) + ("…" if len(value) > 40 else "")
    return f"a {type(value).__name__}" + (f" of {len(value)}" if isinstance(value, (list, dict)) else "")


def _short_text(e: BaseException) -> str:
    try:
        text = str(e)
    except Exception:  # noqa: BLE001 - a message that cannot be formatted
        return "(no message)"
    return text[:200]
