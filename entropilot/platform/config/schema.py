"""The experiment schema: one pydantic model per config section, and `ExperimentConfig`, the only place defaults live.

Light (pydantic only): a bad value fails, naming the field and the allowed range, before Ray or torch is imported.
Over 450 lines: every section with its defaults and their reasons is kept in one file on purpose.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from entropilot.inputs import InputError, host_port, name_problem, tracking_uri_problem
from entropilot.platform.config.errors import FieldProblem, conflict

DEFAULT_TRACKING_URI = "sqlite:///mlflow.db"
# Control modes with a target entropy (lower_bound: a minimum; track: followed from both sides).
TARGET_MODES = ("lower_bound", "track")


def live(*modes: str) -> dict[str, list[str]]:
    """json_schema_extra of a field a running training takes from its MLflow run's tags in entropy.control's `modes`
    (platform/live_tuning.py): in those modes the field means something to a running controller."""
    return {"live": list(modes)}


class _Section(BaseModel):
    # extra="forbid": a typo in a key fails instead of silently using the default.
    # validate_assignment: programmatic edits (sweeps) get the same checks as YAML.
    # allow_inf_nan=False: every float field means a finite number (.inf or .nan would train on, or hang, silently).
    model_config = ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False)


# ---------------------------------------------------------------------------------------------- env


class EnvConfig(_Section):
    """Which environment, and the keyword arguments its constructor gets.

    The number of drones of a multi-drone env is `kwargs.num_drones`, an env argument like any other,
    so there is one place to set it.
    """

    id: str = Field("entropilot/Hover-v0", pattern=r"^(?:[\w.-]+/)?[\w.:-]+-v\d+$")
    kwargs: dict[str, Any] = Field(default_factory=dict)

    @field_validator("kwargs")
    @classmethod
    def _env_accepts_kwargs(cls, kwargs: dict[str, Any], info) -> dict[str, Any]:
        env_id = info.data.get("id")
        if env_id is None:  # the id itself failed; that error is reported already
            return kwargs
        # The envs room owns the meaning of its kwargs; imported at call time so this module stays light
        # and works before (or without) that function existing.
        try:
            from entropilot.envs import validate_env_kwargs
        except ImportError:
            return kwargs
        try:
            validate_env_kwargs(env_id, dict(kwargs))
        except (ValueError, TypeError) as exc:
            raise ValueError(f"rejected by {env_id}: {exc}") from exc
        return kwargs


# ---------------------------------------------------------------------------------------- algorithm


class AlgorithmConfig(_Section):
    """RLlib algorithm and its hyperparameters. Defaults: PPO sized for a 2-core laptop (~0.5-0.8 s/iteration)."""

    name: Literal["PPO", "SAC"] = "PPO"
    gamma: float = Field(0.99, gt=0.0, le=1.0)
    # A number, or a schedule [[env_steps, lr], ...]: linear between points, held past the last (RLlib's own
    # piecewise schedule, on the env steps of the whole run). A rate that falls once the policy flies lets it settle
    # instead of wandering between good and bad checkpoints (docs/flight-readiness.md).
    lr: float | list[tuple[int, float]] = 3e-4
    train_batch_size: int = Field(2000, ge=1)
    minibatch_size: int = Field(256, ge=1)
    num_epochs: int = Field(10, ge=1)
    clip_param: float = Field(0.2, gt=0.0, le=1.0)
    lambda_: float = Field(0.95, ge=0.0, le=1.0)
    grad_clip: float | None = Field(0.5, gt=0.0)
    vf_loss_coeff: float = Field(0.5, ge=0.0)
    # PPO extras of RLlib that CleanRL and Stable-Baselines3 do without: the adaptive KL penalty's starting
    # coefficient (0 = no KL term), and a clamp on each sample's squared value error (null = none; RLlib's 10 stops
    # the value gradient of every sample more than ~3.2 off, which on returns of ~100 is most of them early on).
    kl_coeff: float = Field(0.2, ge=0.0, le=100.0)
    vf_clip: float | None = Field(10.0, gt=0.0)
    # SAC only (ignored by PPO; all five reach RLlib's SACConfig): target-network Polyak rate, starting temperature,
    # the entropy (nats) the temperature steers toward ("auto" = -(action dims)), replay buffer size (env steps) and
    # env steps sampled before the first update.
    tau: float = Field(0.005, gt=0.0, le=1.0)
    initial_alpha: float = Field(1.0, gt=0.0)
    target_entropy: Literal["auto"] | float = "auto"
    replay_capacity: int = Field(100_000, ge=1)
    learning_starts: int = Field(1000, ge=0)
    # SAC only: gradient updates per env step sampled (each on train_batch_size replayed transitions). RLlib's own
    # default is one update per sample round, i.e. 1 / (envs per runner x runners).
    updates_per_env_step: float = Field(0.125, gt=0.0, le=64.0)

    @field_validator("lr", mode="before")
    @classmethod
    def _lr_number_or_schedule(cls, value: Any) -> Any:
        lr = number_or_schedule(value, "lr")
        if not all(0 < v <= 1 for v in ([lr] if isinstance(lr, float) else [v for _, v in lr])):
            raise ValueError("every learning rate must satisfy 0.0 < value <= 1.0")
        return lr

    @field_validator("target_entropy", mode="before")
    @classmethod
    def _auto_or_number(cls, value: Any) -> Any:
        # Checked by hand so a bad value gives one clear message instead of one per union member.
        if value == "auto":
            return value
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise ValueError('must be "auto" or a finite number of nats')
        return float(value)

    @model_validator(mode="after")
    def _consistent(self) -> AlgorithmConfig:
        if self.name == "PPO" and self.minibatch_size > self.train_batch_size:
            raise FieldProblem(
                "minibatch_size",
                f"must be <= train_batch_size ({self.train_batch_size})",
                self.minibatch_size,
            )
        if self.name == "SAC" and self.replay_capacity < self.train_batch_size:
            raise FieldProblem(
                "replay_capacity",
                f"must be >= train_batch_size ({self.train_batch_size}) to sample a batch",
                self.replay_capacity,
            )
        return self


# -------------------------------------------------------------------------------------------- model


class ModelConfig(_Section):
    """The policy/value MLP, its Gaussian's log standard deviation and how its initial weights are drawn."""

    hidden: list[Annotated[int, Field(ge=1, le=65536)]] = Field(
        default_factory=lambda: [64, 64], min_length=1, max_length=16
    )
    activation: Literal["tanh", "relu", "silu"] = "tanh"
    # State-independent log std: the entropy is then a parameter the controllers can read and steer. False: the
    # policy head outputs a log std per state (its weights then also decide each draw's exploration). PPO's Gaussian
    # head only: SAC's squashed Gaussian and a categorical policy (a discrete-command env) are built without it.
    free_log_std: bool = True
    # Init family (PPO; policies/initial_weights.py): the policy head's last layer is multiplied by output_gain as
    # drawn (0.01: the "small last layer", every draw's mean ~0; 1: RLlib's default; larger spreads the draws'
    # means, and with free_log_std false their stds, so entropy-aware init has draws to reject), and initial_std
    # sets the Gaussian's std at init, in action half-widths (null: as drawn; RLlib's free log std starts at std 1).
    output_gain: float = Field(1.0, gt=0.0, le=100.0)
    initial_std: float | None = Field(None, gt=0.0, le=100.0)
    # Torch seed of the initial weights, apart from `seed` (envs, sampling): draw k of the init uses
    # 1000 * weight_seed + k, and a run without entropy-aware init starts from draw 0, so two arms with the same
    # weight_seed start from the same weights wherever the init keeps draw 0. null: the experiment's seed.
    weight_seed: int | None = Field(None, ge=0, le=2**31 - 1)


