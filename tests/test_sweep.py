"""`entropilot sweep`: search-space parsing and validation (before Ray), trial resources, ASHA, and a real
2-trial grid sweep on Ray Tune logging child runs under one parent run in a real MLflow server."""

import csv

import mlflow
import pytest
import ray
from click.testing import CliRunner

from entropilot.cli import main
from entropilot.platform.config import load_config, parse_config
from entropilot.platform.names import SWEEP_BEST_RUN_ID_TAG
from entropilot.platform.resources import DoesNotFit, run_bundles, runs_that_fit
from entropilot.platform.sweep import make_scheduler, run_sweep, tune_search_algorithm
from entropilot.platform.sweep_plan import (
    SweepError,
    parse_grid,
    parse_random,
    plan_sweep,
)
from entropilot.platform.sweep_summary import (
    FINISHED,
    TrialSummary,
    format_init_table,
    format_table,
    init_groups,
    to_csv,
)


def tiny_config(uri: str = "sqlite:///unused.db", **sections):
    """Two PPO iterations of 200 steps, one evaluation episode at the end, one init draw, no video."""
    data = {
        "name": "tiny-sweep",
        "env": {"id": "entropilot/Hover-v0", "kwargs": {"episode_seconds": 2.0, "success_seconds": 1.0}},
        "algorithm": {"train_batch_size": 200, "minibatch_size": 100, "num_epochs": 1},
        "entropy": {"init": {"threshold": -4.0, "max_draws": 1, "rollout_steps": 100}, "control": {"target": 5.0}},
        "resources": {"envs_per_runner": 1, "num_cpus_per_env_runner": 0.5, "gpu": "off"},
        "mlflow": {"tracking_uri": uri, "experiment": "test-sweep", "video": False, "system_metrics": False},
        "stop": {"iterations": 2},
        "evaluation": {"interval": 2, "episodes": 1},
        "checkpoint": {"interval": 2},
    }
    data.update(sections)
    return parse_config(data)


def test_grid_and_random_options_parse_into_tune_domains():
    from ray import tune

    threshold = parse_grid("entropy.init.threshold=-5,-4.5,-3")
    assert (threshold.kind, threshold.values) == ("grid", (-5, -4.5, -3))
    assert threshold.to_tune("grid") == tune.grid_search([-5, -4.5, -3])
    target = parse_grid("entropy.target=[1.0, [[0, 5.5], [400000, 1.5]]]")  # the --set alias; a YAML list of values
    assert target.key == "entropy.control.target" and target.values == (1.0, [[0, 5.5], [400000, 1.5]])
    assert parse_grid("entropy.init_threshold=0.5,1.0").key == "entropy.init.threshold"  # the spelling
    assert parse_grid("algorithm.lr=1e-4,3e-4").values == (1e-4, 3e-4)  # YAML 1.1 would read 1e-4 as a string

    lr = parse_random("algorithm.lr=loguniform:1e-4:1e-2")
    assert (lr.kind, lr.values, lr.describe()) == ("loguniform", (1e-4, 1e-2), "loguniform(0.0001, 0.01)")
    domain = lr.to_tune("random")
    assert (domain.lower, domain.upper) == (1e-4, 1e-2)
    epochs = parse_random("algorithm.num_epochs=randint:1:4").to_tune("random")
    assert (epochs.lower, epochs.upper) == (1, 5)  # ours includes HIGH, Tune's excludes it
    hidden = parse_random("model.hidden=choice:[[64, 64], [128, 128]]")
    assert hidden.values == ([64, 64], [128, 128]) and hidden.to_tune("random").categories == [[64, 64], [128, 128]]
    # Optuna has no grid search: there grid values become a choice.
    assert parse_grid("model.activation=tanh,relu").to_tune("optuna").categories == ["tanh", "relu"]

    for bad, message in [
        ("algorithm.lr=normal:0:1", "unknown distribution 'normal'"),
        ("algorithm.lr=uniform:1", "uniform needs two finite numbers"),
        ("algorithm.lr=uniform:0:nan", "uniform needs two finite numbers"),
        ("algorithm.lr=uniform:2:1", "LOW must be below HIGH"),
        ("algorithm.lr=loguniform:0:1", "loguniform needs 0 < LOW"),
        ("algorithm.num_epochs=randint:1:2.5", "randint needs two integers"),
    ]:
        with pytest.raises(SweepError, match=message):
            parse_random(bad)
    with pytest.raises(SweepError, match="empty value"):
        parse_grid("seed=1,,2")


