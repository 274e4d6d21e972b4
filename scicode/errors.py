"""Errors of the scicode package.

Policy: *the model's failures are data, infrastructure failures are exceptions.* A reply with no
code, a program that crashes, hangs or prints too much is a `FailureKind` recorded on the step
(see `verdict.py`). Everything below is raised when the package itself cannot do its job: bad
configuration, a dataset or targets file that is missing or corrupt, a sandbox that cannot run a
program. Infrastructure failures are retried where retrying can help and are never scored as
the model's failure.
"""

from __future__ import annotations


class SciCodeError(Exception):
    """Base class of every error this package raises on purpose."""


class ConfigError(SciCodeError, ValueError):
    """An env arg or option has a wrong name or value."""


class DatasetError(SciCodeError):
    """The problems could not be loaded, or a bundled file failed its checksum."""


class TargetsError(SciCodeError):
    """The targets needed to judge a step are missing, unreadable or corrupt."""


class UnsupportedTestError(SciCodeError):
    """A test case uses a form the trusted replay cannot split (a dataset change to look at)."""


class SandboxUnavailable(SciCodeError):
    """The sandbox failed to run a program: not the program's fault, as far as we can tell.

    Raised by executors for a backend that is down, a worker that died, a remote API error.
    Callers retry it and, if it persists, record the step as `sandbox_error`. `during_program`
    marks a sandbox that died while the program ran: if that happens on every attempt, the program
    is taken to have killed it (a failure of the program, not of the infrastructure).
    """

    def __init__(self, message: str, *, during_program: bool = False) -> None:
        super().__init__(message)
        self.during_program = during_program
