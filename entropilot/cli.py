"""The `entropilot` command: parses arguments and calls the rooms; no logic of its own. (Long only because every
command and option is declared here with its help text.)"""

from __future__ import annotations

import contextlib
import math
import os
import sys
import time
from pathlib import Path

import click

from entropilot.cli_support import SEED, Commands, Finite, check_outputs, check_tracking_uri


@click.group(cls=Commands, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="entropilot")
def main() -> None:
    """Train quadrotor policies with entropy-controlled RL, track them in MLflow, fly them from ONNX."""


@main.command()
def envs() -> None:
    """List the environment ids with their spaces and rewards, and whether the simulator runs compiled."""
    import gymnasium as gym

    from entropilot.envs import ENVIRONMENTS, OBSERVATION_SIZE, action_space, compiled

    for env_id, (_, settings_cls) in ENVIRONMENTS.items():
        doc = (settings_cls.__doc__ or "").strip().splitlines()[0]
        space = action_space(env_id)
        action = "Box(4,) in [-1, 1]" if isinstance(space, gym.spaces.Box) else f"MultiDiscrete({space.nvec.tolist()})"
        click.echo(f"{env_id:28s} obs Box({OBSERVATION_SIZE},)  action {action:24s} {doc}")
    click.echo(
        "batched: gymnasium.make_vec(id, num_envs=N) or entropilot.envs.make_vector_env(id, N) puts N drones of "
        "Hover-v0 or Waypoint-v0 in one PyBullet world (a Gymnasium VectorEnv)"
    )
    interpreted = [name for name, is_compiled in compiled.status().items() if not is_compiled]
    if interpreted:
        click.echo(
            f"simulator: {', '.join(interpreted)} run as plain Python (~1.7x slower steps): no C compiler at install, "
            f"{compiled.PURE_PYTHON_VARIABLE} set, or edited since the build (`pip install -e .` rebuilds)"
        )
    else:
        click.echo("simulator: compiled (Cython)")


@main.command()
@click.option("--env", "env_id", default="entropilot/Hover-v0", show_default=True, help="Single-drone env id.")
@click.option("--action-mode", type=click.Choice(["ctbr", "motors"]), default="ctbr", show_default=True)
@click.option("--episodes", default=3, show_default=True, type=click.IntRange(1))
@click.option("--seed", default=0, show_default=True, type=SEED)
@click.option("--plot", type=click.Path(dir_okay=False), default=None, help="Save a trajectory plot (PNG).")
@click.option("--video", type=click.Path(dir_okay=False), default=None, help="Save the first episode as a GIF.")
def demo(env_id: str, action_mode: str, episodes: int, seed: int, plot: str | None, video: str | None) -> None:
    """Fly the cascaded-PID baseline in the PyBullet simulator and report each flight (a discrete-command env: the
    nearest-command baseline over its velocity loop)."""
    import gymnasium as gym

    from entropilot.envs import COMMAND_ENVS, SINGLE_AGENT_IDS
    from entropilot.envs.commands import NearestCommand
    from entropilot.envs.evaluate import report_flights, run_episodes
    from entropilot.envs.pid import CascadedPID

    if env_id not in SINGLE_AGENT_IDS:
        raise click.BadParameter(
            f"{env_id!r} is not a single-drone env; choose one of {list(SINGLE_AGENT_IDS)}", param_hint="--env"
        )
    check_outputs(plot=plot, video=video)
    env = gym.make(env_id, action_mode=action_mode, render_mode="rgb_array" if video else None)
    pid = NearestCommand.for_env(env) if env_id in COMMAND_ENVS else CascadedPID.for_env(env)
    baseline = "nearest-command" if env_id in COMMAND_ENVS else "cascaded PID"
    click.echo(f"Flying {episodes} episode(s) of {env_id} ({action_mode}) with the {baseline} baseline")
    start = time.perf_counter()
    results = run_episodes(env, pid, episodes, seed, record_frames=bool(video), reset_controller=pid.reset)
    title = f"{env_id} ({action_mode}), {baseline} baseline"
    stats = report_flights(results, start, env.unwrapped.settings.control_hz, plot, video, title, echo=click.echo)
    env.close()
    sys.exit(0 if stats["success_rate"] > 0 else 1)


