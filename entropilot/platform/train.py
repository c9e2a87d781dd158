"""The training loop: config -> RLlib algorithm on Ray -> entropy-aware init -> iterations with evaluation,
checkpoints and MLflow tracking; resumable into the same MLflow run."""

from __future__ import annotations

import importlib
import json
import math
import os
import shutil
import signal
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from entropilot.inputs import InputError
from entropilot.platform.checkpoints import BEST_CHECKPOINT, CONFIG_FILE, STATE_FILE, prune_checkpoints
from entropilot.platform.config import ExperimentConfig, dump_config
from entropilot.platform.names import (
    BEST_CHECKPOINT_TAG,
    CHECKPOINT_TAG,
    ENTROPY_COLLAPSE_TAG,
    ENTROPY_INIT_TAG,
    ENTROPY_PER_DIM,
    ENV_RUNNER_NODES_TAG,
    RESUMED_WITH_TAG,
    Metric,
)
from entropilot.platform.preflight import prepare_resume, prepare_run  # noqa: F401 (prepare_resume: for the CLI)
from entropilot.policies import learner_metrics

# The module a single-drone run trains (what checkpoint readers such as the ONNX export load). A swarm run
# trains one module shared by all drones, `algorithm.SHARED_POLICY_ID`: ask `module_id(algo)` for a live one.
MODULE_ID = "default_policy"
# What `torch.use_deterministic_algorithms` (RLlib's seeding) imports on its first call.
_SEEDING_IMPORT = "torch._inductor.config"


@dataclass
class TrainResult:
    run_id: str
    checkpoint: Path
    iterations: int
    env_steps: int
    success_rate: float | None
    stopped_because: str
    history: list[dict] = field(default_factory=list)


def module_id(algo) -> str:
    """The id of the RLModule ``algo`` trains: "default_policy" single-agent, the shared policy's id multi-agent."""
    from entropilot.platform.algorithm import policy_module_id

    return policy_module_id(algo)


def env_runner_nodes(algo) -> list[str]:
    """The Ray node id of each remote env runner, in runner order: where sampling runs on a cluster."""
    import ray

    return algo.env_runner_group.foreach_env_runner(
        lambda _: ray.get_runtime_context().get_node_id(), local_env_runner=False
    )


def needs_ray(cfg: ExperimentConfig) -> bool:
    """Whether training ``cfg`` needs Ray: a cluster to join (resources.ray_address or RAY_ADDRESS) or actors to place
    (remote env runners or learners). A run that samples and learns in this process, the laptop default, trains
    without it: Ray's processes took ~5 s to start and ~1.5 s to stop on 2 cores, a seventh of a hover run."""
    from entropilot.platform.resources import resolve_learner_resources

    r = cfg.resources
    if r.resolve_ray_address() != "local" or r.num_env_runners > 0:
        return True
    return resolve_learner_resources(r.gpu, r.num_learners)["num_learners"] > 0


def init_ray(cfg: ExperimentConfig) -> None:
    """Connect to ``cfg``'s Ray cluster (resources.ray_address or RAY_ADDRESS), else start Ray in-process;
    nothing if Ray is up already (in a sweep's trial, a test)."""
    import ray

    if not ray.is_initialized():
        address = cfg.resources.resolve_ray_address()
        # RLlib seeds torch with `torch.use_deterministic_algorithms`, whose first call imports torch._inductor (torch
        # 2.13: ~1.5 s of imports). Import it while Ray's processes start, which the driver only waits for: measured
        # on 2 cores, Ray's start plus the algorithm's build ~1 s sooner.
        importing = threading.Thread(target=importlib.import_module, args=(_SEEDING_IMPORT,), daemon=True)
        importing.start()
        ray.init(
            address=address,
            include_dashboard=False,
            logging_level="ERROR",
            log_to_driver=False,
            **({"object_store_memory": 10**9} if address == "local" else {}),
        )
        importing.join()
        # Ray's core worker answers SIGTERM with a C++ failure handler that prints a stack trace before Ray's own
        # handler exits; ours replaces it.
        _stop_on_sigterm()


