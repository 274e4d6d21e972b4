"""SciCode problems: loading, splits and the three given steps.

Problems come from the Hugging Face dataset `SciCode1/SciCode` when it is reachable, else from the
copy bundled in `scicode/data/` (byte-identical to the official repository's `eval/data/`,
checked against the sha256 sums below on every load). The validation split (`problems_dev.jsonl`)
carries the gold code of every step; the test split (`problems_all.jsonl`) does not.

Steps 13.6, 62.1 and 76.3 are *given*: they have no tests, are never asked of the model, and their
reference code (the whole file, so the classes `Maxwell`, `Block` and `EnlargedBlock` exist for
later steps) stands in as the previous-step code.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from scicode import config
from scicode.errors import ConfigError, DatasetError

logger = logging.getLogger(__name__)

DATA_DIR = Path(__file__).resolve().parent / "data"

#: sha256 of the bundled files (the official repository's eval/data at 588b406).
BUNDLED_SHA256 = {
    "problems_dev.jsonl": "193968aff23b7ed931c8f6d196b611e2f6694adb49e6cc085444a60ad2fc4f7b",
    "problems_all.jsonl": "38797fef78f434720be6d053b4f3a86839d6f8ea5fb9115450677cd3a6edf81d",
    "13.6.txt": "795a2b57c2d9bb12ca4eaf16d6b8e1f202015a89a886628858abf42a1b18a94e",
    "62.1.txt": "bc9931d88a7d5950091b72a996a25b8be6c936fd136b01005e22c3d45b0008a2",
    "76.3.txt": "4758300d96ea726cdc0fbf749f1bc437030d2a3e8b43bde232ecdeaf636cd367",
}
SPLIT_FILES = {"validation": "problems_dev.jsonl", "test": "problems_all.jsonl"}
GIVEN_STEPS = ("13.6", "62.1", "76.3")
#: Steps whose reference solution fails the official targets on Linux (see README, "Known dataset defects").
KNOWN_DEFECTS = {"78.3": "the reference solution picks its time step from wall-clock timings"}


@dataclass(frozen=True)
class Step:
    """One sub-step of a problem: a function to write and the tests that check it."""

    step_id: str
    """Official step number, e.g. "10.1"."""
    description: str
    background: str
    function_header: str
    return_line: str
    test_cases: tuple[str, ...]
    gold_code: str | None
    """Ground truth: every validation step, and the given steps; None for test steps."""
    given: bool
    """True for 13.6, 62.1, 76.3: never asked, never scored, gold code injected."""


@dataclass(frozen=True)
class Problem:
    """One main problem: shared dependencies and an ordered list of steps."""

    problem_id: str
    name: str
    split: str
    dependencies: str
    steps: tuple[Step, ...]

    @property
    def scored_steps(self) -> tuple[Step, ...]:
        """The steps the model answers and that are judged."""
        return tuple(s for s in self.steps if not s.given)

    def gold_codes(self, upto: int) -> list[str]:
        """Gold code of steps 0..upto ("" where there is none: test-split steps)."""
        return [s.gold_code or "" for s in self.steps[: upto + 1]]

    def step(self, step_id: str) -> Step:
        """The step with this id."""
        for s in self.steps:
            if s.step_id == step_id:
                return s
        raise KeyError(f"problem {self.problem_id} has no step {step_id}")


def load_problems(*, split: str = "all", problems: Sequence[str] = (), source: str = "auto") -> list[Problem]:
    """The problems of a split, in the official file order (validation first for `all`).

    Raises:
        ConfigError: unknown split or source, or a problem id that the split does not have.
        DatasetError: the dataset could not be read, or a bundled file failed its checksum.
    """
    config.check_choice("split", split)
    config.check_choice("dataset_source", source)
    splits = ("validation", "test") if split == "all" else (split,)
    loaded = [p for s in splits for p in _load_split(s, source)]
    if not problems:
        return loaded
    by_id = {p.problem_id: p for p in loaded}
    missing = [pid for pid in map(str, problems) if pid not in by_id]
    if missing:
        raise ConfigError(f"problems {missing} are not in split {split!r}; its ids are {sorted(by_id, key=_id_key)}.")
    return [by_id[str(pid)] for pid in problems]


def _load_split(split: str, source: str) -> list[Problem]:
    rows = None
    if source in ("auto", "hf"):
        rows = _rows_from_hub(split, required=source == "hf")
    if rows is None:
        rows = list(_rows_from_bundle(split))
    return [_problem_from_row(row, split) for row in rows]


def _rows_from_bundle(split: str) -> Iterable[dict[str, Any]]:
    text = read_bundled(SPLIT_FILES[split])
    for line in text.splitlines():
        if line.strip():
            yield json.loads(line)


def read_bundled(name: str) -> str:
    """A bundled data file's text, after checking its sha256.

    Raises:
        DatasetError: the file is missing or has been modified.
    """
    path = DATA_DIR / name
    try:
        data = path.read_bytes()
    except OSError as e:
        raise DatasetError(f"bundled file {path} is missing ({e}); reinstall the scicode package.") from e
    digest = hashlib.sha256(data).hexdigest()
    if digest != BUNDLED_SHA256[name]:
        raise DatasetError(
            f"bundled file {path} has sha256 {digest}, expected {BUNDLED_SHA256[name]}; "
            "it was modified, reinstall the scicode package."
        )
    return data.decode("utf-8")


def _rows_from_hub(split: str, *, required: bool) -> list[dict[str, Any]] | None:
    """Rows from Hugging Face, or None (auto mode) when the hub is unreachable."""
    if not required and _hub_disabled():
        return None
    try:
        import datasets

        manifest = config.manifest()["dataset"]
        ds = datasets.load_dataset(manifest["hf_id"], split=split, revision=manifest["hf_revision"])
        return [dict(row) for row in ds]
    except Exception as e:
        if required:
            raise DatasetError(
                f"could not load {config.manifest()['dataset']['hf_id']} from Hugging Face ({e}); "
                "use dataset_source='bundled' to run offline."
            ) from e
        logger.info("Hugging Face unreachable (%s); using the bundled SciCode copy.", type(e).__name__)
        return None


def _hub_disabled() -> bool:
    """Offline flags, or a quick failed connection to the hub, mean: don't wait on datasets' retries."""
    if any(os.environ.get(v, "").lower() in ("1", "true", "yes") for v in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE")):
        return True
    import socket
    from urllib.parse import urlparse

    endpoint = urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co"))
    port = endpoint.port or (443 if endpoint.scheme == "https" else 80)
    try:
        with socket.create_connection((endpoint.hostname or "", port), timeout=3):
            return False
    except OSError:
        return True


def _problem_from_row(row: dict[str, Any], split: str) -> Problem:
    pid = str(row["problem_id"])
    steps = tuple(_step_from_row(s) for s in row["sub_steps"])
    return Problem(
        problem_id=pid,
        name=row.get("problem_name") or "",
        split=split,
        dependencies=row["required_dependencies"],
        steps=steps,
    )


def _step_from_row(s: dict[str, Any]) -> Step:
    step_id = str(s["step_number"])
    given = step_id in GIVEN_STEPS
    gold = read_bundled(f"{step_id}.txt") if given else s.get("ground_truth_code")
    return Step(
        step_id=step_id,
        description=s["step_description_prompt"],
        background=s.get("step_background") or "",
        function_header=s["function_header"],
        return_line=s["return_line"],
        test_cases=tuple(s["test_cases"]),
        gold_code=gold,
        given=given,
    )


def _id_key(pid: str) -> tuple[int, str]:
    return (int(pid), pid) if pid.isdigit() else (10**9, pid)


def given_step_code(step: Step, *, mode: str = "full") -> str:
    """The code that stands in for a given step's answer.

    `full` is the whole reference file. `official` reproduces the official harness, which looks up
    the first `def NAME(` in the header (for 13.6 and 62.1 that is `__init__`, not the class) and
    keeps only that definition, so the classes vanish (SciCode issues #49, #59).
    """
    if not step.given or step.gold_code is None:
        raise ValueError(f"step {step.step_id} is not a given step")
    config.check_choice("given_step_code", mode)
    if mode == "full":
        return step.gold_code
    import ast
    import re

    match = re.search(r"\bdef\s+(\w+)\s*\(", step.function_header) or re.search(
        r"\bclass\s+(\w+)\s*\(", step.function_header
    )
    if match is None:
        return step.gold_code
    for node in ast.walk(ast.parse(step.gold_code)):
        if isinstance(node, (ast.FunctionDef, ast.ClassDef)) and node.name == match.group(1):
            return ast.unparse(node)
    return step.gold_code