@main.command()
@click.argument("config", type=click.Path(exists=True, dir_okay=False), required=False)
@click.option(
    "--set",
    "overrides",
    multiple=True,
    metavar="KEY=VALUE",
    help="Dotted override, e.g. --set entropy.control.target=1.2 (repeatable).",
)
@click.option(
    "--resume",
    default=None,
    metavar="CHECKPOINT|RUN_DIR|RUN_ID",
    help="Continue a run from its last checkpoint, into the same MLflow run.",
)
def train(config: str | None, overrides: tuple[str, ...], resume: str | None) -> None:
    """Train a policy from an experiment YAML (validated before Ray starts)."""
    from entropilot.platform.config import load_config
    from entropilot.platform.train import prepare_resume, prepare_run
    from entropilot.platform.train import train as run_training

    if (config is None) == (resume is None):
        raise click.UsageError("give a CONFIG file, or --resume (the config then comes from the checkpoint)")
    checkpoint, resumed_with = None, None
    if resume:
        # A resumed run keeps its config (its MLflow params); only when to stop may change.
        cfg, checkpoint, resumed_with = prepare_resume(resume, overrides, warn=lambda line: click.echo(line, err=True))
    else:
        cfg = prepare_run(load_config(config, list(overrides)))
    result = run_training(cfg, resume=checkpoint, echo=click.echo, resumed_with=resumed_with)
    click.echo(
        f"run {result.run_id}: {result.iterations} iterations, {result.env_steps} env steps, "
        f"evaluation success {result.success_rate}"
    )


@main.command()
@click.argument("config", type=click.Path(exists=True, dir_okay=False))
@click.option(
    "--grid",
    multiple=True,
    metavar="KEY=V1,V2,...",
    help="Try each value (repeatable: all combinations), e.g. --grid entropy.init.threshold=-5,-4,-3; "
    "KEY=[[64,64],[128,128]] for values holding commas.",
)
@click.option(
    "--random",
    "random_",
    multiple=True,
    metavar="KEY=DIST:ARGS",
    help="Sample KEY from uniform:LOW:HIGH, loguniform:LOW:HIGH, randint:LOW:HIGH or choice:A,B,... "
    "(repeatable; with --search random or optuna).",
)
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE", help="Dotted override of the base config.")
@click.option(
    "--search",
    type=click.Choice(["grid", "random", "optuna"]),
    default=None,
    help="[default: grid, or random when --random is given]",
)
@click.option(
    "--samples",
    type=click.IntRange(1),
    default=None,
    help="Random/Optuna trials (x the --grid combinations for random) [default: 10].",
)
@click.option(
    "--max-concurrent",
    type=click.IntRange(1),
    default=None,
    help="Trials at once [default: as many as the Ray cluster holds].",
)
@click.option("--metric", default="success_rate", show_default=True, help="What the best trial has most (or least) of.")
@click.option("--mode", type=click.Choice(["max", "min"]), default="max", show_default=True)
@click.option("--asha/--no-asha", default=True, show_default=True, help="Stop hopeless trials early (ASHA).")
@click.option(
    "--grace-period",
    type=click.IntRange(1),
    default=None,
    help="Iterations before ASHA first judges a trial [default: evaluation.interval].",
)
@click.option(
    "--sweep-dir",
    type=click.Path(file_okay=False),
    default=None,
    help="Trials' checkpoints, summary and best config [default: runs/<name>-sweep-<time>].",
)
def sweep(
    config: str,
    grid: tuple[str, ...],
    random_: tuple[str, ...],
    overrides: tuple[str, ...],
    search: str | None,
    samples: int | None,
    max_concurrent: int | None,
    metric: str,
    mode: str,
    asha: bool,
    grace_period: int | None,
    sweep_dir: str | None,
) -> None:
    """Tune config values (entropy thresholds...) with Ray Tune: one training run per trial, all as child runs
    of one MLflow run; prints a summary and writes the best config as YAML for `entropilot train`."""
    from entropilot.platform.config import load_config
    from entropilot.platform.sweep_plan import plan_sweep

    plan = plan_sweep(
        load_config(config, list(overrides)),
        grid,
        random_,
        search=search,
        samples=samples,
        metric=metric,
        mode=mode,
        asha=asha,
        grace_period=grace_period,
        max_concurrent=max_concurrent,
        sweep_dir=sweep_dir,
    )
    from entropilot.platform.sweep import run_sweep  # Ray Tune and MLflow: only for a plan that holds

    result = run_sweep(plan, echo=click.echo)
    if result.best is None:
        sys.exit(1)