# ------------------------------------------------------------------------------------------ entropy


class EntropyInitConfig(_Section):
    """Entropy-aware initialization: redraw the initial policy until it explores enough on the states it visits.

    `threshold` is in nats of `entropy.measure`, the mean over a short rollout summed over action dims. With the
    effective measure, t nats over d dims means a per-dim std of exp(t/d - 1.42) action half-widths where the
    bounds do not bite (4 dims: -6.3 = std 0.05, -3.5 = 0.1, -0.8 = 0.2, 0.9 = 0.3, 2.9 = 0.5 unclipped), lower
    where the executed actions clip; a centred std-1 policy scores 4.35, a policy pinned past a bound -21.96.
    A threshold outside the measure's reachable range (4 dims: [-21.96, 5.68]) is refused.
    """

    enabled: bool = True
    threshold: float = Field(2.0, ge=-100.0, le=100.0)
    max_draws: int = Field(10, ge=1, le=1000)
    rollout_steps: int = Field(1000, ge=1)
    # first_clearing: the first draw at or above the threshold, else the best of max_draws (the method).
    # lowest: the least exploring of all max_draws draws, the method turned upside down (the entropy study's
    # worst-of-N arm: if clearing a threshold helps, keeping the lowest should hurt).
    keep: Literal["first_clearing", "lowest"] = "first_clearing"