def test_random_search_plan_counts_samples_per_grid_combination(tmp_path):
    plan = plan_sweep(
        tiny_config(), ["seed=0,1"], ["entropy.init.threshold=uniform:-6:-3"], samples=3, sweep_dir=tmp_path
    )
    assert (plan.search, plan.samples, plan.keys) == ("random", 3, ["seed", "entropy.init.threshold"])
    assert plan.search_params()["sweep.space.entropy.init.threshold"] == "uniform(-6.0, -3.0)"
    assert plan.search_params()["sweep.space.seed"] == "grid [0, 1]"
    assert plan_sweep(tiny_config(), ["seed=0,1"]).samples == 1


def test_bad_sweeps_fail_naming_key_and_value_before_ray_starts(tmp_path):
    assert not ray.is_initialized()
    base = tiny_config()
    for grid, random, message in [
        (["entropy.init.treshold=-5,-4"], [], r"entropy\.init\.treshold: unknown key; valid keys here: enabled, "),
        (["entropy.init.threshold=-5,500"], [], r"(?s)threshold=500 give.*allowed: -100\.0 <= value <= 100\.0"),
        ([], ["entropy.init.threshold=uniform:-5:200"], r"entropy\.init\.threshold=200\.0 give an invalid config"),
        (["checkpoint.dir=a,b"], [], "the sweep sets checkpoint.dir itself"),
        ([], ["algorithm.num_epochs=uniform:1:5"], "an integer field; use randint"),
        (["seed=0,1", "seed=2"], [], "seed is swept twice"),
        ([], [], "nothing to sweep"),
    ]:
        with pytest.raises(SweepError, match=message):
            plan_sweep(base, grid, random, search="random" if random else None, sweep_dir=tmp_path)
    # Each value alone fits the base (batch 400, minibatch 100); batch 200 with minibatch 300 does not.
    with pytest.raises(SweepError, match=r"train_batch_size=200, algorithm.minibatch_size=300 give an invalid config"):
        plan_sweep(
            tiny_config(algorithm={"train_batch_size": 400, "minibatch_size": 100, "num_epochs": 1}),
            ["algorithm.train_batch_size=200,400", "algorithm.minibatch_size=100,300"],
        )
    with pytest.raises(SweepError, match="--random needs --search random or optuna"):
        plan_sweep(base, [], ["algorithm.lr=uniform:1e-4:1e-3"], search="grid")
    with pytest.raises(SweepError, match="evaluation.interval is null"):
        plan_sweep(tiny_config(evaluation={"interval": None}), ["seed=0,1"])

    config = tmp_path / "tiny.yaml"
    config.write_text("name: tiny\nstop: {iterations: 2}\n")
    result = CliRunner().invoke(main, ["sweep", str(config), "--grid", "entropy.init.threshold=-5,-200"])
    assert result.exit_code == 1
    assert "entropy.init.threshold=-200" in result.output and "allowed: -100.0 <= value <= 100.0" in result.output
    assert not ray.is_initialized()


def test_optuna_search_suggests_values_inside_the_ranges(tmp_path):
    plan = plan_sweep(
        tiny_config(),
        ["seed=0,1"],
        ["algorithm.lr=loguniform:1e-4:1e-2"],
        search="optuna",
        samples=4,
        sweep_dir=tmp_path,
    )
    searcher = tune_search_algorithm(plan)
    assert searcher.set_search_properties("success_rate", "max", plan.tune_space())
    for i in range(4):
        values = searcher.suggest(f"trial-{i}")
        assert 1e-4 <= values["algorithm.lr"] <= 1e-2 and values["seed"] in (0, 1)


