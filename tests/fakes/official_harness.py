"""The official SciCode harness, rebuilt for comparison: one file with code, targets and asserts.

Layout (eval/scripts/gencode.py + test_generated_code.py): dependencies, earlier steps' code,
this step's code, `from scicode.parse.parse import process_hdf5_to_tuple`, `targets = ...`, then
for each test `target = targets[i]` and the test. Run with `python file.py`; exit status 0 is a
pass. A private `scicode` package provides the official decoder (written here from its
documented behaviour) and the comparison helpers.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

import h5py

import scicode.compare.cmp as our_cmp

DECODER = """
import h5py
import scipy.sparse


def _value(node):
    if isinstance(node, h5py.Dataset):
        v = node[()]
        return v.decode("utf-8", errors="strict") if isinstance(v, bytes) else v
    for key in node.keys():
        if key == "list":
            return [node["list"][k][()] for k in node["list"].keys()]
        if key == "sparse_matrix":
            return _sparse(node[key])
        return _dict(node)


def _sparse(g):
    shape = tuple(g["shape"][()])
    if "row" in g and "col" in g:
        return scipy.sparse.coo_matrix((g["data"][()], (g["row"][()], g["col"][()])), shape=shape)
    if "blocksize" in g:
        return scipy.sparse.bsr_matrix((g["data"][()], g["indices"][()], g["indptr"][()]), shape=shape,
                                       blocksize=tuple(g["blocksize"][()]))
    return scipy.sparse.csr_matrix((g["data"][()], g["indices"][()], g["indptr"][()]), shape=shape)


def _dict(g):
    out = {}
    for key, obj in g.items():
        if isinstance(obj, h5py.Group):
            out[key] = _sparse(obj["sparse_matrix"])
        elif isinstance(obj[()], bytes):
            out[key] = obj[()].decode("utf-8", errors="strict")
        else:
            try:
                out[float(key)] = obj[()]
            except ValueError:
                out[key] = obj[()]
    return out


def process_hdf5_to_tuple(step_id, test_num, h5py_file="eval/data/test_data.h5"):
    out = []
    with h5py.File(h5py_file, "r") as f:
        for k in range(test_num):
            group = f[f"{step_id}/test{k + 1}"]
            keys = list(group.keys())
            out.append(_value(group[keys[0]]) if len(keys) == 1 else tuple(_value(group[x]) for x in keys))
    return out
"""


def make_root(root: Path, step_files: Sequence[Path]) -> Path:
    """A working directory with the official package and a merged eval/data/test_data.h5."""
    pkg = root / "official" / "scicode"
    (pkg / "parse").mkdir(parents=True, exist_ok=True)
    (pkg / "compare").mkdir(parents=True, exist_ok=True)
    for init in (pkg / "__init__.py", pkg / "parse" / "__init__.py", pkg / "compare" / "__init__.py"):
        init.write_text("")
    (pkg / "parse" / "parse.py").write_text(DECODER)
    shutil.copyfile(our_cmp.__file__, pkg / "compare" / "cmp.py")
    data = root / "eval" / "data" / "test_data.h5"
    data.parent.mkdir(parents=True, exist_ok=True)
    with h5py.File(data, "w") as out:
        for step_file in step_files:
            with h5py.File(step_file, "r") as src:
                for name in src:
                    src.copy(src[name], out, name)
    return root


def program(step_id: str, dependencies: str, prior: Sequence[str], code: str, tests: Sequence[str]) -> str:
    """The official test file of one step."""
    text = f"{dependencies}\n{chr(10).join(prior)}\n\n{code}"
    text += "\n\nfrom scicode.parse.parse import process_hdf5_to_tuple\n\n"
    text += f"targets = process_hdf5_to_tuple('{step_id}', {len(tests)})\n"
    for i, test in enumerate(tests):
        text += f"target = targets[{i}]\n\n" + "".join(line + "\n" for line in test.split("\n"))
    return text


def run(root: Path, name: str, source: str, timeout: float = 300) -> bool:
    """Run one official test file; True when it exits with status 0."""
    path = root / "tmp" / f"{name}.py"
    path.parent.mkdir(exist_ok=True)
    path.write_text(source)
    env = {
        "PATH": "/usr/bin:/bin",
        "PYTHONPATH": str(root / "official"),
        "OPENBLAS_NUM_THREADS": "1",
        "OMP_NUM_THREADS": "1",
        "MPLBACKEND": "Agg",
        "HOME": str(root),
    }
    try:
        result = subprocess.run([sys.executable, str(path)], cwd=root, env=env, capture_output=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return False
    return result.returncode == 0