_ADDRESS_OPTION = click.option(
    "--address",
    envvar=["RAY_API_SERVER_ADDRESS", "RAY_ADDRESS"],
    default=None,
    metavar="http://HEAD:8265",
    help="The Ray cluster's dashboard [default: RAY_API_SERVER_ADDRESS, else RAY_ADDRESS].",
)


def _cluster(address: str | None):
    import logging

    from entropilot.platform.jobs import Cluster

    logging.getLogger("ray").setLevel(logging.WARNING)  # Ray's client logs each upload step and socket close at INFO
    if not address:
        raise click.UsageError(
            "no Ray cluster given: pass --address http://HEAD:8265 (the head's dashboard) or set RAY_API_SERVER_ADDRESS"
        )
    return Cluster(address)


def _follow_job(cluster, job_id: str) -> None:
    """Echo the job's logs until it ends; exit 0 only if it succeeded."""
    from entropilot.platform.jobs import ClusterError

    try:
        status = cluster.follow(job_id, echo=click.echo)
    except ClusterError as err:
        raise click.ClickException(str(err)) from None
    except KeyboardInterrupt:
        click.echo(
            f"\nstopped following; the job runs on. `entropilot jobs logs {job_id} --follow` follows it again, "
            f"`entropilot jobs stop {job_id}` stops it"
        )
        sys.exit(130)
    click.echo(f"job {job_id}: {status}")
    sys.exit(0 if status == "SUCCEEDED" else 1)


@main.command()
@click.argument("config", type=click.Path(exists=True, dir_okay=False))
@_ADDRESS_OPTION
@click.option(
    "--set", "overrides", multiple=True, metavar="KEY=VALUE", help="Dotted override (repeatable), as for train."
)
@click.option(
    "--follow/--no-follow",
    default=True,
    show_default=True,
    help="Follow the job's logs until it ends (exit status = the job's success).",
)
def submit(config: str, address: str | None, overrides: tuple[str, ...], follow: bool) -> None:
    """Train on a Ray cluster: submit `entropilot train CONFIG` as a Ray job (this project as its working dir)."""
    from entropilot.platform.config import load_config
    from entropilot.platform.jobs import tracking_uri_for_cluster

    cfg = load_config(config, list(overrides))
    tracking_uri = tracking_uri_for_cluster(cfg, address) if address else None
    cluster = _cluster(address)
    cluster.check_python(echo=click.echo)
    job = cluster.submit_training(config, overrides, cfg, tracking_uri, echo=click.echo)
    click.echo(f"submitted job {job.job_id}: {job.entrypoint}")
    click.echo(f"  dashboard {job.dashboard_url}\n  MLflow {job.tracking_uri}")
    if follow:
        _follow_job(cluster, job.job_id)
    else:
        click.echo(f"  follow it with `entropilot jobs logs {job.job_id} --follow`")


@main.group()
def jobs() -> None:
    """List, follow and stop training jobs on a Ray cluster."""


@jobs.command("list")
@_ADDRESS_OPTION
def jobs_list(address: str | None) -> None:
    """The cluster's jobs, oldest first."""
    from entropilot.platform.jobs import ClusterError

    try:
        found = _cluster(address).list_jobs()
    except ClusterError as err:
        raise click.ClickException(str(err)) from None
    for job in found:
        started = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(job.start_time / 1000)) if job.start_time else "-"
        click.echo(f"{job.submission_id or job.job_id:32s} {str(job.status):10s} {started}  {job.entrypoint}")
    if not found:
        click.echo("no jobs")


@jobs.command("logs")
@click.argument("job_id")
@_ADDRESS_OPTION
@click.option("--follow", is_flag=True, help="Keep following until the job ends (exit status = its success).")
def jobs_logs(job_id: str, address: str | None, follow: bool) -> None:
    """A job's logs so far (or followed to its end)."""
    from entropilot.platform.jobs import ClusterError

    cluster = _cluster(address)
    if follow:
        _follow_job(cluster, job_id)
    else:
        try:
            click.echo(cluster.logs(job_id), nl=False)
        except ClusterError as err:
            raise click.ClickException(str(err)) from None


