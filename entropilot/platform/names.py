"""The names training writes to MLflow, each defined once: the metrics of an iteration (`Metric`), those of
entropy-aware init, and the run tags the platform sets and reads. Plain Python: no MLflow, no Ray."""

from entropilot.policies import learner_metrics as learner


class Metric:
    """Every number a training iteration logs (what a sweep may optimize), in the order it makes them: those read from
    RLlib's result (`train.iteration_metrics`; some under the learner's own name), then the training loop's. Plain
    strings (not an Enum): they go as they are into MLflow, JSON, YAML and Ray Tune's results."""

    ENV_STEPS = "env_steps"
    EPISODE_RETURN_MEAN = "episode_return_mean"
    EPISODE_LEN_MEAN = "episode_len_mean"
    ENTROPY = "entropy"  # in the measure the target, threshold and collapse floor are in (`entropy.measure`)
    ENTROPY_EFFECTIVE = learner.entropy_metric("effective")
    ENTROPY_GAUSSIAN = learner.entropy_metric("gaussian")
    ENTROPY_TARGET = learner.ENTROPY_TARGET
    ENTROPY_COEFF = "entropy_coeff"  # PPO's coefficient, SAC's temperature
    SIGMA_TARGET = learner.SIGMA_TARGET
    CLIPPED_FRACTION = learner.CLIPPED_FRACTION
    COV_NUM_SELECTED = learner.COV_NUM_SELECTED
    COV_NUM_CANDIDATES = learner.COV_NUM_CANDIDATES
    KL = "kl"
    POLICY_LOSS = learner.POLICY_LOSS
    VF_LOSS = learner.VF_LOSS
    TIME_THIS_ITER_S = "time_this_iter_s"
    SAMPLING_TIME_S = "sampling_time_s"
    LEARNER_TIME_S = "learner_time_s"
    ENV_RUNNERS_HEALTHY = "env_runners_healthy"  # remote env runners sampling now
    ENV_RUNNER_RESTARTS = "env_runner_restarts"  # how many times one was restarted after a crash (lifetime)
    ENV_STEPS_PER_S = "env_steps_per_s"
    # The training loop's own: an evaluation's (`evaluation.EvaluationSummary`), then the loop's.
    SUCCESS_RATE = "success_rate"
    EVAL_SUCCESS_LOWER_BOUND = "eval_success_lower_bound"  # the success rate's 95 % Wilson lower bound
    EVAL_CRASHES = "eval_crashes"
    EVAL_FINAL_DISTANCE = "eval_final_distance"
    ENTROPY_COLLAPSE = "entropy_collapse"
    TIME_S = "time_s"  # wall time since `entropilot train` started, across resumes


METRICS = tuple(value for name, value in vars(Metric).items() if name.isupper())
# `entropy` per action dim: `entropy_per_dim/0`, ...
ENTROPY_PER_DIM = "entropy_per_dim/"
METRIC_PREFIXES = (ENTROPY_PER_DIM,)

# Entropy-aware init (`RunTracker.log_entropy_init`): each draw at step = draw index, the outcome at step 0.
INIT_DRAW_ENTROPY = "entropy_init/draw_entropy"
INIT_DRAW_ENTROPY_PER_DIM = "entropy_init/draw_entropy_per_dim"
INIT_DRAW_SEED = "entropy_init/draw_seed"
INIT_CHOSEN_ENTROPY = "entropy_init/chosen_entropy"
INIT_DRAWS = "entropy_init/draws"
INIT_CLEARED = "entropy_init/cleared"

# Run tags.
VERSION_TAG = "entropilot.version"
GIT_DIRTY_TAG = "entropilot.git_dirty"
CHECKPOINT_TAG = "entropilot.checkpoint_dir"  # the run's checkpoint folder: what export and resume by run id read
BEST_CHECKPOINT_TAG = "entropilot.best_checkpoint"  # with checkpoint.keep_best: where the best one is, its iteration
RESUMED_WITH_TAG = "entropilot.resumed_with"  # the overrides of the last resume
ENV_RUNNER_NODES_TAG = "entropilot.env_runner_nodes"
ENTROPY_COLLAPSE_TAG = "entropilot.entropy_collapse"
ENTROPY_INIT_TAG = "entropilot.entropy_init"  # why entropy-aware init was skipped
ENTROPY_INIT_TAG_PREFIX = "entropy_init."  # + draws, chosen_draw, chosen_seed, chosen_entropy, threshold, cleared
LIVE_TAG_PREFIX = "entropilot.live."  # + a live setting's config path: what a running training takes (live_tuning)
LIVE_ERROR_TAG = "entropilot.live_error"  # outside the prefix, so never read back as a setting
SWEEP_TAG = "entropilot.sweep"  # "parent" on a sweep's run
SWEEP_DIR_TAG = "entropilot.sweep.dir"
SWEEP_OUTCOME_TAG = "entropilot.sweep.outcome"  # on a trial's run closed by the sweep
SWEEP_BEST_TRIAL_TAG = "entropilot.sweep.best_trial"
SWEEP_BEST_RUN_ID_TAG = "entropilot.sweep.best_run_id"
