"""The `entropilot` command: parses arguments and calls the rooms; no logic of its own."""

from __future__ import annotations

import sys
import time

import click


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="entropilot")
def main() -> None:
    """Train quadrotor policies with entropy-controlled RL, track them in MLflow, fly them from ONNX."""


@main.command()
def envs() -> None:
    """List the environment ids with their spaces and rewards."""
    from entropilot.envs import ENVIRONMENTS, OBSERVATION_SIZE

    for env_id, (entry, settings_cls) in ENVIRONMENTS.items():
        doc = (settings_cls.__doc__ or "").strip().splitlines()[0]
        click.echo(f"{env_id:26s} obs Box({OBSERVATION_SIZE},)  action Box(4,) in [-1, 1]  {doc}")


@main.command()
@click.option("--env", "env_id", default="entropilot/Hover-v0", show_default=True, help="Single-drone env id.")
@click.option("--action-mode", type=click.Choice(["ctbr", "motors"]), default="ctbr", show_default=True)
@click.option("--episodes", default=3, show_default=True, type=click.IntRange(1))
@click.option("--seed", default=0, show_default=True, type=int)
@click.option("--plot", type=click.Path(dir_okay=False), default=None, help="Save a trajectory plot (PNG).")
@click.option("--video", type=click.Path(dir_okay=False), default=None, help="Save the first episode as a GIF.")
def demo(env_id: str, action_mode: str, episodes: int, seed: int, plot: str | None, video: str | None) -> None:
    """Fly the cascaded-PID baseline in the PyBullet simulator and report each flight."""
    import gymnasium as gym

    from entropilot.envs import SINGLE_AGENT_IDS
    from entropilot.envs.evaluate import run_episodes
    from entropilot.envs.pid import CascadedPID

    if env_id not in SINGLE_AGENT_IDS:
        raise click.BadParameter(f"{env_id!r} is not a single-drone env; choose one of {list(SINGLE_AGENT_IDS)}", param_hint="--env")
    env = gym.make(env_id, action_mode=action_mode, render_mode="rgb_array" if video else None)
    pid = CascadedPID.for_env(env)
    click.echo(f"Flying {episodes} episode(s) of {env_id} ({action_mode}) with the cascaded PID baseline")
    start = time.perf_counter()
    results = run_episodes(env, pid, episodes, seed, record_frames=bool(video), reset_controller=pid.reset)
    stats = _report_flights(results, start, env.unwrapped.settings.control_hz, plot, video,
                            title=f"{env_id} ({action_mode}), PID baseline")
    env.close()
    sys.exit(0 if stats["success_rate"] > 0 else 1)


def _report_flights(results, start: float, control_hz: int, plot: str | None, video: str | None, title: str) -> dict:
    """Echo one line per flown episode and the summary; save the plot and the first episode's GIF if asked."""
    from entropilot.envs.evaluate import summarize

    for r in results:
        outcome = "success" if r.success else (f"crash ({r.crash})" if r.crash else "no success")
        click.echo(f"  seed {r.seed}: {outcome:18s} {r.length} steps, return {r.episode_return:7.2f}, "
                   f"start {np.linalg.norm(r.positions[0] - r.targets[0]):.2f} m -> final {r.final_distance:.3f} m from target")
    stats = summarize(results)
    click.echo(f"success rate {stats['success_rate']:.2f}, mean final distance {stats['mean_final_distance']:.3f} m, "
               f"{sum(r.length for r in results) / (time.perf_counter() - start):.0f} steps/s")
    if plot:
        from entropilot.envs.plots import plot_trajectories

        plot_trajectories(results, plot, title=title)
        click.echo(f"trajectory plot: {plot}")
    if video:
        from entropilot.envs.plots import save_gif

        save_gif(results[0].frames, video, fps=control_hz)
        click.echo(f"video: {video}")
    return stats


@main.command()
@click.argument("config", type=click.Path(exists=True, dir_okay=False), required=False)
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE",
              help="Dotted override, e.g. --set entropy.control.target=1.2 (repeatable).")
@click.option("--resume", default=None, metavar="CHECKPOINT|RUN_DIR|RUN_ID",
              help="Continue a run from its last checkpoint, into the same MLflow run.")
def train(config: str | None, overrides: tuple[str, ...], resume: str | None) -> None:
    """Train a policy from an experiment YAML (validated before Ray starts)."""
    from entropilot.platform.config import ConfigError, load_config
    from entropilot.platform.train import train as run_training

    if (config is None) == (resume is None):
        raise click.UsageError("give a CONFIG file, or --resume (the config then comes from the checkpoint)")
    cfg, stop = None, {}
    if resume:
        # A resumed run keeps its config (its MLflow params); only when to stop may change.
        for item in overrides:
            key, _, value = item.partition("=")
            if not key.startswith("stop.") or not value:
                raise click.BadParameter(f"{item!r}: with --resume only stop.* overrides are allowed", param_hint="--set")
            import yaml

            stop[key.removeprefix("stop.")] = yaml.safe_load(value)
    else:
        try:
            cfg = load_config(config, list(overrides))
        except ConfigError as err:
            raise click.ClickException(str(err)) from None
    result = run_training(cfg, resume=resume, echo=click.echo, stop=stop or None)
    click.echo(f"run {result.run_id}: {result.iterations} iterations, {result.env_steps} env steps, "
               f"evaluation success {result.success_rate}")



