"""The onboard autopilot on the real PyBullet env through SimLink: normal flight, every failsafe rung, dry run,
arming refusals, and the guards on their own. Simulated time (SimClock) keeps every test deterministic and fast."""

from __future__ import annotations

import dataclasses
import logging
import subprocess
import sys

import gymnasium as gym
import numpy as np
import pytest
from conftest import write_linear_policy

import entropilot.envs  # noqa: F401  (registers the env ids)
from entropilot.deploy.autopilot import ArmingRefused, Autopilot, CallablePolicy, contract_problems
from entropilot.deploy.links.base import LinkError, SimClock, Telemetry, observation_from_telemetry
from entropilot.deploy.links.sim import SimLink
from entropilot.deploy.onnx_policy import NonFiniteError, OnnxPolicy
from entropilot.deploy.safety import (
    DeadlineWatchdog,
    FailsafeLadder,
    Fault,
    FlightState,
    Geofence,
    RateLimiter,
    UnsafeDisarm,
)
from entropilot.envs import HOVER_ID, OBSERVATION_NAMES
from entropilot.envs.observation import observe
from entropilot.envs.pid import CascadedPID

HZ = 48
S = FlightState


class FaultySimLink(SimLink):
    """SimLink whose telemetry goes bad from ``at`` seconds of simulated time: NaN for ``ticks`` reads, frozen
    (stale), or gone (link loss). The world under it is the real simulator."""

    def __init__(self, env, *, fault: str | None = None, at: float = 1.0, ticks: int = 3, **kwargs):
        super().__init__(env, **kwargs)
        self.fault, self.at, self.ticks = fault, at, ticks
        self._frozen: Telemetry | None = None

    def read_telemetry(self):
        telemetry = super().read_telemetry()
        if telemetry is None or self.fault is None or telemetry.timestamp < self.at:
            return telemetry
        if self.fault == "nan" and self.ticks > 0:
            self.ticks -= 1
            return dataclasses.replace(telemetry, position=[np.nan, 0.0, 1.0])
        if self.fault == "stale":
            self._frozen = self._frozen or telemetry
            return self._frozen
        if self.fault == "lost":
            return None
        return telemetry


@pytest.fixture
def env():
    env = gym.make(HOVER_ID)
    yield env
    env.close()


def pid_policy(env, **overrides) -> CallablePolicy:
    return CallablePolicy(
        CascadedPID.for_env(env), overrides.pop("action_mode", "ctbr"), overrides.pop("control_hz", HZ), **overrides
    )


def fly(
    env, policy=None, *, link_cls=SimLink, link_kwargs=None, duration_s=3.0, target=None, end="land", **autopilot_kwargs
):
    link = link_cls(env, **(link_kwargs or {}))
    link.connect()
    policy = policy if policy is not None else pid_policy(env)
    autopilot = Autopilot(policy, link, link.target if target is None else target, **autopilot_kwargs)
    return autopilot.run(duration_s=duration_s, end=end), link, autopilot


def visited(log) -> list[FlightState]:
    return [t.state for t in log.transitions]


def assert_safe_record(log, link) -> None:
    """Every transition has a reason; failsafes name their fault; the ladder only climbs (LAND <-> LANDED aside);
    a disarm happens only on the ground and ends the flight; nothing crashed."""
    rung = {S.FLYING: 0, S.HOLD: 1, S.LAND: 2, S.LANDED: 3}
    for t in log.transitions:
        assert t.reason.strip(), t
        if t.previous in rung and t.state in rung and rung[t.state] < rung[t.previous]:
            assert (t.previous, t.state) == (S.LANDED, S.LAND), f"stepped down the ladder: {t}"
    for t in log.failsafes:
        assert isinstance(t.fault, Fault)
    disarms = [i for i, t in enumerate(log.transitions) if t.state is S.DISARMED and t.previous is not S.DISARMED]
    for i in disarms:
        assert log.transitions[i].previous is S.LANDED
        assert i == len(log.transitions) - 1
    if disarms:
        last = log.steps[-1]
        assert last.state is S.DISARMED and last.position[2] <= link.touchdown_height
        assert not link.armed
    # the vehicle's true state: never disarmed while above the touchdown height
    if not link.armed:
        assert link.env.unwrapped.sim.position[0][2] <= link.touchdown_height
    assert link.crashes == []


def commands_after(log, t0: float) -> set[str]:
    return {s.command for s in log.steps if s.time >= t0}


