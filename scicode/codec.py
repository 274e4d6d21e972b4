"""A data-only encoding of the values a step program computes, for the trusted side to judge.

The sandbox encodes (`encode_frame`), the trusted process decodes (`FrameReader`). Only plain data
crosses: None, bool, int, float, complex, str, bytes, numpy scalars and arrays of numeric, bool,
string or datetime dtypes (object arrays element by element), list, tuple, set, frozenset, dict,
range, slice, scipy.sparse matrices and arrays, and a small set of sympy atoms and expressions.
Never pickle. Decoding rebuilds values of exactly those types, so a comparison on the trusted side
behaves as it would have on the values themselves, while anything a model could hide behavior in
(a custom `__eq__`, `__array__`, `__bool__`…) is gone: such objects are either converted to their
plain base type in the sandbox or refused there, and a refused value fails the step.

Frame layout: b"SCP1", u32 header length, header (UTF-8 JSON), u32 buffer count, then each buffer
as u64 length + bytes. Every field is bounds-checked on decode.

This module runs inside the sandbox: it imports only the standard library and numpy at import
time (scipy and sympy lazily, when a value needs them).
"""

from __future__ import annotations

import json
import struct
from typing import Any

import numpy as np

MAGIC = b"SCP1"
MAX_DEPTH = 64
MAX_NODES = 2_000_000
_ARRAY_KINDS = frozenset("biufcUSMm")
_SPARSE_FORMATS = ("csr", "csc", "coo", "bsr", "dia", "lil", "dok")


class EncodeError(ValueError):
    """A value that cannot be sent as data (an unknown object, a cycle, too deep)."""


class DecodeError(ValueError):
    """A malformed frame: the sandbox output is not trustworthy."""


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
        try:
            return {"v": _Encoder(buffers).encode(obj.value, 0)}
        except EncodeError as e:
            return {"unencodable": str(e)}
        except RecursionError:
            return {"unencodable": "value nested too deeply"}
    if isinstance(obj, dict):
        return {k: _encode_header(v, buffers) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_encode_header(v, buffers) for v in obj]
    return obj


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
        if isinstance(v, np.ndarray):
            return self.array(np.asarray(v))
        if isinstance(v, bool):  # a bool subclass cannot exist; kept for clarity of order
            return ["bool", bool(v)]
        if isinstance(v, int):
            return ["int", str(int.__index__(v))]
        if isinstance(v, float):
            return ["float", float.hex(float(v))]
        if isinstance(v, complex):
            c = complex(v)
            return ["complex", float.hex(c.real), float.hex(c.imag)]
        if isinstance(v, str):
            return ["str", str.__str__(v)]
        if isinstance(v, (bytes, bytearray, memoryview)):
            return ["bytes", self.buffer(bytes(v))]
        if isinstance(v, tuple):
            return ["tuple", [self.encode(x, depth + 1) for x in tuple.__iter__(v)]]
        if isinstance(v, list):
            return ["list", [self.encode(x, depth + 1) for x in list.__iter__(v)]]
        if isinstance(v, dict):
            return ["dict", [[self.encode(k, depth + 1), self.encode(x, depth + 1)] for k, x in dict.items(v)]]
        if isinstance(v, frozenset):
            return ["frozenset", [self.encode(x, depth + 1) for x in frozenset.__iter__(v)]]
        if isinstance(v, set):
            return ["set", [self.encode(x, depth + 1) for x in set.__iter__(v)]]
        if isinstance(v, range):
            return ["range", v.start, v.stop, v.step]
        if isinstance(v, slice):
            return ["slice", *(self.encode(x, depth + 1) for x in (v.start, v.stop, v.step))]
        module = t.__module__ or ""
        if module.startswith("scipy.sparse"):
            return self.sparse(v)
        if module.startswith("sympy"):
            return self.sympy(v)
        raise EncodeError(f"a value of type {module}.{t.__qualname__} cannot be judged")

    def scalar(self, v: np.generic) -> list[Any]:
        if v.dtype.kind not in _ARRAY_KINDS or v.dtype.fields is not None:
            raise EncodeError(f"numpy scalar of type {type(v).__name__} cannot be judged")
        arr = np.asarray(v, dtype=v.dtype)
        return ["npscalar", arr.dtype.str, self.buffer(arr.tobytes())]

    def array(self, a: np.ndarray) -> list[Any]:
        if a.dtype.kind == "O":
            items = [self.encode(x, 1) for x in a.ravel(order="C").tolist()]
            return ["ndobj", list(a.shape), items]
        if a.dtype.kind not in _ARRAY_KINDS or a.dtype.fields is not None:
            raise EncodeError(f"numpy array of dtype {a.dtype} cannot be judged")
        return ["nd", a.dtype.str, list(a.shape), self.buffer(np.ascontiguousarray(a).tobytes())]

    def sparse(self, m: Any) -> list[Any]:
        import scipy.sparse as sp

        if not sp.issparse(m):
            raise EncodeError(f"a value of type {type(m).__name__} cannot be judged")
        fmt = m.format
        if fmt not in _SPARSE_FORMATS:
            raise EncodeError(f"sparse format {fmt!r} cannot be judged")
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
            return ["Integer", str(int(v))]
        if isinstance(v, sympy.Rational):
            return ["Rational", str(v.p), str(v.q)]
        if isinstance(v, sympy.Float):
            return ["Float", str(v), int(v._prec)]
        if not v.args:
            return ["S", type(v).__name__]
        return ["call", v.func.__name__, [self.sympy_node(a, sympy, depth + 1) for a in v.args]]