def _stop_on_sigterm() -> None:
    """A stop request (`kill`, `ray job stop`, a scheduler) is not a failure: end as Ctrl-C does, through the run's
    cleanup, which marks the MLflow run KILLED and says how to resume."""
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, _interrupt)


def _interrupt(signum, frame) -> None:
    raise KeyboardInterrupt(f"signal {signal.Signals(signum).name}")


def build_from_config(cfg: ExperimentConfig):
    """The RLlib Algorithm for ``cfg``. Starts Ray in-process where the run needs it (`needs_ray`) unless an address
    is configured or in RAY_ADDRESS; a run that needs no Ray trains without it, unless Ray is up already (a sweep's
    trial, a test). Raises DoesNotFit, naming the numbers, if the cluster cannot hold the run: Ray would leave it
    waiting forever.
    """
    import ray

    from entropilot.platform.algorithm import algorithm_settings, build_algorithm
    from entropilot.platform.resources import run_bundles, runs_that_fit

    if ray.is_initialized() or needs_ray(cfg):
        init_ray(cfg)
        # [1:]: the driver bundle is a Tune trial's; outside Tune the driver (and a local learner) is this process,
        # which Ray does not place. A sweep checked the whole run against the cluster already.
        runs_that_fit(run_bundles(cfg)[1:], ray.cluster_resources())
    else:
        _stop_on_sigterm()
    return build_algorithm(**algorithm_settings(cfg))


def iteration_metrics(result: dict, module: str = MODULE_ID, measure: str = "effective") -> dict[str, float]:
    """The per-iteration numbers a person reads, from RLlib's nested result dict; learner numbers of ``module``.

    `entropy` (and `entropy_per_dim/i`) is the ``measure`` the target, threshold and collapse floor are in
    (`ExperimentConfig.entropy_name`: effective, gaussian, or categorical for a categorical policy; SAC's is
    -E[log pi]); a Gaussian policy's two measures are also there as `entropy_effective` and `entropy_gaussian`."""
    runners = result.get("env_runners", {})
    learner = result.get("learners", {}).get(module, {})
    # SAC: its entropy is -E[log pi] of the squashed Gaussian (sampled), steered by its temperature alpha.
    sac_entropy = -learner[learner_metrics.SAC_LOGPS] if learner_metrics.SAC_LOGPS in learner else None
    measured = learner_metrics.entropy_metric(measure)
    metrics = {
        Metric.ENV_STEPS: runners.get("num_env_steps_sampled_lifetime"),
        Metric.EPISODE_RETURN_MEAN: runners.get("episode_return_mean"),
        Metric.EPISODE_LEN_MEAN: runners.get("episode_len_mean"),
        Metric.ENTROPY: learner.get(measured, sac_entropy),
        Metric.ENTROPY_EFFECTIVE: learner.get(Metric.ENTROPY_EFFECTIVE),
        Metric.ENTROPY_GAUSSIAN: learner.get(Metric.ENTROPY_GAUSSIAN),
        Metric.ENTROPY_TARGET: learner.get(
            learner_metrics.ENTROPY_TARGET, learner.get(learner_metrics.SAC_TARGET_ENTROPY)
        ),
        Metric.ENTROPY_COEFF: learner.get(learner_metrics.CURR_ENTROPY_COEFF, learner.get(learner_metrics.SAC_ALPHA)),
        Metric.SIGMA_TARGET: learner.get(learner_metrics.SIGMA_TARGET),
        Metric.CLIPPED_FRACTION: learner.get(learner_metrics.CLIPPED_FRACTION),
        Metric.COV_NUM_SELECTED: learner.get(learner_metrics.COV_NUM_SELECTED),
        Metric.COV_NUM_CANDIDATES: learner.get(learner_metrics.COV_NUM_CANDIDATES),
        Metric.KL: learner.get(learner_metrics.MEAN_KL_LOSS),
        Metric.POLICY_LOSS: learner.get(learner_metrics.POLICY_LOSS),
        Metric.VF_LOSS: learner.get(learner_metrics.VF_LOSS),
        Metric.TIME_THIS_ITER_S: result.get("time_this_iter_s"),
        Metric.SAMPLING_TIME_S: result.get("timers", {}).get("env_runner_sampling_timer"),
        Metric.LEARNER_TIME_S: result.get("timers", {}).get("learner_update_timer"),
        Metric.ENV_RUNNERS_HEALTHY: result.get("fault_tolerance", {}).get("num_healthy_workers"),
        Metric.ENV_RUNNER_RESTARTS: result.get("fault_tolerance", {}).get("num_remote_worker_restarts"),
    }
    for key, value in learner.items():
        if key.startswith(measured + learner_metrics.DIM_SUFFIX):
            metrics[ENTROPY_PER_DIM + key.removeprefix(measured + learner_metrics.DIM_SUFFIX)] = value
    sampled = runners.get("num_env_steps_sampled")
    if sampled and result.get("time_this_iter_s"):
        metrics[Metric.ENV_STEPS_PER_S] = sampled / result["time_this_iter_s"]
    return {k: float(v) for k, v in metrics.items() if v is not None and math.isfinite(float(v))}