# ---- the observation ---------------------------------------------------------------------------
def test_observation_from_telemetry_is_the_env_observation(env):
    link = SimLink(env, seed=3)
    link.connect()
    link.arm()
    base, pid = env.unwrapped, CascadedPID.for_env(env)
    rng = np.random.default_rng(0)
    for _ in range(5):
        mine = observation_from_telemetry(link.read_telemetry(), link.target, base.sim.last_action[0])
        theirs = observe(base.sim, base.target, base.noise, rng)[0]
        assert mine.dtype == np.float32 and mine.shape == (len(OBSERVATION_NAMES),)
        np.testing.assert_array_equal(mine, theirs)
        link.send_action(pid(mine) * 1.7)  # out of range on purpose: the env clips, last_action is what ran
    link.close()


def test_the_onboard_runtime_imports_only_numpy_onnxruntime_and_its_link_library():
    # What a companion computer or ground station needs to fly: no trainer, no simulator, no tracker.
    onboard = ["onnx_policy", "c_policy", "autopilot", "safety", "links", "links.mavlink", "links.crazyflie"]
    heavy = {"torch", "ray", "pybullet", "gymnasium", "mlflow", "onnx", "cython", "pydantic", "matplotlib"}
    code = (
        f"import sys\nfor m in {onboard!r}: __import__('entropilot.deploy.' + m)\n"
        f"print(sorted({{m.split('.')[0] for m in sys.modules}} & {heavy!r}))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    assert out.stdout.strip() == "[]"


# ---- flights -----------------------------------------------------------------------------------
def test_hovers_then_lands_and_disarms_with_no_failsafe(env, caplog):
    caplog.set_level(logging.INFO, logger="entropilot.deploy")
    log, link, _ = fly(env, duration_s=3.0)
    assert log.failsafes == [] and log.events == []
    assert visited(log) == [S.FLYING, S.LAND, S.LANDED, S.DISARMED]
    flying = [s for s in log.steps if s.state is S.FLYING]
    assert len(flying) == 3 * HZ and all(s.command == "action" for s in flying)
    assert link.commands["action"] == 3 * HZ and link.commands["hold"] == 0
    assert np.linalg.norm(flying[-1].position - link.target) < 0.1  # it hovered at the target
    assert np.isfinite(log.actions[: 3 * HZ]).all() and np.abs(log.actions[: 3 * HZ]).max() <= 1.0
    assert_safe_record(log, link)
    for transition in log.transitions:  # every transition reached logging, with its reason
        assert str(transition) in caplog.text


def test_nan_telemetry_holds_then_lands_never_disarming_in_the_air(env, caplog):
    caplog.set_level(logging.INFO, logger="entropilot.deploy")
    log, link, autopilot = fly(env, link_cls=FaultySimLink, link_kwargs={"fault": "nan", "at": 1.0})
    assert visited(log) == [S.FLYING, S.HOLD, S.LAND, S.LANDED, S.DISARMED]
    hold, land = log.transitions[1], log.transitions[2]
    assert hold.fault is Fault.NONFINITE_TELEMETRY and "non-finite" in hold.reason
    assert land.fault is Fault.NONFINITE_TELEMETRY and land.time - hold.time == pytest.approx(autopilot.ladder.hold_s)
    assert "action" not in commands_after(log, hold.time)  # the policy never got control back
    assert [e.kind for e in log.events] == ["nonfinite_telemetry", "nonfinite_telemetry_cleared"]
    assert_safe_record(log, link)
    assert "flying -> hold (nonfinite_telemetry" in caplog.text


@pytest.mark.parametrize(
    "failure, fault",
    [
        (lambda obs: np.full(4, np.nan, dtype=np.float32), Fault.NONFINITE_ACTION),
        (
            lambda obs: (_ for _ in ()).throw(NonFiniteError("the policy returned a non-finite action")),
            Fault.NONFINITE_ACTION,
        ),
        (lambda obs: (_ for _ in ()).throw(RuntimeError("onnxruntime blew up")), Fault.POLICY_ERROR),
        (lambda obs: np.zeros(3), Fault.POLICY_ERROR),
    ],
    ids=["nan", "nonfinite_error", "exception", "bad_shape"],
)
def test_a_failing_policy_triggers_the_failsafe(env, failure, fault):
    pid, ticks = CascadedPID.for_env(env), [0]

    def policy(obs):
        ticks[0] += 1
        return failure(obs) if ticks[0] > HZ else pid(obs)

    log, link, _ = fly(env, CallablePolicy(policy, "ctbr", HZ))
    assert visited(log) == [S.FLYING, S.HOLD, S.LAND, S.LANDED, S.DISARMED]
    assert log.transitions[1].fault is fault and log.transitions[1].time == pytest.approx(1.0)
    assert link.commands["action"] == HZ  # the bad action was never sent
    assert_safe_record(log, link)


def test_a_slow_policy_misses_its_deadline_and_its_late_action_is_not_sent(env):
    clock = SimClock()
    pid, ticks = CascadedPID.for_env(env), [0]

    def policy(obs):
        ticks[0] += 1
        if ticks[0] > HZ:
            clock.sleep(0.9 / HZ)  # past the default deadline of half a control period
        return pid(obs)

    log, link, autopilot = fly(env, CallablePolicy(policy, "ctbr", HZ), link_kwargs={"clock": clock})
    assert autopilot.watchdog.deadline_s == pytest.approx(0.5 / HZ)
    assert visited(log) == [S.FLYING, S.HOLD, S.LAND, S.LANDED, S.DISARMED]
    assert log.transitions[1].fault is Fault.DEADLINE_MISS and "deadline" in log.transitions[1].reason
    assert link.commands["action"] == HZ
    assert_safe_record(log, link)


def test_deadline_misses_below_the_limit_keep_the_last_setpoint(env):
    clock = SimClock()
    pid, ticks = CascadedPID.for_env(env), [0]

    def policy(obs):
        ticks[0] += 1
        if ticks[0] in (HZ, HZ + 10):  # two isolated slow calls
            clock.sleep(0.9 / HZ)
        return pid(obs)

    log, link, _ = fly(
        env, CallablePolicy(policy, "ctbr", HZ), link_kwargs={"clock": clock}, duration_s=2.0, max_deadline_misses=2
    )
    assert log.failsafes == []
    assert [e.kind for e in log.events] == ["deadline_miss", "deadline_miss_cleared"] * 2
    late = log.steps[HZ - 1]
    assert late.command == "action" and np.array_equal(late.action, log.steps[HZ - 2].action)
    assert_safe_record(log, link)


@pytest.mark.parametrize("fault_kind, fault", [("stale", Fault.STALE_TELEMETRY), ("lost", Fault.LINK_LOSS)])
def test_stale_or_lost_telemetry_holds_then_lands_and_never_disarms_blind(env, fault_kind, fault):
    log, link, autopilot = fly(env, link_cls=FaultySimLink, link_kwargs={"fault": fault_kind, "at": 1.0})
    assert visited(log) == [S.FLYING, S.HOLD, S.LAND]
    assert log.transitions[1].fault is fault
    if fault is Fault.STALE_TELEMETRY:  # noticed once older than the limit
        assert (
            1.0 + autopilot.max_telemetry_age_s < log.transitions[1].time < 1.0 + autopilot.max_telemetry_age_s + 2 / HZ
        )
    # The vehicle did land (its own land mode), but with no fresh telemetry the autopilot cannot know: no disarm.
    assert link.env.unwrapped.sim.position[0][2] <= link.touchdown_height
    assert link.armed and log.final_state is S.LAND
    assert log.events[-1].kind == "run_ended"
    assert_safe_record(log, link)


@pytest.mark.parametrize(
    "target, geofence, words",
    [
        ((1.0, 0.0, 1.0), Geofence((-1.0, -1.0, -0.5), (0.6, 1.0, 3.0)), "x="),
        ((0.0, 0.0, 2.5), Geofence((-2.0, -2.0, -0.5), (2.0, 2.0, 4.0), ceiling=1.6), "ceiling"),
    ],
    ids=["box", "ceiling"],
)
def test_leaving_the_geofence_lands_at_once(env, target, geofence, words):
    log, link, _ = fly(env, target=target, geofence=geofence, duration_s=4.0)
    assert visited(log) == [S.FLYING, S.LAND, S.LANDED, S.DISARMED]
    breach = log.transitions[1]
    assert breach.fault is Fault.GEOFENCE and words in breach.reason
    at_breach = next(s.position for s in log.steps if s.time >= breach.time)
    assert (
        np.linalg.norm(log.steps[-1].position[:2] - at_breach[:2]) < 0.3
    )  # landed where it was, not back at the target
    assert_safe_record(log, link)


def test_dry_run_computes_actions_but_never_commands_the_vehicle(env):
    far = (1.0, 1.0, 1.5)  # the policy would fly there if its actions were sent
    log, link, _ = fly(env, target=far, dry_run=True, duration_s=2.0)
    assert sum(link.commands.values()) == 0 and not link.armed and link.mode == "shadow"
    flying = [s for s in log.steps if s.state is S.FLYING]
    assert len(log.steps) == len(flying) == 2 * HZ
    assert all(s.command == "none" and np.isfinite(s.action).all() for s in flying)
    assert np.abs(np.array([s.action for s in flying])[:, 1:]).max() > 0.05  # it did want to go somewhere
    assert np.linalg.norm(flying[-1].position - flying[0].position) < 0.15  # its own hold kept it where it was
    assert "dry run" in log.transitions[0].reason and log.failsafes == []
    assert visited(log) == [S.FLYING] and log.events[-1].kind == "shadow_ended" and link.crashes == []


def test_end_hold_hands_the_vehicle_over_holding(env):
    log, link, _ = fly(env, duration_s=1.0, end="hold")
    assert visited(log) == [S.FLYING, S.HOLD] and log.failsafes == []
    assert link.armed and link.mode == "hold"


# ---- arming --------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "policy_kwargs, words",
    [
        ({"action_mode": "motors"}, "action_mode"),
        ({"control_hz": 24}, "control_hz"),
        ({"observation_names": tuple(reversed(OBSERVATION_NAMES))}, "observation layout"),
    ],
    ids=["action_mode", "control_hz", "layout"],
)
def test_refuses_to_arm_on_a_contract_mismatch(env, policy_kwargs, words):
    link = SimLink(env)
    link.connect()
    autopilot = Autopilot(pid_policy(env, **policy_kwargs), link, link.target)
    with pytest.raises(ArmingRefused, match=words):
        autopilot.run(duration_s=1.0)
    assert autopilot.state is S.DISARMED and not link.armed and sum(link.commands.values()) == 0
    assert autopilot.log.events[-1].kind == "arm_refused" and autopilot.log.transitions == []


