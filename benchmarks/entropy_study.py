"""The entropy study: does entropy-aware training make drone RL fail less? Paired seeds, every run in MLflow.

Three steps, each resumable (a run already in `results.jsonl` is not run again; `--rerun` runs it again, and the
latest row of a task, arm and seed is the one the tables use):

    .venv/bin/python benchmarks/entropy_study.py screen    # plain PPO on every task: which ones fail sometimes?
    .venv/bin/python benchmarks/entropy_study.py study     # every arm x seed on the tasks the screen kept
    .venv/bin/python benchmarks/entropy_study.py report    # tables (Fisher, Kaplan-Meier, log-rank) and plots
    .venv/bin/python benchmarks/entropy_study.py study --smoke   # the whole pipeline in a few minutes (tested)

The design (tasks, arms, budgets, success threshold) is `benchmarks/entropy_study.yaml`. Seed s means the same env
seeds and, for arms that do not redraw weights, the same initial weights in every arm. All runs are child runs of one
MLflow parent run (experiment `entropy-study`); results, tables and plots go to `--dir` (default runs/entropy-study).
"""

from __future__ import annotations

import argparse
import json
import math
import re
import statistics
import subprocess
import sys
import time
from collections import Counter
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
DESIGN = ROOT / "benchmarks" / "entropy_study.yaml"
REFERENCE_ARM = "plain_ppo"

# The smoke design: one tiny task, two arms, two seeds, two short iterations each; exercises every step.
SMOKE = {
    "success_threshold": 0.9,
    "screen_seeds": 2,
    "keep_failure_rate": [0.0, 1.0],
    "common": [
        "mlflow.video=false",
        "mlflow.system_metrics=false",
        "algorithm.train_batch_size=200",
        "algorithm.minibatch_size=100",
        "algorithm.num_epochs=1",
        "resources.envs_per_runner=1",
        "resources.num_cpus_per_env_runner=0.5",
        "entropy.init.max_draws=2",
        "entropy.init.rollout_steps=100",
        "evaluation.interval=1",
        "evaluation.episodes=2",
        "checkpoint.interval=null",
        "env.kwargs.episode_seconds=1.0",
        "env.kwargs.success_seconds=0.5",
    ],
    "tasks": {"tiny_hover": {"config": "configs/hover.yaml", "budget_env_steps": 400, "overrides": []}},
    "arms": {
        "plain_ppo": ["entropy.init.enabled=false", "entropy.control.enabled=false"],
        "control": ["entropy.init.enabled=false"],
    },
}


@dataclass
class RunResult:
    """One training run of the study: what the tables are made of."""

    task: str
    arm: str
    seed: int
    succeeded: bool  # evaluation success reached the threshold within the budget
    env_steps_to_success: float | None  # env steps at the first evaluation that reached it
    env_steps: int  # env steps when the run stopped (budget or success)
    final_success: float | None  # the last evaluation's success rate
    final_distance: float | None  # and its mean final distance to the target, m
    tracking_rms: float | None  # RMS of entropy - target after the first quarter of the run (controller arms)
    wall_s: float
    run_id: str
    mean_coef: float | None = None  # the entropy coefficient averaged over iterations (the fixed arm copies it)
    clipped_fraction: float | None = None  # mean share of sampled action components the env clipped
    entropy_slope: float | None = None  # nats per million env steps, least squares over the run
    commit: str | None = None  # the code that ran it ("+dirty": DEFINING_PATHS changed); None before 2026-12-07
    machine: str | None = None  # the CPU and torch's kernel set that ran it; None before 2026-12-07 (see `_machine`)


def load_design(smoke: bool) -> dict:
    return SMOKE if smoke else yaml.safe_load(DESIGN.read_text())


_MEAN_COEF = re.compile(r"\{mean_coef(?::(\w+))?\}")


def copied_arm(design: dict, arm: str) -> str | None:
    """The arm whose time-averaged coefficient ``arm`` holds fixed: ``{mean_coef:NAME}`` names it, a bare
    ``{mean_coef}`` means the design's `fixed_coef_from`; None for an arm that copies nothing."""
    for override in design["arms"][arm]:
        match = _MEAN_COEF.search(override)
        if match:
            return match.group(1) or design.get("fixed_coef_from")
    return None


