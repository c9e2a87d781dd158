"""Names of the numbers a learner logs per module and iteration (RLlib's result, under `learners/<module id>/`): our PPO
learner's, and RLlib 2.60's own that the training loop reads beside them. Plain strings: read without torch or Ray."""

# Ours (policies/ppo_learner.py). An entropy is `entropy_<name>`, the name a measure or `categorical`
# (`entropy_range.entropy_key`); each averaged number also has one part per action dim or sub-action (`dim_metric`).
CLIPPED_FRACTION = "clipped_fraction"  # share of the batch's sampled actions the env clipped to its bounds
ENTROPY_TARGET = "entropy_target"  # the controller's target (lower_bound, track)
SIGMA_TARGET = "sigma_target"  # the std the sigma schedule set
COV_NUM_SELECTED = "cov_num_selected"  # Clip-Cov / KL-Cov: samples (or pairs) selected in the last minibatch
COV_NUM_CANDIDATES = "cov_num_candidates"
COV_POLICY_LOSS = "cov_policy_loss"
DIM_SUFFIX = "_dim"

# RLlib 2.60's (tests/test_metric_names.py holds them to its constants where it has some).
CURR_ENTROPY_COEFF = "curr_entropy_coeff"  # PPO: the entropy coefficient after the update, the next update's
CURR_KL_COEFF = "curr_kl_coeff"
MEAN_KL_LOSS = "mean_kl_loss"
POLICY_LOSS = "policy_loss"
VF_LOSS = "vf_loss"
SAC_LOGPS = "logps"  # SAC: mean log-density of its sampled actions; its entropy is minus this
SAC_ALPHA = "alpha_value"  # SAC's temperature, its entropy coefficient
SAC_TARGET_ENTROPY = "target_entropy"


def entropy_metric(name: str) -> str:
    """The learner's metric of entropy `name` (a measure, or categorical): `entropy_gaussian`, ..."""
    return f"entropy_{name}"


def dim_metric(key: str, dim: int) -> str:
    """The part of metric `key` from action dim (or sub-action) `dim`: `entropy_gaussian_dim0`, ..."""
    return f"{key}{DIM_SUFFIX}{dim}"
