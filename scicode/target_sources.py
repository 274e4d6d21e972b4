"""Where targets come from: the official `test_data.h5`, or validation targets derived from gold code.

* `h5py_file=<path>`: the official file (or any file in its layout) at that path.
* `h5py_file="auto"`: `<cache>/test_data.h5`, downloaded (resumable, sha256-checked) when the
  test split needs it and it is missing; validation steps missing from it are derived from their
  gold code the first time they are judged and cached under `<cache>/derived/<fingerprint>/`
  (the fingerprint covers the dataset and the derivation rules).

The test split has no gold code, so it needs the official file. When it cannot be had, loading
fails at once with instructions, before any model call is spent. A file that is not the
official one (by sha256) is used with a warning: its scores are not official numbers.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Sequence
from pathlib import Path

from scicode import config
from scicode.dataset import BUNDLED_SHA256, Problem
from scicode.errors import TargetsError
from scicode.scorer import DERIVATION_SHIMS, TargetService
from scicode.targets import H5Targets, StepFileTargets

logger = logging.getLogger(__name__)

#: Bump when derived targets would change (derivation rules, writer); old caches are then ignored.
DERIVATION_VERSION = "1"


def official_cache_path() -> Path:
    """Where `h5py_file="auto"` looks for (and `scicode targets fetch` puts) the official file."""
    return config.cache_dir() / config.manifest()["targets"]["official_name"]


def derived_dir() -> Path:
    """The cache of derived validation targets for this dataset and these rules."""
    h = hashlib.sha256()
    h.update(BUNDLED_SHA256["problems_dev.jsonl"].encode())
    h.update(DERIVATION_VERSION.encode())
    h.update(repr(sorted(DERIVATION_SHIMS.items())).encode())
    return config.cache_dir() / "derived" / h.hexdigest()[:16]


def missing_targets_message(path: Path | None) -> str:
    """What to do when the test split is requested without the official targets."""
    t = config.manifest()["targets"]
    where = f"No file at {path}. " if path else ""
    return (
        f"{where}The test split is judged against the official SciCode targets file {t['official_name']} "
        f"({t['official_bytes']:,} bytes, sha256 {t['official_sha256']}), which is not available here.\n"
        f"Get it from https://drive.google.com/file/d/{t['official_gdrive_id']} (the official SciCode release), "
        f"then either save it as {official_cache_path()} or pass h5py_file=/path/to/{t['official_name']}.\n"
        "Without it, use split='validation' (its targets are derived from the gold code)."
    )


def resolve_targets(
    h5py_file: str, problems: Sequence[Problem], *, download: bool = True
) -> tuple[TargetService, tuple[str, ...]]:
    """The target service for these problems, and the paths the sandbox must never see.

    Raises:
        TargetsError: test-split problems are selected and no official file can be had.
    """
    auto = h5py_file in ("", "auto")
    official_path = official_cache_path() if auto else Path(h5py_file).expanduser()
    if not auto and not official_path.is_file():
        raise TargetsError(missing_targets_message(official_path))
    needs_official = any(p.split == "test" for p in problems)
    if auto and needs_official and not official_path.is_file():
        if not download:
            raise TargetsError(missing_targets_message(None))
        from scicode.download import fetch

        try:
            fetch(official_path)
        except TargetsError as e:
            raise TargetsError(f"{missing_targets_message(None)}\nAutomatic download failed: {e}") from e
    official = H5Targets(official_path) if official_path.is_file() else None
    if official is not None:
        _check_official(official_path)
    derived = StepFileTargets(derived_dir())
    hidden = (str(official_path.resolve()) if official_path.exists() else "", str(config.cache_dir()))
    return TargetService(official, derived), tuple(h for h in hidden if h)


def _check_official(path: Path) -> None:
    """Warn when a targets file is not byte-identical to the official one."""
    from scicode.download import verified_digest

    expected = config.manifest()["targets"]["official_sha256"]
    if path.stat().st_size != config.manifest()["targets"]["official_bytes"] or verified_digest(path) != expected:
        logger.warning("%s is not the official test_data.h5 (sha256 differs): scores are not official numbers.", path)
