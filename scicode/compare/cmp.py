"""`scicode.compare.cmp`: the comparison helpers SciCode test cases import.

96 test cases do `from scicode.compare.cmp import cmp_tuple_or_list` or `... import
are_dicts_close`, so this module must import wherever tests run. The functions behave as the
official ones do (same tolerances, same type dispatch on the *first* argument, which is the
program's value; the second is the target), written here from their documented behaviour. On the
trusted side they run on decoded plain data only.
"""

from __future__ import annotations

from typing import Any

import numpy as np


def _sparse_types() -> tuple[type, ...]:
    import scipy.sparse as sp

    return (sp.csr_matrix, sp.csc_matrix, sp.bsr_matrix, sp.coo_matrix)


def _symbol_type() -> type:
    import sympy

    return sympy.Symbol


def _symbols_to_str(d: dict) -> dict:
    """A copy where sympy Symbol keys and values are replaced by their names."""
    symbol = _symbol_type()
    out: dict = {}
    for key, value in d.items():
        out[str(key) if isinstance(key, symbol) else key] = str(value) if isinstance(value, symbol) else value
    return out


def are_dicts_close(dict1: dict, dict2: dict, atol: float = 1e-8, rtol: float = 1e-5) -> bool:
    """True when both dicts have the same keys (Symbols compared by name) and close values.

    Strings and Symbols compare by equality, sparse matrices densely, everything else by
    `np.allclose`, falling back to `==` when allclose cannot compare the two.
    """
    dict1, dict2 = _symbols_to_str(dict1), _symbols_to_str(dict2)
    if dict1.keys() != dict2.keys():
        return False
    for key, v1 in dict1.items():
        v2 = dict2[key]
        if isinstance(v1, (_symbol_type(), str)):
            same = v1 == v2
        elif isinstance(v1, _sparse_types()):
            same = np.allclose(v1.toarray(), v2.toarray(), atol=atol, rtol=rtol)  # type: ignore[attr-defined]
        else:
            try:
                same = np.allclose(v1, v2, atol=atol, rtol=rtol)
            except ValueError:
                same = v1 == v2
        if not same:
            return False
    return True


def are_csc_matrix_close(matrix1: Any, matrix2: Any) -> bool:
    """Two sparse matrices are close when their dense forms are."""
    return bool(np.allclose(matrix1.toarray(), matrix2.toarray()))


def cmp_tuple_or_list(var1: Any, var2: Any) -> bool:
    """True when both have the same length and their elements are close.

    Dicts compare by `are_dicts_close`, csr/csc matrices densely, Python bools by equality, the
    rest by `np.allclose` (falling back to `==`).
    """
    import scipy.sparse as sp

    if len(var1) != len(var2):
        return False
    for v1, v2 in zip(var1, var2, strict=False):
        if isinstance(v1, dict):
            same = are_dicts_close(v1, v2)
        elif isinstance(v1, (sp.csr_matrix, sp.csc_matrix)):
            same = are_csc_matrix_close(v1, v2)
        elif isinstance(v1, bool):
            same = v1 == v2
        else:
            try:
                same = np.allclose(v1, v2)
            except ValueError as e:
                print(e)
                same = v1 == v2
        if not same:
            return False
    return True
