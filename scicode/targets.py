"""Targets in the official `test_data.h5` layout: reading one step at a time, and writing.

Layout: `/<step_id>/test<k>/var<j>`. A tuple target is split into `var1..varN`, anything else is
`var1`; a test that never uses `target` has an empty group. Each value is stored by type as the
official writer stores it, and read back as the official decoder (`process_hdf5_to_tuple`) reads
it, quirks included: rectangular lists come back as arrays, ragged ones as lists in HDF5 name
order (so 10+ items come back as var1, var10, var11, var2, ...), dict keys that parse as floats
become floats, sub-groups of a dict are read as sparse matrices, csc is read as csr, and values of
other types (None, float32, sympy) are stored as their `str`.

Nothing here loads a whole file: `H5Targets.load` opens the file, reads one step's groups and
closes it, so memory stays flat however large the file is.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from scicode.errors import TargetsError

#: Marks a test that has no target (an empty group).
NO_TARGET: tuple = ()


class TargetStore(Protocol):
    """Gives the targets of a step, one value per test case."""

    def load(self, step_id: str, n_tests: int) -> list[Any]:
        """Targets of `step_id`'s first `n_tests` tests.

        Raises:
            TargetsError: the step or one of its tests is not in the store.
        """
        ...

    def has(self, step_id: str) -> bool:
        """True when the store holds this step."""
        ...


class H5Targets:
    """Targets read from a file in the official layout."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self._step_ids: frozenset[str] | None = None

    def has(self, step_id: str) -> bool:
        """True when the file holds this step's group."""
        if self._step_ids is None:
            if not self.path.is_file():
                return False
            import h5py

            # Read once: the file does not change under a run, and `has` is asked for every step.
            with h5py.File(self.path, "r") as f:
                self._step_ids = frozenset(f.keys())
        return step_id in self._step_ids

    def load(self, step_id: str, n_tests: int) -> list[Any]:
        """Targets of `step_id`, decoded as the official decoder does."""
        import h5py

        try:
            with h5py.File(self.path, "r") as f:
                return [_read_test(f, f"{step_id}/test{k + 1}") for k in range(n_tests)]
        except KeyError as e:
            raise TargetsError(f"{self.path} has no targets for step {step_id} ({e})") from e
        except OSError as e:
            raise TargetsError(f"cannot read targets file {self.path}: {e}") from e


class StepFileTargets:
    """Targets stored one file per step (`<dir>/<step_id>.h5`), each in the official layout."""

    def __init__(self, directory: Path) -> None:
        self.directory = Path(directory)

    def path(self, step_id: str) -> Path:
        """The file holding one step."""
        return self.directory / f"{step_id}.h5"

    def has(self, step_id: str) -> bool:
        """True when this step's file exists."""
        return self.path(step_id).is_file()

    def load(self, step_id: str, n_tests: int) -> list[Any]:
        """Targets of `step_id`."""
        if not self.has(step_id):
            raise TargetsError(f"no targets for step {step_id} in {self.directory}")
        return H5Targets(self.path(step_id)).load(step_id, n_tests)

    def save(self, step_id: str, targets: Sequence[Any]) -> None:
        """Write one step's targets atomically (concurrent writers of the same step are harmless)."""
        self.directory.mkdir(parents=True, exist_ok=True)
        tmp = self.path(step_id).with_suffix(f".tmp{id(targets)}")
        write_step(tmp, step_id, targets)
        tmp.replace(self.path(step_id))


class ChainTargets:
    """The first store that has a step answers for it."""

    def __init__(self, stores: Sequence[TargetStore]) -> None:
        self.stores = list(stores)

    def has(self, step_id: str) -> bool:
        """True when any store holds the step."""
        return any(s.has(step_id) for s in self.stores)

    def load(self, step_id: str, n_tests: int) -> list[Any]:
        """Targets from the first store holding the step."""
        for store in self.stores:
            if store.has(step_id):
                return store.load(step_id, n_tests)
        raise TargetsError(f"no targets for step {step_id}")


def differences(a: Any, b: Any, *, rtol: float = 1e-5, atol: float = 1e-8, where: str = "") -> list[str]:
    """Where two decoded targets differ (empty when equal, numbers within np.allclose tolerances)."""
    import scipy.sparse as sp

    if sp.issparse(a) or sp.issparse(b):
        if not (sp.issparse(a) and sp.issparse(b)):
            return [f"{where}: sparse vs {type(b).__name__}"]
        return differences(a.toarray(), b.toarray(), rtol=rtol, atol=atol, where=where)
    if isinstance(a, dict) or isinstance(b, dict):
        if not (isinstance(a, dict) and isinstance(b, dict)) or a.keys() != b.keys():
            return [f"{where}: dicts with different keys"]
        return [d for k in a for d in differences(a[k], b[k], rtol=rtol, atol=atol, where=f"{where}[{k!r}]")]
    if isinstance(a, (list, tuple)) or isinstance(b, (list, tuple)):
        if type(a) is not type(b) or len(a) != len(b):
            return [f"{where}: {type(a).__name__}[{_len(a)}] vs {type(b).__name__}[{_len(b)}]"]
        return [
            d
            for i, (x, y) in enumerate(zip(a, b, strict=False))
            for d in differences(x, y, rtol=rtol, atol=atol, where=f"{where}[{i}]")
        ]
    if isinstance(a, str) or isinstance(b, str):
        return [] if a == b else [f"{where}: {a!r} vs {b!r}"]
    x, y = np.asarray(a), np.asarray(b)
    if x.shape != y.shape:
        return [f"{where}: shape {x.shape} vs {y.shape}"]
    try:
        close = np.allclose(x, y, rtol=rtol, atol=atol, equal_nan=True)
    except TypeError:
        close = bool(np.all(x == y))
    if close:
        return []
    diff = np.max(np.abs(x.astype(complex) - y.astype(complex))) if x.size else 0.0
    return [f"{where}: values differ (max |difference| {diff:.3g})"]


