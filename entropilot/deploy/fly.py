"""Flying an exported policy as `entropilot fly` does: get the verified file, then fly it through the onboard autopilot
in simulation (episodes on held-out seeds) or once over a real-time vehicle link, echoing what a pilot reads.

Light: the simulator and the plots are imported only by the flights that use them."""

from __future__ import annotations

import importlib.util
import logging
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from entropilot.deploy.autopilot import ArmingRefused, Autopilot, FlightLog
from entropilot.deploy.contract import PolicyContractError
from entropilot.deploy.links.base import LinkError
from entropilot.deploy.onnx_policy import OnnxPolicy
from entropilot.deploy.registry import is_model_uri
from entropilot.errors import EntropilotError

Echo = Callable[[str], None]
DEFAULT_ADDRESSES = {"mavlink": "udpout:127.0.0.1:14540", "crazyflie": "radio://0/80/2M/E7E7E7E7E7"}


class FlightError(EntropilotError, RuntimeError):
    """A flight that cannot start or was refused: no such policy, a broken contract or seal, no link, arming refused."""


RUNTIMES = ("onnx", "c")


def load_policy(
    source: str,
    *,
    sha256: str | None = None,
    tracking_uri: str | None = None,
    cache_dir: str | None = None,
    runtime: str = "onnx",
    echo: Echo = print,
):
    """The policy in ``source`` (an exported .onnx, or a registered model pulled from the MLflow registry and checked
    against the SHA-256 recorded at registration), refused unless its seal, contract and ``sha256`` (if given) hold.

    ``runtime``: "onnx" flies it with onnxruntime (``OnnxPolicy``); "c" generates its C, compiles it with the host's
    compiler and flies that (``CPolicy``: the same interface and contract, the C doing the arithmetic)."""
    if runtime not in RUNTIMES:
        raise FlightError(f"runtime {runtime!r} is unknown; choose one of {RUNTIMES}")
    path = source
    if is_model_uri(source):
        pulled = pull_registered(source, tracking_uri=tracking_uri, cache_dir=cache_dir, echo=echo)
        path, sha256 = pulled.path, sha256 or pulled.sha256
    elif not Path(source).is_file():
        raise FlightError(f"{source!r}: no such file (give an exported .onnx or models:/NAME@ALIAS)")
    expected = {"sha256": sha256} if sha256 else None
    try:
        if runtime == "c":
            return _c_policy(path, expected, echo)
        return OnnxPolicy(path, expected=expected)
    except PolicyContractError as err:
        raise FlightError(str(err)) from None


def _c_policy(path, expected, echo: Echo):
    from entropilot.deploy.c_export import CExportError, build_c_policy
    from entropilot.deploy.c_toolchain import ToolchainError

    try:
        policy = build_c_policy(path, expected=expected)
    except (CExportError, ToolchainError) as err:
        raise FlightError(f"--runtime c: {err}") from None
    echo(f"{path}: generated C compiled into {policy.library_path}")
    return policy


def pull_registered(source: str, *, tracking_uri: str | None, cache_dir: str | None, echo: Echo = print):
    """A registered policy's verified local copy (``registry.pull_policy``), echoing where it came from."""
    from entropilot.deploy.registry import RegistryError, pull_policy

    try:
        pulled = pull_policy(source, tracking_uri=tracking_uri, cache_dir=cache_dir)
    except (RegistryError, PolicyContractError) as err:
        raise FlightError(str(err)) from None
    echo(
        f"{source}: {pulled.name} version {pulled.version} (run {pulled.run_id}), "
        f"{'downloaded' if pulled.downloaded else 'cached copy'} {pulled.path}, "
        f"SHA-256 as registered, seal intact"
    )
    return pulled


