"""The simulator as a vehicle: a single-drone PyBullet env behind ``VehicleLink``. Every command advances the
world by one control period; hold and land are flown by the cascaded PID, as a real vehicle's own controller
would fly its hold and land modes."""

from __future__ import annotations

import math
from collections import Counter
from typing import Any

import numpy as np

from entropilot.deploy.links.base import (
    OBSERVATION_NAMES,
    Clock,
    LinkError,
    SimClock,
    Telemetry,
    VehicleLink,
    observation_from_telemetry,
)
from entropilot.envs.pid import CascadedPID
from entropilot.envs.plots import frame_stride

__all__ = ["SimLink"]


class SimLink(VehicleLink):
    """A single-drone entropilot env (``entropilot/Hover-v0``, ...) as a vehicle.

    ``connect`` resets the env (``seed``): the drone starts in the air at the env's start state, as if handed
    over from a hold. ``send_action`` / ``hold`` / ``land`` each step the env once (one control period of
    simulated time; telemetry is stamped ``clock`` time at connect + steps / control_hz). ``hold`` flies the PID
    to the position where holding began; ``land`` flies it down at ``descent_rate`` above that point and idles
    the motors on touchdown. Per flight (reset by ``connect``): ``commands`` counts what was sent, ``crashes``
    lists (time, reason) the env reported, ``trajectory`` the true positions, ``frames`` the rendered images
    (``record_frames``, with an env made with render_mode="rgb_array"). ``close`` closes the env only if
    ``close_env`` (``from_policy_metadata`` built it).

    ``realtime`` (with a wall clock): the world also follows the clock. A command first flies the world on, with the
    last command, through the control periods that passed without one (a loop that skipped ticks; a real vehicle
    keeps flying its last setpoint meanwhile), so telemetry does not fall behind the clock.
    """

    def __init__(
        self,
        env,
        *,
        seed: int | None = 0,
        clock: Clock | None = None,
        descent_rate: float = 0.5,
        record_frames: bool = False,
        close_env: bool = False,
        realtime: bool = False,
    ):
        base = env.unwrapped
        if getattr(base, "inner_loop", None) is not None:
            raise ValueError(
                f"{type(base).__name__} takes command indices; a SimLink flies the vehicle's own action: give it the "
                "env under the commands (entropilot.envs.vehicle_env), and the policy to an Autopilot"
            )
        if not hasattr(base, "sim") or base.sim.num_drones != 1:
            raise ValueError(
                "SimLink flies a single-drone entropilot env (entropilot/Hover-v0, entropilot/Waypoint-v0)"
            )
        if list(base.observation_names) != list(OBSERVATION_NAMES):
            raise ValueError("the env's observation layout differs from the deploy observation builder's")
        self.env = env
        self.settings = base.settings
        self.action_mode: str = self.settings.action_mode
        self.control_hz: int = self.settings.control_hz
        self.dt = 1.0 / self.control_hz
        self.seed = seed
        self.clock: Clock = clock if clock is not None else SimClock()
        self.descent_rate = float(descent_rate)
        self.hover_action = base.sim.hover_action()
        airframe = base.sim.airframe
        self.rest_height = float(airframe.collision_half_extents[2])  # body centre resting on the ground plane
        self.touchdown_height = self.rest_height + 0.02
        self._idle = (
            np.full(4, -1.0, dtype=np.float32)
            if self.action_mode == "motors"
            else np.array([-1.0, 0.0, 0.0, 0.0], dtype=np.float32)
        )
        self._hold_pid = CascadedPID.for_env(env)
        self._land_pid = CascadedPID.for_env(env)
        self.record_frames = record_frames
        self.close_env = close_env
        self.realtime = bool(realtime)
        self.commands: Counter = Counter()
        self.crashes: list[tuple[float, str]] = []
        self.trajectory: list[np.ndarray] = []
        self.frames: list = []
        self.policy_return = 0.0  # the env's reward summed over the steps flown by send_action
        self.connected = False
        self.armed = False
        self.mode = "idle"
        self._start_time = 0.0
        self._steps = 0
        self._hold_point = np.zeros(3)
        self._land_point = np.zeros(3)
        self._switched = False

    @classmethod
    def from_policy_metadata(cls, metadata: dict[str, Any], *, render_mode: str | None = None, **kwargs) -> SimLink:
        """The env an exported policy names (its env id and kwargs, action mode and rates), as a vehicle. For a
        command policy, the env under its command layer (``envs.vehicle_env``): its inner loop flies on board."""
        from entropilot.envs import make_env, vehicle_env

        env_kwargs = {
            **metadata["env_kwargs"],
            "action_mode": metadata["action_mode"],
            "control_hz": metadata["control_hz"],
            "physics_hz": metadata["physics_hz"],
        }
        env_id, env_kwargs = vehicle_env(metadata["env_id"], env_kwargs)
        return cls(make_env(env_id, render_mode=render_mode, **env_kwargs), close_env=True, **kwargs)

    @property
    def target(self) -> np.ndarray:
        """The env task's reference point (where a hover policy was trained to fly)."""
        return np.array(self.env.unwrapped.target[0], dtype=np.float64)

    def expected_contract(self) -> dict[str, Any]:
        base = self.env.unwrapped
        return {
            **super().expected_contract(),
            "physics_hz": self.settings.physics_hz,
            "action_low": [float(v) for v in base.action_space.low],
            "action_high": [float(v) for v in base.action_space.high],
        }

    # ---- VehicleLink --------------------------------------------------------------------
    def connect(self) -> None:
        self.env.reset(seed=self.seed)
        self._start_time = self.clock.now()
        self._steps = 0
        self.connected = True
        self.armed = False
        self.mode = "idle"
        self.commands = Counter()
        self.crashes = []
        self.trajectory = [self.env.unwrapped.sim.position[0].copy()]
        self.frames = [self.env.render()] if self.record_frames else []
        self.policy_return = 0.0

    def read_telemetry(self) -> Telemetry | None:
        if not self.connected:
            return None
        return self._telemetry()

    def send_action(self, action) -> None:
        action = np.asarray(action, dtype=np.float64)
        if action.shape != (4,) or not np.isfinite(action).all():
            raise LinkError(f"refusing action {action.tolist()}: need 4 finite numbers")
        self._command("action", "offboard")
        self.policy_return += self._step(action)

    def hold(self) -> None:
        self._command("hold", "hold")
        if self._switched:
            self._hold_point = self.env.unwrapped.sim.position[0].copy()
            self._hold_pid.reset()
        self._step(self._hold_pid(self._own_observation(self._hold_point)))

    def observe(self) -> None:
        """Dry run: nobody commands the simulated drone, so it holds where it was, as a pilot would hold it."""
        if not self.connected:
            raise LinkError("not connected")
        if self.mode != "shadow":
            self.mode = "shadow"
            self._hold_point = self.env.unwrapped.sim.position[0].copy()
            self._hold_pid.reset()
        self._step(self._hold_pid(self._own_observation(self._hold_point)))

    def land(self) -> None:
        self._command("land", "land")
        sim = self.env.unwrapped.sim
        if self._switched:
            self._land_point = sim.position[0].copy()
            self._land_pid.reset()
        # The reference sinks at descent_rate to just below the resting height, which presses the drone down.
        self._land_point[2] = max(self.rest_height - 0.05, self._land_point[2] - self.descent_rate * self.dt)
        if sim.position[0][2] <= self.touchdown_height:
            action = self._idle
        else:
            action = self._land_pid(self._own_observation(self._land_point))
        self._step(action)

    def arm(self) -> None:
        if not self.connected:
            raise LinkError("not connected")
        self.armed = True

    def disarm(self) -> None:
        if not self.connected:
            raise LinkError("not connected")
        if not self._telemetry().landed:
            raise LinkError("refusing to disarm: the vehicle is not on the ground")
        self.armed = False
        self.mode = "idle"

    def close(self) -> None:
        self.connected = False
        self.armed = False
        if self.close_env:
            self.close_env = False
            self.env.close()

    # ---- reporting -----------------------------------------------------------------------
    def flight_result(self, log):
        """The flight ``log`` (an autopilot FlightLog of the last flight on this link) as an ``EpisodeResult``, so
        flights report and plot like ``run_episodes``: positions = the true trajectory, hold and land included;
        length = the ticks the policy was in control (shadowed ones in a dry run), return over the steps it flew;
        final distance where the policy handed over; success = not a dry run, no failsafe, no crash, and the last
        ``success_seconds`` of policy control within ``success_radius``."""
        from entropilot.deploy.safety import FlightState
        from entropilot.envs.evaluate import EpisodeResult

        flying = [step.position for step in log.steps if step.state is FlightState.FLYING and step.position is not None]
        distances = np.linalg.norm(np.array(flying).reshape(-1, 3) - log.target, axis=1)
        final = float(distances[-1]) if len(distances) else float("nan")
        s = self.settings
        last = int(round(getattr(s, "success_seconds", 0.0) * self.control_hz))
        radius = getattr(s, "success_radius", 0.0)
        success = (
            not log.dry_run
            and not log.failsafes
            and not self.crashes
            and last > 0
            and len(distances) >= last
            and bool((distances[-last:] <= radius).all())
        )
        positions = np.array(self.trajectory)
        return EpisodeResult(
            self.seed,
            success,
            self.policy_return,
            len(flying),
            final,
            self.crashes[0][1] if self.crashes else None,
            positions,
            np.repeat(log.target[None, :], len(positions), axis=0),
            list(self.frames),
        )

    # ---- internals -----------------------------------------------------------------------
    def _command(self, kind: str, mode: str) -> None:
        if not self.connected:
            raise LinkError("not connected")
        if not self.armed:
            raise LinkError(f"refusing {kind}: the vehicle is disarmed")
        self._switched = self.mode != mode
        self.mode = mode
        self.commands[kind] += 1

    def _step(self, action) -> float:
        reward = 0.0
        if self.realtime:
            for _ in range(int((self.clock.now() - self._start_time) / self.dt) - self._steps):
                reward += self._advance(self.env.unwrapped.sim.last_action[0])
        return reward + self._advance(action)

    def _advance(self, action) -> float:
        """One control period of physics on ``action``."""
        _, reward, _, _, info = self.env.step(np.asarray(action, dtype=np.float32))
        self._steps += 1
        self.trajectory.append(self.env.unwrapped.sim.position[0].copy())
        if self.record_frames and self._steps % frame_stride(self.control_hz) == 0:
            self.frames.append(self.env.render())
        crash = info.get("crash")
        if crash is not None and (not self.crashes or self.crashes[-1][1] != crash):
            self.crashes.append((self._state_time(), crash))
        return float(reward)

    def _state_time(self) -> float:
        return self._start_time + self._steps * self.dt

    def _telemetry(self) -> Telemetry:
        sim = self.env.unwrapped.sim
        position, velocity = sim.position[0], sim.velocity[0]
        speed = math.sqrt(float(velocity @ velocity))
        landed = bool(position[2] <= self.touchdown_height and speed < 0.1)
        return Telemetry(
            self._state_time(), position, velocity, sim.rotation[0], sim.body_rates[0], self.armed, self.mode, landed
        )

    def _own_observation(self, point: np.ndarray) -> np.ndarray:
        """What the vehicle's own controller sees: the true state relative to ``point``."""
        return observation_from_telemetry(self._telemetry(), point, self.env.unwrapped.sim.last_action[0])

    def __repr__(self) -> str:
        name = getattr(self.env.spec, "id", None) or type(self.env.unwrapped).__name__
        return f"SimLink({name}, action_mode={self.action_mode}, control_hz={self.control_hz}, seed={self.seed})"