def _len(value: Any) -> int:
    return len(value) if hasattr(value, "__len__") else -1


# ---------------------------------------------------------------------------------------------
# Reading (the official decoder's rules)
# ---------------------------------------------------------------------------------------------


def _read_test(f: Any, path: str) -> Any:
    import h5py

    group = f[path]
    if not isinstance(group, h5py.Group):
        raise TargetsError(f"{path} is not a group")
    keys = list(group.keys())
    if len(keys) == 1:
        return _read_node(group[keys[0]])
    return tuple(_read_node(group[k]) for k in keys)


def _read_node(node: Any) -> Any:
    import h5py

    if isinstance(node, h5py.Dataset):
        return _read_dataset(node)
    first = next(iter(node.keys()), None)
    if first == "list":
        return [_read_dataset_or_group(node["list"][k]) for k in node["list"]]
    if first == "sparse_matrix":
        return _read_sparse(node["sparse_matrix"])
    return _read_dict(node)


def _read_dataset_or_group(node: Any) -> Any:
    import h5py

    return node[()] if isinstance(node, h5py.Dataset) else _read_node(node)


def _read_dataset(ds: Any) -> Any:
    value = ds[()]
    return value.decode("utf-8", errors="strict") if isinstance(value, bytes) else value


def _read_dict(group: Any) -> dict[Any, Any]:
    import h5py

    out: dict[Any, Any] = {}
    for key, obj in group.items():
        if isinstance(obj, h5py.Group):
            out[key] = _read_sparse(obj["sparse_matrix"])
            continue
        value = obj[()]
        if isinstance(value, bytes):
            out[key] = value.decode("utf-8", errors="strict")
            continue
        try:
            out[float(key)] = value
        except ValueError:
            out[key] = value
    return out


def _read_sparse(group: Any) -> Any:
    import scipy.sparse as sp

    data = group["data"][()]
    shape = tuple(group["shape"][()])
    if "row" in group and "col" in group:
        return sp.coo_matrix((data, (group["row"][()], group["col"][()])), shape=shape)
    if "blocksize" in group:
        return sp.bsr_matrix(
            (data, group["indices"][()], group["indptr"][()]), shape=shape, blocksize=tuple(group["blocksize"][()])
        )
    return sp.csr_matrix((data, group["indices"][()], group["indptr"][()]), shape=shape)


# ---------------------------------------------------------------------------------------------
# Writing (the official writer's rules)
# ---------------------------------------------------------------------------------------------


def write_step(path: Path, step_id: str, targets: Sequence[Any], *, mode: str = "w") -> None:
    """Write one step's targets (one value per test; `NO_TARGET` for a test without one)."""
    import h5py

    with h5py.File(path, mode) as f:
        step = f.require_group(step_id)
        for k, value in enumerate(targets):
            group = step.create_group(f"test{k + 1}")
            if isinstance(value, tuple):
                for j, item in enumerate(value):
                    _save(group, f"var{j + 1}", item)
            else:
                _save(group, "var1", value)


def _sparse_classes() -> tuple[type, ...]:
    import scipy.sparse as sp

    return (sp.csr_matrix, sp.csc_matrix, sp.bsr_matrix, sp.coo_matrix)


def _save(h5: Any, key: str, value: Any) -> None:
    if isinstance(value, dict):
        _save_dict(h5.create_group(key), value)
    elif isinstance(value, (list, tuple)):
        try:
            h5.create_dataset(key, data=np.array(value))
        except Exception:  # noqa: BLE001 - ragged or mixed: the official writer falls back to a list group
            if key in h5:
                del h5[key]
            group = h5.create_group(key).create_group("list")
            for i, item in enumerate(value):
                _save(group, f"var{i + 1}", item)
    elif isinstance(value, _sparse_classes()):
        _save_sparse(h5.create_group(key).create_group("sparse_matrix"), value)
    elif isinstance(value, (int, float, str, complex, bool, np.bool_, np.int_, np.ndarray)):
        h5.create_dataset(key, data=value)
    else:
        h5.create_dataset(key, data=str(value))


def _save_dict(group: Any, d: dict[Any, Any]) -> None:
    import sympy

    for key, value in d.items():
        name = str(key) if isinstance(key, (sympy.Symbol, np.floating)) else key
        if not isinstance(name, str):
            raise TargetsError(f"dict key {key!r} cannot be stored in the official layout (keys must be strings)")
        if isinstance(value, dict):
            _save_dict(group.create_group(name), value)
        elif isinstance(value, (list, tuple)):
            group.create_dataset(name, data=np.array(value))
        elif isinstance(value, (int, float, str, complex, bool, np.bool_, np.ndarray)):
            group.create_dataset(name, data=value)
        elif isinstance(value, _sparse_classes()):
            _save_sparse(group.create_group(name).create_group("sparse_matrix"), value)
        else:
            group.create_dataset(name, data=str(value))


def _save_sparse(group: Any, m: Any) -> None:
    import scipy.sparse as sp

    group.create_dataset("data", data=m.data)
    group.create_dataset("shape", data=m.shape)
    if isinstance(m, sp.coo_matrix):
        group.create_dataset("row", data=m.row)
        group.create_dataset("col", data=m.col)
    else:
        group.create_dataset("indices", data=m.indices)
        group.create_dataset("indptr", data=m.indptr)
        if isinstance(m, sp.bsr_matrix):
            group.create_dataset("blocksize", data=m.blocksize)
