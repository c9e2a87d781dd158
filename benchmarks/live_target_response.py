"""How fast a live target change shows in the entropy curve: hover trainings (`configs/hover.yaml`, one seed) in which
the MLflow tags of the running run are changed after a known iteration, as a person would in the MLflow UI, beside an
untouched run with the same seed (the baseline, measured in the same invocation).

hover.yaml's controller is a lower_bound (entropy.control.mode): its target is a minimum, and the coefficient, in
[0, coef_max], only ever pushes entropy up. So the arms raise the minimum above the entropy the policy has, and the
faster arms raise what limits the push up: coef_max, max_step, and the loop gains.

Re-run (4 arms x 30 iterations; about 4 minutes on this project's 2-core machine):

    .venv/bin/python benchmarks/live_target_response.py
    .venv/bin/python benchmarks/live_target_response.py --plot docs/images/live-target-response.png
    .venv/bin/python benchmarks/live_target_response.py --iterations 50 --change-at 20

Each arm sets its tags with `MlflowClient.set_tag` when the console shows iteration `--change-at`, so the training
applies them before the next iteration. It prints, per arm, how far its entropy is above the untouched run's after
5, 10 and 20 more iterations, and the first iteration at which the gap reaches 0.25 and 0.5 nats. The numbers
describe the entropy controller of the checkout it runs in: it prints the commit.
"""

from __future__ import annotations

import argparse
import subprocess
import tempfile
from pathlib import Path

import ray
from matplotlib.figure import Figure
from mlflow import MlflowClient

from entropilot.platform.config import load_config
from entropilot.platform.live_tuning import live_tag
from entropilot.platform.train import train

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / "configs" / "hover.yaml"
NEW_TARGET = "4.5"  # nats: above a fresh hover policy's ~4.1 (the init threshold), so the minimum binds at once
ARMS = {  # label: the tags set after iteration --change-at (nothing: the baseline)
    "untouched": {},
    "target 4.5": {live_tag("target"): NEW_TARGET},
    "target 4.5, coef_max 0.2, max_step 0.02": {
        live_tag("target"): NEW_TARGET,
        live_tag("coef_max"): "0.2",
        live_tag("max_step"): "0.02",
    },
    # Faster loop gains too: natural frequency sqrt(b * gain) ~0.17 per iteration at hover's plant gain b ~1, damping
    # ratio (gain + damping) * sqrt(b / gain) / 2 ~0.95, inside the stability bound b * (gain + 2 damping) < 4
    # (see EntropyCoefficientController).
    "target 4.5, gain 0.03, damping 0.3, coef_max 0.2, max_step 0.05": {
        live_tag("target"): NEW_TARGET,
        live_tag("gain"): "0.03",
        live_tag("damping"): "0.3",
        live_tag("coef_max"): "0.2",
        live_tag("max_step"): "0.05",
    },
}
AFTER = (5, 10, 20)
GAPS = (0.25, 0.5)


def run(label: str, tags: dict[str, str], args, workdir: Path) -> list[dict]:
    slug = label.replace(" ", "_").replace(",", "").replace("(", "").replace(")", "")
    cfg = load_config(
        CONFIG,
        [
            f"seed={args.seed}",
            f"stop.iterations={args.iterations}",
            "stop.time_s=null",  # iterations only: a busy machine must not cut an arm short
            "stop.success_rate=null",
            "stop.success_lower_bound=null",
            "stop.max_crashes=null",
            "evaluation.interval=null",
            "checkpoint.keep_best=false",
            "mlflow.video=false",
            "mlflow.system_metrics=false",
            f"mlflow.tracking_uri=sqlite:///{workdir}/mlflow.db",
            "mlflow.experiment=live-target-response",
            f"mlflow.run_name={slug}",
            f"checkpoint.dir={workdir}/{slug}",
            "checkpoint.interval=null",
        ],
    )
    client = MlflowClient(cfg.mlflow.tracking_uri)
    run_id = None

    def echo(line: str) -> None:
        nonlocal run_id
        if line.startswith("MLflow run "):
            run_id = line.split()[2].rstrip(":")
        if line.startswith(("live:", "WARNING")) or (line.startswith("iter ") and int(line.split()[1]) % 5 == 0):
            print(f"  {label}: {line}", flush=True)
        if line.startswith("WARNING: live settings not applied"):  # the arm would be the untouched run again
            raise RuntimeError(f"{label}: its tags were refused: {line}")
        if line.startswith(f"iter {args.change_at:4d} "):
            for tag, text in tags.items():  # what a person does with the UI's tag editor
                client.set_tag(run_id, tag, text)

    result = train(cfg, echo=echo)
    ray.shutdown()  # each arm starts from a fresh Ray, as a user's `entropilot train` does
    return result.history