def applies(design: dict, task: str, arm: str) -> bool:
    """Whether the study runs ``arm`` on ``task``: every arm but those the task lists under ``skip_arms``."""
    return arm not in design["tasks"][task].get("skip_arms", ())


def arm_overrides(design: dict, task: str, arm: str, results: list[RunResult]) -> list[str]:
    """The arm's overrides with its placeholders filled: {median_threshold} from the task's spec (the median draw of
    its init family, measured with benchmarks/entropy_init_sweep.py), {mean_coef} / {mean_coef:NAME} from the finished
    runs of the arm it copies (`copied_arm`: the time-averaged coefficient of the controller a fixed arm mirrors)."""
    spec = design["tasks"][task]
    source = copied_arm(design, arm)
    coefs = [r.mean_coef for r in results if r.task == task and r.arm == source and r.mean_coef is not None]
    filled = []
    for override in design["arms"][arm]:
        if "{median_threshold}" in override:
            if spec.get("median_threshold") is None:
                raise SystemExit(
                    f"arm {arm} on task {task} needs {{median_threshold}}: set median_threshold in the task"
                )
            override = override.replace("{median_threshold}", str(spec["median_threshold"]))
        if _MEAN_COEF.search(override):
            if not coefs:
                raise SystemExit(
                    f"arm {arm} on task {task} copies the mean coefficient of {source}: run {source} first"
                )
            override = _MEAN_COEF.sub(f"{statistics.fmean(coefs):.6f}", override)
        filled.append(override)
    return filled


def config_for(
    design: dict,
    task: str,
    arm: str,
    seed: int,
    study_dir: Path,
    tracking_uri: str,
    results: list[RunResult] = (),
    attempt: int = 0,
):
    """The experiment config of one run: the task's file, the common and task overrides, the arm's, then the seed,
    budget and where it writes (validated before anything runs). A re-run (`attempt` 1, 2, ...) writes its
    checkpoints beside the first run's, not over them."""
    from entropilot.platform.config import load_config

    spec = design["tasks"][task]
    folder = study_dir / "runs" / task / arm / (f"s{seed}-rerun{attempt}" if attempt else f"s{seed}")
    return load_config(
        ROOT / spec["config"],
        [
            *design["common"],
            *spec.get("overrides", []),
            *arm_overrides(design, task, arm, list(results)),
            f"seed={seed}",
            f"stop.env_steps={spec['budget_env_steps']}",
            f"stop.success_rate={design['success_threshold']}",
            f"name=study-{task}-{arm}-s{seed}",
            "mlflow.experiment=entropy-study",
            f"mlflow.tracking_uri={tracking_uri}",
            f"checkpoint.dir={folder}",
        ],
    )


def run_one(cfg, task: str, arm: str, seed: int, threshold: float, parent_run_id: str) -> RunResult:
    from entropilot.platform.train import train

    start = time.perf_counter()
    result = train(cfg, echo=lambda line: None, parent_run_id=parent_run_id)
    history = result.history
    evals = [h for h in history if "success_rate" in h]
    first = next((h for h in evals if h["success_rate"] >= threshold), None)
    return RunResult(
        task=task,
        arm=arm,
        seed=seed,
        succeeded=first is not None,
        env_steps_to_success=first["env_steps"] if first else None,
        env_steps=result.env_steps,
        final_success=evals[-1]["success_rate"] if evals else None,
        final_distance=evals[-1].get("eval_final_distance") if evals else None,
        tracking_rms=_tracking_rms(history),
        wall_s=time.perf_counter() - start,
        run_id=result.run_id,
        mean_coef=_mean_of(history, "entropy_coeff"),
        clipped_fraction=_mean_of(history, "clipped_fraction"),
        entropy_slope=_entropy_slope(history),
        commit=_commit(),
        machine=_machine(),
    )


# What defines a run: the package (env rules included), the task configs and the study's design. Not the results
# folder, which a running study changes with every run.
DEFINING_PATHS = ("entropilot", "configs", "benchmarks/entropy_study.py", "benchmarks/entropy_study.yaml")


