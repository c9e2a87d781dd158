"""The training loop's evaluations: the summary and its order (what keep_best keeps), the stop criteria on a success
lower bound and on crashes, their config checks; which checkpoint of a run folder export and resume take; and a real
short training that keeps its best checkpoint."""

from __future__ import annotations

import json

import pytest

from entropilot.envs import HOVER_ID
from entropilot.envs.evaluate import EpisodeResult
from entropilot.platform.checkpoints import BEST_CHECKPOINT, STATE_FILE, locate_checkpoint
from entropilot.platform.config import ConfigError, parse_config
from entropilot.platform.evaluation import EvaluationSummary
from entropilot.platform.train import _stop_reason


def _results(successes: int, crashes: int, episodes: int, distance: float = 0.05) -> list[EpisodeResult]:
    out = []
    for k in range(episodes):
        crash = "tilt" if k < crashes else None
        out.append(EpisodeResult(k, k >= crashes and k < crashes + successes, 0.0, 10, distance, crash, None, None))
    return out


def test_an_evaluation_says_its_lower_bound_crashes_and_ranks_by_them():
    twenty = EvaluationSummary.of(_results(20, 0, 20))
    hundred = EvaluationSummary.of(_results(100, 0, 100))
    assert twenty.success_rate == 1.0 and twenty.lower_bound == pytest.approx(0.839, abs=1e-3)
    assert hundred.lower_bound == pytest.approx(0.963, abs=1e-3)
    crashed = EvaluationSummary.of(_results(99, 1, 100))
    assert crashed.crashes == 1 and crashed.metrics()["eval_crashes"] == 1.0
    # more evidence beats a lucky small sample; a crash loses to none at the same success; then the distance
    assert hundred.score() > twenty.score()
    assert EvaluationSummary.of(_results(99, 0, 100)).score() > crashed.score()
    assert (
        EvaluationSummary.of(_results(99, 0, 100, 0.04)).score()
        > EvaluationSummary.of(_results(99, 0, 100, 0.05)).score()
    )


def _cfg(**stop):
    return parse_config({"env": {"id": HOVER_ID}, "stop": stop, "evaluation": {"interval": 1, "episodes": 100}})


def test_training_stops_on_the_lower_bound_only_without_too_many_crashes():
    cfg = _cfg(success_lower_bound=0.95, max_crashes=0)
    no_eval = {"env_steps": 1000.0}
    assert _stop_reason(cfg, 5, 1000, 10.0, no_eval) is None
    lucky = EvaluationSummary.of(_results(20, 0, 20)).metrics()
    assert _stop_reason(cfg, 5, 1000, 10.0, lucky) is None  # 20/20 only shows >= 0.84
    crashed = EvaluationSummary.of(_results(99, 1, 100)).metrics()
    assert _stop_reason(cfg, 5, 1000, 10.0, crashed) is None
    clean = EvaluationSummary.of(_results(100, 0, 100)).metrics()
    assert _stop_reason(cfg, 5, 1000, 10.0, clean) == "evaluation success lower bound 0.963 >= 0.95, 0 crash(es)"
    rate = _cfg(success_rate=0.95, max_crashes=0)
    assert _stop_reason(rate, 5, 1000, 10.0, EvaluationSummary.of(_results(95, 1, 100)).metrics()) is None
    assert _stop_reason(_cfg(success_rate=0.95), 5, 1000, 10.0, EvaluationSummary.of(_results(95, 1, 100)).metrics())


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"stop": {"max_crashes": 0, "time_s": 10}}, "stop.max_crashes: qualifies success_rate or success_lower_bound"),
        ({"stop": {"success_lower_bound": 0.9}, "evaluation": {"interval": None}}, "stop.success_lower_bound needs"),
        ({"checkpoint": {"keep_best": True}, "evaluation": {"interval": None}}, "checkpoint.keep_best needs"),
        ({"stop": {"success_lower_bound": 1.0}}, "stop.success_lower_bound"),
    ],
)
def test_evaluation_based_settings_are_checked(data, message):
    with pytest.raises(ConfigError, match=message):
        parse_config({"env": {"id": HOVER_ID}, **data})