def test_refuses_to_arm_a_bare_callable_or_outside_the_geofence_or_without_telemetry(env):
    link = SimLink(env)
    assert "does not declare" in " ".join(contract_problems(CascadedPID.for_env(env), link))
    with pytest.raises(ArmingRefused, match="no telemetry"):
        Autopilot(pid_policy(env), link, link.target).arm()  # not connected
    link.connect()
    fence = Geofence((5.0, 5.0, 0.0), (6.0, 6.0, 2.0))
    with pytest.raises(ArmingRefused, match="outside the geofence"):
        Autopilot(pid_policy(env), link, link.target, geofence=fence).arm()
    assert not link.armed


def test_an_onnx_policy_flies_and_a_mismatched_file_is_refused(env, tmp_path):
    good, other_physics = tmp_path / "good.onnx", tmp_path / "physics.onnx"
    write_linear_policy(good)
    write_linear_policy(other_physics, physics_hz=480)
    log, link, _ = fly(env, OnnxPolicy(good), duration_s=1.0)
    assert log.failsafes == [] and link.commands["action"] == HZ
    assert_safe_record(log, link)

    link = SimLink(env)
    link.connect()
    with pytest.raises(ArmingRefused, match="physics_hz"):
        Autopilot(OnnxPolicy(other_physics), link, link.target).arm()
    assert not link.armed