def _restore(algo, checkpoint: Path) -> None:
    try:
        algo.restore_from_path(str(checkpoint.resolve()))
    except Exception as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else ""
        raise InputError(
            "--resume",
            str(checkpoint),
            f"RLlib cannot restore this checkpoint ({type(err).__name__}: {first}); resume an older one "
            f"(iter_* in {checkpoint.parent})",
        ) from err


def train(
    cfg: ExperimentConfig,
    resume: Path | None = None,
    echo: Callable[[str], None] = print,
    resumed_with: Mapping[str, Any] | None = None,
    *,
    parent_run_id: str | None = None,
    on_iteration: Callable[[int, dict, str | None], None] | None = None,
) -> TrainResult:
    """Train until a stop criterion; every ``checkpoint.interval`` iterations save a checkpoint.

    ``resume`` continues from that checkpoint into the same MLflow run; ``cfg`` and ``resumed_with`` (the overrides it
    was resumed with, recorded as a tag) then come from `prepare_resume`.

    ``parent_run_id`` starts the MLflow run as a child of that run (a sweep's trial). ``on_iteration(iteration,
    metrics, stopped_because)`` is called after each iteration's checkpoint, ``stopped_because`` None until the
    last one (a sweep's trial reports to Ray Tune there).

    Ray started for the run (remote runners, a cluster: `needs_ray`) stops with it, also when the run is refused
    before it starts: a later run in the same process that needs no Ray then trains without it.
    """
    import ray

    ray_was_up = ray.is_initialized()
    try:
        return _train(cfg, resume, echo, resumed_with, parent_run_id, on_iteration)
    finally:
        if not ray_was_up and ray.is_initialized():
            ray.shutdown()