def check_readiness(policy: OnnxPolicy, *, force: bool, dry_run: bool, echo: Echo = print) -> None:
    """Before a flight on a vehicle: the readiness report in the policy file must name this network and clear its
    gate (``deploy.gate``), else FlightError, unless ``force`` (then a warning on the console and in the log). A dry
    run sends nothing, so it only says what the report says."""
    from entropilot.deploy.gate import GateRefused, enforce, report_problems

    report, problems = report_problems(policy.metadata, policy.policy_sha256)
    if dry_run:
        echo(f"dry run: the readiness gate is not applied (nothing is sent); it says: {'; '.join(problems) or 'pass'}")
        return
    try:
        enforce(report, problems, force=force, what=f"fly {policy.path.name} on a vehicle", echo=echo)
    except GateRefused as err:
        raise FlightError(str(err)) from None


def check_plot_support(plot: str | None) -> None:
    """Refuse ``--plot`` before a flight, not after it: an onboard install may have no matplotlib."""
    if plot and importlib.util.find_spec("matplotlib") is None:
        raise FlightError("--plot needs matplotlib: pip install matplotlib")


def fly_in_sim(
    policy: OnnxPolicy,
    label: str,
    *,
    episodes: int,
    seed: int,
    duration_s: float | None = None,
    dry_run: bool = False,
    max_action_rate: float | None = None,
    plot: str | None = None,
    video: str | None = None,
    echo: Echo = print,
) -> dict[str, float]:
    """Fly ``episodes`` episodes (seeds ``seed``, ``seed`` + 1, ...) of the env the policy's metadata names, each
    through the autopilot; echo every flight and transition; return `envs.evaluate.summarize`'s statistics."""
    from entropilot.deploy.links.sim import SimLink
    from entropilot.envs.evaluate import report_flights

    m = policy.metadata
    vehicle = SimLink.from_policy_metadata(m, render_mode="rgb_array" if video else None)
    try:
        echo(
            f"Flying {episodes} episode(s) of {m['env_id']} ({m['action_mode']}, {m['control_hz']} Hz, link sim"
            f"{', dry run' if dry_run else ''}) with {label} (run {m['training_run_id']}, sha256 {policy.sha256[:12]})"
        )
        start, results = time.perf_counter(), []
        for k in range(episodes):
            vehicle.seed, vehicle.record_frames = seed + k, bool(video) and k == 0
            vehicle.connect()
            autopilot = Autopilot(policy, vehicle, vehicle.target, dry_run=dry_run, max_action_rate=max_action_rate)
            log = autopilot.run(duration_s=duration_s or vehicle.settings.episode_seconds)
            echo(f"  seed {seed + k} autopilot: {log.summary()}")
            for transition in log.transitions:
                echo(f"    {transition}")
            results.append(vehicle.flight_result(log))
        return report_flights(
            results,
            start,
            m["control_hz"],
            plot,
            video,
            title=f"{m['env_id']} ({m['action_mode']}), {label}",
            echo=echo,
        )
    except ArmingRefused as err:
        raise FlightError(str(err)) from None
    finally:
        vehicle.close()


def fly_on_link(
    policy: OnnxPolicy,
    label: str,
    vehicle,
    *,
    target: np.ndarray | None = None,
    duration_s: float | None = None,
    dry_run: bool = False,
    max_action_rate: float | None = None,
    plot: str | None = None,
    echo: Echo = print,
) -> FlightLog:
    """One flight on a real-time vehicle link (`real_time_link`, not yet connected): connect, arm, fly ``duration_s``
    (default: the policy's episode length) to ``target`` (default: its env's target), land and disarm on the ground;
    echo the summary and every transition. Whether it went well is in the log (failsafes, final state)."""
    m = policy.metadata
    target = flight_target(m) if target is None else np.asarray(target, dtype=float)
    try:
        vehicle.connect()
    except LinkError as err:
        raise FlightError(str(err)) from None
    try:
        echo(
            f"Flying {label} ({m['action_mode']}, {m['control_hz']} Hz) on {vehicle!r} to "
            f"{target.tolist()}{', dry run' if dry_run else ''}"
        )
        autopilot = Autopilot(policy, vehicle, target, dry_run=dry_run, max_action_rate=max_action_rate)
        log = autopilot.run(duration_s=duration_s or episode_seconds(m))
    except ArmingRefused as err:
        raise FlightError(str(err)) from None
    finally:
        vehicle.close()
    echo(f"  autopilot: {log.summary()}")
    for transition in log.transitions:
        echo(f"    {transition}")
    if plot:
        _plot_flight_log(log, plot, title=f"{label} on {vehicle!r}", echo=echo)
    return log


