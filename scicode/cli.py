"""The `scicode` command line.

    scicode run      evaluate a reference policy (default: gold on the validation split, locally)
    scicode check    self-test of the installation and sandbox (gold code must pass validation)
    scicode report   print the paper-style table of saved results (scicode run or vf-eval)
    scicode targets  fetch the official targets file, build or compare validation targets

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
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from scicode import __version__
from scicode.errors import SciCodeError
from scicode.report import SCHEMA_VERSION, RolloutRecord, by_split, format_summary

logger = logging.getLogger("scicode")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="scicode", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--version", action="version", version=f"scicode {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="evaluate a reference policy and print scores")
    run.add_argument(
        "--policy", default="gold", choices=["gold", "dummy"], help="gold code or empty answers (default: gold)"
    )
    run.add_argument("--split", default="validation", choices=["validation", "test", "all"], help="default: validation")
    run.add_argument("--problems", nargs="*", default=None, help="only these problem ids")
    run.add_argument("--rollouts", type=int, default=1, help="rollouts per problem (pass@k needs more than one)")
    run.add_argument("--max-concurrent", type=int, default=-1, help="rollouts at once (default: all)")
    run.add_argument("--env-args", "-a", default="{}", help='more env args as JSON, e.g. \'{"sandbox": "local"}\'')
    run.add_argument(
        "--output", "-o", default="scicode-runs", help="directory for the results file (default: ./scicode-runs)"
    )
    run.add_argument("--quiet", "-q", action="store_true", help="no per-problem lines")

    check = sub.add_parser("check", help="self-test: the gold policy on the validation split, and step runnability")
    check.add_argument("--env-args", "-a", default="{}", help="env args as JSON (e.g. the sandbox to check)")

    report = sub.add_parser("report", help="print the paper-style table of saved results")
    report.add_argument(
        "results", type=Path, help="scicode run's results.json, vf-eval's results.jsonl, or a directory"
    )
    report.add_argument(
        "--html", type=Path, help="where to write the HTML report (default: report.html beside the results)"
    )

    targets = sub.add_parser("targets", help="fetch, build or compare targets")
    tsub = targets.add_subparsers(dest="action", required=True)
    tsub.add_parser("fetch", help="download the official test_data.h5 into the cache (resumable, checksum-verified)")
    build = tsub.add_parser("build", help="derive every validation step's targets from its gold code")
    build.add_argument("--output", "-o", type=Path, help="also write them as one file in the official layout")
    compare = tsub.add_parser("compare", help="compare derived validation targets with a targets file")
    compare.add_argument("file", type=Path, help="e.g. the official test_data.h5")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `scicode` command."""
    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        if args.command == "run":
            return asyncio.run(_run(args))
        if args.command == "check":
            return asyncio.run(_check(args))
        if args.command == "report":
            return _report(args.results, args.html)
        if args.command == "targets":
            return asyncio.run(_targets(args))
    except (SciCodeError, FileNotFoundError) as e:
        print(f"scicode: error: {e}", file=sys.stderr)
        return 2
    return 1


async def _run(args: argparse.Namespace) -> int:
    from scicode.dataset import load_problems
    from scicode.policies import make_policy
    from scicode.runner import records, run_policy

    env_args: dict[str, Any] = json.loads(args.env_args)
    env_args.setdefault("split", args.split)
    if args.problems:
        env_args["problems"] = args.problems
    selected = load_problems(
        split=env_args["split"],
        problems=tuple(env_args.get("problems") or ()),
        source=env_args.get("dataset_source", "auto"),
    )
    policy = make_policy(args.policy, selected)
    print(f"scicode {__version__}: policy={args.policy} split={env_args['split']} problems={len(selected)}", flush=True)
    start = time.monotonic()
    result = await run_policy(policy, env_args, rollouts=args.rollouts, max_concurrent=args.max_concurrent)
    wall = time.monotonic() - start
    recs = records(result.outcomes)
    if not args.quiet:
        for r in sorted(recs, key=lambda r: (r.split, int(r.problem_id) if r.problem_id.isdigit() else 0)):
            print(_problem_line(r))
    print(format_summary(by_split(recs)))
    print(
        f"sandbox: {result.executor.get('sandbox', '-')}, isolation: {result.executor.get('isolation', '-')}; "
        f"wall time {wall:.1f} s"
    )
    path = _save(args, env_args, result, wall)
    print(f"results: {path}")
    return 0


def _problem_line(r: RolloutRecord) -> str:
    failures = ", ".join(f"{s['step_id']}:{s['kind']}" for s in r.steps if not s["passed"])
    return f"  problem {r.problem_id:>3} ({r.split}): {r.passed}/{len(r.steps)} steps" + (
        f"  [{failures}]" if failures else ""
    )


