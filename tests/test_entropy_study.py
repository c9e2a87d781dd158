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


def test_rows_with_fields_from_a_later_version_are_read(tmp_path):
    row = {f.name: None for f in dataclasses.fields(entropy_study.RunResult)}
    row.update(task="t", arm="a", seed=0, succeeded=True, env_steps=1, wall_s=1.0, run_id="r", added_later=1)
    (tmp_path / "results.jsonl").write_text(json.dumps(row) + "\n")
    study = entropy_study.Study(tmp_path, "sqlite:///unused.db", entropy_study.SMOKE)
    assert [(r.task, r.arm, r.seed) for r in study.results()] == [("t", "a", 0)]