@jobs.command("stop")
@click.argument("job_id")
@_ADDRESS_OPTION
def jobs_stop(job_id: str, address: str | None) -> None:
    """Stop a running job."""
    from entropilot.platform.jobs import ClusterError

    try:
        stopped = _cluster(address).stop(job_id)
    except ClusterError as err:
        raise click.ClickException(str(err)) from None
    click.echo(f"job {job_id}: {'stop requested' if stopped else 'had already ended'}")


_CONDITIONS_OPTION = click.option(
    "--conditions",
    type=click.Path(exists=True, dir_okay=False),
    default=None,
    help="The readiness matrix (YAML; `extends: default` adds to the shipped one) [default: "
    "entropilot/deploy/readiness.yaml].",
)
_WORKERS_OPTION = click.option(
    "--workers",
    type=click.IntRange(1),
    default=lambda: os.cpu_count() or 1,
    show_default="the CPU count",
    help="Conditions flown at once, each in a process of its own.",
)


def _readiness_config(conditions: str | None, episodes: int | None = None):
    from entropilot.deploy.readiness_config import load_readiness_config

    config = load_readiness_config(conditions)
    return config if episodes is None else config.model_copy(update={"episodes": episodes})


@main.command()
@click.argument("source", metavar="POLICY.onnx|CHECKPOINT|RUN_DIR|RUN_ID|models:/NAME@ALIAS")
@_CONDITIONS_OPTION
@click.option(
    "--episodes",
    type=click.IntRange(1, 100_000),
    default=None,
    help="Held-out episodes per condition [default: the matrix's].",
)
@click.option(
    "--output-dir",
    default="readiness",
    show_default=True,
    type=click.Path(file_okay=False),
    help="Where readiness.md, .json and .png go (and policy.onnx, exported from a checkpoint or run).",
)
@click.option(
    "--stamp",
    is_flag=True,
    help="Write the report and verdict into POLICY.onnx (sealed again: its SHA-256 changes, its network does not); "
    "`fly` on a vehicle needs it. A file exported here from a checkpoint or run is always stamped.",
)
@_WORKERS_OPTION
@click.option(
    "--tracking-uri",
    default=None,
    metavar="URI",
    help="MLflow, for a run id, a models:/ source and the logging [default: MLFLOW_TRACKING_URI, else sqlite:///mlflow.db].",
)
@click.option(
    "--mlflow/--no-mlflow",
    "log_mlflow",
    default=True,
    show_default=True,
    help="Log the report to the training run (and model version).",
)
@click.option("--cache-dir", type=click.Path(file_okay=False), default=None, help="For a models:/ policy, as for fly.")
def evaluate(
    source: str,
    conditions: str | None,
    episodes: int | None,
    output_dir: str,
    stamp: bool,
    workers: int,
    tracking_uri: str | None,
    log_mlflow: bool,
    cache_dir: str | None,
) -> None:
    """Flight readiness: fly a policy and the cascaded PID through a matrix of conditions (nominal, heavier and
    lighter vehicle, weak thrust, slow motors, wind and gusts, sensor noise, latency, wider starts) on held-out seeds;
    print the table, write readiness.md/.json/.png, log to MLflow. Exit status 1 if the policy fails the gate."""
    from entropilot.deploy.readiness_record import evaluate_source
    from entropilot.inputs import writable_folder

    config = _readiness_config(conditions, episodes)
    writable_folder(output_dir, "--output-dir")
    check_tracking_uri(tracking_uri)
    if cache_dir is not None:
        writable_folder(cache_dir, "--cache-dir")
    if tracking_uri:
        import mlflow

        mlflow.set_tracking_uri(tracking_uri)
    evaluated = evaluate_source(
        source,
        config,
        out_dir=output_dir,
        stamp=stamp,
        workers=workers,
        tracking_uri=tracking_uri,
        cache_dir=cache_dir,
        log_mlflow=log_mlflow,
        echo=click.echo,
    )
    sys.exit(0 if evaluated.report["gate"]["passed"] else 1)


