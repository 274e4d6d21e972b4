"""The environment manifest (`environment.toml`): defaults, choices and descriptions of every env arg.

The manifest lives in the package (`scicode/environment.toml`, so the wheel and `prime env push`,
which uploads only subdirectories and root-level Python files, both carry it); the repository's
top-level `environment.toml` is a symlink to it. Nothing else in the package spells a default.
"""

from __future__ import annotations

import functools
import os
import tomllib
from pathlib import Path
from typing import Any

from scicode.errors import ConfigError

_PACKAGE_DIR = Path(__file__).resolve().parent


def manifest_path() -> Path:
    """The manifest in use: the wheel's copy, else the source checkout's."""
    candidate = _PACKAGE_DIR / "environment.toml"
    if candidate.is_file():
        return candidate
    raise ConfigError(
        "environment.toml not found next to the scicode package; reinstall the package "
        "(`pip install --force-reinstall scicode`)."
    )


@functools.cache
def manifest() -> dict[str, Any]:
    """The parsed manifest."""
    with manifest_path().open("rb") as f:
        return tomllib.load(f)


def arg_specs() -> dict[str, dict[str, Any]]:
    """Every env arg's table (`default`, `description`, optional `choices`), in manifest order."""
    return manifest()["args"]


def default(name: str) -> Any:
    """The default of one env arg."""
    return arg_specs()[name]["default"]


def check_choice(name: str, value: Any) -> None:
    """Raise ConfigError when `value` is not one of the arg's declared choices."""
    choices = arg_specs()[name].get("choices")
    if choices is not None and value not in choices:
        raise ConfigError(f"{name}={value!r} is not allowed; choose one of {', '.join(map(repr, choices))}.")


def cache_dir() -> Path:
    """Where derived targets and downloads live: $SCICODE_CACHE_DIR, else the XDG cache dir."""
    explicit = os.environ.get("SCICODE_CACHE_DIR")
    if explicit:
        return Path(explicit).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "scicode"


def _cell(value: Any) -> str:
    import json

    return f"`{json.dumps(value)}`".replace("|", "\\|")


def args_table() -> str:
    """The README's env-args table, generated from the manifest."""
    lines = ["| arg | default | description |", "|---|---|---|"]
    for name, spec in arg_specs().items():
        choices = spec.get("choices")
        extra = f" One of {', '.join(f'`{c}`' for c in choices)}." if choices else ""
        lines.append(f"| `{name}` | {_cell(spec['default'])} | {spec['description']}{extra} |")
    return "\n".join(lines)


def metrics_table() -> str:
    """The README's metrics table, generated from the manifest."""
    lines = ["| metric | meaning |", "|---|---|"]
    lines += [f"| `{name}` | {text} |" for name, text in manifest()["metrics"].items()]
    return "\n".join(lines)


def update_readme(path: Path) -> None:
    """Rewrite the generated tables of a README in place."""
    import re

    text = path.read_text(encoding="utf-8")
    for name, table in (("args-table", args_table()), ("metrics-table", metrics_table())):

        def replace(m: re.Match[str], t: str = table) -> str:
            return m.group(1) + t + m.group(2)

        text = re.sub(
            rf"(<!-- {name}:start -->\n).*?(\n<!-- {name}:end -->)",
            replace,
            text,
            flags=re.S,
        )
    path.write_text(text, encoding="utf-8")


if __name__ == "__main__":  # python -m scicode.config README.md
    import sys

    update_readme(Path(sys.argv[1] if len(sys.argv) > 1 else "README.md"))
