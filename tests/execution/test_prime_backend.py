"""The prime backend, driving the real prime-sandboxes SDK against a local fake of its HTTP API.

The fake (tests/fakes/prime_server.py) serves the control plane, the gateway and the Connect RPC
command stream on 127.0.0.1 and runs commands on this machine. Faults are injected on the wire:
slow readiness, 429 and 500 answers, dropped connections, a sandbox that disappears mid-rollout,
a command that never returns. Every rollout must end with a score or a recorded `sandbox_error`,
no sandbox may be left on the fake, and a rollout may cost at most 3 + 2 x steps API calls.
"""

from __future__ import annotations

import sys

import pytest

from scicode.env import load_environment
from scicode.policies import GoldPolicy
from tests.fakes.prime_server import FakePrime

PRIME_ARGS = {
    "sandbox": "prime",
    "sandbox_docker_image": "scicode-sandbox:test",  # an image with the stack: no bootstrap
    "dataset_source": "bundled",
    "timeout_per_test": 120,
    "infra_retries": 2,
}


@pytest.fixture
def fake(monkeypatch, tmp_path):
    with FakePrime() as server:
        monkeypatch.setenv("PRIME_API_BASE_URL", server.base_url)
        monkeypatch.setenv("PRIME_API_KEY", "test-key")
        monkeypatch.setenv("HOME", str(tmp_path / "home"))  # the SDK's auth cache
        import prime_sandboxes.core.client as core

        # The SDK waits 10 s then 30 s after a 429; the test keeps its retries, not the waits.
        waits = getattr(core, "_PLATFORM_RETRY_WAIT", None)
        if waits is not None and hasattr(waits, "_rate_limit_delays"):
            monkeypatch.setattr(waits, "_rate_limit_delays", (0.05, 0.05, 0.05))
        yield server


def make_env(problems, **extra):
    env = load_environment(split="validation", problems=problems, max_concurrent_steps=2, **PRIME_ARGS)
    opts = env.scorer.executor.options
    object.__setattr__(opts, "python", sys.executable)  # the fake runs commands with this machine's Python
    object.__setattr__(opts, "backoff", 0.02)
    object.__setattr__(opts, "command_margin", extra.get("command_margin", 60.0))
    return env


async def evaluate(env, problems):
    try:
        out = await env.evaluate(client=GoldPolicy(problems), model="gold", state_columns=["scicode"])
    finally:
        await env.scorer.executor.aclose()
    return out["outputs"]


async def test_rollouts_score_within_the_api_call_budget(fake, validation) -> None:
    ids = ["1", "3", "29", "38"]  # 1 + 1 + 3 + 3 steps
    outs = await evaluate(make_env(ids), [validation[i] for i in ids])
    assert [o["reward"] for o in outs] == [1.0, 1.0, 1.0, 1.0]
    assert all(o["scicode"]["isolation"].startswith("prime") for o in outs)
    budget = sum(3 + 2 * len(validation[i].scored_steps) for i in ids) + 1  # + the closing label sweep
    assert len(fake.calls) <= budget, fake.calls
    created = fake.count_calls(r"^POST /api/v1/sandbox$")
    assert 1 <= created <= 2  # a pool of two, reused warm across rollouts
    assert fake.sandboxes == {}


FAULTS = {
    "slow readiness": lambda f: setattr(f, "ready_delay", 1.5),
    "429 on create": lambda f: f.fail_next(r"^POST /api/v1/sandbox$", status=429, count=1),
    "500 on create": lambda f: f.fail_next(r"^POST /api/v1/sandbox$", status=500, count=2),
    "dropped upload": lambda f: f.drop_next(r"/upload$", count=1),
    "dropped command": lambda f: f.drop_next(r"CommandSession/Start$", count=1),
    "500 on status": lambda f: f.fail_next(r"status:batchGet$", status=500, count=1),
}


@pytest.mark.parametrize("fault", FAULTS.values(), ids=FAULTS.keys())
async def test_service_faults_are_survived(fake, validation, fault) -> None:
    fault(fake)
    ids = ["1", "29"]
    outs = await evaluate(make_env(ids), [validation[i] for i in ids])
    for o in outs:
        kinds = {s["kind"] for s in o["scicode"]["steps"]}
        assert kinds <= {"passed", "sandbox_error"}, o["scicode"]["steps"]
    assert sum(o["reward"] for o in outs) == 2.0  # retried past the fault
    assert fake.sandboxes == {}


async def test_a_sandbox_that_disappears_mid_rollout_is_replaced(fake, validation) -> None:
    env = make_env(["29"])
    executor = env.scorer.executor
    original = executor._run_in
    killed = []

    async def kill_after_first_step(sandbox, program, timeout):
        result = await original(sandbox, program, timeout)
        if not killed:
            killed.append(sandbox.id)
            fake.kill_sandbox(sandbox.id, remove=True)
        return result

    executor._run_in = kill_after_first_step
    (out,) = await evaluate(env, [validation["29"]])
    assert killed and out["reward"] == 1.0
    assert fake.count_calls(r"^POST /api/v1/sandbox$") == 2
    assert fake.sandboxes == {}


async def test_a_command_that_never_returns(fake, validation) -> None:
    fake.hang_next_command(count=1)
    env = make_env(["1"], command_margin=2.0)
    (out,) = await evaluate(env, [validation["1"]])
    assert out["reward"] == 1.0  # the hung sandbox was replaced and the step retried
    assert fake.sandboxes == {}


async def test_persistent_failure_is_a_recorded_sandbox_error(fake, validation) -> None:
    fake.fail_next(r"^POST /api/v1/sandbox$", status=500, count=1000)
    env = make_env(["1"])
    (out,) = await evaluate(env, [validation["1"]])
    assert out["scicode"]["steps"][0]["kind"] == "sandbox_error"
    assert out["metrics"]["sandbox_error"] == 1.0 and out["error"] is not None
    assert fake.sandboxes == {}


async def test_gold_validation_scores_as_locally(fake, validation) -> None:
    """All 15 validation problems with sandbox='prime': 49 of 50 pass and 78.3 fails, exactly as
    with the local sandbox (tests/test_gold_validation.py)."""
    ids = sorted(validation, key=int)
    env = make_env(ids)
    object.__setattr__(env.scorer.executor.options, "max_sandboxes", 2)
    outs = await evaluate(env, [validation[i] for i in ids])
    steps = {s["step_id"]: s for o in outs for s in o["scicode"]["steps"]}
    assert len(steps) == 50
    failed = {sid: s["kind"] for sid, s in steps.items() if not s["passed"]}
    assert failed == {"78.3": "wrong_answer"}
    assert fake.sandboxes == {}
