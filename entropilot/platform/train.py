"""The training loop: config -> RLlib algorithm on Ray -> entropy-aware init -> iterations with evaluation,
checkpoints and MLflow tracking; resumable into the same MLflow run."""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from entropilot.platform.config import (
    RESUMABLE_SECTION,
    ExperimentConfig,
    dump_config,
    load_config,
    parse_overrides,
    with_overrides,
)

STATE_FILE = "entropilot_state.json"
CONFIG_FILE = "config.yaml"
# The module a single-drone run trains (what checkpoint readers such as the ONNX export load). A swarm run
# trains one module shared by all drones, `algorithm.SHARED_POLICY_ID`: ask `module_id(algo)` for a live one.
MODULE_ID = "default_policy"


@dataclass
class TrainResult:
    run_id: str
    checkpoint: Path
    iterations: int
    env_steps: int
    success_rate: float | None
    stopped_because: str
    history: list[dict] = field(default_factory=list)


def make_env_creator(env_id: str) -> Callable[[dict], Any]:
    """An RLlib env creator for an entropilot id (imported inside the EnvRunner actor)."""

    def create(env_config: dict):
        from entropilot.envs import make_env

        return make_env(env_id, **dict(env_config))

    create.__name__ = env_id.split("/")[-1]
    return create


def is_multi_agent(cfg: ExperimentConfig) -> bool:
    """Whether ``cfg`` trains a multi-agent env (the swarm): one policy shared by all its agents."""
    from entropilot.envs import SINGLE_AGENT_IDS

    return cfg.env.id not in SINGLE_AGENT_IDS


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


def init_ray(cfg: ExperimentConfig) -> None:
    """Connect to ``cfg``'s Ray cluster (resources.ray_address or RAY_ADDRESS), else start Ray in-process;
    nothing if Ray is up already (in a sweep's trial, a test)."""
    import ray

    if not ray.is_initialized():
        address = cfg.resources.resolve_ray_address()
        ray.init(
            address=address,
            include_dashboard=False,
            logging_level="ERROR",
            log_to_driver=False,
            **({"object_store_memory": 10**9} if address == "local" else {}),
        )


def build_from_config(cfg: ExperimentConfig):
    """The RLlib Algorithm for ``cfg`` (starts Ray in-process unless an address is configured or in RAY_ADDRESS).

    A multi-agent env (the swarm) gets one policy shared by all agents (`build_algorithm(multi_agent=True)`).
    """
    from entropilot.platform.algorithm import build_algorithm

    init_ray(cfg)
    a, e = cfg.algorithm, cfg.entropy
    control = e.control.controller_kwargs() if e.control.enabled else None
    covariance = (
        None
        if e.covariance.mode == "off"
        else {"mode": e.covariance.mode, "fraction": e.covariance.fraction, "kl_coef": e.covariance.kl_coef}
    )
    return build_algorithm(
        algorithm=a.name,
        env=make_env_creator(cfg.env.id),
        env_config=dict(cfg.env.kwargs),
        hidden_sizes=cfg.model.hidden,
        activation=cfg.model.activation,
        lr=a.lr,
        gamma=a.gamma,
        train_batch_size=a.train_batch_size,
        minibatch_size=a.minibatch_size,
        num_epochs=a.num_epochs,
        clip_param=a.clip_param,
        lambda_=a.lambda_,
        grad_clip=a.grad_clip,
        vf_loss_coeff=a.vf_loss_coeff,
        free_log_std=cfg.model.free_log_std,
        entropy_control=control,
        covariance_control=covariance,
        num_env_runners=cfg.resources.num_env_runners,
        envs_per_runner=cfg.resources.envs_per_runner,
        num_cpus_per_env_runner=cfg.resources.num_cpus_per_env_runner,
        num_learners=cfg.resources.num_learners,
        gpu=cfg.resources.gpu,
        seed=cfg.seed,
        multi_agent=is_multi_agent(cfg),
    )