class ControlConfig(_Section):
    """Entropy control in PPO, in nats of `entropy.measure`. One line picks the mode:

    - lower_bound (default): `target` is a minimum; the coefficient stays in [0, coef_max] (dual ascent, as SAC's
      temperature): 0 while the policy is above it, rising while it is below. Never an entropy penalty.
    - track: `target` is followed from both sides, coefficient in [coef_min, coef_max] with coef_min < 0 allowed.
      A target below the entropy the policy has by itself takes a penalty, which rewards certainty: it can drive
      the policy into entropy collapse (bound it with coef_min, watch entropy.collapse).
    - fixed: the coefficient `coef` throughout (0: plain PPO).
    - sigma_schedule: no coefficient (0); the Gaussian's std follows `sigma` (needs model.free_log_std).
    lower_bound/track, once per iteration with e = target - measured: coef += gain * e + damping *
    (e - e_previous), the step clamped to +-max_step and coef to [coef_min, coef_max] (see
    `policies.entropy_control.EntropyCoefficientController` for the stability reasoning behind the defaults).
    """

    # None = on for PPO, off for SAC (SAC tunes its own alpha); resolved by ExperimentConfig.
    enabled: bool | None = None
    mode: Literal["lower_bound", "track", "fixed", "sigma_schedule"] = "lower_bound"
    # Fields marked live(...) are what a running training takes from its MLflow run's tags in those modes
    # (platform/live_tuning.py): their description is what the run's page says about them.
    # Must be reachable: at most the measure's maximum (4 dims, effective: 5.68).
    target: float | list[tuple[int, float]] = Field(
        0.0,
        description="target policy entropy in nats of entropy.measure (lower_bound: a minimum; track: followed from "
        "both sides): a number, or a schedule [[env_steps, nats], ...] (linear between points, env steps of the whole "
        "run); every value above entropy.collapse.floor and reachable by the measure",
        json_schema_extra=live(*TARGET_MODES),
    )
    # |coef| ~ 1 would swamp PPO's policy gradient (advantages are standardized).
    coef: float = Field(
        0.0,
        ge=-1.0,
        le=1.0,
        description="entropy coefficient of PPO's loss term -coef * entropy: held throughout (fixed), where the "
        "controller starts (lower_bound, track); 0 is plain PPO, useful values are of order 0.01",
        json_schema_extra=live("fixed"),
    )
    # None: 0 for lower_bound (which refuses less), -0.05 for track (the strongest penalty it may apply).
    coef_min: float | None = Field(
        None,
        ge=-1.0,
        le=1.0,
        description="lowest coefficient (null: 0 for lower_bound, -0.05 for track); below 0 an entropy penalty (track "
        "only): how fast entropy can be pushed down; at most coef_max",
        json_schema_extra=live(*TARGET_MODES),
    )
    coef_max: float = Field(
        0.05,
        ge=-1.0,
        le=1.0,
        description="highest coefficient, the strongest entropy bonus: how fast entropy can be pushed up; "
        "at least coef_min",
        json_schema_extra=live(*TARGET_MODES),
    )
    gain: float = Field(
        0.003,
        gt=0.0,
        le=1.0,
        description="integral action: coefficient change per nat of entropy error per iteration",
        json_schema_extra=live(*TARGET_MODES),
    )
    # Stable while b * (gain + 2 * damping) < 4, b = plant gain, ~1 on hover.
    damping: float = Field(
        0.08,
        ge=0.0,
        le=1.0,
        description="proportional action on the change of the error; keeps the loop from oscillating (entropy "
        "integrates the coefficient)",
        json_schema_extra=live(*TARGET_MODES),
    )
    max_step: float = Field(
        0.005,
        gt=0.0,
        le=1.0,
        description="largest coefficient change per iteration",
        json_schema_extra=live(*TARGET_MODES),
    )
    sigma: float | list[tuple[int, float]] = Field(
        default_factory=lambda: [(0, 1.0), (400_000, 0.3)],
        description="the policy's std per action dim in action half-widths (sigma_schedule): a number, or a schedule "
        "[[env_steps, std], ...] (linear between points, env steps of the whole run); every std in (0, 100]",
        json_schema_extra=live("sigma_schedule"),
    )

    def controller_settings(self, measure: str) -> dict:
        """The `entropy_control` settings of `policies.ppo_learner.EntropyControlledPPOLearner` for this section."""
        if self.mode == "sigma_schedule":
            return {"mode": self.mode, "measure": measure, "sigma": self.sigma}
        return {
            "mode": self.mode,
            "measure": measure,
            "target": None if self.mode == "fixed" else self.target,
            "initial_coef": self.coef,
            "coef_min": self.resolved_coef_min,
            "coef_max": self.coef_max,
            "gain": self.gain,
            "damping": self.damping,
            "max_step": self.max_step,
        }

    @property
    def resolved_coef_min(self) -> float:
        if self.coef_min is not None:
            return self.coef_min
        return -0.05 if self.mode == "track" else min(0.0, self.coef_max)

    @field_validator("target", "sigma", mode="before")
    @classmethod
    def _number_or_schedule(cls, value: Any, info) -> Any:
        return number_or_schedule(value, "nats" if info.field_name == "target" else "std")

    @field_validator("sigma")
    @classmethod
    def _positive_std(cls, value: Any) -> Any:
        stds = [value] if isinstance(value, float) else [std for _, std in value]
        if not all(0 < std <= 100 for std in stds):
            raise ValueError("every std must be in (0, 100] action half-widths")
        return value

    @model_validator(mode="after")
    def _coef_bounds(self) -> ControlConfig:
        # Each rule is stated about every field it involves (`conflict`): whichever one a person changed, one
        # problem speaks about it.
        low, high = self.resolved_coef_min, self.coef_max
        if low > high:
            raise conflict(
                "ControlConfig",
                FieldProblem("coef_min", f"must be <= coef_max ({high})", low),
                FieldProblem("coef_max", f"must be >= coef_min ({low})", high),
            )
        if self.mode == "lower_bound" and low < 0:
            raise conflict(
                "ControlConfig",
                FieldProblem(
                    "coef_min", "a lower_bound controller never goes below zero (a penalty needs mode track)", low
                ),
                FieldProblem("mode", f"lower_bound never goes below zero: coef_min {low} needs mode track", self.mode),
            )
        if self.mode in TARGET_MODES and not low <= self.coef <= high:
            bound, value, side = ("coef_min", low, "<=") if self.coef < low else ("coef_max", high, ">=")
            problems = [FieldProblem("coef", f"must be within [coef_min, coef_max] = [{low}, {high}]", self.coef)]
            if not (self.mode == "lower_bound" and bound == "coef_min"):  # lower_bound's floor is 0: coef must move
                where = f"where the {self.mode} controller starts"
                problems.append(FieldProblem(bound, f"must be {side} coef ({self.coef}), {where}", value))
            raise conflict("ControlConfig", *problems)
        return self

    def target_at(self, env_steps: int) -> float:
        """The target entropy (nats) after `env_steps`: linear between schedule points, held past the last."""
        return _schedule_at(self.target, env_steps)

    def sigma_at(self, env_steps: int) -> float:
        return _schedule_at(self.sigma, env_steps)

    def min_target(self) -> float:
        return self.target if isinstance(self.target, float) else min(v for _, v in self.target)

    def max_target(self) -> float:
        return self.target if isinstance(self.target, float) else max(v for _, v in self.target)


