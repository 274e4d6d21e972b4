"""Where step programs run: one async `Executor` interface, backends registered by name.

    async with make_executor("local", options) as executor:
        result = await executor.run(program, timeout=300)

Backends differ only in where the program runs; what they return (`ExecResult`) and how they
fail (`SandboxUnavailable`) is the same. A new backend is one module with a class decorated by
`@register_executor("name")`, imported in `_BACKEND_MODULES` below, and one row in the README.
"""

from scicode.execution.base import (
    ExecResult,
    Executor,
    ExecutorOptions,
    StepProgram,
    known_executors,
    make_executor,
    register_executor,
)

__all__ = [
    "ExecResult",
    "Executor",
    "ExecutorOptions",
    "StepProgram",
    "known_executors",
    "make_executor",
    "register_executor",
]
