"""Benchmark of the local executor, measured in one run on one machine (ratios, not absolutes).

    python benchmarks/bench_local.py [--workers N] [--repeat-overhead 200] [--json out.json]

Prints:
1. the gold validation split (50 scored steps) scored end to end through the environment with
   the local executor (targets already derived): wall seconds and steps per second, against the
   compute floor: each step's own compute measured in an already-warm interpreter, spread over
   the workers, max(longest step, total / workers);
2. the same steps the official way: one fresh `python file.py` per step with targets and asserts
   in the file (exit 0 = pass), as many at once as we have workers;
3. both on the light steps only (all but 51.4, 47.4, 10.11, 49.4, whose own compute takes
   seconds), where start-up overhead dominates;
4. the executor's per-program overhead (an empty program): median and p95;
5. peak memory of this (the environment's) process.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from scicode.dataset import load_problems
from scicode.execution import ExecutorOptions, StepProgram, make_executor
from scicode.policies import GoldPolicy
from scicode.runner import run_policy
from scicode.scorer import program_for
from scicode.target_sources import resolve_targets
from tests.fakes import official_harness

HEAVY = {"51.4", "47.4", "10.11", "49.4"}

#: Runs each program in this already-warm interpreter; the probe only passes values through.
WARM_TIMER = r"""
import json, sys, time, importlib
for m in ("numpy", "scipy", "scipy.integrate", "scipy.linalg", "scipy.optimize", "scipy.special",
          "scipy.sparse", "scipy.interpolate", "scipy.signal", "sympy", "scicode.compare.cmp"):
    importlib.import_module(m)
class NullProbe:
    def record(self, site, leaves, exposed): return leaves
    def enter(self, scope): pass
    def test(self, k): pass
out = {}
for item in json.load(sys.stdin):
    code = compile(item["source"], "program.py", "exec")
    start = time.perf_counter()
    try:
        exec(code, {"__name__": "__main__", "__scicode_probe__": NullProbe()})
    except BaseException as e:
        print(item["step_id"], "raised", type(e).__name__, file=sys.stderr)
    out[item["step_id"]] = time.perf_counter() - start
