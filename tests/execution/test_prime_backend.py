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

from scicode.policies import GoldPolicy
from scicode.runner import run_policy
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


def configure(*, command_margin: float = 60.0, wrap=None):
    """A setup hook: the fake runs commands with this machine's Python; short waits."""

    def setup(scorer) -> None:
        opts = scorer.executor.options
        object.__setattr__(opts, "python", sys.executable)
        object.__setattr__(opts, "backoff", 0.02)
        object.__setattr__(opts, "command_margin", command_margin)
        if wrap is not None:
            wrap(scorer.executor)

    return setup


async def evaluate(validation, ids, **setup_args):
    env_args = {**PRIME_ARGS, "split": "validation", "problems": ids, "max_concurrent_steps": 2}
    result = await run_policy(GoldPolicy([validation[i] for i in ids]), env_args, setup=configure(**setup_args))
    return result.outcomes


async def test_rollouts_score_within_the_api_call_budget(fake, validation, derived_targets) -> None:
    # Targets are derived beforehand: deriving them on a fresh machine costs calls once, not per rollout.
    ids = ["1", "3", "29", "38"]  # 1 + 1 + 3 + 3 steps
    outs = await evaluate(validation, ids)
    assert [o.reward for o in outs] == [1.0, 1.0, 1.0, 1.0]
    assert all(o.isolation.startswith("prime") for o in outs)
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
    outs = await evaluate(validation, ["1", "29"])
    for o in outs:
        assert {s["kind"] for s in o.steps} <= {"passed", "sandbox_error"}, o.steps
    assert sum(o.reward for o in outs) == 2.0  # retried past the fault
    assert fake.sandboxes == {}


async def test_a_sandbox_that_disappears_mid_rollout_is_replaced(fake, validation) -> None:
    killed = []

    def wrap(executor) -> None:
        original = executor._run_in

        async def kill_after_first_step(sandbox, program, timeout):
            result = await original(sandbox, program, timeout)
            if not killed:
                killed.append(sandbox.id)
                fake.kill_sandbox(sandbox.id, remove=True)
            return result

        executor._run_in = kill_after_first_step

    (out,) = await evaluate(validation, ["29"], wrap=wrap)
    assert killed and out.reward == 1.0
    assert fake.count_calls(r"^POST /api/v1/sandbox$") == 2
    assert fake.sandboxes == {}


async def test_a_command_that_never_returns(fake, validation) -> None:
    fake.hang_next_command(count=1)
    (out,) = await evaluate(validation, ["1"], command_margin=2.0)
    assert out.reward == 1.0  # the hung sandbox was replaced and the step retried
    assert fake.sandboxes == {}


async def test_persistent_failure_is_a_recorded_sandbox_error(fake, validation) -> None:
    fake.fail_next(r"^POST /api/v1/sandbox$", status=500, count=1000)
    (out,) = await evaluate(validation, ["1"])
    assert out.steps[0]["kind"] == "sandbox_error" and out.error is not None
    assert fake.sandboxes == {}


async def test_gold_validation_scores_as_locally(fake, validation) -> None:
    """All 15 validation problems with sandbox='prime': 49 of 50 pass and 78.3 fails, exactly as
    with the local sandbox (tests/test_gold_validation.py)."""
    outs = await evaluate(validation, sorted(validation, key=int))
    steps = {s["step_id"]: s for o in outs for s in o.steps}
    assert len(steps) == 50
    failed = {sid: s["kind"] for sid, s in steps.items() if not s["passed"]}
    assert failed == {"78.3": "wrong_answer"}
    assert fake.sandboxes == {}
