"""The names training writes and reads, defined once: RLlib 2.60's learner metrics as its own constants spell them, and
`names.METRICS` (what a sweep may optimize) as exactly what an iteration logs."""

from entropilot.platform.evaluation import EvaluationSummary
from entropilot.platform.names import METRIC_PREFIXES, METRICS, Metric
from entropilot.platform.train import iteration_metrics
from entropilot.policies import learner_metrics


def test_rllibs_learner_metrics_are_named_as_rllib_names_them():
    from ray.rllib.algorithms.ppo.ppo import (
        LEARNER_RESULTS_CURR_ENTROPY_COEFF_KEY,
        LEARNER_RESULTS_CURR_KL_COEFF_KEY,
        LEARNER_RESULTS_KL_KEY,
    )
    from ray.rllib.algorithms.sac.sac_learner import LOGPS_KEY
    from ray.rllib.core.learner.learner import POLICY_LOSS_KEY, VF_LOSS_KEY

    ours = (
        learner_metrics.CURR_ENTROPY_COEFF,
        learner_metrics.CURR_KL_COEFF,
        learner_metrics.MEAN_KL_LOSS,
        learner_metrics.POLICY_LOSS,
        learner_metrics.VF_LOSS,
        learner_metrics.SAC_LOGPS,
    )
    rllibs = (
        LEARNER_RESULTS_CURR_ENTROPY_COEFF_KEY,
        LEARNER_RESULTS_CURR_KL_COEFF_KEY,
        LEARNER_RESULTS_KL_KEY,
        POLICY_LOSS_KEY,
        VF_LOSS_KEY,
        LOGPS_KEY,
    )
    assert ours == rllibs


class _EveryNumber(dict):
    """An RLlib result holding every number `iteration_metrics` reads (and one per-dim entropy)."""

    def get(self, key, default=None):
        return _EveryNumber() if isinstance(default, dict) else 1.0

    def __getitem__(self, key):
        return self.get(key)

    def items(self):
        return [(learner_metrics.dim_metric(learner_metrics.entropy_metric("effective"), 0), 1.0)]


def test_metrics_names_what_an_iteration_logs_and_nothing_else():
    logged = iteration_metrics(_EveryNumber(), "default_policy", "effective")
    per_dim = {name for name in logged if name.startswith(METRIC_PREFIXES)}
    assert per_dim == {"entropy_per_dim/0"}
    # The rest are the training loop's own, logged beside these: an evaluation's, a collapse check's, the wall time.
    loop = {
        *EvaluationSummary(episodes=1, successes=1, crashes=0, mean_final_distance=0.1).metrics(),
        Metric.ENTROPY_COLLAPSE,
        Metric.TIME_S,
    }
    assert set(logged) - per_dim == set(METRICS) - loop
    assert len(set(METRICS)) == len(METRICS) and all(type(name) is str for name in METRICS)