def _train(
    cfg: ExperimentConfig,
    resume: Path | None,
    echo: Callable[[str], None],
    resumed_with: Mapping[str, Any] | None,
    parent_run_id: str | None,
    on_iteration: Callable[[int, dict, str | None], None] | None,
) -> TrainResult:
    from entropilot.platform.evaluation import Evaluation, EvaluationSummary
    from entropilot.platform.live_tuning import LiveTuner
    from entropilot.platform.phases import PhaseClock
    from entropilot.platform.plots import save_progress_plots
    from entropilot.platform.run_page import first_charts, start_tags, where_to_look
    from entropilot.platform.tracking import RunTracker

    start = time.perf_counter()  # wall time from `entropilot train` start: Ray, init and evaluations count
    state: dict = {"iteration": 0, "history": [], "run_id": None}
    checkpoint = resume
    if checkpoint is not None:
        state = json.loads((checkpoint / STATE_FILE).read_text())
        root = checkpoint.parent
    else:
        root = prepare_run(cfg).checkpoint_dir
    algo = build_from_config(cfg)
    try:
        if checkpoint is not None:
            _restore(algo, checkpoint)  # before MLflow: a checkpoint RLlib cannot read leaves the run's status alone
        tracker = RunTracker.start(
            cfg, resume_run_id=state["run_id"], parent_run_id=parent_run_id, extra_tags=start_tags(cfg)
        )
    except BaseException:
        algo.stop()
        raise
    echo(where_to_look(tracker.tracking_uri, tracker.experiment_id, tracker.run_id))
    if resumed_with:
        tracker.set_tag(RESUMED_WITH_TAG, json.dumps(dict(resumed_with)))
    status = "FAILED"
    evaluation = None
    clock = PhaseClock(state.get("phases"))
    session_init = clock.totals["init"]
    try:
        root.mkdir(parents=True, exist_ok=True)
        tracker.set_tag(CHECKPOINT_TAG, str(root.resolve()))
        if checkpoint is not None:
            echo(f"resumed {checkpoint} (iteration {state['iteration']}) into MLflow run {tracker.run_id}")
        elif cfg.algorithm.name == "PPO":
            with clock.measure("init"):
                _initial_weights(algo, cfg, tracker, echo)
        state["run_id"] = tracker.run_id
        nodes = env_runner_nodes(algo)
        if nodes:
            tracker.set_tag(ENV_RUNNER_NODES_TAG, ",".join(nodes))
            echo(f"env runners on {len(set(nodes))} node(s): {', '.join(nodes)}")
        history: list[dict] = state["history"]
        policy = module_id(algo)
        collapse = _collapse_detector(cfg, history)
        stopped = None
        success = history[-1].get(Metric.SUCCESS_RATE) if history else None
        live = LiveTuner(cfg, echo, state.get("live_tags"))  # entropy settings from the run's tags (MLflow UI)
        evaluation = Evaluation(cfg)
        clock.add("startup", time.perf_counter() - start - (clock.totals["init"] - session_init))
        state["phases"] = clock.totals
        while stopped is None:
            with clock.measure("logging"):
                live.poll(tracker, algo, state["iteration"] + 1)
            state["live_tags"] = live.tags_in_force
            result = algo.train()
            state["iteration"] += 1
            it = state["iteration"]
            metrics = iteration_metrics(result, policy, cfg.entropy_name)
            clock.add("sampling", metrics.get(Metric.SAMPLING_TIME_S, 0.0))
            clock.add("learning", metrics.get(Metric.LEARNER_TIME_S, 0.0))
            if cfg.evaluation.interval and it % cfg.evaluation.interval == 0:
                with clock.measure("evaluation"):
                    episodes = evaluation.run(algo)
                summary = EvaluationSummary.of(episodes)
                metrics.update(summary.metrics())
                success = summary.success_rate
                if cfg.checkpoint.keep_best and summary.score() > tuple(state.get("best_score", (-1.0,))):
                    state["best_score"], state["best_iteration"] = list(summary.score()), it
                    with clock.measure("logging"):
                        best = _save(algo, cfg, state, root, name=BEST_CHECKPOINT)
                    tracker.set_tag(BEST_CHECKPOINT_TAG, f"{best.resolve()} (iteration {it})")
            if collapse is not None and Metric.ENTROPY in metrics:
                check = collapse.update(metrics[Metric.ENTROPY], metrics.get(Metric.ENV_STEPS, 0))
                metrics[Metric.ENTROPY_COLLAPSE] = float(check.collapsed)
                if check.collapsed:
                    reasons = "; ".join(check.reasons)
                    echo(f"WARNING: entropy collapse at iteration {it}: {reasons}")
                    tracker.set_tag(ENTROPY_COLLAPSE_TAG, f"iteration {it}: {reasons}")
            elapsed = time.perf_counter() - start
            metrics[Metric.TIME_S] = state.get("time_s", 0.0) + elapsed  # wall time across resumes
            metrics.update(clock.close_at(metrics[Metric.TIME_S]))
            history.append(metrics)
            with clock.measure("logging"):
                tracker.log_metrics({**metrics, **first_charts(metrics), **live.metrics(metrics)}, step=it)
                echo(_progress_line(it, metrics, success, elapsed, cfg))
            stopped = _stop_reason(cfg, it, metrics.get(Metric.ENV_STEPS, 0), elapsed, metrics)
            if stopped or (cfg.checkpoint.interval and it % cfg.checkpoint.interval == 0):
                with clock.measure("logging"):
                    checkpoint = _save(algo, cfg, {**state, "time_s": metrics[Metric.TIME_S]}, root)
                    if cfg.checkpoint.keep_last:
                        prune_checkpoints(root, cfg.checkpoint.keep_last)
                    for png in save_progress_plots(history, root / "plots", cfg.run_name):  # seen during the run too
                        tracker.log_artifact(png, "plots")
            if on_iteration is not None:
                on_iteration(it, metrics, stopped)
        if cfg.mlflow.video:
            _log_video(algo, cfg, tracker, root)
        tracker.log_artifact(checkpoint, "checkpoint")
        status = "FINISHED"
        echo(f"stopped: {stopped}; checkpoint {checkpoint}; MLflow run {tracker.run_id}")
        return TrainResult(
            tracker.run_id,
            checkpoint,
            state["iteration"],
            int(history[-1].get(Metric.ENV_STEPS, 0)),
            success,
            stopped,
            history,
        )
    except (KeyboardInterrupt, SystemExit) as stop:  # SystemExit: also how Ray Tune ends a trial it stops early
        status = "KILLED"
        if isinstance(stop, KeyboardInterrupt):
            then = (
                f"`entropilot train --resume {root}` continues from {checkpoint.name} into the same run"
                if checkpoint is not None
                else "no checkpoint was saved yet, so nothing to resume"
            )
            echo(f"\nstopped ({stop or 'interrupted'}): MLflow run {tracker.run_id} marked KILLED; {then}")
        raise
    finally:
        # Each step runs even when one before it raises: a tracker that cannot send must not leave Ray's actors up.
        try:
            if evaluation is not None:
                evaluation.close()
        finally:
            try:
                tracker.close(status=status)
            finally:
                algo.stop()