def run_whole(label: str, tags: dict[str, str], args, workdir: Path, tries: int = 3) -> list[dict]:
    """`run`, again while an arm's env runner was restarted (on a shared machine, by another's `ray stop`...): a
    restarted runner samples with stale weights (Ray 2.60), so that arm is no longer the same training."""
    for attempt in range(1, tries + 1):
        history = run(f"{label}" if attempt == 1 else f"{label} (try {attempt})", tags, args, workdir)
        restarts = history[-1].get("env_runner_restarts", 0)
        missing = sum("entropy" not in h for h in history)
        if not restarts and not missing:
            return history
        print(f"  {label}: env runner restarted {restarts:.0f}x, {missing} iteration(s) without learning: again")
    raise RuntimeError(f"{label}: no whole run in {tries} tries")


def first_iteration(gaps: list[float], size: float, start: int) -> int | None:
    return next((start + i for i, gap in enumerate(gaps) if gap >= size), None)


def plot(histories: dict[str, list[dict]], change_at: int, path: str) -> None:
    fig = Figure(figsize=(9, 6.2), layout="constrained")
    entropy_ax, coef_ax = fig.subplots(2, 1, sharex=True, height_ratios=(2, 1))
    colors = dict(zip(histories, ("black", "tab:blue", "tab:orange", "tab:green")))
    for label, history in histories.items():
        iterations = range(1, len(history) + 1)
        entropy_ax.plot(iterations, [h["entropy"] for h in history], color=colors[label], linewidth=1.6, label=label)
        coef_ax.plot(iterations, [h["entropy_coeff"] for h in history], color=colors[label], linewidth=1.2)
    baseline, changed = histories["untouched"], next(h for label, h in histories.items() if label != "untouched")
    for history, style, name in ((baseline, ":", "target, untouched"), (changed, "--", "target, changed")):
        entropy_ax.plot(
            range(1, len(history) + 1), [h["entropy_target"] for h in history], "tab:red", ls=style, lw=1, label=name
        )
    for ax in (entropy_ax, coef_ax):
        ax.axvline(change_at + 0.5, color="gray", linewidth=0.8)
        ax.grid(alpha=0.3)
    # Around the entropy curves and the new target: a target far below them (a lower_bound's old minimum) is off-axis.
    entropies = [h["entropy"] for history in histories.values() for h in history]
    top = max(max(entropies), max(h["entropy_target"] for h in changed))
    entropy_ax.set_ylim(min(entropies) - 0.5, top + 0.15)
    entropy_ax.set_ylabel("policy entropy [nats]")
    entropy_ax.legend(fontsize=8, loc="lower left")
    entropy_ax.set_title(f"hover, seed 0: live tags set after iteration {change_at} (gray line)")
    coef_ax.set_ylabel("entropy coefficient")
    coef_ax.set_xlabel("iteration (4000 env steps each)")
    fig.savefig(path, dpi=100)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--iterations", type=int, default=30)
    parser.add_argument("--change-at", type=int, default=10, help="tags are set when this iteration's line shows")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--plot", help="save the entropy curves here (PNG)")
    args = parser.parse_args()
    commit = subprocess.run(["git", "-C", str(ROOT), "log", "-1", "--format=%h %cs"], capture_output=True, text=True)
    dirty = subprocess.run(
        ["git", "-C", str(ROOT), "status", "--porcelain", "entropilot/policies"], capture_output=True
    )
    print(f"entropy controller of commit {commit.stdout.strip()}{' (modified)' if dirty.stdout else ''}", flush=True)
    histories = {}
    with tempfile.TemporaryDirectory() as tmp:
        for label, tags in ARMS.items():
            histories[label] = run_whole(label, tags, args, Path(tmp))
    baseline = [h["entropy"] for h in histories["untouched"]]
    k = args.change_at
    same = max(abs(h["entropy"] - b) for arm in histories.values() for h, b in zip(arm[:k], baseline[:k]))
    print(f"\nbefore the change the arms differ by at most {same:.2g} nats (same seed)")
    print(f"\nentropy above the untouched run's (nats) n iterations after the change (after iteration {k}),")
    print("the first iteration at which the gap reaches 0.25 / 0.5 nats, and the coefficient at the end:\n")
    columns = [*(f"+{n}" for n in AFTER), *(f"{gap} nats above at" for gap in GAPS), "coefficient at the end"]
    print("| arm | " + " | ".join(columns) + " |")
    print("|---|" + "---|" * len(columns))
    for label, history in histories.items():
        gaps = [h["entropy"] - b for h, b in zip(history[k:], baseline[k:])]  # iterations k+1, k+2, ...
        above = " | ".join(f"{gaps[n - 1]:.2f}" if n <= len(gaps) else "-" for n in AFTER)
        firsts = " | ".join(str(first_iteration(gaps, gap, k + 1) or "-") for gap in GAPS)
        print(f"| {label} | {above} | {firsts} | {history[-1]['entropy_coeff']:.3f} |")
    if args.plot:
        plot(histories, k, args.plot)
        print(f"\nplot: {args.plot}")


if __name__ == "__main__":
    main()