def test_export_takes_the_best_checkpoint_resume_the_newest_and_a_damaged_best_falls_back(tmp_path):
    from test_hostile_inputs import write_checkpoint

    config = parse_config({"env": {"id": HOVER_ID}}).model_dump(mode="json")
    run = tmp_path / "run"
    newest = write_checkpoint(run / "iter_000002", config)
    best = write_checkpoint(run / BEST_CHECKPOINT, config)
    warnings = []
    assert locate_checkpoint(str(run), "SOURCE", warn=warnings.append, best=True) == best
    assert locate_checkpoint(str(run), "--resume", warn=warnings.append) == newest
    (best / STATE_FILE).unlink()  # a save of the best cut short
    assert locate_checkpoint(str(run), "SOURCE", warn=warnings.append, best=True) == newest
    assert warnings == [
        f"WARNING: the best checkpoint {best} is damaged (no {STATE_FILE} (the save did not finish)); "
        "using the newest intact one"
    ]


def test_keep_last_deletes_older_checkpoints_but_never_a_newer_damaged_one_or_the_best(tmp_path):
    from test_hostile_inputs import write_checkpoint

    from entropilot.platform.checkpoints import prune_checkpoints

    config = parse_config({"env": {"id": HOVER_ID}}).model_dump(mode="json")
    run = tmp_path / "run"
    folders = [write_checkpoint(run / f"iter_{i:06d}", config) for i in range(1, 6)]
    best = write_checkpoint(run / BEST_CHECKPOINT, config)
    (folders[4] / STATE_FILE).unlink()  # the newest save cut short
    (folders[1] / STATE_FILE).unlink()
    assert prune_checkpoints(run, 2) == folders[:2]  # iter_4 and iter_3 are the newest intact two
    assert sorted(p.name for p in run.iterdir()) == [BEST_CHECKPOINT, "iter_000003", "iter_000004", "iter_000005"]
    assert best.exists() and prune_checkpoints(run, 2) == []
    assert locate_checkpoint(str(run), "--resume", warn=lambda _: None) == folders[3]  # resume still finds one
    with pytest.raises(ConfigError, match="keep_last"):
        parse_config({"env": {"id": HOVER_ID}, "checkpoint": {"keep_last": 0}})


@pytest.mark.integration
def test_a_run_keeps_its_best_checkpoint_and_export_takes_it(tmp_path, ray_session, mlflow_server, isolated_mlflow_env):
    from entropilot.deploy.export import resolve_checkpoint
    from entropilot.platform.train import train

    cfg = parse_config(
        {
            "name": "keep-best",
            "env": {"id": HOVER_ID, "kwargs": {"episode_seconds": 1.0, "success_seconds": 0.5}},
            "algorithm": {"train_batch_size": 200, "minibatch_size": 100, "num_epochs": 1},
            "entropy": {"init": {"enabled": False}},
            "resources": {"envs_per_runner": 1, "num_cpus_per_env_runner": 0.5},
            "mlflow": {"tracking_uri": mlflow_server, "experiment": "keep-best"},
            "stop": {"iterations": 3},
            "evaluation": {"interval": 1, "episodes": 6},
            "checkpoint": {"interval": 1, "dir": str(tmp_path / "run"), "keep_best": True, "keep_last": 1},
        }
    )
    lines = []
    result = train(cfg, echo=lines.append)
    history = result.history
    best = max(
        range(3),
        key=lambda i: (
            history[i]["eval_success_lower_bound"],
            -history[i]["eval_crashes"],
            -history[i]["eval_final_distance"],
        ),
    )
    state = json.loads((tmp_path / "run" / BEST_CHECKPOINT / STATE_FILE).read_text())
    assert state["best_iteration"] == best + 1 and state["iteration"] == best + 1
    assert all("crashes)" in line for line in lines if line.startswith("iter "))
    assert resolve_checkpoint(tmp_path / "run") == (tmp_path / "run" / BEST_CHECKPOINT).resolve()
    assert result.checkpoint.name == "iter_000003"  # the last one is kept too (resume continues from it)
    assert sorted(p.name for p in (tmp_path / "run").glob("iter_*")) == ["iter_000003"]  # keep_last: 1
