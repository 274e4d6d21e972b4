"""Env args to the parts both verifiers APIs share: the selected problems, their targets, the scorer.

`scicode.env` (classic) and `scicode.v1` differ only in the turn loop; they turn the same env
args (the manifest's names) into the same parts here, so an argument is validated and applied in
one place.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from scicode import config
from scicode.dataset import Problem, load_problems
from scicode.errors import ConfigError
from scicode.execution import ExecutorOptions, make_executor
from scicode.scorer import ScoringOptions, StepScorer, TargetService
from scicode.target_sources import resolve_targets


@dataclass(frozen=True)
class Selection:
    """The problems an environment serves and where their targets come from."""

    problems: list[Problem]
    targets: TargetService
    hidden_paths: tuple[str, ...]
    """Paths the sandbox must never see (the official targets file)."""


def select(args: Mapping[str, Any]) -> Selection:
    """Validate the env args, load the problems, and find their targets.

    Raises:
        ConfigError: an argument has a wrong value.
        TargetsError: the selection needs the official targets file and it cannot be had, so this
            fails before any model call is spent.
    """
    for name in ("given_step_code", "sandbox", "worker_mode", "isolation"):
        config.check_choice(name, args[name])
    if min(args["timeout_per_test"], args["memory_limit_mb"], args["max_output_mb"]) <= 0 or args["infra_retries"] < 0:
        raise ConfigError("timeout_per_test, memory_limit_mb and max_output_mb must be positive, infra_retries >= 0")
    problems = load_problems(split=args["split"], problems=tuple(args["problems"] or ()), source=args["dataset_source"])
    targets, hidden = resolve_targets(args["h5py_file"], problems)
    return Selection(problems, targets, hidden)


def build_scorer(args: Mapping[str, Any], selection: Selection) -> StepScorer:
    """The scorer (and its executor) the env args describe.

    Raises:
        ConfigError: the sandbox backend cannot be used here.
    """
    options = ExecutorOptions(
        memory_mb=int(args["memory_limit_mb"]),
        output_mb=int(args["max_output_mb"]),
        concurrency=int(args["max_concurrent_steps"]),
        disk_mb=int(args["max_disk_mb"]),
        max_processes=int(args["max_processes"]),
        extra={
            "isolation": args["isolation"],
            "worker_mode": args["worker_mode"],
            "python": args["sandbox_python"],
            "hidden_paths": selection.hidden_paths,
            "image": args["sandbox_docker_image"],
            "name": args["sandbox_name"],
            "cpu_cores": args["sandbox_cpu_cores"],
            "memory_gb": args["sandbox_memory_gb"],
            "disk_gb": args["sandbox_disk_gb"],
            "labels": tuple(args["sandbox_labels"] or ()),
        },
    )
    return StepScorer(
        make_executor(args["sandbox"], options),
        selection.targets,
        ScoringOptions(
            timeout=float(args["timeout_per_test"]),
            infra_retries=int(args["infra_retries"]),
            max_probe_bytes=int(args["max_output_mb"]) << 20,
            strict_comparisons=bool(args["strict_comparisons"]),
        ),
        # Validation targets are derived on this machine, by workers that never run model code.
        derivation=make_executor("local", options) if selection.targets.derived is not None else None,
    )