class GreedyPolicy:
    """The trained policy as a plain obs -> action function: normalize, forward, Gaussian mean, clip.

    For SAC's tanh-squashed Gaussian the deterministic action is tanh(mean) (RLlib's own
    ``to_deterministic`` returns the pre-tanh mean, ray-project/ray#51544), which for our [-1, 1]
    action boxes is already the env action.

    The same computation the ONNX export puts in its graph; used here for evaluation and videos. In a
    swarm run it is the shared policy, normalizing with the filter statistics pooled over all drones
    (see `algorithm.observation_filter_stats`), and flies every drone.
    """

    def __init__(self, module, filter_stats):
        import torch
        from ray.rllib.models.torch.torch_distributions import TorchSquashedGaussian

        self._torch = torch
        self.module = module
        self.filter = filter_stats
        self.squashed = issubclass(module.get_inference_action_dist_cls(), TorchSquashedGaussian)

    @classmethod
    def from_algo(cls, algo) -> GreedyPolicy:
        from entropilot.platform.algorithm import observation_filter_stats

        return cls(algo.get_module(module_id(algo)), observation_filter_stats(algo))

    def __call__(self, obs: np.ndarray) -> np.ndarray:
        torch = self._torch
        x = self.filter.normalize(obs) if self.filter is not None else obs
        with torch.no_grad():
            out = self.module.forward_inference({"obs": torch.as_tensor(np.asarray(x, dtype=np.float32)[None])})
        inputs = out["action_dist_inputs"][0].numpy()
        mean = inputs[: len(inputs) // 2]
        return np.clip(np.tanh(mean) if self.squashed else mean, -1.0, 1.0)


def evaluate(algo, cfg: ExperimentConfig, record_frames: bool = False):
    """Greedy episodes on held-out seeds (``evaluation.seed`` onward) in a fresh local env.

    One `EpisodeResult` per episode; in a swarm one per drone and episode (all drones flown by the shared
    policy), so the mean of ``success`` is the fraction of drones that succeeded.
    """
    from entropilot.envs import make_env
    from entropilot.envs.evaluate import run_episodes, run_swarm_episodes

    run = run_swarm_episodes if is_multi_agent(cfg) else run_episodes
    env = make_env(cfg.env.id, render_mode="rgb_array" if record_frames else None, **cfg.env.kwargs)
    try:
        return run(env, GreedyPolicy.from_algo(algo), cfg.evaluation.episodes, cfg.evaluation.seed, record_frames)
    finally:
        env.close()


def iteration_metrics(result: dict, module: str = MODULE_ID) -> dict[str, float]:
    """The per-iteration numbers a person reads, from RLlib's nested result dict; learner numbers of ``module``."""
    runners = result.get("env_runners", {})
    learner = result.get("learners", {}).get(module, {})
    metrics = {
        "env_steps": runners.get("num_env_steps_sampled_lifetime"),
        "episode_return_mean": runners.get("episode_return_mean"),
        "episode_len_mean": runners.get("episode_len_mean"),
        "entropy": learner.get("entropy_gaussian"),
        "entropy_executed": learner.get("entropy_executed"),
        "entropy_target": learner.get("entropy_target"),
        "entropy_coeff": learner.get("curr_entropy_coeff"),
        "kl": learner.get("mean_kl_loss"),
        "policy_loss": learner.get("policy_loss"),
        "vf_loss": learner.get("vf_loss"),
        "time_this_iter_s": result.get("time_this_iter_s"),
        "sampling_time_s": result.get("timers", {}).get("env_runner_sampling_timer"),
        "learner_time_s": result.get("timers", {}).get("learner_update_timer"),
        # Remote env runners sampling now, and how many times one was restarted after a crash (lifetime).
        "env_runners_healthy": result.get("fault_tolerance", {}).get("num_healthy_workers"),
        "env_runner_restarts": result.get("fault_tolerance", {}).get("num_remote_worker_restarts"),
    }
    for key, value in learner.items():
        if key.startswith("entropy_gaussian_dim"):
            metrics[f"entropy_per_dim/{key.removeprefix('entropy_gaussian_dim')}"] = value
    sampled = runners.get("num_env_steps_sampled")
    if sampled and result.get("time_this_iter_s"):
        metrics["env_steps_per_s"] = sampled / result["time_this_iter_s"]
    return {k: float(v) for k, v in metrics.items() if v is not None and math.isfinite(float(v))}


def _latest_checkpoint(root: Path) -> Path | None:
    checkpoints = sorted(root.glob("iter_*"))
    return checkpoints[-1] if checkpoints else None


def resolve_resume(target: str) -> tuple[ExperimentConfig, Path]:
    """A checkpoint folder, a run folder holding ``iter_*`` checkpoints, or an MLflow run id -> (cfg, checkpoint)."""
    path = Path(target)
    if path.is_dir():
        checkpoint = path if (path / STATE_FILE).is_file() else _latest_checkpoint(path)
        if checkpoint is None:
            raise FileNotFoundError(f"--resume {target}: no checkpoint (iter_*/{STATE_FILE}) in that folder")
        return load_config(checkpoint / CONFIG_FILE), checkpoint
    import mlflow

    run = mlflow.MlflowClient().get_run(target)
    folder = run.data.tags.get("entropilot.checkpoint_dir")
    if not folder:
        raise FileNotFoundError(f"--resume {target}: MLflow run has no entropilot.checkpoint_dir tag")
    return resolve_resume(folder)


def prepare_resume(target: str, overrides: Iterable[str] = ()) -> tuple[ExperimentConfig, Path, dict[str, Any]]:
    """What `--resume TARGET --set stop.KEY=VALUE ...` continues: the run's saved config with the new stop criteria,
    validated as a whole, its newest checkpoint, and the overrides as {path: value}. Runs before Ray or MLflow start.

    Only `stop.*` may change: the run's params must keep describing what trained it."""
    cfg, checkpoint = resolve_resume(target)
    values = parse_overrides(overrides)
    return with_overrides(cfg, values, only=RESUMABLE_SECTION, source=f"--resume {target}"), checkpoint, values


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
    """
    from entropilot.platform.live_tuning import LiveTuner
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
        root = cfg.checkpoint_dir
        if _latest_checkpoint(root) is not None:
            raise FileExistsError(
                f"checkpoint.dir {root} already holds checkpoints of another run: continue it with "
                f"`entropilot train --resume {root}`, or set a new checkpoint.dir (or name)"
            )
    algo = build_from_config(cfg)
    tracker = RunTracker.start(
        cfg, resume_run_id=state["run_id"], parent_run_id=parent_run_id, extra_tags=start_tags(cfg)
    )
    echo(where_to_look(tracker.tracking_uri, tracker.experiment_id, tracker.run_id))
    if resumed_with:
        tracker.set_tag("entropilot.resumed_with", json.dumps(dict(resumed_with)))
    status = "FAILED"
    try:
        root.mkdir(parents=True, exist_ok=True)
        tracker.set_tag("entropilot.checkpoint_dir", str(root.resolve()))
        if checkpoint is not None:
            algo.restore_from_path(str(checkpoint.resolve()))
            echo(f"resumed {checkpoint} (iteration {state['iteration']}) into MLflow run {tracker.run_id}")
        elif cfg.entropy.init.enabled and cfg.algorithm.name == "PPO" and is_multi_agent(cfg):
            echo(
                "entropy-aware init skipped: it samples single-agent episodes only (multi-agent env "
                f"{cfg.env.id}); the shared policy starts from its default initialization"
            )
            tracker.set_tag("entropilot.entropy_init", "skipped: multi-agent env")
        elif cfg.entropy.init.enabled and cfg.algorithm.name == "PPO":
            from entropilot.policies.entropy_init import entropy_aware_init

            init = entropy_aware_init(
                algo,
                threshold=cfg.entropy.init.threshold,
                max_draws=cfg.entropy.init.max_draws,
                base_seed=cfg.seed * 1000,
                rollout_steps=cfg.entropy.init.rollout_steps,
            )
            tracker.log_entropy_init(init)
            echo(
                f"entropy-aware init: {len(init.draws)} draw(s), chosen seed {init.chosen.seed} with "
                f"{init.chosen.entropy:.2f} nats (threshold {init.threshold:.2f}"
                f"{'' if init.cleared else ', not cleared: kept the best'})"
            )
        state["run_id"] = tracker.run_id
        nodes = env_runner_nodes(algo)
        if nodes:
            tracker.set_tag("entropilot.env_runner_nodes", ",".join(nodes))
            echo(f"env runners on {len(set(nodes))} node(s): {', '.join(nodes)}")
        history: list[dict] = state["history"]
        policy = module_id(algo)
        collapse = _collapse_detector(cfg, history)
        stopped = None
        success = history[-1].get("success_rate") if history else None
        live = LiveTuner(cfg, echo, state.get("live_tags"))  # entropy settings from the run's tags (MLflow UI)
        while stopped is None:
            live.poll(tracker, algo, state["iteration"] + 1)
            state["live_tags"] = live.tags_in_force
            result = algo.train()
            state["iteration"] += 1
            it = state["iteration"]
            metrics = iteration_metrics(result, policy)
            if cfg.evaluation.interval and it % cfg.evaluation.interval == 0:
                episodes = evaluate(algo, cfg)
                success = float(np.mean([e.success for e in episodes]))
                metrics["success_rate"] = success
                metrics["eval_final_distance"] = float(np.mean([e.final_distance for e in episodes]))
            if collapse is not None and "entropy" in metrics:
                check = collapse.update(metrics["entropy"], metrics.get("env_steps", 0))
                metrics["entropy_collapse"] = float(check.collapsed)
                if check.collapsed:
                    reasons = "; ".join(check.reasons)
                    echo(f"WARNING: entropy collapse at iteration {it}: {reasons}")
                    tracker.set_tag("entropilot.entropy_collapse", f"iteration {it}: {reasons}")
            elapsed = time.perf_counter() - start
            metrics["time_s"] = state.get("time_s", 0.0) + elapsed  # wall time across resumes
            history.append(metrics)
            tracker.log_metrics({**metrics, **first_charts(metrics), **live.metrics(metrics)}, step=it)
            echo(_progress_line(it, metrics, success, elapsed, cfg))
            stopped = _stop_reason(cfg, it, metrics.get("env_steps", 0), elapsed, metrics.get("success_rate"))
            if stopped or (cfg.checkpoint.interval and it % cfg.checkpoint.interval == 0):
                checkpoint = _save(algo, cfg, {**state, "time_s": metrics["time_s"]}, root)
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
            int(history[-1].get("env_steps", 0)),
            success,
            stopped,
            history,
        )
    except (KeyboardInterrupt, SystemExit):  # SystemExit: also how Ray Tune ends a trial it stops early
        status = "KILLED"
        raise
    finally:
        tracker.close(status=status)
        algo.stop()


def _collapse_detector(cfg: ExperimentConfig, history: list[dict]):
    """The entropy-collapse detector, replayed over the history of a resumed run so its window is whole."""
    from entropilot.policies.entropy_control import EntropyCollapseDetector

    c = cfg.entropy.collapse
    if c.floor is None and c.max_drop_per_million_steps is None:
        return None
    detector = EntropyCollapseDetector(floor=c.floor, max_drop_per_million_steps=c.max_drop_per_million_steps)
    for past in history:
        if "entropy" in past:
            detector.update(past["entropy"], past.get("env_steps", 0))
    return detector


def _save(algo, cfg: ExperimentConfig, state: dict, root: Path) -> Path:
    path = root / f"iter_{state['iteration']:06d}"
    algo.save_to_path(str(path.resolve()))
    dump_config(cfg, path / CONFIG_FILE)
    (path / STATE_FILE).write_text(json.dumps(state))
    return path


def _log_video(algo, cfg: ExperimentConfig, tracker, root: Path) -> None:
    from entropilot.envs.plots import save_gif

    episode = evaluate(
        algo,
        cfg.model_copy(update={"evaluation": cfg.evaluation.model_copy(update={"episodes": 1})}),
        record_frames=True,
    )[0]
    path = root / "plots" / "evaluation.gif"
    save_gif(episode.frames, str(path), fps=int(cfg.env.kwargs.get("control_hz", 48)))
    tracker.log_artifact(path, "video")


def _stop_reason(
    cfg: ExperimentConfig, iteration: int, env_steps: float, elapsed: float, success: float | None
) -> str | None:
    s = cfg.stop
    if s.success_rate is not None and success is not None and success >= s.success_rate:
        return f"evaluation success rate {success:.2f} >= {s.success_rate}"
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
    return (
        f"iter {it:4d} | steps {int(m.get('env_steps', 0)):8d} | return {fmt('episode_return_mean', '7.1f')} | "
        f"success {'-' if success is None else format(success, '.2f')} | entropy {fmt('entropy', '6.2f')} "
        f"(target {fmt('entropy_target', '.2f')}) | coeff {fmt('entropy_coeff', '.2e')} | {elapsed:5.0f}s{eta}"
    )