def test_trial_resources_fit_the_cluster_or_fail_before_any_trial_runs():
    one_runner = run_bundles(tiny_config())
    assert one_runner == [{"CPU": 1.0}, {"CPU": 0.5}]  # the trial process (learner) + its env runner
    assert runs_that_fit(one_runner, {"CPU": 2.0}) == 1
    assert runs_that_fit(one_runner, {"CPU": 16.0, "GPU": 1.0}) == 10
    # PPO with 2 full-CPU runners on a 2-core box: 3 CPUs, which would stay PENDING forever.
    two_runners = run_bundles(tiny_config(resources={"num_env_runners": 2, "gpu": "off"}))
    needs = r"one training run needs 3 CPU \(1 CPU \+ 1 CPU \+ 1 CPU\) but the Ray cluster has 2"
    with pytest.raises(DoesNotFit, match=needs):
        runs_that_fit(two_runners, {"CPU": 2.0})


def test_asha_judges_trials_on_the_metric_from_the_first_evaluation(tmp_path):
    plan = plan_sweep(
        tiny_config(stop={"iterations": 40}, evaluation={"interval": 5, "episodes": 1}),
        ["seed=0,1"],
        sweep_dir=tmp_path,
    )
    scheduler = make_scheduler(plan)
    assert type(scheduler).__name__ == "AsyncHyperBandScheduler"
    assert scheduler._time_attr == "training_iteration" and scheduler._max_t == 40
    assert sorted(milestone for milestone, _ in scheduler._brackets[0]._rungs) == [5, 10, 20, 40]
    assert plan.grace_period == 5
    no_asha = plan_sweep(tiny_config(), ["seed=0,1"], asha=False, sweep_dir=tmp_path)
    assert type(make_scheduler(no_asha)).__name__ == "FIFOScheduler"


def test_grid_sweep_runs_trials_as_child_runs_and_writes_the_best_config(
    tmp_path, mlflow_server, isolated_mlflow_env, ray_session
):
    plan = plan_sweep(
        tiny_config(mlflow_server),
        ["entropy.init.threshold=-5,5.5", "entropy.target=4.5"],
        sweep_dir=tmp_path / "sweep",
    )
    lines = []
    result = run_sweep(plan, echo=lines.append)

    assert [t.values for t in result.trials] == [
        {"entropy.init.threshold": -5, "entropy.control.target": 4.5},
        {"entropy.init.threshold": 5.5, "entropy.control.target": 4.5},
    ]
    for trial in result.trials:
        assert (trial.outcome, trial.iterations, trial.stopped_early) == ("finished", 2, False)
        assert trial.success_rate is not None and trial.entropy is not None and trial.time_s > 0
        assert (plan.sweep_dir / "trials" / trial.trial_id).is_dir()  # each trial its own checkpoint folder
    assert "1 at a time (each takes 1 CPU + 0.5 CPU)" in lines[0]
    assert sum(line.strip().startswith(result.trials[0].trial_id) for line in result.table.splitlines()) == 1
    assert result.table in lines and f"{result.best.trial_id} *" in result.table

    client = mlflow.MlflowClient(mlflow_server)
    parent = client.get_run(result.parent_run_id)
    assert parent.data.params["sweep.space.entropy.init.threshold"] == "grid [-5, 5.5]"
    assert parent.data.params["sweep.search"] == "grid"
    assert parent.data.tags[SWEEP_BEST_RUN_ID_TAG] == result.best.run_id
    artifacts = {a.path for a in client.list_artifacts(parent.info.run_id)}
    assert artifacts == {"best_config.yaml", "summary.csv", "summary.md"}
    children = client.search_runs(
        [parent.info.experiment_id], filter_string=f"tags.mlflow.parentRunId = '{parent.info.run_id}'"
    )
    assert sorted(c.info.run_id for c in children) == sorted(t.run_id for t in result.trials)
    assert sorted(c.data.params["entropy.init.threshold"] for c in children) == ["-5.0", "5.5"]
    # What entropy-aware init kept, per trial, read from its child run: the one draw (a centred std-0.5 policy,
    # ~2.7 nats) clears -5 and not 5.5.
    by_run = {c.info.run_id: c.data.metrics for c in children}
    for trial, cleared in zip(result.trials, [True, False]):
        assert trial.init_cleared is cleared and trial.init_draws == 1
        assert trial.init_entropy == by_run[trial.run_id]["entropy_init/chosen_entropy"]
        assert -5 < trial.init_entropy < 5.5
    assert "init entropy" in result.table and "init cleared" in result.table
    rows = list(csv.DictReader((plan.sweep_dir / "summary.csv").read_text().splitlines()))
    assert [(row["entropy_init/draws"], row["entropy_init/cleared"]) for row in rows] == [("1", "1"), ("1", "0")]
    assert [float(row["entropy_init/chosen_entropy"]) for row in rows] == [t.init_entropy for t in result.trials]
    assert result.init_table == ""  # every setting ran once: no table per setting
    for child in children:
        assert child.info.status == "FINISHED"
        assert child.data.params["entropy.control.target"] == "4.5"
        assert "success_rate" in child.data.metrics
        assert [m.step for m in client.get_metric_history(child.info.run_id, "entropy")] == [1, 2]

    best = load_config(result.best_config)
    assert best.entropy.init.threshold == result.best.values["entropy.init.threshold"]
    assert best.entropy.control.target == 4.5
    assert best.checkpoint.dir is None and not best.checkpoint_dir.exists()  # a fresh folder for `entropilot train`
    assert best.mlflow.tracking_uri == mlflow_server and best.algorithm.train_batch_size == 200