def number_or_schedule(value: Any, unit: str) -> float | list[tuple[int, float]]:
    """A number, or a schedule [[env_steps, value], ...] starting at env step 0 with strictly increasing steps."""
    # Hand-checked for one clear message per problem (a plain union reports every member's error).
    if _is_number(value):
        return float(value)
    if not isinstance(value, (list, tuple)) or not value:
        raise ValueError(f"must be a finite number ({unit}) or a non-empty schedule [[env_steps, {unit}], ...]")
    pairs = []
    for i, pair in enumerate(value):
        ok = isinstance(pair, (list, tuple)) and len(pair) == 2 and _is_number(pair[1])
        step = pair[0] if ok else None
        if not ok or isinstance(step, bool) or not isinstance(step, int) or step < 0:
            raise FieldProblem(f"{i}", f"schedule entries must be [env_steps (int >= 0), {unit}]", pair)
        pairs.append((step, float(pair[1])))
    if pairs[0][0] != 0:
        raise FieldProblem("0", "schedule must start at env step 0", list(value[0]))
    for i in range(1, len(pairs)):
        if pairs[i][0] <= pairs[i - 1][0]:
            raise FieldProblem(f"{i}", "schedule env steps must be strictly increasing", list(value[i]))
    return pairs


def _schedule_at(schedule: float | list[tuple[int, float]], env_steps: int) -> float:
    if isinstance(schedule, float):
        return schedule
    if env_steps >= schedule[-1][0]:
        return schedule[-1][1]
    for (s0, v0), (s1, v1) in zip(schedule, schedule[1:]):
        if s0 <= env_steps < s1:
            return v0 + (v1 - v0) * (env_steps - s0) / (s1 - s0)
    return schedule[0][1]


class CollapseConfig(_Section):
    """Entropy-collapse detection, in nats of `entropy.measure`; None switches a check off. PPO only: SAC's
    temperature holds its entropy at algorithm.target_entropy (its -E[log pi] is logged as `entropy` all the same)."""

    floor: float | None = -8.0
    # Per million env steps (a least-squares slope over the last 500k), so it means the same at any batch size.
    max_drop_per_million_steps: float | None = Field(30.0, gt=0.0)