@main.command()
@click.argument("source", metavar="CHECKPOINT|RUN_DIR|RUN_ID|models:/NAME@ALIAS|POLICY.onnx")
@click.option(
    "-o",
    "--output",
    required=True,
    type=click.Path(),
    help="The ONNX file to write; with --format c, the folder for policy.h, policy.c and policy.onnx.",
)
@click.option(
    "--format",
    "output_format",
    type=click.Choice(["onnx", "c"]),
    default="onnx",
    show_default=True,
    help="c: dependency-free C99 generated from the ONNX graph (for a flight computer), parity-checked against "
    "onnxruntime when a C compiler is present. A POLICY.onnx source exports to c only.",
)
@click.option(
    "--overwrite",
    is_flag=True,
    help="Replace OUTPUT (with --format c: its policy.h, policy.c, policy.onnx) even if entropilot did not write it.",
)
@click.option(
    "--parity-batch",
    default=256,
    show_default=True,
    type=click.IntRange(1, 100_000),
    help="Real observations (rolled out in the training env) on which onnxruntime must match torch.",
)
@click.option(
    "--register",
    "registered_model",
    default=None,
    metavar="NAME",
    help="Also log the file to its training run in MLflow and register it under NAME.",
)
@click.option("--alias", default=None, help="With --register: point this alias (e.g. production) at the new version.")
@click.option(
    "--tracking-uri",
    default=None,
    metavar="URI",
    help="The MLflow server (or store) for a run id, a models:/ source and --register "
    "[default: MLFLOW_TRACKING_URI, else sqlite:///mlflow.db].",
)
@_CONDITIONS_OPTION
@click.option(
    "--readiness-dir",
    default=None,
    type=click.Path(file_okay=False),
    help="With --register: where the readiness report files go [default: OUTPUT's folder/readiness].",
)
@_WORKERS_OPTION
@click.option(
    "--force",
    is_flag=True,
    help="With --register: register even if the readiness report fails the gate (recorded as the tag "
    "entropilot.readiness.forced on the run and the model version).",
)
def export(
    source: str,
    output: str,
    output_format: str,
    overwrite: bool,
    parity_batch: int,
    registered_model: str | None,
    alias: str | None,
    tracking_uri: str | None,
    conditions: str | None,
    readiness_dir: str | None,
    workers: int,
    force: bool,
) -> None:
    """Export a trained policy to one self-contained ONNX file (normalization and action mapping inside), or to C.

    A registered model (models:/NAME@ALIAS or models:/NAME/VERSION) is not exported again: its registered file is
    downloaded, checked against the SHA-256 recorded when it was registered and against its seal, and written to
    OUTPUT. Those bytes are the ones that were approved; a fresh export would differ from them as soon as entropilot
    or torch changed (both are named inside the file), and would need the checkpoint, torch and ray.

    With --format c, the ONNX file (exported, pulled, or SOURCE itself) is written to OUTPUT/policy.onnx and the C
    generated from it beside it: `entropilot_policy(obs, action)`, the metadata as macros.
    """
    from entropilot.deploy.export_inputs import check_c_output, check_output
    from entropilot.deploy.registry import check_registry_names, is_model_uri

    if alias and not registered_model:
        raise click.UsageError("--alias needs --register NAME")
    if (force or conditions or readiness_dir) and not registered_model:
        raise click.UsageError("--force, --conditions and --readiness-dir go with --register NAME")
    check_tracking_uri(tracking_uri)
    onnx_source = source.endswith(".onnx") and Path(source).is_file()
    if output_format == "c":
        if registered_model:
            raise click.UsageError("--register logs an ONNX file: export and register it first, then --format c")
        check_c_output(output, overwrite=overwrite)  # a folder
        output = str(Path(output) / "policy.onnx")
    elif onnx_source:
        raise click.UsageError(f"{source} is an exported file already; --format c generates C from it")
    else:
        check_output(output, overwrite=overwrite)  # a file
    check_registry_names(registered_model, alias)
    # Registration flies the file through the readiness matrix first (deploy/readiness_record.py: register_if_ready)
    readiness = None
    if registered_model:
        from entropilot.inputs import writable_folder

        readiness = {
            "config": _readiness_config(conditions),
            "out_dir": writable_folder(readiness_dir or Path(output).parent / "readiness", "--readiness-dir"),
            "force": force,
            "workers": workers,
        }
    if is_model_uri(source):
        if registered_model:
            raise click.UsageError(f"{source} is registered already; --register applies to a checkpoint or run")
        _export_registered(source, output, tracking_uri)
    elif not onnx_source:
        _export_onnx(source, output, parity_batch, registered_model, alias, tracking_uri, overwrite, readiness)
    if output_format == "c":
        _export_c(source if onnx_source else output, str(Path(output).parent), parity_batch)