print(json.dumps(out))
"""


def gold_programs() -> tuple[list, dict[str, StepProgram]]:
    problems = load_problems(split="validation", source="bundled")
    programs = {}
    for p in problems:
        for i, s in enumerate(p.steps):
            programs[s.step_id] = program_for(p, i, p.gold_codes(i))
    return problems, programs


def own_compute(programs: dict[str, StepProgram]) -> dict[str, float]:
    """Each step's compute in one warm interpreter (imports done once, before timing)."""
    env = dict(os.environ, OPENBLAS_NUM_THREADS="1", OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", MPLBACKEND="Agg")
    payload = [{"step_id": sid, "source": p.source} for sid, p in programs.items()]
    with tempfile.TemporaryDirectory() as tmp:
        proc = subprocess.run(
            [sys.executable, "-c", WARM_TIMER],
            input=json.dumps(payload),
            capture_output=True,
            text=True,
            cwd=tmp,
            env=env,
            check=True,
        )
    return json.loads(proc.stdout.strip().splitlines()[-1])


def floor(times: dict[str, float], steps: list[str], workers: int) -> float:
    chosen = [times[s] for s in steps]
    return max(max(chosen), sum(chosen) / workers)


class SomeGold(GoldPolicy):
    """Gold code for the chosen steps, no code (nothing to run) for the others."""

    def __init__(self, problems: list, steps: set[str]) -> None:
        super().__init__(problems)
        self.stubs = {
            f"{s.function_header}\n\n{s.return_line}"
            for p in problems
            for s in p.scored_steps
            if s.step_id not in steps
        }

    def reply(self, prompt_text: str) -> str:
        asked = prompt_text.split("NEXT STEP - PROBLEM", 1)[-1].split("DEPENDENCIES:", 1)[0]
        if any(stub in asked for stub in self.stubs):
            return "```python\n```"
        return super().reply(prompt_text)


async def ours_end_to_end(problems: list, steps: set[str], workers: int) -> tuple[float, int]:
    """Score the gold answers to `steps` through the environment; (wall seconds, steps passed)."""
    ids = sorted({sid.split(".")[0] for sid in steps}, key=int)
    env_args = {"split": "validation", "problems": ids, "dataset_source": "bundled", "max_concurrent_steps": workers}
    policy = SomeGold([p for p in problems if p.problem_id in ids], steps)
    clock: list[float] = []

    async def warm_then_start(scorer) -> None:
        await scorer.executor.run(StepProgram("warmup", "pass"), timeout=30)  # workers up before timing
        clock.append(time.perf_counter())

    result = await run_policy(policy, env_args, setup=warm_then_start)
    wall = time.perf_counter() - clock[0]
    passed = sum(s["passed"] for o in result.outcomes for s in o.steps if s["step_id"] in steps)
    return wall, passed


def official_way(problems: list, steps: set[str], workers: int, root: Path) -> tuple[float, int]:
    """One fresh interpreter per step, targets and asserts in the file; (wall, steps passed)."""
    jobs = []
    for p in problems:
        for i, s in enumerate(p.steps):
            if s.step_id in steps:
                codes = p.gold_codes(i)
                jobs.append(
                    (s.step_id, official_harness.program(s.step_id, p.dependencies, codes[:i], codes[i], s.test_cases))
                )
    start = time.perf_counter()
    with ThreadPoolExecutor(workers) as pool:
        results = list(pool.map(lambda job: official_harness.run(root, job[0], job[1]), jobs))
    return time.perf_counter() - start, sum(results)


async def overhead(repeat: int, workers: int) -> list[float]:
    executor = make_executor("local", ExecutorOptions(concurrency=workers))
    empty = StepProgram("empty", "pass\n")
    await executor.run(empty, timeout=30)
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        await executor.run(empty, timeout=30)
        times.append(time.perf_counter() - start)
    await executor.aclose()
    return times


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 2)
    parser.add_argument("--repeat-overhead", type=int, default=200)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    w = args.workers
    problems, programs = gold_programs()
    scored = {s.step_id for p in problems for s in p.scored_steps}
    light = scored - HEAVY

    subprocess.run([sys.executable, "-m", "scicode", "targets", "build"], check=True)  # derive if not cached
    derived = resolve_targets("auto", problems)[0].derived
    assert derived is not None
    root = official_harness.make_root(
        Path(tempfile.mkdtemp(prefix="scicode-bench-")), [derived.path(s) for s in sorted(scored)]
    )

    compute = own_compute({s: programs[s] for s in sorted(scored)})
    quick = {s for s in scored if compute[s] < 0.5}
    subsets = {
        "all 50 scored steps": scored,
        f"{len(light)} light steps": light,
        f"{len(quick)} start-up-dominated steps (own compute < 0.5 s)": quick,
    }
    results: dict[str, object] = {"workers": w, "python": sys.version.split()[0]}
    for name, steps in subsets.items():
        ours, ours_passed = await ours_end_to_end(problems, steps, w)
        official, official_passed = official_way(problems, steps, w, root)
        flo = floor(compute, sorted(steps), w)
        results[name] = {
            "ours_wall_s": ours,
            "steps_per_s": len(steps) / ours,
            "compute_floor_s": flo,
            "ours_over_floor": ours / flo,
            "official_wall_s": official,
            "official_over_ours": official / ours,
            "passed_ours": ours_passed,
            "passed_official": official_passed,
        }
    results["light_steps_own_compute_s"] = sum(compute[s] for s in light)
    ov = await overhead(args.repeat_overhead, w)
    ov_ms = sorted(1000 * t for t in ov)
    results["overhead_ms"] = {"median": statistics.median(ov_ms), "p95": ov_ms[int(0.95 * len(ov_ms)) - 1]}
    results["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    results["slowest_steps_s"] = dict(sorted(compute.items(), key=lambda kv: -kv[1])[:6])

    print(f"\nlocal executor benchmark ({w} workers, Python {results['python']})")
    for name in subsets:
        r = results[name]
        print(f"\n{name}:")
        print(
            f"  ours (end to end, warm pool): {r['ours_wall_s']:7.1f} s  ({r['steps_per_s']:.2f} steps/s, "
            f"{r['passed_ours']} passed)"
        )
        print(
            f"  compute floor:                {r['compute_floor_s']:7.1f} s  -> ours / floor = {r['ours_over_floor']:.2f}"
        )
        print(
            f"  official way (fresh python):  {r['official_wall_s']:7.1f} s  ({r['passed_official']} passed) "
            f"-> {r['official_over_ours']:.1f}x slower than ours"
        )
    print(
        f"\nper-program overhead (empty program): median {results['overhead_ms']['median']:.1f} ms, "
        f"p95 {results['overhead_ms']['p95']:.1f} ms"
    )
    print(f"peak memory of the environment process: {results['peak_rss_mb']:.0f} MB")
    print("slowest steps' own compute: " + ", ".join(f"{k} {v:.1f} s" for k, v in results["slowest_steps_s"].items()))
    print(f"light steps' own compute, summed: {results['light_steps_own_compute_s']:.1f} s")
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    asyncio.run(main())
