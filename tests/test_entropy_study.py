"""The entropy study's pipeline end to end in its smoke design: runs as MLflow child runs, resumable, and a report."""

import dataclasses
import json
import subprocess
import sys
from pathlib import Path

import mlflow
import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
import entropy_study  # noqa: E402  (a script in benchmarks/, imported as a module)

pytestmark = pytest.mark.integration  # trains four tiny runs on Ray


def test_the_smoke_study_runs_resumes_and_reports(tmp_path, ray_session, isolated_mlflow_env):
    folder = tmp_path / "study"
    assert entropy_study.main(["study", "--smoke", "--dir", str(folder)]) == 0
    results = [json.loads(line) for line in (folder / "results.jsonl").read_text().splitlines()]
    runs = sorted((r["arm"], r["seed"]) for r in results)
    assert runs == [("control", 0), ("control", 1), ("plain_ppo", 0), ("plain_ppo", 1)]
    assert all(r["env_steps"] >= 400 and r["wall_s"] > 0 for r in results)
    head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=ROOT).stdout
    assert {r["commit"].removesuffix("+dirty") for r in results} == {head.strip()}  # which code produced each row

    # Every run is a child of the one parent run, which holds the report.
    client = mlflow.MlflowClient(f"sqlite:///{folder}/mlflow.db")
    parent = json.loads((folder / "parent_run.json").read_text())["run_id"]
    children = client.search_runs(
        [client.get_experiment_by_name("entropy-study").experiment_id],
        filter_string=f"tags.mlflow.parentRunId = '{parent}'",
    )
    assert sorted(run.info.run_id for run in children) == sorted(r["run_id"] for r in results)
    assert {a.path for a in client.list_artifacts(parent)} >= {"results.md", "results.jsonl", "survival_tiny_hover.png"}
    table = (folder / "results.md").read_text()
    assert "| plain_ppo | " in table and "| control | " in table and "Fisher" in table
    assert "McNemar" in table and "; 2 pairs)" in table  # control against plain PPO on seeds 0 and 1

    # Run again: nothing left to run, the same results.
    assert entropy_study.main(["study", "--smoke", "--dir", str(folder)]) == 0
    assert len((folder / "results.jsonl").read_text().splitlines()) == 4
    assert all(r["machine"] for r in results)  # which machine: runs reproduce on one, not across

    # --rerun runs a planned run again: the row is appended, the tables count the latest, the report lists both.
    assert entropy_study.main(["study", "--smoke", "--dir", str(folder), "--arms", "plain_ppo", "--rerun"]) == 0
    assert len((folder / "results.jsonl").read_text().splitlines()) == 6
    table = (folder / "results.md").read_text()
    assert "| plain_ppo | " in table and "/2 |" in table.split("| plain_ppo | ")[1].split("\n")[0]
    assert (
        "## Re-runs" in table
        and "| tiny_hover | plain_ppo | 0 |" in table
        and "| tiny_hover | plain_ppo | 1 |" in table
    )


def test_rows_with_fields_from_a_later_version_are_read(tmp_path):
    row = {f.name: None for f in dataclasses.fields(entropy_study.RunResult)}
    row.update(task="t", arm="a", seed=0, succeeded=True, env_steps=1, wall_s=1.0, run_id="r", added_later=1)
    (tmp_path / "results.jsonl").write_text(json.dumps(row) + "\n")
    study = entropy_study.Study(tmp_path, "sqlite:///unused.db", entropy_study.SMOKE)
    assert [(r.task, r.arm, r.seed) for r in study.results()] == [("t", "a", 0)]


def _row(arm: str, seed: int, succeeded: bool, run_id: str) -> dict:
    row = {f.name: None for f in dataclasses.fields(entropy_study.RunResult)}
    row.update(task="t", arm=arm, seed=seed, succeeded=succeeded, env_steps=10, wall_s=1.0, run_id=run_id)
    row["env_steps_to_success"] = 10 if succeeded else None
    return row


def test_a_rerun_supersedes_the_row_before_it_and_both_are_kept(tmp_path):
    rows = [_row("plain_ppo", 0, True, "first"), _row("plain_ppo", 1, False, "x"), _row("plain_ppo", 0, False, "again")]
    (tmp_path / "results.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    study = entropy_study.Study(tmp_path, "sqlite:///unused.db", entropy_study.SMOKE)
    assert len(study.results()) == 3
    assert sorted((r.seed, r.run_id) for r in study.current()) == [(0, "again"), (1, "x")]
    assert [(a.run_id, b.run_id) for a, b in study.superseded()] == [("first", "again")]
    lines = entropy_study._reruns(study.superseded())
    assert lines[0] == "## Re-runs"
    assert any(line.startswith("| t | plain_ppo | 0 | success at 10") and "| failed (" in line for line in lines)


def test_a_fixed_arm_copies_the_mean_coefficient_of_the_arm_it_names():
    design = {
        "fixed_coef_from": "lower_bound",
        "tasks": {"t": {}},
        "arms": {
            "lower_bound": ["entropy.control.mode=lower_bound"],
            "tracker": ["entropy.control.mode=track"],
            "fixed_coef": ["entropy.control.coef={mean_coef}"],
            "fixed_tracker_coef": ["entropy.control.coef={mean_coef:tracker}"],
        },
    }
    rows = [_row("lower_bound", 0, True, "a"), _row("tracker", 0, True, "b"), _row("tracker", 1, True, "c")]
    results = [entropy_study.RunResult(**r) for r in rows]
    for result, coef in zip(results, (0.002, -0.04, -0.05)):
        result.mean_coef = coef
    assert [entropy_study.copied_arm(design, arm) for arm in design["arms"]] == [None, None, "lower_bound", "tracker"]
    assert entropy_study.arm_overrides(design, "t", "fixed_coef", results) == ["entropy.control.coef=0.002000"]
    assert entropy_study.arm_overrides(design, "t", "fixed_tracker_coef", results) == ["entropy.control.coef=-0.045000"]
    with pytest.raises(SystemExit, match="copies the mean coefficient of tracker: run tracker first"):
        entropy_study.arm_overrides(design, "t", "fixed_tracker_coef", results[:1])


def test_every_task_and_arm_it_applies_to_makes_a_valid_config(tmp_path):
    """The shipped design: each task's config with each arm it runs (a task skips the arms that cannot act on it,
    e.g. entropy-aware init on the swarm) validates, so a study never stops at its up-front check."""
    design = entropy_study.load_design(smoke=False)
    coefs = [
        entropy_study.RunResult(**{**_row(arm, 0, True, arm), "task": task, "mean_coef": 0.001})
        for task in design["tasks"]
        for arm in ("lower_bound", "tracker")
    ]
    assert not entropy_study.applies(design, "swarm", "init_median") and entropy_study.applies(
        design, "swarm", "tracker"
    )
    for task in design["tasks"]:
        for arm in design["arms"]:
            if entropy_study.applies(design, task, arm):
                cfg = entropy_study.config_for(design, task, arm, 0, tmp_path, f"sqlite:///{tmp_path}/m.db", coefs)
                assert cfg.seed == 0 and cfg.stop.env_steps == design["tasks"][task]["budget_env_steps"]
