"""The `scicode` command line.

    scicode run      evaluate a reference policy (default: gold on the validation split, locally)
    scicode report   print the paper-style table of a saved run

`scicode run` drives the same environment as `vf-eval scicode`, with a built-in policy standing
in for the model, so it needs no API key and no network.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import sys
import time
from collections.abc import Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from scicode import __version__
from scicode.errors import SciCodeError
from scicode.report import SCHEMA_VERSION, RolloutRecord, by_split, format_summary

logger = logging.getLogger("scicode")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="scicode", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=f"scicode {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="evaluate a reference policy and print scores")
    run.add_argument("--policy", default="gold", choices=["gold", "dummy"], help="gold code or empty answers (default: gold)")
    run.add_argument("--split", default="validation", choices=["validation", "test", "all"], help="default: validation")
    run.add_argument("--problems", nargs="*", default=None, help="only these problem ids")
    run.add_argument("--rollouts", type=int, default=1, help="rollouts per problem (pass@k needs more than one)")
    run.add_argument("--max-concurrent", type=int, default=-1, help="rollouts at once (default: all)")
    run.add_argument("--env-args", "-a", default="{}", help="more env args as JSON, e.g. '{\"sandbox\": \"local\"}'")
    run.add_argument("--output", "-o", default="scicode-runs", help="directory for the results file (default: ./scicode-runs)")
    run.add_argument("--quiet", "-q", action="store_true", help="no per-problem lines")

    report = sub.add_parser("report", help="print the paper-style table of a saved run")
    report.add_argument("results", type=Path, help="a results.json written by `scicode run`")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `scicode` command."""
    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        if args.command == "run":
            return asyncio.run(_run(args))
        if args.command == "report":
            return _report(args.results)
    except SciCodeError as e:
        print(f"scicode: error: {e}", file=sys.stderr)
        return 2
    return 1


async def _run(args: argparse.Namespace) -> int:
    from scicode.env import load_environment
    from scicode.policies import make_policy

    env_args: dict[str, Any] = json.loads(args.env_args)
    env_args.setdefault("split", args.split)
    if args.problems:
        env_args["problems"] = args.problems
    env = load_environment(**env_args)
    policy = make_policy(args.policy, list(env.problems.values()))
    executor = env.scorer.executor
    print(f"scicode {__version__}: policy={args.policy} split={env_args['split']} problems={len(env.problems)} "
          f"sandbox={executor.name}", flush=True)
    start = time.monotonic()
    try:
        out = await env.evaluate(
            client=policy, model=policy.name, rollouts_per_example=args.rollouts,
            max_concurrent=args.max_concurrent, state_columns=["scicode"],
        )
    finally:
        described = executor.describe()
        await executor.aclose()
    wall = time.monotonic() - start
    records = [_record(o) for o in out["outputs"]]
    if not args.quiet:
        for r in sorted(records, key=lambda r: (r.split, int(r.problem_id) if r.problem_id.isdigit() else 0)):
            print(_problem_line(r))
    summaries = by_split(records)
    print(format_summary(summaries))
    print(f"isolation: {described.get('isolation', '-')}; wall time {wall:.1f} s")
    path = _save(args, env_args, described, records, out, wall)
    print(f"results: {path}")
    return 0


def _record(output: dict[str, Any]) -> RolloutRecord:
    sc = output.get("scicode") or {}
    info = output.get("info") or {}
    return RolloutRecord(
        problem_id=str(sc.get("problem_id", info.get("problem_id", "?"))),
        split=str(sc.get("split", info.get("split", "?"))),
        steps=tuple(sc.get("steps") or ()),
    )


def _problem_line(r: RolloutRecord) -> str:
    failures = ", ".join(f"{s['step_id']}:{s['kind']}" for s in r.steps if not s["passed"])
    return f"  problem {r.problem_id:>3} ({r.split}): {r.passed}/{len(r.steps)} steps" + (f"  [{failures}]" if failures else "")


def _save(args: argparse.Namespace, env_args: dict[str, Any], executor: dict[str, Any],
          records: list[RolloutRecord], out: dict[str, Any], wall: float) -> Path:
    from scicode.verdict import VERDICT_VERSION

    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    directory = Path(args.output) / f"{stamp}-{args.policy}-{env_args['split']}"
    directory.mkdir(parents=True, exist_ok=True)
    payload = {
        "schema_version": SCHEMA_VERSION,
        "verdict_version": VERDICT_VERSION,
        "scicode_version": __version__,
        "policy": args.policy,
        "env_args": env_args,
        "executor": executor,
        "wall_seconds": wall,
        "rollouts": [
            {"problem_id": r.problem_id, "split": r.split, "reward": o.get("reward"), "error": _jsonable(o.get("error")),
             "steps": list(r.steps)}
            for r, o in zip(records, out["outputs"], strict=True)
        ],
    }
    path = directory / "results.json"
    path.write_text(json.dumps(payload, indent=1, default=str))
    return path


def _jsonable(value: Any) -> Any:
    return None if value is None else str(value)


def load_records(path: Path) -> list[RolloutRecord]:
    """Rollout records from a saved results file."""
    data = json.loads(path.read_text())
    return [RolloutRecord(str(r["problem_id"]), str(r["split"]), tuple(r["steps"])) for r in data["rollouts"]]


def _report(path: Path) -> int:
    print(format_summary(by_split(load_records(path))))
    return 0


if __name__ == "__main__":
    sys.exit(main())