def _initial_weights(algo, cfg: ExperimentConfig, tracker, echo: Callable[[str], None]) -> None:
    """Draw the PPO policy's initial weights from `cfg.weight_seed` in the config's init family: by entropy-aware
    init if enabled (single-agent envs), else draw 0, so arms that differ only there start from the same weights."""
    from entropilot.platform.algorithm import is_multi_agent
    from entropilot.policies.initial_weights import InitFamily, draw_seed, reinitialize_policy

    family = InitFamily(cfg.model.output_gain, cfg.initial_std)
    init = cfg.entropy.init
    if init.enabled and is_multi_agent(cfg):
        echo(
            "entropy-aware init skipped: it samples single-agent episodes only (multi-agent env "
            f"{cfg.env.id}); the shared policy starts from draw 0 of weight seed {cfg.weight_seed}"
        )
        tracker.set_tag(ENTROPY_INIT_TAG, "skipped: multi-agent env")
    if not init.enabled or is_multi_agent(cfg):
        reinitialize_policy(algo, draw_seed(cfg.weight_seed, 0), family)
        return
    from entropilot.policies.entropy_init import entropy_aware_init

    result = entropy_aware_init(
        algo,
        threshold=init.threshold,
        weight_seed=cfg.weight_seed,
        max_draws=init.max_draws,
        family=family,
        measure=cfg.entropy.measure,
        rollout_steps=init.rollout_steps,
        noise_seed=cfg.seed,
        keep=init.keep,
    )
    tracker.log_entropy_init(result)
    if init.keep == "lowest":
        why = "the lowest of them, keep=lowest"
    else:
        why = f"threshold {result.threshold:.2f}{'' if result.cleared else ', not cleared: kept the best'}"
    echo(
        f"entropy-aware init: {len(result.draws)} draw(s), kept draw {result.draws.index(result.chosen)} "
        f"(torch seed {result.chosen.seed}) with {result.chosen.entropy:.2f} nats of {cfg.entropy_name} entropy "
        f"({why})"
    )


def _collapse_detector(cfg: ExperimentConfig, history: list[dict]):
    """The entropy-collapse detector, replayed over the history of a resumed run so its window is whole."""
    from entropilot.policies.entropy_control import EntropyCollapseDetector

    c = cfg.entropy.collapse
    if cfg.algorithm.name != "PPO" or (c.floor is None and c.max_drop_per_million_steps is None):
        return None  # SAC's temperature holds its entropy at its target (config.CollapseConfig)
    detector = EntropyCollapseDetector(floor=c.floor, max_drop_per_million_steps=c.max_drop_per_million_steps)
    for past in history:
        if Metric.ENTROPY in past:
            detector.update(past[Metric.ENTROPY], past.get(Metric.ENV_STEPS, 0))
    return detector