def _export_onnx(
    source: str,
    output: str,
    parity_batch: int,
    registered_model: str | None,
    alias: str | None,
    tracking_uri: str | None,
    overwrite: bool,
    readiness: dict | None,
) -> None:
    if tracking_uri:
        import mlflow

        mlflow.set_tracking_uri(tracking_uri)
    from entropilot.deploy.export_inputs import resolve_checkpoint

    with contextlib.ExitStack() as stack:
        checkpoint = resolve_checkpoint(source, stack)  # before torch loads: a bad source is refused at once
        if readiness is not None:
            from entropilot.deploy.readiness_record import check_trained_env

            check_trained_env(readiness["config"], checkpoint)
        from entropilot.deploy.export import export_policy

        result = export_policy(checkpoint, output, parity_batch=parity_batch, overwrite=overwrite)
    m = result.metadata
    click.echo(f"wrote {result.path} ({result.size_bytes} bytes) from {result.checkpoint}")
    click.echo(
        f"  {m['env_id']}, action mode {m['action_mode']}, {m['control_hz']} Hz, training run {result.training_run_id}"
    )
    click.echo(f"  sha256 {result.sha256}")
    if "command" in m:  # a categorical policy: its indices, which may differ only at logit ties
        differ = round(result.parity_error * result.parity_samples)
        click.echo(f"  parity: command indices differ on {differ} of {result.parity_samples} observations")
    else:
        click.echo(
            f"  parity: max |onnxruntime - torch| = {result.parity_error:.2e} over {result.parity_samples} observations"
        )
    if registered_model:
        # Only a policy that clears the readiness gate (or --force) is registered, with the report inside it (see
        # deploy/readiness_record.py for the hash order).
        from entropilot.deploy.gate import GateRefused
        from entropilot.deploy.readiness_record import register_if_ready

        try:
            logged = register_if_ready(
                result,
                registered_model=registered_model,
                alias=alias,
                tracking_uri=tracking_uri,
                echo=click.echo,
                **readiness,
            )
        except GateRefused as err:
            raise click.ClickException(f"{err}; not registered") from None
        click.echo(
            f"  MLflow: {logged['model_uri']} registered as {registered_model} v{logged['version']}"
            + (f" ({logged['alias_uri']})" if alias else "")
            + f", sha256 {logged['sha256']}"
        )


def _export_c(onnx_path: str, directory: str, parity_batch: int) -> None:
    """``export --format c``: C generated from the (already verified or just exported) ONNX file."""
    from entropilot.deploy.c_export import CExportError, export_c
    from entropilot.deploy.contract import PolicyContractError

    try:
        result = export_c(onnx_path, directory, parity_batch=parity_batch)
    except (CExportError, PolicyContractError) as err:
        raise click.ClickException(str(err)) from None
    sources = result.sources
    click.echo(f"wrote {', '.join(str(f) for f in result.files)}")
    click.echo(f"  generated from {onnx_path} (sha256 {sources.onnx_sha256}): {' -> '.join(sources.ops)}")
    size = len(sources.metadata["observation_names"])
    click.echo(f"  {sources.parameters} float32 constants; entropilot_policy(obs[{size}], action[4])")
    if result.parity_error is None:
        click.echo("  parity: NOT checked (no C compiler here: set CC or install gcc)")
    else:
        click.echo(
            f"  parity: max |C - onnxruntime| = {result.parity_error:.2e} over {result.parity_samples} observations"
        )