# ---- the guards on their own ---------------------------------------------------------------
def test_guards():
    limiter = RateLimiter(48.0, 48)  # 1.0 per step
    np.testing.assert_allclose(limiter(np.zeros(4), [3.0, -0.5, 0.2, -2.0]), [1.0, -0.5, 0.2, -1.0])
    assert RateLimiter(None, 48)(np.zeros(4), [3.0] * 4).tolist() == [3.0] * 4
    fence = Geofence.around((0.0, 0.0, 1.0), half_width=1.0, ceiling_above=1.0)
    assert fence.violation((0.5, -0.5, 1.5)) is None
    assert "ceiling" in fence.violation((0.0, 0.0, 2.1)) and "y=" in fence.violation((0.0, 1.2, 1.0))
    watchdog = DeadlineWatchdog(0.01, max_misses=2)
    assert not watchdog.missed(0.005) and watchdog.missed(0.02) and not watchdog.tripped
    assert watchdog.missed(0.02) and watchdog.tripped and not watchdog.missed(0.001) and not watchdog.tripped


def test_the_ladder_only_climbs_and_never_disarms_in_the_air():
    ladder = FailsafeLadder(hold_s=1.0, landed_confirm_s=0.5)
    with pytest.raises(UnsafeDisarm):
        ladder.disarm(0.0, landed=True)  # not even armed yet
    ladder.engage(0.0)
    with pytest.raises(UnsafeDisarm):
        ladder.disarm(0.1, landed=True)  # flying
    assert ladder.fault(0.2, Fault.STALE_TELEMETRY, "old") is S.HOLD
    assert ladder.fault(0.3, Fault.LINK_LOSS, "gone") is S.HOLD  # already there: no new transition
    assert ladder.update(1.0, landed=None) is S.HOLD
    assert ladder.update(1.2, landed=None) is S.LAND  # held hold_s
    assert ladder.fault(1.3, Fault.NONFINITE_TELEMETRY, "nan") is S.LAND  # never back down to HOLD
    with pytest.raises(UnsafeDisarm):
        ladder.disarm(1.4, landed=True)
    ladder.update(2.0, landed=True)
    assert ladder.update(2.4, landed=True) is S.LAND
    assert ladder.update(2.5, landed=True) is S.LANDED
    with pytest.raises(UnsafeDisarm):
        ladder.disarm(2.6, landed=False)
    ladder.disarm(2.6, landed=True)
    assert [t.state for t in ladder.transitions] == [S.FLYING, S.HOLD, S.LAND, S.LANDED, S.DISARMED]
    assert ladder.faults == {Fault.STALE_TELEMETRY: 1, Fault.LINK_LOSS: 1, Fault.NONFINITE_TELEMETRY: 1}