@main.command()
@click.argument("source", metavar="CHECKPOINT|RUN_DIR|RUN_ID")
@click.option("-o", "--output", required=True, type=click.Path(dir_okay=False), help="The ONNX file to write.")
@click.option("--parity-batch", default=256, show_default=True, type=click.IntRange(1),
              help="Real observations (rolled out in the training env) on which onnxruntime must match torch.")
@click.option("--register", "registered_model", default=None, metavar="NAME",
              help="Also log the file to its training run in MLflow and register it under NAME.")
@click.option("--alias", default=None, help="With --register: point this alias (e.g. production) at the new version.")
def export(source: str, output: str, parity_batch: int, registered_model: str | None, alias: str | None) -> None:
    """Export a trained policy to one self-contained ONNX file (normalization and action mapping inside)."""
    from entropilot.deploy.export import ExportError, export_policy, log_to_mlflow

    if alias and not registered_model:
        raise click.UsageError("--alias needs --register NAME")
    try:
        result = export_policy(source, output, parity_batch=parity_batch)
    except ExportError as err:
        raise click.ClickException(str(err)) from None
    m = result.metadata
    click.echo(f"wrote {result.path} ({result.size_bytes} bytes) from {result.checkpoint}")
    click.echo(f"  {m['env_id']}, action mode {m['action_mode']}, {m['control_hz']} Hz, training run {result.training_run_id}")
    click.echo(f"  sha256 {result.sha256}")
    click.echo(f"  parity: max |onnxruntime - torch| = {result.parity_error:.2e} over {result.parity_samples} observations")
    if registered_model:
        logged = log_to_mlflow(result, registered_model=registered_model, alias=alias)
        click.echo(f"  MLflow: {logged['model_uri']} registered as {registered_model} v{logged['version']}"
                   + (f" ({logged['alias_uri']})" if alias else ""))


@main.command()
@click.argument("policy_file", metavar="POLICY.onnx", type=click.Path(exists=True, dir_okay=False))
@click.option("--link", type=click.Choice(["sim", "mavlink"]), default="sim", show_default=True,
              help="The vehicle link: sim = the PyBullet env the policy's metadata names; mavlink = a PX4-style "
                   "autopilot in offboard mode (see --connect; one flight; --episodes, --seed, --plot and --video "
                   "are the sim's).")
@click.option("--connect", "connection", default="udpout:127.0.0.1:14540", show_default=True,
              help="With --link mavlink: the pymavlink connection (udpout:HOST:PORT to a vehicle or `entropilot sitl` "
                   "listening there, udpin:HOST:PORT to listen).")
@click.option("--target", default=None, metavar="X,Y,Z",
              help="With --link mavlink: the point to fly to, in metres (world z up) [default: the env's target].")
@click.option("--episodes", default=3, show_default=True, type=click.IntRange(1))
@click.option("--seed", default=0, show_default=True, type=int)
@click.option("--duration", type=click.FloatRange(0, min_open=True), default=None,
              help="Seconds of policy control per flight, then land and disarm [default: the env's episode_seconds].")
@click.option("--dry-run", is_flag=True, help="Shadow mode: run the policy and log its actions; the vehicle only holds.")
@click.option("--max-action-rate", type=click.FloatRange(0), default=40.0, show_default=True,
              help="Action rate limit in normalized units per second (0: off).")
@click.option("--sha256", default=None, help="Refuse the file unless it has this SHA-256.")
@click.option("--plot", type=click.Path(dir_okay=False), default=None, help="Save a trajectory plot (PNG).")
@click.option("--video", type=click.Path(dir_okay=False), default=None, help="Save the first episode as a GIF.")
def fly(policy_file: str, link: str, connection: str, target: str | None, episodes: int, seed: int,
        duration: float | None, dry_run: bool, max_action_rate: float, sha256: str | None, plot: str | None,
        video: str | None) -> None:
    """Fly an exported ONNX policy through the onboard autopilot (safety guards, failsafe ladder) and report each flight."""
    from entropilot.deploy.autopilot import ArmingRefused, Autopilot
    from entropilot.deploy.links.sim import SimLink
    from entropilot.deploy.onnx_policy import OnnxPolicy, PolicyContractError

    try:
        policy = OnnxPolicy(policy_file, expected={"sha256": sha256} if sha256 else None)
    except PolicyContractError as err:
        raise click.ClickException(str(err)) from None
    m = policy.metadata
    if link == "mavlink":
        _fly_mavlink(policy, policy_file, connection, target, duration, dry_run, max_action_rate)
        return
    vehicle = SimLink.from_policy_metadata(m, render_mode="rgb_array" if video else None)
    try:
        click.echo(f"Flying {episodes} episode(s) of {m['env_id']} ({m['action_mode']}, {m['control_hz']} Hz, link {link}"
                   f"{', dry run' if dry_run else ''}) with {policy_file} (run {m['training_run_id']}, sha256 {policy.sha256[:12]})")
        start, results = time.perf_counter(), []
        for k in range(episodes):
            vehicle.seed, vehicle.record_frames = seed + k, bool(video) and k == 0
            vehicle.connect()
            log = Autopilot(policy, vehicle, vehicle.target, dry_run=dry_run, max_action_rate=max_action_rate or None
                            ).run(duration_s=duration or vehicle.settings.episode_seconds)
            click.echo(f"  seed {seed + k} autopilot: {log.summary()}")
            for transition in log.transitions:
                click.echo(f"    {transition}")
            results.append(vehicle.flight_result(log))
        stats = _report_flights(results, start, m["control_hz"], plot, video,
                                title=f"{m['env_id']} ({m['action_mode']}), {policy_file}")
    except ArmingRefused as err:
        raise click.ClickException(str(err)) from None
    finally:
        vehicle.close()
    sys.exit(0 if stats["success_rate"] > 0 else 1)