class CovarianceConfig(_Section):
    """Clip-Cov / KL-Cov (PPO; Cui et al. 2025, policies/covariance.py): their policy term replaces PPO's clipped one.

    clip_cov: of the samples PPO did not clip whose logp-advantage covariance lies in (lower, upper), a random
    `fraction` of the minibatch gets no gradient. kl_cov: the unclipped surrogate, plus kl_coef * |logp - logp_old|
    on the top `fraction` by covariance. per_dimension: (sample, action dim) pairs instead of samples, scored by the
    covariance of the advantage with -z^2/2 (the pairs whose gradient shrinks that dim's std).
    """

    mode: Literal["off", "clip_cov", "kl_cov"] = "off"
    per_dimension: bool = False
    # Share of the minibatch selected, at least one: 0.02 = 10 of hover's 512-sample minibatches (40 of its 2048
    # sample-dimension pairs), 5 of the default 256.
    fraction: float = Field(0.02, gt=0.0, le=1.0)
    lower: float = Field(1.0)
    upper: float = Field(5.0)
    kl_coef: float = Field(1.0, ge=0.0)

    @field_validator("mode", mode="before")
    @classmethod
    def _off_is_not_false(cls, value: Any) -> Any:
        return _yaml_switch(value)

    @model_validator(mode="after")
    def _band(self) -> CovarianceConfig:
        if not self.lower < self.upper:
            raise FieldProblem("lower", f"must be < upper ({self.upper})", self.lower)
        return self

    def settings(self, seed: int) -> dict | None:
        """`policies.covariance.CovarianceSettings` keywords, or None when off."""
        if self.mode == "off":
            return None
        return {**self.model_dump(), "seed": seed}


class EntropyConfig(_Section):
    # The entropy the init threshold, the control target and the collapse floor are in (policies/entropy.py):
    # effective = the Gaussian entropy of the executed (clipped) action's spread, bounded by 1.42 nats per dim;
    # gaussian = the pre-clip Gaussian's, unbounded (it counts mass beyond the action bounds as exploration).
    measure: Literal["effective", "gaussian"] = "effective"
    init: EntropyInitConfig = Field(default_factory=EntropyInitConfig)
    control: ControlConfig = Field(default_factory=ControlConfig)
    collapse: CollapseConfig = Field(default_factory=CollapseConfig)
    covariance: CovarianceConfig = Field(default_factory=CovarianceConfig)


# ----------------------------------------------------------------------------------------- resources


class ResourcesConfig(_Section):
    """How much of the machine or cluster to use. Defaults fit a 2-core laptop without a GPU."""

    num_env_runners: int = Field(1, ge=0, le=4096)
    envs_per_runner: int = Field(4, ge=1, le=1024)
    num_cpus_per_env_runner: float = Field(1.0, gt=0.0)
    num_learners: int = Field(0, ge=0, le=1024)
    # How env runners sample: RLlib's own loop (stock), or one batched policy forward per vector step (bulk;
    # single-drone envs, same loss inputs as stock).
    sampler: Literal["stock", "bulk"] = "stock"
    # A runner's envs: Gymnasium's SyncVectorEnv of single envs (sync), or all its drones in one PyBullet world
    # (batched, envs.vector.DroneVectorEnv; single-drone envs, each drone flies as the single env would).
    vector_env: Literal["sync", "batched"] = "sync"
    # auto: use one GPU if Ray's cluster resources show one.
    gpu: Literal["auto", "on", "off"] = "auto"
    # None: RAY_ADDRESS if set (a submitted job has it), else a new in-process Ray.
    ray_address: str | None = Field(None, min_length=1)

    @field_validator("gpu", mode="before")
    @classmethod
    def _on_off_are_not_bools(cls, value: Any) -> Any:
        return _yaml_switch(value)

    @field_validator("ray_address")
    @classmethod
    def _ray_address_form(cls, address: str | None) -> str | None:
        if address is None or address in ("local", "auto"):
            return address
        try:
            host_port(address.removeprefix("ray://"), "resources.ray_address")
        except InputError:
            raise ValueError("write local, auto, HOST:PORT (the head's GCS) or ray://HOST:PORT (Ray Client)") from None
        return address

    def resolve_ray_address(self) -> str:
        """The address to pass to `ray.init`: this field, else RAY_ADDRESS, else "local" (start Ray in-process).

        Never None: `ray.init(address=None)` would attach to any cluster `ray start` left on this machine. Ray
        sets RAY_ADDRESS for a submitted job's entrypoint, which is how `entropilot submit` lands on the cluster.
        """
        return self.ray_address or os.environ.get("RAY_ADDRESS") or "local"