def test_sim_link_refuses_to_disarm_in_the_air_or_fly_disarmed(env):
    link = SimLink(env)
    link.connect()
    with pytest.raises(LinkError, match="disarmed"):
        link.send_action(link.hover_action)
    link.arm()
    with pytest.raises(LinkError, match="not on the ground"):
        link.disarm()
    with pytest.raises(LinkError, match="finite"):
        link.send_action([np.nan, 0, 0, 0])
    assert link.armed


def test_one_link_flies_several_flights_and_reports_them_like_episodes(tmp_path):
    path = tmp_path / "policy.onnx"
    write_linear_policy(path)
    policy = OnnxPolicy(path)
    link = SimLink.from_policy_metadata(policy.metadata, render_mode="rgb_array", record_frames=True)
    try:
        link.seed = 5
        link.connect()
        result = link.flight_result(Autopilot(policy, link, link.target).run(duration_s=0.25, end="hold"))
        # the start, 12 policy steps, and the hold command of the hand-over tick; frames at a GIF's 24 fps: the
        # start's and every second step's
        assert (result.seed, result.length, len(result.frames), result.positions.shape) == (5, 12, 7, (14, 3))
        assert not result.success  # shorter than success_seconds

        link.record_frames, link.seed = False, 6
        link.connect()
        log = Autopilot(pid_policy(link.env), link, link.target).run(duration_s=4.0)
        result = link.flight_result(log)
        assert result.success and result.crash is None and result.length == 4 * HZ and result.frames == []
        assert result.final_distance == pytest.approx(log.handover_distance) and result.final_distance < 0.1
        assert result.positions[-1][2] <= link.touchdown_height and "disarmed" in log.summary()
    finally:
        link.close()
    assert not link.close_env  # it closed the env it had built


def test_an_interrupted_run_leaves_the_vehicle_holding_and_an_autopilot_flies_once(env):
    link = SimLink(env)
    link.connect()
    ticks = [0]

    def policy(obs):
        ticks[0] += 1
        if ticks[0] > 10:
            # Not an Exception: the loop must not swallow it, but must not leave the policy flying.
            raise KeyboardInterrupt
        return link.hover_action

    autopilot = Autopilot(CallablePolicy(policy, "ctbr", HZ), link, link.target)
    with pytest.raises(KeyboardInterrupt):
        autopilot.run(duration_s=1.0)
    assert visited(autopilot.log) == [S.FLYING, S.HOLD] and link.mode == "hold" and link.commands["action"] == 10
    assert autopilot.log.events[-1].kind == "aborted"
    with pytest.raises(RuntimeError, match="flown already"):
        autopilot.run(duration_s=1.0)