def _save(algo, cfg: ExperimentConfig, state: dict, root: Path, name: str | None = None) -> Path:
    """A checkpoint in ``root``: ``iter_NNNNNN``, or ``name`` (the best one, replaced each time)."""
    path = root / (name or f"iter_{state['iteration']:06d}")
    if name and path.exists():
        shutil.rmtree(path)
    algo.save_to_path(str(path.resolve()))
    dump_config(cfg, path / CONFIG_FILE)
    # The state file last and whole (written aside, then renamed): a checkpoint without it is known incomplete.
    staged = path / f".{STATE_FILE}.tmp"
    staged.write_text(json.dumps(state))
    os.replace(staged, path / STATE_FILE)
    return path


def _log_video(algo, cfg: ExperimentConfig, tracker, root: Path) -> None:
    from entropilot.envs.plots import save_gif
    from entropilot.platform.evaluation import evaluate

    episode = evaluate(
        algo,
        cfg.model_copy(update={"evaluation": cfg.evaluation.model_copy(update={"episodes": 1})}),
        record_frames=True,
    )[0]
    path = root / "plots" / "evaluation.gif"
    save_gif(episode.frames, str(path), int(cfg.env.kwargs.get("control_hz", 48)))
    tracker.log_artifact(path, "video")


def _stop_reason(cfg: ExperimentConfig, iteration: int, env_steps: float, elapsed: float, metrics: dict) -> str | None:
    """Why training stops after this iteration (None: it goes on); ``metrics`` holds an evaluation's if one ran."""
    s = cfg.stop
    if Metric.SUCCESS_RATE in metrics and (s.max_crashes is None or metrics[Metric.EVAL_CRASHES] <= s.max_crashes):
        crashes = "" if s.max_crashes is None else f", {int(metrics[Metric.EVAL_CRASHES])} crash(es)"
        success, bound = metrics[Metric.SUCCESS_RATE], metrics[Metric.EVAL_SUCCESS_LOWER_BOUND]
        if s.success_rate is not None and success >= s.success_rate:
            return f"evaluation success rate {success:.2f} >= {s.success_rate}{crashes}"
        if s.success_lower_bound is not None and bound >= s.success_lower_bound:
            return f"evaluation success lower bound {bound:.3f} >= {s.success_lower_bound}{crashes}"
    if s.iterations is not None and iteration >= s.iterations:
        return f"{iteration} iterations"
    if s.env_steps is not None and env_steps >= s.env_steps:
        return f"{int(env_steps)} env steps"
    if s.time_s is not None and elapsed >= s.time_s:
        return f"time limit {s.time_s:.0f} s"
    return None


def _progress_line(it: int, m: dict, success: float | None, elapsed: float, cfg: ExperimentConfig) -> str:
    eta = ""
    if cfg.stop.iterations:
        eta = f" eta {elapsed / it * (cfg.stop.iterations - it):4.0f}s"
    elif cfg.stop.time_s:
        eta = f" left {max(0.0, cfg.stop.time_s - elapsed):4.0f}s"
    fmt = lambda key, spec: format(m[key], spec) if key in m else "-"  # noqa: E731
    crashes = ""
    if Metric.EVAL_CRASHES in m:
        crashes = f" (>= {m[Metric.EVAL_SUCCESS_LOWER_BOUND]:.2f}, {int(m[Metric.EVAL_CRASHES])} crashes)"
    return (
        f"iter {it:4d} | steps {int(m.get(Metric.ENV_STEPS, 0)):8d} | return {fmt(Metric.EPISODE_RETURN_MEAN, '7.1f')} "
        f"| success {'-' if success is None else format(success, '.2f')}{crashes} | "
        f"entropy {fmt(Metric.ENTROPY, '6.2f')} (target {fmt(Metric.ENTROPY_TARGET, '.2f')}) | "
        f"coeff {fmt(Metric.ENTROPY_COEFF, '.2e')} | clipped {fmt(Metric.CLIPPED_FRACTION, '.2f')} | "
        f"{elapsed:5.0f}s{eta}"
    )
