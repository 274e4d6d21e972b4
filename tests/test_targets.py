"""The official test_data.h5 layout: every encoding and quirk round-trips as the official decoder reads it."""

from __future__ import annotations

import gc

import h5py
import numpy as np
import pytest
import scipy.sparse as sp
import sympy

from scicode.errors import TargetsError
from scicode.targets import ChainTargets, H5Targets, StepFileTargets, write_step


def roundtrip(tmp_path, value):
    path = tmp_path / "t.h5"
    write_step(path, "1.1", [value])
    return H5Targets(path).load("1.1", 1)[0]


@pytest.mark.parametrize(
    ("value", "check"),
    [
        (np.float64(1.5), lambda out: type(out) is np.float64 and out == 1.5),
        (3, lambda out: type(out) is np.int64 and out == 3),
        (True, lambda out: type(out) is np.bool_ and out),
        (1 + 2j, lambda out: type(out) is np.complex128 and out == 1 + 2j),
        ("text", lambda out: out == "text"),
        (np.arange(6.0).reshape(2, 3), lambda out: out.shape == (2, 3) and out[1, 2] == 5.0),
        # A rectangular list loses its list-ness: it comes back as an array.
        ([[1, 2], [3, 4]], lambda out: isinstance(out, np.ndarray) and out.tolist() == [[1, 2], [3, 4]]),
        # A ragged list becomes a list group.
        ([np.zeros(2), np.zeros(3)], lambda out: isinstance(out, list) and [len(x) for x in out] == [2, 3]),
        # Values of other types are stored as their str.
        (None, lambda out: out == "None"),
        (np.float32(1.5), lambda out: out == "1.5"),
        (sympy.Symbol("x") ** 2, lambda out: out == "x**2"),
        # Dicts: float-like keys become floats, str values come back as str.
        ({"2.5": 1.0, "1": 2.0, "name": "s", "k": 3.0}, lambda out: out == {2.5: 1.0, 1.0: 2.0, "name": "s", "k": 3.0}),
        ({sympy.Symbol("a"): np.eye(2)}, lambda out: list(out) == ["a"] and (out["a"] == np.eye(2)).all()),
        (
            sp.csr_matrix(np.array([[0, 2.0], [3.0, 0]])),
            lambda out: sp.isspmatrix_csr(out) and out.toarray()[1, 0] == 3.0,
        ),
        (sp.coo_matrix(np.eye(3)), lambda out: sp.isspmatrix_coo(out) and (out.toarray() == np.eye(3)).all()),
        (
            sp.bsr_matrix(np.eye(4), blocksize=(2, 2)),
            lambda out: sp.isspmatrix_bsr(out) and (out.toarray() == np.eye(4)).all(),
        ),
        ({"op": sp.csr_matrix(np.eye(2))}, lambda out: sp.isspmatrix_csr(out["op"])),
        # The empty group of a test that never uses target.
        ((), lambda out: out == ()),
        # A tuple is split into var1..varN and read back as a tuple.
        ((np.float64(1.0), "a", [1, 2]), lambda out: out[0] == 1.0 and out[1] == "a" and out[2].tolist() == [1, 2]),
    ],
)
def test_encodings_decode_as_the_official_decoder_does(tmp_path, value, check) -> None:
    assert check(roundtrip(tmp_path, value))


def test_ten_or_more_items_come_back_in_hdf5_name_order(tmp_path) -> None:
    out = roundtrip(tmp_path, tuple(np.int64(i) for i in range(11)))
    assert [int(x) for x in out] == [0, 9, 10, 1, 2, 3, 4, 5, 6, 7, 8]
    ragged = [np.zeros(i + 1) for i in range(11)]
    out = roundtrip(tmp_path, ragged)
    assert [len(x) for x in out] == [1, 10, 11, 2, 3, 4, 5, 6, 7, 8, 9]


def test_csc_is_written_with_indices_and_read_as_csr(tmp_path) -> None:
    m = sp.csc_matrix(np.array([[1.0, 2.0], [0.0, 3.0]]))
    out = roundtrip(tmp_path, m)
    assert sp.isspmatrix_csr(out)
    assert not (out.toarray() == m.toarray()).all()  # the official quirk: the transpose comes back


def test_int_dict_keys_cannot_be_written(tmp_path) -> None:
    with pytest.raises(TargetsError, match="keys must be strings"):
        roundtrip(tmp_path, {1: 2.0})


def test_missing_step_or_test_is_a_targets_error(tmp_path) -> None:
    path = tmp_path / "t.h5"
    write_step(path, "1.1", [1.0])
    with pytest.raises(TargetsError, match=r"1\.2"):
        H5Targets(path).load("1.2", 1)
    with pytest.raises(TargetsError):
        H5Targets(path).load("1.1", 2)


def test_step_files_and_chains(tmp_path) -> None:
    store = StepFileTargets(tmp_path / "d")
    store.save("5.1", [np.float64(2.0), ()])
    chain = ChainTargets([H5Targets(tmp_path / "missing.h5"), store])
    assert chain.has("5.1") and not chain.has("5.2")
    assert chain.load("5.1", 2) == [2.0, ()]


def _rss_mb() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS")


def test_memory_stays_flat_over_a_file_of_the_official_size(tmp_path) -> None:
    """A 1 GB file in the official layout: reading every step one at a time must not accumulate."""
    path = tmp_path / "big.h5"
    rng = np.random.default_rng(0)
    block = rng.random(128 * 1024)  # 1 MiB of float64
    with h5py.File(path, "w") as f:
        for s in range(256):
            for k in range(4):
                f.create_dataset(f"{s}.1/test{k + 1}/var1", data=block + s)
    assert path.stat().st_size > 1_000_000_000
    store = H5Targets(path)
    store.load("0.1", 4)
    gc.collect()
    baseline = _rss_mb()
    peak = baseline
    for s in range(256):
        values = store.load(f"{s}.1", 4)
        assert values[3][0] == block[0] + s
        del values
        peak = max(peak, _rss_mb())
    assert peak - baseline < 64, f"RSS grew by {peak - baseline:.0f} MB while reading a 1 GB file"