# -------------------------------------------------------------------------------------------- mlflow


class MlflowConfig(_Section):
    # None: MLFLOW_TRACKING_URI if set, else a local sqlite store.
    tracking_uri: str | None = Field(None, min_length=1)
    experiment: str = Field("entropilot", min_length=1)
    run_name: str | None = Field(None, min_length=1)  # None: the experiment's `name`
    registered_model: str | None = Field(None, min_length=1)  # register the exported policy under this name
    video: bool = False
    system_metrics: bool = False

    @field_validator("run_name")
    @classmethod
    def _folder_name(cls, name: str | None) -> str | None:
        # The run's checkpoints go to runs/<run name> unless checkpoint.dir says otherwise.
        problem = None if name is None else name_problem(name)
        if problem:
            raise ValueError(problem)
        return name

    @field_validator("tracking_uri")
    @classmethod
    def _not_a_file_store(cls, uri: str | None) -> str | None:
        # MLflow 3.17 refuses plain-directory stores ("filesystem tracking backend is in maintenance mode").
        problem = None if uri is None else tracking_uri_problem(uri)
        if problem:
            raise ValueError(problem)
        return uri

    def resolve_tracking_uri(self) -> str:
        """This field, else MLFLOW_TRACKING_URI, else `sqlite:///mlflow.db` (in the working directory)."""
        return self.tracking_uri or os.environ.get("MLFLOW_TRACKING_URI") or DEFAULT_TRACKING_URI


# --------------------------------------------------------------------------------- stop / eval / ckpt


class StopConfig(_Section):
    """Stop at whichever criterion is met first. When the section is given, unset criteria are off."""

    iterations: int | None = Field(None, ge=1)
    env_steps: int | None = Field(None, ge=1)
    time_s: float | None = Field(None, gt=0.0)
    success_rate: float | None = Field(None, gt=0.0, le=1.0)
    # The evaluation's 95 % Wilson lower bound on its success rate: 20 episodes can only show >= 0.84, 100 >= 0.96.
    success_lower_bound: float | None = Field(None, gt=0.0, lt=1.0)
    # A success criterion above stops training only at an evaluation with at most this many crashes.
    max_crashes: int | None = Field(None, ge=0)

    @model_validator(mode="after")
    def _something_stops(self) -> StopConfig:
        criteria = (self.iterations, self.env_steps, self.time_s, self.success_rate, self.success_lower_bound)
        if all(v is None for v in criteria):
            raise ValueError(
                "set at least one of iterations, env_steps, time_s, success_rate, success_lower_bound, "
                "or training never ends"
            )
        if self.max_crashes is not None and self.success_rate is None and self.success_lower_bound is None:
            raise FieldProblem(
                "max_crashes", "qualifies success_rate or success_lower_bound; set one", self.max_crashes
            )
        return self


class EvaluationConfig(_Section):
    interval: int | None = Field(10, ge=1)  # iterations between evaluations; None = no evaluation
    episodes: int = Field(10, ge=1)
    # Held-out episodes use seeds seed, seed+1, ...: kept away from the training seeds.
    seed: int = Field(1_000_000, ge=0, le=2**31 - 1)


class CheckpointConfig(_Section):
    interval: int | None = Field(10, ge=1)  # iterations between checkpoints; None = final checkpoint only
    dir: str | None = Field(None, min_length=1)  # None: runs/<run name>
    # Keep the checkpoint of the best evaluation so far in <dir>/best (higher success lower bound, then fewer crashes,
    # then a smaller final distance); `entropilot export <dir>` exports it rather than the last one.
    keep_best: bool = False
    # Keep only the newest N intact iter_* checkpoints, deleting older ones after each save (None: keep every one, as
    # RLlib does). A damaged one does not count, so `--resume` always has N intact ones to fall back on; the best
    # checkpoint is never deleted.
    keep_last: int | None = Field(None, ge=1)


# --------------------------------------------------------------------------------------- experiment