def _commit() -> str | None:
    """The checkout's commit, so a result can be traced to the code (and env rules) that produced it."""
    head = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True, text=True)
    if head.returncode != 0:
        return None
    dirty = subprocess.run(["git", "-C", str(ROOT), "status", "--porcelain", *DEFINING_PATHS], capture_output=True)
    return head.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "")


def _machine() -> str:
    """The CPU model and the vector instruction set torch's kernels use. The same code, seed and config reproduce a run
    bit for bit on one machine, not across machines: measured on 2026-12-07, plain PPO on waypoint_short seed 0 at
    commit 864a891 succeeded at 300k env steps on the machine of the screen and failed, identically at 864a891 and at
    d339695, on the next day's; float rounding differs in the last bits and training amplifies it."""
    import platform

    import torch

    model = platform.processor() or platform.machine()
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        names = [
            line.split(":", 1)[1].strip() for line in cpuinfo.read_text().splitlines() if line.startswith("model name")
        ]
        model = names[0] if names else model
    return f"{model}; torch {torch.__version__} {torch.backends.cpu.get_cpu_capability()}"


def _mean_of(history: list[dict], key: str) -> float | None:
    values = [h[key] for h in history if key in h]
    return statistics.fmean(values) if values else None


def _entropy_slope(history: list[dict]) -> float | None:
    points = [(h["env_steps"] / 1e6, h["entropy"]) for h in history if "entropy" in h and "env_steps" in h]
    if len(points) < 2 or len({x for x, _ in points}) < 2:
        return None
    return statistics.linear_regression(*zip(*points)).slope