def check_link_options(link: str, address: str | None, target, video: str | None, *, force: bool = False) -> None:
    """Refuse, before anything loads, options the chosen link does not use (a forgotten --link) and a malformed
    address (pymavlink and cflib would fail on it mid-connect)."""
    from entropilot.inputs import InputError

    if link == "sim":
        if address is not None:
            raise InputError("--connect", address, "is for --link mavlink or crazyflie; the sim link has no address")
        if target is not None:
            raise InputError("--target", target, "is for --link mavlink or crazyflie; the sim flies the env's target")
        if force:
            raise FlightError("--force overrides the readiness gate of --link mavlink or crazyflie; the sim has none")
        return
    if video is not None:
        raise InputError("--video", video, "records the sim's rendering; --link sim only")
    if address is None:
        return
    try:  # pymavlink and cflib are optional extras: their ImportError says how to install
        if link == "mavlink":
            from entropilot.deploy.links.mavlink import check_connection

            check_connection(address, "--connect")
        elif link == "crazyflie":
            from entropilot.deploy.links.crazyflie import check_uri

            check_uri(address, "--connect")
    except ImportError as err:
        raise FlightError(str(err)) from None


def real_time_link(link: str, metadata: dict, address: str | None):
    """The MAVLink or Crazyflie link an exported ctbr policy needs, not yet connected."""
    try:
        if link == "mavlink":  # pymavlink and cflib are optional extras: their ImportError says how to install
            from entropilot.deploy.links.mavlink import MavlinkLink

            return MavlinkLink.from_policy_metadata(metadata, address or DEFAULT_ADDRESSES[link])
        if link == "crazyflie":
            from entropilot.deploy.links.crazyflie import CrazyflieLink

            # cflib logs a failed connection with a whole traceback; the LinkError says it in one line.
            logging.getLogger("cflib").addHandler(logging.NullHandler())
            return CrazyflieLink.from_policy_metadata(metadata, address or DEFAULT_ADDRESSES[link])
    except (LinkError, ImportError) as err:
        raise FlightError(str(err)) from None
    raise FlightError(f"unknown link {link!r}; real-time links: {', '.join(DEFAULT_ADDRESSES)}")


def flight_target(metadata: dict) -> np.ndarray:
    """The target of the env the policy trained on (written by export; older files: the env's settings)."""
    if "target" in metadata:
        return np.array(metadata["target"], dtype=float)
    return np.array(env_settings(metadata).target, dtype=float)


def episode_seconds(metadata: dict) -> float:
    """The episode length of the env the policy trained on (written by export; older files: the env's settings)."""
    if "episode_seconds" in metadata:
        return float(metadata["episode_seconds"])
    return float(env_settings(metadata).episode_seconds)


def env_settings(metadata: dict):
    """The settings of the env an exported policy names: needs the simulator package, which files exported before
    the target and episode length were in their metadata leave no way around."""
    from entropilot.envs import ENVIRONMENTS

    m = metadata
    return ENVIRONMENTS[m["env_id"]][1].from_kwargs(
        {
            **m["env_kwargs"],
            "action_mode": m["action_mode"],
            "control_hz": m["control_hz"],
            "physics_hz": m["physics_hz"],
        }
    )


def _plot_flight_log(log: FlightLog, plot: str, title: str, echo: Echo) -> None:
    """The flight's telemetry positions (policy, hold and land alike) as a trajectory plot, like the sim's."""
    from entropilot.envs.evaluate import EpisodeResult
    from entropilot.envs.plots import plot_trajectories

    positions = log.positions[np.isfinite(log.positions).all(axis=1)]
    if not len(positions):
        echo("no telemetry positions to plot")
        return
    targets = np.repeat(log.target[None, :], len(positions), axis=0)
    result = EpisodeResult(
        0, not log.failsafes, float("nan"), len(positions), log.handover_distance, None, positions, targets
    )
    plot_trajectories([result], plot, title=title)
    echo(f"trajectory plot: {plot}")