def _save(args: argparse.Namespace, env_args: dict[str, Any], result: Any, wall: float) -> Path:
    from scicode.verdict import VERDICT_VERSION

    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    directory = Path(args.output) / f"{stamp}-{args.policy}-{env_args['split']}"
    directory.mkdir(parents=True, exist_ok=True)
    payload = {
        "schema_version": SCHEMA_VERSION,
        "verdict_version": VERDICT_VERSION,
        "scicode_version": __version__,
        "policy": args.policy,
        "env_args": env_args,
        "executor": result.executor,
        "wall_seconds": wall,
        "rollouts": [
            {"problem_id": o.problem_id, "split": o.split, "reward": o.reward, "error": o.error, "steps": o.steps}
            for o in result.outcomes
        ],
    }
    path = directory / "results.json"
    path.write_text(json.dumps(payload, indent=1, default=str))
    return path


def _report(path: Path, html_path: Path | None) -> int:
    from scicode.report import load_run, results_file
    from scicode.report_html import render

    source = results_file(path)
    records = load_run(source)
    print(format_summary(by_split(records)))
    out = html_path or source.parent / "report.html"
    out.write_text(render(records, title=f"SciCode: {source.parent.name}"), encoding="utf-8")
    print(f"HTML report: {out}")
    return 0


async def _check(args: argparse.Namespace) -> int:
    from scicode.dataset import KNOWN_DEFECTS, load_problems
    from scicode.execution import ExecutorOptions, make_executor
    from scicode.policies import GoldPolicy
    from scicode.runnability import check_runnable
    from scicode.runner import run_policy

    env_args = {"split": "validation", **json.loads(args.env_args)}
    executor = make_executor(env_args.get("sandbox", "local"), ExecutorOptions())
    try:
        unrunnable = await check_runnable(load_problems(split="all", source="bundled"), executor)
    finally:
        await executor.aclose()
    result = await run_policy(GoldPolicy(load_problems(split="validation", source="bundled")), env_args)
    described = result.executor
    steps = [s for o in result.outcomes for s in o.steps]
    unexpected = [s for s in steps if not s["passed"] and s["step_id"] not in KNOWN_DEFECTS]
    print(
        f"sandbox: {described.get('sandbox', '-')}, isolation: {described.get('isolation', '-')} "
        f"({described.get('isolation_notes', '')})"
    )
    print(f"runnable steps: {338 - len(unrunnable)}/338" + "".join(f"\n  {u.step_id}: {u.reason}" for u in unrunnable))
    print(
        f"gold on validation: {sum(s['passed'] for s in steps)}/{len(steps)} steps pass "
        f"(expected failures: {', '.join(sorted(KNOWN_DEFECTS))})"
    )
    for s in unexpected:
        print(f"  UNEXPECTED {s['step_id']}: {s['kind']}: {s['detail'][:300]}")
    ok = not unrunnable and not unexpected and len(steps) == 50
    print("OK" if ok else "FAILED")
    return 0 if ok else 1


async def _targets(args: argparse.Namespace) -> int:
    from scicode.target_sources import official_cache_path

    if args.action == "fetch":
        from scicode.download import fetch

        path = fetch(official_cache_path())
        print(f"official targets: {path}")
        return 0
    from scicode.dataset import load_problems
    from scicode.execution import ExecutorOptions, make_executor
    from scicode.scorer import ScoringOptions, StepScorer
    from scicode.target_sources import resolve_targets

    problems = load_problems(split="validation", source="bundled")
    service, hidden = resolve_targets("auto", problems)
    service.official = None  # derive, whatever the cache holds
    executor = make_executor("local", ExecutorOptions(extra={"hidden_paths": hidden}))
    scorer = StepScorer(executor, service, ScoringOptions(), derivation=executor)  # runs gold code only
    steps = [(p, s) for p in problems for s in p.scored_steps]
    try:
        await _derive_all(scorer, steps)
    finally:
        await executor.aclose()
    assert service.derived is not None
    if args.action == "build":
        print(f"derived targets of {len(steps)} validation steps: {service.derived.directory}")
        if args.output:
            _merge([service.derived.path(s.step_id) for _, s in steps], args.output)
            print(f"written in the official layout: {args.output}")
        return 0
    return _compare(steps, service.derived, args.file)


async def _derive_all(scorer: Any, steps: list[Any]) -> None:
    from tqdm import tqdm

    bar = tqdm(total=len(steps), desc="deriving validation targets", unit="step")

    async def one(problem: Any, step: Any) -> None:
        await scorer.ensure_targets(problem, step)
        bar.update()

    try:
        await asyncio.gather(*(one(p, s) for p, s in steps))
    finally:
        bar.close()


def _merge(files: list[Path], output: Path) -> None:
    import h5py

    with h5py.File(output, "w") as out:
        for path in files:
            with h5py.File(path, "r") as src:
                for name in src:
                    src.copy(src[name], out, name)


def _compare(steps: list[Any], derived: Any, path: Path) -> int:
    from scicode.targets import H5Targets, differences

    other = H5Targets(path)
    same = missing = 0
    for _, step in steps:
        if not other.has(step.step_id):
            missing += 1
            continue
        n = len(step.test_cases)
        found = differences(derived.load(step.step_id, n), other.load(step.step_id, n), where=step.step_id)
        if found:
            print("\n".join(found))
        else:
            same += 1
    differ = len(steps) - same - missing
    print(f"{same} of {len(steps)} validation steps agree; {differ} differ; {missing} missing in {path}")
    return 1 if differ else 0


if __name__ == "__main__":
    sys.exit(main())