def _tracking_rms(history: list[dict]) -> float | None:
    pairs = [(h["entropy"], h["entropy_target"]) for h in history if "entropy" in h and "entropy_target" in h]
    pairs = pairs[len(pairs) // 4 :]  # after warm-up: the controller needs some iterations to get there
    if not pairs:
        return None
    return math.sqrt(statistics.fmean((e - t) ** 2 for e, t in pairs))


# ---- the study's bookkeeping ------------------------------------------------------------------------------------


class Study:
    """The study folder: `results.jsonl` (one RunResult per line, appended as runs finish) and the MLflow parent run."""

    def __init__(self, folder: Path, tracking_uri: str, design: dict):
        self.folder = folder
        self.tracking_uri = tracking_uri
        self.design = design
        folder.mkdir(parents=True, exist_ok=True)
        self.results_file = folder / "results.jsonl"

    def results(self) -> list[RunResult]:
        if not self.results_file.exists():
            return []
        # Fields a later version added are skipped, so a study still running on older code reads rows newer runs
        # appended (one that could not stopped the 2026-12-07 hard-hover run mid-study).
        known = {f.name for f in fields(RunResult)}
        rows = [json.loads(line) for line in self.results_file.read_text().splitlines() if line.strip()]
        return [RunResult(**{k: v for k, v in row.items() if k in known}) for row in rows]

    def current(self) -> list[RunResult]:
        """One row per task, arm and seed: the latest (a re-run supersedes the row before it, which stays in the
        file and in the report's list of re-runs)."""
        return list(_latest(self.results()).values())

    def superseded(self) -> list[tuple[RunResult, RunResult]]:
        """(earlier row, latest row) of every task, arm and seed that was run more than once."""
        rows = self.results()
        latest = _latest(rows)
        return [(r, latest[_key(r)]) for r in rows if r is not latest[_key(r)]]

    def record(self, result: RunResult) -> None:
        with self.results_file.open("a") as f:
            f.write(json.dumps(asdict(result)) + "\n")

    def parent_run_id(self) -> str:
        """The MLflow parent run of the whole study, created on first use and reused by every later invocation."""
        import mlflow

        marker = self.folder / "parent_run.json"
        if marker.exists():
            return json.loads(marker.read_text())["run_id"]
        client = mlflow.MlflowClient(self.tracking_uri)
        experiment = client.get_experiment_by_name("entropy-study")
        experiment_id = experiment.experiment_id if experiment else client.create_experiment("entropy-study")
        run = client.create_run(experiment_id, run_name=f"entropy-study-{time.strftime('%Y%m%d-%H%M%S')}")
        client.log_param(run.info.run_id, "design", json.dumps(self.design)[:6000])
        client.set_tag(run.info.run_id, "entropilot.study", "parent")
        marker.write_text(json.dumps({"run_id": run.info.run_id}))
        return run.info.run_id

    def run(self, plan: list[tuple[str, str, int]], echo=print, rerun: bool = False) -> None:
        done = Counter(_key(r) for r in self.results())
        todo = plan if rerun else [key for key in plan if key not in done]
        if rerun:
            echo(f"{len(plan)} run(s) planned, all to run again ({sum(key in done for key in plan)} done before)")
        else:
            echo(f"{len(plan)} run(s) planned, {len(plan) - len(todo)} already done, {len(todo)} to run")
        if not todo:
            return
        # Every config is checked before the first run; an arm that copies another's numbers is built when its
        # turn comes (the plan puts it last), and checked up front only where those numbers exist already.
        current = self.current()
        for key in todo:
            source = copied_arm(self.design, key[1])
            if source is None or any(r.task == key[0] and r.arm == source for r in current):
                config_for(self.design, *key, self.folder, self.tracking_uri, current, done[key])
        parent = self.parent_run_id()
        for k, key in enumerate(todo, 1):
            cfg = config_for(self.design, *key, self.folder, self.tracking_uri, self.current(), done[key])
            result = run_one(cfg, *key, self.design["success_threshold"], parent)
            self.record(result)
            outcome = f"success at {result.env_steps_to_success:.0f} steps" if result.succeeded else "FAILED"
            echo(f"[{k}/{len(todo)}] {key[0]} {key[1]} seed {key[2]}: {outcome} ({result.wall_s:.0f} s)")


def _key(result: RunResult) -> tuple[str, str, int]:
    return result.task, result.arm, result.seed


def _latest(rows: list[RunResult]) -> dict[tuple[str, str, int], RunResult]:
    """Each task, arm and seed's last row in file order (a re-run's)."""
    return {_key(r): r for r in rows}


def screened_tasks(study: Study) -> list[str]:
    """Tasks on which plain PPO failed a share of seeds inside `keep_failure_rate` in the screen."""
    low, high = study.design["keep_failure_rate"]
    kept = []
    for task in study.design["tasks"]:
        runs = [r for r in study.current() if r.task == task and r.arm == REFERENCE_ARM]
        if runs and low <= sum(not r.succeeded for r in runs) / len(runs) <= high:
            kept.append(task)
    return kept


# ---- the report ------------------------------------------------------------------------------------------------


def report(study: Study, echo=print) -> Path:
    """Markdown tables and Kaplan-Meier plots of every task and arm in the results; logged to the parent run."""
    from entropilot.platform.stats import detectable_failure_rate, fisher_exact, kaplan_meier, logrank, mcnemar_exact

    results = study.current()
    lines = ["# Entropy study results", ""]
    plots = []
    for task in dict.fromkeys(r.task for r in results):
        rows = [r for r in results if r.task == task]
        reference = [r for r in rows if r.arm == REFERENCE_ARM]
        budget = study.design["tasks"][task]["budget_env_steps"]
        lines += [f"## {task} (budget {budget:,} env steps)", ""]
        if reference:
            base_rate = sum(not r.succeeded for r in reference) / len(reference)
            detectable = detectable_failure_rate(base_rate, len(reference)) if base_rate > 0 else None
            effect = (
                f"a method that fails at most {detectable:.0%} of its seeds"
                if detectable is not None
                else "no effect at all (too few seeds or too few failures)"
            )
            lines.append(
                f"Plain PPO fails {base_rate:.0%} of {len(reference)} seeds. At this n, Fisher's test (alpha 0.05, "
                f"power 0.8) detects {effect}."
            )
            lines.append("")
        lines.append(
            "| arm | failures / seeds | p (Fisher vs plain) | paired: fails where plain succeeds / succeeds where "
            "plain fails (p, McNemar) | median steps to success (KM) | p (log-rank vs plain) | final success "
            "| tracking RMS (nats) | entropy slope (nats/M steps) | mean coef | clipped | wall s / run |"
        )
        lines.append("|---|---|---|---|---|---|---|---|---|---|---|---|")
        curves = {}
        for arm in dict.fromkeys(r.arm for r in rows):
            runs = [r for r in rows if r.arm == arm]
            times = [_survival_time(r, budget) for r in runs]
            events = [r.succeeded for r in runs]
            curves[arm] = kaplan_meier(times, events)
            failures = sum(not e for e in events)
            p_fisher = p_logrank = math.nan
            paired = "-"
            if reference and arm != REFERENCE_ARM:
                ref_fail = sum(not r.succeeded for r in reference)
                p_fisher = fisher_exact(failures, len(runs), ref_fail, len(reference))
                reference_failed = {r.seed: not r.succeeded for r in reference}
                pairs = [(not r.succeeded, reference_failed[r.seed]) for r in runs if r.seed in reference_failed]
                worse, better, p_paired = mcnemar_exact([arm for arm, _ in pairs], [ref for _, ref in pairs])
                paired = f"{worse}/{better} ({_p(p_paired)}; {len(pairs)} pairs)"
                ref_times = [_survival_time(r, budget) for r in reference]
                p_logrank = logrank(times, events, ref_times, [r.succeeded for r in reference])
            lines.append(
                f"| {arm} | {failures}/{len(runs)} | {_p(p_fisher)} | {paired} | {_steps(curves[arm].median())} | "
                f"{_p(p_logrank)} | {_mean([r.final_success for r in runs])} | "
                f"{_mean([r.tracking_rms for r in runs])} | {_mean_sd([r.entropy_slope for r in runs])} | "
                f"{_mean([r.mean_coef for r in runs], '.4f')} | {_mean([r.clipped_fraction for r in runs])} | "
                f"{_mean([r.wall_s for r in runs], '.0f')} |"
            )
        lines.append("")
        plots.append(_plot_survival(task, curves, budget, study.folder / f"survival_{task}.png"))
        lines += [f"![survival {task}](survival_{task}.png)", ""]
    lines += _reruns(study.superseded())
    table = study.folder / "results.md"
    table.write_text("\n".join(lines))
    echo("\n".join(lines))
    _log_to_parent(study, [table, study.results_file, *plots])
    return table


def _reruns(pairs: list[tuple[RunResult, RunResult]]) -> list[str]:
    """The rows a re-run superseded, beside the row the tables use: nothing a study ran is dropped silently."""
    if not pairs:
        return []

    def outcome(r: RunResult) -> str:
        done = f"success at {r.env_steps_to_success:,.0f}" if r.succeeded else "failed"
        return f"{done} ({r.commit or 'commit not recorded'}; {r.machine or 'machine not recorded'})"

    lines = [
        "## Re-runs",
        "",
        "Rows run again (`study --rerun`); the tables above use the latest. A run reproduces bit for bit on one "
        "machine, not across machines (docs/entropy-study.md).",
        "",
        "| task | arm | seed | earlier | latest |",
        "|---|---|---|---|---|",
    ]
    lines += [f"| {a.task} | {a.arm} | {a.seed} | {outcome(a)} | {outcome(b)} |" for a, b in pairs]
    return [*lines, ""]


def _survival_time(result: RunResult, budget: float) -> float:
    """Env steps to success, or to the end of a failed run (censored), capped at the budget. The last iteration
    overshoots the budget by a few hundred steps, by different amounts in different runs; uncapped, a success
    evaluated at 400,375 steps came after every failure censored at 400,304, so the curve fell to 0 there as if no
    run had failed."""
    steps = result.env_steps_to_success if result.succeeded else result.env_steps
    return min(float(steps), float(budget))


def _mean(values: list, spec: str = ".2f") -> str:
    values = [v for v in values if v is not None]
    return format(statistics.fmean(values), spec) if values else "-"


def _mean_sd(values: list) -> str:
    """Mean ± the seed-to-seed standard deviation (what a no-op is judged against)."""
    values = [v for v in values if v is not None]
    if len(values) < 2:
        return _mean(values)
    return f"{statistics.fmean(values):.2f} ± {statistics.stdev(values):.2f}"


def _p(value: float) -> str:
    return "-" if math.isnan(value) else f"{value:.3f}"


def _steps(value: float) -> str:
    return "not reached" if math.isinf(value) else f"{value:,.0f}"


def _plot_survival(task: str, curves: dict, budget: float, path: Path) -> Path:
    """One small panel per arm, each over plain PPO's curve in grey: ten curves in one axes hide one another (arms
    that fail alike draw the same line)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    arms = [arm for arm in curves if arm != REFERENCE_ARM] or list(curves)
    columns = min(3, len(arms))
    rows = math.ceil(len(arms) / columns)
    fig, axes = plt.subplots(rows, columns, figsize=(3.3 * columns, 2.4 * rows + 0.6), sharex=True, sharey=True)
    axes = list(getattr(axes, "flat", [axes]))
    for ax, arm in zip(axes, arms):
        if REFERENCE_ARM in curves and arm != REFERENCE_ARM:
            ax.plot(*curves[REFERENCE_ARM].step_points(budget), color="0.6", linewidth=2.2, label=REFERENCE_ARM)
        ax.plot(*curves[arm].step_points(budget), color="C0", linewidth=1.6, label="this arm")
        ax.set_title(arm, fontsize=9)
        ax.set_ylim(-0.03, 1.03)
        ax.grid(alpha=0.3)
        ax.tick_params(labelsize=7)
        ax.xaxis.set_major_formatter(lambda x, _: f"{x / 1000:.0f}k")
    for ax in axes[len(arms) :]:
        ax.set_visible(False)
    axes[0].legend(fontsize=7, loc="lower left")
    fig.suptitle(f"{task}: share of seeds not yet successful, against env steps (grey: {REFERENCE_ARM})", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _log_to_parent(study: Study, files: list[Path]) -> None:
    import mlflow

    client = mlflow.MlflowClient(study.tracking_uri)
    run_id = study.parent_run_id()
    for f in files:
        client.log_artifact(run_id, str(f))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("step", choices=["screen", "study", "report"])
    parser.add_argument("--smoke", action="store_true", help="the tiny design: the whole pipeline in minutes")
    parser.add_argument("--dir", type=Path, default=None, help="study folder [default: runs/entropy-study]")
    parser.add_argument("--tracking-uri", default=None, help="MLflow store [default: sqlite in the study folder]")
    parser.add_argument("--seeds", type=int, default=12, help="seeds per arm in the study step")
    parser.add_argument("--tasks", nargs="*", default=None, help="study these tasks [default: the screen's]")
    parser.add_argument("--arms", nargs="*", default=None, help="only these arms [default: all]")
    parser.add_argument(
        "--rerun", action="store_true", help="run the planned runs again even if done (the latest row counts)"
    )
    args = parser.parse_args(argv)

    design = load_design(args.smoke)
    folder = (args.dir or ROOT / "runs" / ("entropy-study-smoke" if args.smoke else "entropy-study")).resolve()
    study = Study(folder, args.tracking_uri or f"sqlite:///{folder}/mlflow.db", design)
    if args.step == "screen":
        tasks = args.tasks or list(design["tasks"])
        plan = [(task, REFERENCE_ARM, s) for task in tasks for s in range(design["screen_seeds"])]
        study.run(plan, rerun=args.rerun)
        print(f"kept for the study (plain PPO fails {design['keep_failure_rate']}): {screened_tasks(study)}")
    elif args.step == "study":
        tasks = args.tasks or screened_tasks(study) or (list(design["tasks"]) if args.smoke else [])
        if not tasks:
            print("no task to study: run the screen first (or name --tasks)", file=sys.stderr)
            return 2
        arms = args.arms or list(design["arms"])
        # Seed by seed, so a study stopped early still holds paired seeds across every arm; within a seed the arm that
        # copies another's time-averaged coefficient runs after it.
        arms.sort(key=lambda arm: copied_arm(design, arm) is not None)
        seeds = design["screen_seeds"] if args.smoke else args.seeds
        plan = [(task, arm, s) for s in range(seeds) for task in tasks for arm in arms if applies(design, task, arm)]
        study.run(plan, rerun=args.rerun)
        report(study)
    else:
        report(study)
    return 0


if __name__ == "__main__":
    sys.exit(main())