def _fly_mavlink(policy, policy_file: str, connection: str, target: str | None, duration: float | None, dry_run: bool,
                 max_action_rate: float) -> None:
    """One flight of ``policy`` on a MAVLink vehicle (offboard), then land and disarm on the ground."""
    from entropilot.deploy.autopilot import ArmingRefused, Autopilot
    from entropilot.deploy.links.base import LinkError
    from entropilot.deploy.links.mavlink import MavlinkLink
    from entropilot.envs import ENVIRONMENTS

    m = policy.metadata
    settings = ENVIRONMENTS[m["env_id"]][1].from_kwargs({**m["env_kwargs"], "action_mode": m["action_mode"],
                                                          "control_hz": m["control_hz"], "physics_hz": m["physics_hz"]})
    if target is None:
        point = np.array(settings.target, dtype=float)
    else:
        try:
            point = np.array([float(v) for v in target.split(",")])
        except ValueError:
            point = np.zeros(0)
        if point.shape != (3,):
            raise click.BadParameter(f"{target!r}: give X,Y,Z in metres", param_hint="--target")
    try:
        vehicle = MavlinkLink.from_policy_metadata(m, connection)
        vehicle.connect()
    except LinkError as err:
        raise click.ClickException(str(err)) from None
    try:
        click.echo(f"Flying {policy_file} ({m['action_mode']}, {m['control_hz']} Hz) on {vehicle!r} to "
                   f"{point.tolist()}{', dry run' if dry_run else ''}")
        log = Autopilot(policy, vehicle, point, dry_run=dry_run, max_action_rate=max_action_rate or None
                        ).run(duration_s=duration or settings.episode_seconds)
    except ArmingRefused as err:
        raise click.ClickException(str(err)) from None
    finally:
        vehicle.close()
    click.echo(f"  autopilot: {log.summary()}")
    for transition in log.transitions:
        click.echo(f"    {transition}")
    sys.exit(0 if not log.failsafes and log.final_state.value == "disarmed" else 1)


@main.command()
@click.option("--port", default=14540, show_default=True, type=click.IntRange(1, 65535),
              help="The UDP port the vehicle listens on (udpin).")
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--env", "env_id", default="entropilot/Hover-v0", show_default=True, help="Single-drone env id (its physics).")
@click.option("--rate", "rate_hz", default=60, show_default=True, type=click.IntRange(1),
              help="The vehicle's loop and telemetry rate (Hz; must divide the 240 Hz physics).")
@click.option("--seed", default=0, show_default=True, type=int, help="The env's start state.")
@click.option("--start", default=None, metavar="X,Y,Z", help="Start here, level and at rest, instead of the env's random start.")
@click.option("--duration", type=click.FloatRange(0, min_open=True), default=None, help="Stop after this many seconds.")
def sitl(port: int, host: str, env_id: str, rate_hz: int, seed: int, start: str | None, duration: float | None) -> None:
    """Run the PyBullet drone behind a PX4-like MAVLink endpoint (offboard, hold, land) on UDP, in real time."""
    from entropilot.deploy.sitl import serve

    env_kwargs = {}
    if start is not None:
        try:
            point = tuple(float(v) for v in start.split(","))
        except ValueError:
            point = ()
        if len(point) != 3:
            raise click.BadParameter(f"{start!r}: give X,Y,Z in metres", param_hint="--start")
        env_kwargs = {"start_low": point, "start_high": point, "start_tilt_deg": 0.0, "start_velocity": 0.0}
    serve(port, host, duration_s=duration, echo=click.echo, env_id=env_id, env_kwargs=env_kwargs, rate_hz=rate_hz,
          seed=seed)


import numpy as np  # noqa: E402  (used by the commands above; imported late so --help stays instant)

if __name__ == "__main__":
    main()