def _export_registered(source: str, output: str, tracking_uri: str | None) -> None:
    """``export models:/...``: the registered file itself, verified, copied to ``output``."""
    import shutil
    import tempfile

    from entropilot.deploy.fly import pull_registered

    with tempfile.TemporaryDirectory(prefix="entropilot-export-") as tmp:
        pulled = pull_registered(source, tracking_uri=tracking_uri, cache_dir=tmp, echo=click.echo)
        Path(output).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(pulled.path, output)
    click.echo(f"wrote {output} ({Path(output).stat().st_size} bytes): the registered file of {source}")
    click.echo(f"  sha256 {pulled.sha256}")


@main.command()
@click.argument("policy_file", metavar="POLICY.onnx|models:/NAME@ALIAS")
@click.option(
    "--link",
    type=click.Choice(["sim", "mavlink", "crazyflie"]),
    default="sim",
    show_default=True,
    help="The vehicle link: sim = the PyBullet env the policy's metadata names; mavlink = a PX4-style "
    "autopilot in offboard mode; crazyflie = a Crazyflie over cflib in rate mode. mavlink and crazyflie "
    "fly one flight (--episodes, --seed and --video are the sim's).",
)
@click.option(
    "--connect",
    "--uri",
    "connection",
    default=None,
    help="The vehicle's address. mavlink: a pymavlink connection [default: udpout:127.0.0.1:14540, to a "
    "vehicle or `entropilot sitl` listening there; udpin:HOST:PORT listens; a serial port runs at "
    "115200 baud: route faster ones to UDP with mavlink-router]. crazyflie: a cflib URI "
    "[default: radio://0/80/2M/E7E7E7E7E7].",
)
@click.option(
    "--target",
    default=None,
    metavar="X,Y,Z",
    help="With mavlink or crazyflie: the point to fly to, in metres (world z up) [default: the env's target].",
)
@click.option("--episodes", default=3, show_default=True, type=click.IntRange(1))
@click.option("--seed", default=0, show_default=True, type=SEED)
@click.option(
    "--duration",
    type=Finite(0, min_open=True),
    default=None,
    help="Seconds of policy control per flight, then land and disarm [default: the env's episode_seconds].",
)
@click.option(
    "--dry-run",
    is_flag=True,
    help="Shadow mode: run the policy and its guards on the vehicle's telemetry and log what would be sent; nothing "
    "is sent (no arming, no mode change). In simulation the drone holds on its own controller.",
)
@click.option(
    "--max-action-rate",
    type=Finite(0),
    default=40.0,
    show_default=True,
    help="Action rate limit in normalized units per second (0: off).",
)
@click.option("--sha256", default=None, help="Refuse the file unless it has this SHA-256.")
@click.option(
    "--force",
    is_flag=True,
    help="mavlink/crazyflie: fly although the file's readiness report fails its gate or is missing (a warning, "
    "logged). Without it such a policy is refused before connecting.",
)
@click.option(
    "--runtime",
    type=click.Choice(["onnx", "c"]),
    default="onnx",
    show_default=True,
    help="What computes the actions: onnxruntime, or the C generated from the file (`export --format c`), compiled "
    "here with the host's C compiler; same contract checks either way.",
)
@click.option(
    "--tracking-uri",
    default=None,
    metavar="URI",
    help="For a models:/ policy: the MLflow registry [default: MLFLOW_TRACKING_URI, else sqlite:///mlflow.db].",
)
@click.option(
    "--cache-dir",
    type=click.Path(file_okay=False),
    default=None,
    help="For a models:/ policy: where verified copies are kept "
    "[default: $ENTROPILOT_MODEL_CACHE, else ~/.cache/entropilot/models].",
)
@click.option("--plot", type=click.Path(dir_okay=False), default=None, help="Save a trajectory plot (PNG).")
@click.option("--video", type=click.Path(dir_okay=False), default=None, help="Save the first episode as a GIF.")
def fly(
    policy_file: str,
    link: str,
    connection: str | None,
    target: str | None,
    episodes: int,
    seed: int,
    duration: float | None,
    dry_run: bool,
    max_action_rate: float,
    sha256: str | None,
    force: bool,
    runtime: str,
    tracking_uri: str | None,
    cache_dir: str | None,
    plot: str | None,
    video: str | None,
) -> None:
    """Fly an exported ONNX policy through the onboard autopilot (safety guards, failsafe ladder); report each flight.

    POLICY is a file from `entropilot export`, or a registered model (models:/NAME@ALIAS, models:/NAME/VERSION): that
    one is pulled from the MLflow registry, checked against the SHA-256 recorded at registration and its seal, and
    kept in a local cache. On a vehicle (mavlink, crazyflie) the file must carry a readiness report that clears its
    gate (`entropilot evaluate --stamp`, or `export --register`), or --force."""
    from entropilot.deploy import fly as flights
    from entropilot.inputs import sha256_digest, writable_folder

    flights.check_link_options(link, connection, target, video, force=force)
    point = _xyz(target, "--target") if target is not None else None
    rate_limit = max_action_rate or None
    check_outputs(plot=plot, video=video)
    check_tracking_uri(tracking_uri)
    if sha256 is not None:
        sha256 = sha256_digest(sha256, "--sha256")
    if cache_dir is not None:
        writable_folder(cache_dir, "--cache-dir")
    try:
        flights.check_plot_support(plot)
        policy = flights.load_policy(
            policy_file,
            sha256=sha256,
            tracking_uri=tracking_uri,
            cache_dir=cache_dir,
            runtime=runtime,
            echo=click.echo,
        )
        label = policy_file if runtime == "onnx" else f"{policy_file} as C"
        if link == "sim":
            stats = flights.fly_in_sim(
                policy,
                label,
                episodes=episodes,
                seed=seed,
                duration_s=duration,
                dry_run=dry_run,
                max_action_rate=rate_limit,
                plot=plot,
                video=video,
                echo=click.echo,
            )
            sys.exit(0 if stats["success_rate"] > 0 else 1)
        flights.check_readiness(policy, force=force, dry_run=dry_run, echo=click.echo)
        vehicle = flights.real_time_link(link, policy.metadata, connection)
        log = flights.fly_on_link(
            policy,
            label,
            vehicle,
            target=point,
            duration_s=duration,
            dry_run=dry_run,
            max_action_rate=rate_limit,
            plot=plot,
            echo=click.echo,
        )
    except flights.FlightError as err:
        raise click.ClickException(str(err)) from None
    sys.exit(0 if not log.failsafes and log.final_state.value == "disarmed" else 1)