def _trial(threshold, weight_seed, entropy, draws, cleared):
    return TrialSummary(
        trial_id=f"t{threshold}-{weight_seed}",
        values={"entropy.init.threshold": threshold, "model.weight_seed": weight_seed},
        metric=None,
        success_rate=None,
        time_s=1.0,
        entropy=None,
        iterations=1,
        outcome=FINISHED,
        detail="1 iterations",
        run_id=None,
        init_entropy=entropy,
        init_draws=draws,
        init_cleared=cleared,
    )


def test_init_table_gives_each_threshold_its_acceptance_rate_and_mean_kept_entropy_over_weight_seeds():
    trials = [
        _trial(0.0, 0, 0.5, 1, True),
        _trial(0.0, 1, 1.5, 2, True),
        _trial(1.0, 0, 1.25, 3, True),
        _trial(1.0, 1, 1.0, 10, False),
        _trial(1.0, 2, None, None, None),  # failed before its init logged: left out
        _trial(2.0, 0, 1.75, 10, False),
    ]
    groups = init_groups(trials, ["entropy.init.threshold", "model.weight_seed"])
    assert [g.values for g in groups] == [{"entropy.init.threshold": t} for t in (0.0, 1.0, 2.0)]
    assert [(g.trials, g.cleared, g.acceptance_rate) for g in groups] == [(2, 2, 1.0), (2, 1, 0.5), (1, 0, 0.0)]
    assert [g.mean_draws for g in groups] == [1.5, 6.5, 10.0]
    assert [(g.mean_entropy, g.min_entropy, g.max_entropy) for g in groups] == [
        (1.0, 0.5, 1.5),
        (1.125, 1.0, 1.25),
        (1.75, 1.75, 1.75),
    ]
    table = format_init_table(groups, markdown=True).splitlines()
    assert table[0] == (
        "| entropy.init.threshold | trials | cleared | acceptance | mean draws | kept init entropy: mean [min, max] |"
    )
    assert table[2:] == [
        "| 0 | 2 | 2/2 | 100% | 1.5 | 1.00 [0.50, 1.50] |",
        "| 1 | 2 | 1/2 | 50% | 6.5 | 1.12 [1.00, 1.25] |",
        "| 2 | 1 | 0/1 | 0% | 10.0 | 1.75 [1.75, 1.75] |",
    ]


def test_a_metric_the_table_always_shows_gets_no_second_column():
    trials = [_trial(0.0, 0, 0.5, 1, True)]
    keys = ["entropy.init.threshold", "model.weight_seed"]
    plain = format_table(trials, keys, "success_rate").splitlines()[0]
    for metric in ("entropy", "time_s"):
        assert format_table(trials, keys, metric).splitlines()[0] == plain
        assert to_csv(trials, keys, metric).splitlines()[0].split(",").count(metric) == 1
    assert format_table(trials, keys, "episode_return_mean").splitlines()[0] != plain