# ---------------------------------------------------------------------------------------------
# Decoding (runs on the trusted side)
# ---------------------------------------------------------------------------------------------


class FrameReader:
    """Parses a probe stream into frames: (header, decode) pairs, strictly bounded."""

    def __init__(self, data: bytes, *, max_bytes: int) -> None:
        if len(data) > max_bytes:
            raise DecodeError(f"probe output of {len(data)} bytes exceeds the limit of {max_bytes}")
        self.data = memoryview(data)
        self.pos = 0

    def frames(self) -> list[tuple[dict[str, Any], list[bytes]]]:
        """Every complete frame; a truncated trailing frame (a killed writer) is dropped."""
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
        raw = self._take(4)
        body = self._take(struct.unpack("<I", raw)[0]) if raw else None
        raw_count = self._take(4) if body is not None else None
        if raw_count is None:
            return None
        buffers = []
        for _ in range(struct.unpack("<I", raw_count)[0]):
            raw_len = self._take(8)
            buf = self._take(struct.unpack("<Q", raw_len)[0]) if raw_len else None
            if buf is None:
                return None
            buffers.append(buf)
        assert body is not None
        try:
            header = json.loads(body.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise DecodeError(f"unreadable frame header at byte {start}: {e}") from e
        if not isinstance(header, dict):
            raise DecodeError(f"frame header at byte {start} is not an object")
        return header, buffers


def decode_value(node: Any, buffers: list[bytes]) -> Any:
    """Rebuild a value from its encoded tree.

    Raises:
        DecodeError: the tree is malformed, too deep, or names a type outside the allowed set.
    """
    return _Decoder(buffers).decode(node, 0)


class _Decoder:
    def __init__(self, buffers: list[bytes]) -> None:
        self.buffers = buffers
        self.nodes = 0

    def buf(self, index: Any) -> bytes:
        if not isinstance(index, int) or not 0 <= index < len(self.buffers):
            raise DecodeError(f"bad buffer reference {index!r}")
        return self.buffers[index]

    def decode(self, node: Any, depth: int) -> Any:
        self.nodes += 1
        if depth > MAX_DEPTH + 2 or self.nodes > MAX_NODES:
            raise DecodeError("value nested too deeply or too large")
        if not isinstance(node, list) or not node or not isinstance(node[0], str):
            raise DecodeError(f"malformed value node {str(node)[:80]!r}")
        tag, args = node[0], node[1:]
        try:
            if tag == "none":
                return None
            if tag == "ellipsis":
                return Ellipsis
            if tag == "bool":
                return _expect(args[0], bool)
            if tag == "int":
                return int(_expect(args[0], str))
            if tag == "float":
                return float.fromhex(_expect(args[0], str))
            if tag == "complex":
                return complex(float.fromhex(args[0]), float.fromhex(args[1]))
            if tag == "str":
                return _expect(args[0], str)
            if tag == "bytes":
                return self.buf(args[0])
            if tag in ("list", "tuple", "set", "frozenset"):
                items = [self.decode(x, depth + 1) for x in _expect(args[0], list)]
                return {"list": list, "tuple": tuple, "set": set, "frozenset": frozenset}[tag](items)
            if tag == "dict":
                return {self.decode(k, depth + 1): self.decode(v, depth + 1) for k, v in _expect(args[0], list)}
            if tag == "range":
                return range(*(_expect(a, int) for a in args[:3]))
            if tag == "slice":
                return slice(*(self.decode(a, depth + 1) for a in args[:3]))
            if tag == "npscalar":
                return self.ndarray(args[0], [], args[1])[()]
            if tag == "nd":
                return self.ndarray(args[0], args[1], args[2])
            if tag == "ndobj":
                return self.object_array(args[0], args[1], depth)
            if tag == "sparse":
                return self.sparse(*args[:5], depth=depth)
            if tag == "sympy":
                from scicode.sympy_safe import build_sympy

                return build_sympy(args[0])
        except DecodeError:
            raise
        except (IndexError, TypeError, ValueError, OverflowError, KeyError) as e:
            raise DecodeError(f"malformed {tag!r} value: {e}") from e
        raise DecodeError(f"unknown value tag {tag!r}")

    def ndarray(self, dtype_str: Any, shape: Any, index: Any) -> np.ndarray:
        dtype = np.dtype(_expect(dtype_str, str))
        if dtype.kind not in _ARRAY_KINDS or dtype.fields is not None or dtype.subdtype is not None:
            raise DecodeError(f"dtype {dtype_str!r} is not allowed")
        dims = tuple(_expect(d, int) for d in _expect(shape, list))
        if any(d < 0 for d in dims):
            raise DecodeError(f"negative dimension in shape {dims}")
        data = self.buf(index)
        count = int(np.prod(dims, dtype=np.int64)) if dims else 1
        if count * dtype.itemsize != len(data):
            raise DecodeError(f"array of shape {dims} and dtype {dtype} does not match {len(data)} bytes")
        return np.frombuffer(data, dtype=dtype).reshape(dims).copy()

    def object_array(self, shape: Any, items: Any, depth: int) -> np.ndarray:
        dims = tuple(_expect(d, int) for d in _expect(shape, list))
        values = [self.decode(x, depth + 1) for x in _expect(items, list)]
        count = int(np.prod(dims, dtype=np.int64)) if dims else 1
        if count != len(values):
            raise DecodeError(f"object array of shape {dims} has {len(values)} items")
        out = np.empty(count, dtype=object)
        for i, v in enumerate(values):
            out[i] = v
        return out.reshape(dims)

    def sparse(self, fmt: Any, kind: Any, shape: Any, parts: Any, extra: Any, *, depth: int) -> Any:
        import scipy.sparse as sp

        if fmt not in _SPARSE_FORMATS or kind not in ("matrix", "array"):
            raise DecodeError(f"sparse {fmt!r}/{kind!r} is not allowed")
        data, row, col = (self.decode(p, depth + 1) for p in _expect(parts, list))
        dims = tuple(_expect(d, int) for d in _expect(shape, list))
        if not all(isinstance(x, np.ndarray) for x in (data, row, col)) or row.dtype.kind not in "iu":
            raise DecodeError("sparse components must be integer-indexed arrays")
        cls = getattr(sp, f"{fmt}_{kind}")
        coo = getattr(sp, f"coo_{kind}")((data, (row, col)), shape=dims)
        if fmt == "bsr":
            return cls(coo, blocksize=tuple(_expect(extra, list)))
        return cls(coo)


def _expect(value: Any, kind: type) -> Any:
    if type(value) is not kind:
        raise DecodeError(f"expected {kind.__name__}, got {type(value).__name__}")
    return value