def _xyz(text: str, option: str) -> tuple[float, float, float]:
    """``X,Y,Z`` in metres, finite, or a usage error naming the option."""
    try:
        point = tuple(float(v) for v in text.split(","))
    except ValueError:
        point = ()
    if len(point) != 3 or not all(math.isfinite(v) for v in point):
        raise click.BadParameter(f"{text!r}: give X,Y,Z in metres (three finite numbers)", param_hint=option)
    return point


@main.command()
@click.option(
    "--port",
    default=14540,
    show_default=True,
    type=click.IntRange(1, 65535),
    help="The UDP port the vehicle listens on (udpin).",
)
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option(
    "--env", "env_id", default="entropilot/Hover-v0", show_default=True, help="Single-drone env id (its physics)."
)
@click.option(
    "--rate",
    "rate_hz",
    default=60,
    show_default=True,
    type=click.IntRange(1),
    help="The vehicle's loop and telemetry rate (Hz; must divide the 240 Hz physics).",
)
@click.option("--seed", default=0, show_default=True, type=SEED, help="The env's start state.")
@click.option(
    "--start", default=None, metavar="X,Y,Z", help="Start here, level and at rest, instead of the env's random start."
)
@click.option("--duration", type=Finite(0, min_open=True), default=None, help="Stop after this many seconds.")
def sitl(port: int, host: str, env_id: str, rate_hz: int, seed: int, start: str | None, duration: float | None) -> None:
    """Run the PyBullet drone behind a PX4-like MAVLink endpoint (offboard, hold, land) on UDP, in real time."""
    from entropilot.deploy.sitl import check_sitl, serve

    env_kwargs = {}
    if start is not None:
        point = _xyz(start, "--start")
        env_kwargs = {"start_low": point, "start_high": point, "start_tilt_deg": 0.0, "start_velocity": 0.0}
    check_sitl(port, host, env_id=env_id, env_kwargs=env_kwargs, rate_hz=rate_hz)
    serve(
        port,
        host,
        duration_s=duration,
        echo=click.echo,
        env_id=env_id,
        env_kwargs=env_kwargs,
        rate_hz=rate_hz,
        seed=seed,
    )


if __name__ == "__main__":
    main()