class ExperimentConfig(_Section):
    """One experiment: what to train on, how, when to stop, and where results go."""

    name: str = Field("experiment", pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$", max_length=100)
    seed: int = Field(0, ge=0, le=2**31 - 1)
    env: EnvConfig = Field(default_factory=EnvConfig)
    algorithm: AlgorithmConfig = Field(default_factory=AlgorithmConfig)
    model: ModelConfig = Field(default_factory=ModelConfig)
    entropy: EntropyConfig = Field(default_factory=EntropyConfig)
    resources: ResourcesConfig = Field(default_factory=ResourcesConfig)
    mlflow: MlflowConfig = Field(default_factory=MlflowConfig)
    # Without a stop section a run is limited to 15 minutes, so a bare config still ends.
    stop: StopConfig = Field(default_factory=lambda: StopConfig(time_s=900.0))
    evaluation: EvaluationConfig = Field(default_factory=EvaluationConfig)
    checkpoint: CheckpointConfig = Field(default_factory=CheckpointConfig)

    @model_validator(mode="after")
    def _cross_section(self) -> ExperimentConfig:
        control = self.entropy.control
        if control.enabled is None:
            # Bypass validate_assignment: re-validating here would recurse into this validator.
            control.__dict__["enabled"] = self.algorithm.name == "PPO"
        if self.algorithm.name == "SAC":
            if control.enabled:
                raise FieldProblem(
                    "entropy.control.enabled",
                    "SAC tunes its own entropy coefficient toward algorithm.target_entropy; set it to false",
                    True,
                )
            if self.entropy.covariance.mode != "off":
                raise FieldProblem(
                    "entropy.covariance.mode",
                    "covariance control works with PPO only; set it to off for SAC",
                    self.entropy.covariance.mode,
                )
        self._entropy_reachable()
        self._gaussian_only_settings()
        self._init_family_fits()
        self._fast_paths_serve_env()
        floor = self.entropy.collapse.floor
        if control.enabled and control.mode in TARGET_MODES and floor is not None and floor >= control.min_target():
            # A target under the floor would make every iteration a "collapse".
            if isinstance(control.target, float):
                where, value = "entropy.control.target", control.target
            else:
                index = min(range(len(control.target)), key=lambda i: control.target[i][1])
                where, value = f"entropy.control.target.{index}", list(control.target[index])
            raise conflict(
                "ExperimentConfig",
                FieldProblem(
                    "entropy.collapse.floor",
                    f"must be below the lowest entropy.control.target ({control.min_target()})",
                    floor,
                ),
                FieldProblem(where, f"must be above entropy.collapse.floor ({floor})", value),
            )
        judged = [
            name
            for name, on in (
                ("stop.success_lower_bound", self.stop.success_lower_bound is not None),
                ("stop.max_crashes", self.stop.max_crashes is not None),
                ("checkpoint.keep_best", self.checkpoint.keep_best),
            )
            if on
        ]
        if judged and self.evaluation.interval is None:
            raise FieldProblem("evaluation.interval", f"{judged[0]} needs evaluations; set an interval", None)
        # RLlib (2.60) seeds runner i's vector env with seed + i, its sub-env j with seed + i + j (runner 0 =
        # the local one); held-out evaluation seeds must stay outside that range.
        train_hi = self.seed + self.resources.num_env_runners + self.resources.envs_per_runner
        eval_lo = self.evaluation.seed
        eval_hi = eval_lo + self.evaluation.episodes
        if eval_lo < train_hi and self.seed < eval_hi:
            raise FieldProblem(
                "evaluation.seed",
                f"held-out seeds [{eval_lo}, {eval_hi}) overlap training seeds [{self.seed}, {train_hi})",
                eval_lo,
            )
        return self

    def _entropy_reachable(self) -> None:
        """Refuse an init threshold or a control target the configured measure can't reach on this env's actions."""
        space = _action_space(self.env)
        if space is None:
            return
        from entropilot.policies.entropy_range import entropy_key, measure_range

        measure = self.entropy.measure
        low, high = measure_range(measure, space)
        reach = f"the {entropy_key(measure, space)} entropy of {space} lies in [{low:.2f}, {high:.2f}] nats"
        threshold = self.entropy.init.threshold
        if self.entropy.init.enabled and self.algorithm.name == "PPO" and not low <= threshold <= high:
            raise FieldProblem("entropy.init.threshold", f"unreachable: {reach}", threshold)
        control = self.entropy.control
        if control.enabled and control.mode in TARGET_MODES:
            for value in (control.max_target(), control.min_target()):
                if not low <= value <= high:
                    raise FieldProblem("entropy.control.target", f"unreachable: {reach}", control.target)

    def _fast_paths_serve_env(self) -> None:
        """Refuse the bulk sampler on a multi-drone env and the batched world on an env without a batched form."""
        from entropilot.envs import SINGLE_AGENT_IDS, VECTOR_ENTRY_POINTS

        for field, fast, slow, kind, ids in (
            ("sampler", "bulk", "stock", "the single-drone envs", SINGLE_AGENT_IDS),
            ("vector_env", "batched", "sync", "the envs with a batched world", tuple(VECTOR_ENTRY_POINTS)),
        ):
            value = getattr(self.resources, field)
            if value == fast and self.env.id not in ids:
                raise FieldProblem(
                    f"resources.{field}", f"{fast} is for {kind} {list(ids)}; {self.env.id} needs {slow}", value
                )

    def _gaussian_only_settings(self) -> None:
        """Refuse settings that act on a Gaussian's std when the env's policy is categorical (a command env)."""
        space = _action_space(self.env)
        if space is None:
            return
        from entropilot.policies.entropy_range import categorical_sizes

        if categorical_sizes(space) is None:
            return
        why = f"{self.env.id} acts with {space}: a categorical policy has no Gaussian std"
        control = self.entropy.control
        if self.model.initial_std is not None:
            raise FieldProblem("model.initial_std", f"sets a Gaussian's std; {why}", self.model.initial_std)
        if control.enabled and control.mode == "sigma_schedule":
            raise FieldProblem("entropy.control.mode", f"sigma_schedule sets a Gaussian's std; {why}", control.mode)
        if self.entropy.covariance.mode != "off" and self.entropy.covariance.per_dimension:
            raise FieldProblem(
                "entropy.covariance.per_dimension", f"scores a Gaussian's action dims (set it to false); {why}", True
            )

    def _init_family_fits(self) -> None:
        model, control = self.model, self.entropy.control
        if self.algorithm.name != "PPO":
            for name, value, default in (
                ("output_gain", model.output_gain, 1.0),
                ("initial_std", model.initial_std, None),
            ):
                if value != default:
                    raise FieldProblem(f"model.{name}", "the init family applies to PPO's policy head only", value)
        if control.enabled and control.mode == "sigma_schedule":
            if not model.free_log_std:
                raise FieldProblem(
                    "entropy.control.mode",
                    "sigma_schedule sets a free log std: needs model.free_log_std true",
                    control.mode,
                )
            start = control.sigma_at(0)
            if model.initial_std is not None and model.initial_std != start:
                sigma, where = control.sigma, "entropy.control.sigma"
                if not isinstance(sigma, float):
                    sigma, where = list(sigma[0]), f"{where}.0"
                raise conflict(
                    "ExperimentConfig",
                    FieldProblem(
                        "model.initial_std",
                        f"sigma_schedule starts at entropy.control.sigma's {start}",
                        model.initial_std,
                    ),
                    FieldProblem(
                        where,
                        f"must start at model.initial_std ({model.initial_std}), or model.initial_std be null",
                        sigma,
                    ),
                )

    # -- derived values the platform needs --------------------------------------------------------

    @property
    def weight_seed(self) -> int:
        """The torch seed family of the initial weights: model.weight_seed, else the experiment's seed."""
        return self.seed if self.model.weight_seed is None else self.model.weight_seed

    @property
    def free_log_std(self) -> bool:
        """model.free_log_std where it applies, PPO's Gaussian head: RLlib (2.60) asserts on a free log std for SAC's
        squashed Gaussian, and a categorical head (a command env) has no log std at all."""
        import gymnasium as gym

        return (
            self.model.free_log_std
            and self.algorithm.name == "PPO"
            and isinstance(_action_space(self.env), gym.spaces.Box)
        )

    @property
    def entropy_name(self) -> str:
        """The entropy the init threshold, control target and collapse floor are in, as the learner's metrics name
        it (`entropy_<name>`): entropy.measure, or categorical for a categorical policy (a command env)."""
        space = _action_space(self.env)
        if space is None:
            return self.entropy.measure
        from entropilot.policies.entropy_range import entropy_key

        return entropy_key(self.entropy.measure, space)

    @property
    def initial_std(self) -> float | None:
        """The policy's std at init: the sigma schedule's start in sigma_schedule mode, else model.initial_std."""
        control = self.entropy.control
        if control.enabled and control.mode == "sigma_schedule":
            return control.sigma_at(0)
        return self.model.initial_std

    @property
    def run_name(self) -> str:
        return self.mlflow.run_name or self.name

    @property
    def checkpoint_dir(self) -> Path:
        return Path(self.checkpoint.dir or f"runs/{self.run_name}")


def _action_space(env: EnvConfig):
    """One agent's action space of `env`, told by the envs room without starting a simulator; None if it can't."""
    try:
        from entropilot.envs import action_space
    except ImportError:
        return None
    try:
        return action_space(env.id, dict(env.kwargs))
    except (ValueError, TypeError):
        return None  # the env id or kwargs are wrong: their own validator says so


# ---------------------------------------------------------------------------------------- internals


def _yaml_switch(value: Any) -> Any:
    # YAML 1.1 (PyYAML) reads a bare on/off as true/false; give those words back to the Literal fields.
    return {True: "on", False: "off"}.get(value, value) if isinstance(value, bool) else value


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
