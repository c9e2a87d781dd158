"""The experiment schema: one pydantic model per config section, and `ExperimentConfig`, the only place defaults live.

Light (pydantic only): a bad value fails, naming the field and the allowed range, before Ray or torch is imported.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from entropilot.platform.config.errors import FieldProblem, conflict

DEFAULT_TRACKING_URI = "sqlite:///mlflow.db"
# json_schema_extra of a field a running training may change (entropy.control's, from MLflow tags).
LIVE = {"live": True}


class _Section(BaseModel):
    # extra="forbid": a typo in a key fails instead of silently using the default.
    # validate_assignment: programmatic edits (sweeps) get the same checks as YAML.
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


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
    lr: float = Field(3e-4, gt=0.0, le=1.0)
    train_batch_size: int = Field(2000, ge=1)
    minibatch_size: int = Field(256, ge=1)
    num_epochs: int = Field(10, ge=1)
    clip_param: float = Field(0.2, gt=0.0, le=1.0)
    lambda_: float = Field(0.95, ge=0.0, le=1.0)
    grad_clip: float | None = Field(0.5, gt=0.0)
    vf_loss_coeff: float = Field(0.5, ge=0.0)
    # SAC only (ignored by PPO).
    tau: float = Field(0.005, gt=0.0, le=1.0)
    initial_alpha: float = Field(1.0, gt=0.0)
    target_entropy: Literal["auto"] | float = "auto"
    replay_capacity: int = Field(100_000, ge=1)

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
    """The policy/value MLP and its Gaussian's log standard deviation."""

    hidden: list[Annotated[int, Field(ge=1, le=65536)]] = Field(
        default_factory=lambda: [64, 64], min_length=1, max_length=16
    )
    activation: Literal["tanh", "relu", "silu"] = "tanh"
    # State-independent log std: the entropy is then a parameter the controllers can read and steer.
    free_log_std: bool = True


# ------------------------------------------------------------------------------------------ entropy


class EntropyInitConfig(_Section):
    """Entropy-aware initialization: redraw the initial policy until its executed actions are diverse enough."""

    enabled: bool = True
    # Nats of the executed (clipped) actions over a short rollout, summed over action dims, at 1e-3 actuator
    # resolution (policies/entropy.py): a centred std-1 policy scores about -3.6 on 4 dims, a saturated one far less.
    threshold: float = Field(-4.0, ge=-100.0, le=100.0)
    max_draws: int = Field(10, ge=1, le=1000)
    rollout_steps: int = Field(1000, ge=1)


class ControlConfig(_Section):
    """Closed-loop control of the entropy coefficient toward a target policy entropy (nats).

    Mirrors `policies.entropy_control.EntropyCoefficientController` (see its docstring for the
    stability reasoning behind the defaults): once per iteration, with e = target - measured,
    coef += gain * e + damping * (e - e_previous), the step clamped to +-max_step and coef to
    [coef_min, coef_max]. The coefficient is signed: negative is an entropy penalty, needed to bring
    entropy *down* to a target below what the policy has by itself.
    """

    # None = on for PPO, off for SAC (SAC tunes its own alpha); resolved by ExperimentConfig.
    enabled: bool | None = None
    # Fields marked LIVE are what a running training takes from its MLflow run's tags (platform/live_tuning.py):
    # their description is what the run's page says about them.
    target: float | list[tuple[int, float]] = Field(
        1.0,
        description="target policy entropy in nats: a number, or a schedule [[env_steps, nats], ...] (linear between "
        "points, env steps of the whole run); every value above entropy.collapse.floor",
        json_schema_extra=LIVE,
    )
    # PPO loss term -coef * entropy: coef < 0 penalizes entropy. |coef| ~ 1 would swamp PPO's policy
    # gradient (advantages are standardized); useful values are of order +-0.01. coef_min bounds the
    # penalty, i.e. how hard the controller may push toward collapse.
    coef_init: float = Field(0.0, ge=-1.0, le=1.0, allow_inf_nan=False)
    coef_min: float = Field(
        -0.05,
        ge=-1.0,
        le=1.0,
        allow_inf_nan=False,
        description="lowest coefficient, the strongest entropy penalty: how fast entropy can be pushed down; "
        "at most coef_max",
        json_schema_extra=LIVE,
    )
    coef_max: float = Field(
        0.05,
        ge=-1.0,
        le=1.0,
        allow_inf_nan=False,
        description="highest coefficient, the strongest entropy bonus: how fast entropy can be pushed up; "
        "at least coef_min",
        json_schema_extra=LIVE,
    )
    gain: float = Field(
        0.003,
        gt=0.0,
        le=1.0,
        allow_inf_nan=False,
        description="integral action: coefficient change per nat of entropy error per iteration",
        json_schema_extra=LIVE,
    )
    # Stable while b * (gain + 2 * damping) < 4, b = plant gain, ~1 on hover.
    damping: float = Field(
        0.08,
        ge=0.0,
        le=1.0,
        allow_inf_nan=False,
        description="proportional action on the change of the error; keeps the loop from oscillating (entropy "
        "integrates the coefficient)",
        json_schema_extra=LIVE,
    )
    max_step: float = Field(
        0.005,
        gt=0.0,
        le=1.0,
        allow_inf_nan=False,
        description="largest coefficient change per iteration",
        json_schema_extra=LIVE,
    )

    def controller_kwargs(self) -> dict:
        """Keyword arguments of `policies.entropy_control.EntropyCoefficientController` for this section."""
        return {
            "target": self.target,
            "initial_coef": self.coef_init,
            "coef_min": self.coef_min,
            "coef_max": self.coef_max,
            "gain": self.gain,
            "damping": self.damping,
            "max_step": self.max_step,
        }

    @field_validator("target", mode="before")
    @classmethod
    def _number_or_schedule(cls, value: Any) -> Any:
        # Hand-checked for one clear message per problem (a plain union reports every member's error).
        if _is_number(value):
            return float(value)
        if not isinstance(value, (list, tuple)) or not value:
            raise ValueError("must be a number of nats or a non-empty schedule [[env_steps, nats], ...]")
        pairs = []
        for i, pair in enumerate(value):
            ok = isinstance(pair, (list, tuple)) and len(pair) == 2 and _is_number(pair[1])
            step = pair[0] if ok else None
            if not ok or isinstance(step, bool) or not isinstance(step, int) or step < 0:
                raise FieldProblem(f"{i}", "schedule entries must be [env_steps (int >= 0), nats]", pair)
            pairs.append((step, float(pair[1])))
        if pairs[0][0] != 0:
            raise FieldProblem("0", "schedule must start at env step 0", list(value[0]))
        for i in range(1, len(pairs)):
            if pairs[i][0] <= pairs[i - 1][0]:
                raise FieldProblem(f"{i}", "schedule env steps must be strictly increasing", list(value[i]))
        return pairs

    @model_validator(mode="after")
    def _coef_bounds(self) -> ControlConfig:
        if self.coef_min > self.coef_max:
            raise conflict(
                "ControlConfig",
                FieldProblem("coef_min", f"must be <= coef_max ({self.coef_max})", self.coef_min),
                FieldProblem("coef_max", f"must be >= coef_min ({self.coef_min})", self.coef_max),
            )
        if not self.coef_min <= self.coef_init <= self.coef_max:
            raise FieldProblem(
                "coef_init", f"must be within [coef_min, coef_max] = [{self.coef_min}, {self.coef_max}]", self.coef_init
            )
        return self

    def target_at(self, env_steps: int) -> float:
        """The target entropy (nats) after `env_steps`: linear between schedule points, held past the last."""
        if isinstance(self.target, float):
            return self.target
        points = self.target
        if env_steps >= points[-1][0]:
            return points[-1][1]
        for (s0, v0), (s1, v1) in zip(points, points[1:]):
            if s0 <= env_steps < s1:
                return v0 + (v1 - v0) * (env_steps - s0) / (s1 - s0)
        return points[0][1]

    def min_target(self) -> float:
        return self.target if isinstance(self.target, float) else min(v for _, v in self.target)


class CollapseConfig(_Section):
    """Entropy-collapse detection (nats); None switches a check off."""

    floor: float | None = -1.0
    # Per million env steps (a least-squares slope over the last 500k), so it means the same at any batch size.
    # Hover's schedule lowers entropy ~13 nats per 1M steps on purpose; a collapse is much faster.
    max_drop_per_million_steps: float | None = Field(30.0, gt=0.0)


class CovarianceConfig(_Section):
    """Covariance-based entropy regularization (PPO): Clip-Cov or KL-Cov on the tokens with largest covariance."""

    mode: Literal["off", "clip_cov", "kl_cov"] = "off"
    # Share of samples with the largest logp/advantage covariance that get clipped or KL-penalized.
    fraction: float = Field(0.002, gt=0.0, le=0.1)
    kl_coef: float = Field(1.0, ge=0.0)

    @field_validator("mode", mode="before")
    @classmethod
    def _off_is_not_false(cls, value: Any) -> Any:
        return _yaml_switch(value)


class EntropyConfig(_Section):
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
    # auto: use one GPU if Ray's cluster resources show one.
    gpu: Literal["auto", "on", "off"] = "auto"
    # None: RAY_ADDRESS if set (a submitted job has it), else a new in-process Ray.
    ray_address: str | None = Field(None, min_length=1)

    @field_validator("gpu", mode="before")
    @classmethod
    def _on_off_are_not_bools(cls, value: Any) -> Any:
        return _yaml_switch(value)

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

    @field_validator("tracking_uri")
    @classmethod
    def _not_a_file_store(cls, uri: str | None) -> str | None:
        # MLflow 3.17 refuses plain-directory stores ("filesystem tracking backend is in maintenance mode").
        if uri is not None and (uri.startswith("file:") or "://" not in uri):
            raise ValueError(
                f"file stores are refused by MLflow 3; use e.g. {DEFAULT_TRACKING_URI} or http://host:port"
            )
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

    @model_validator(mode="after")
    def _something_stops(self) -> StopConfig:
        if all(v is None for v in (self.iterations, self.env_steps, self.time_s, self.success_rate)):
            raise ValueError("set at least one of iterations, env_steps, time_s, success_rate, or training never ends")
        return self


class EvaluationConfig(_Section):
    interval: int | None = Field(10, ge=1)  # iterations between evaluations; None = no evaluation
    episodes: int = Field(10, ge=1)
    # Held-out episodes use seeds seed, seed+1, ...: kept away from the training seeds.
    seed: int = Field(1_000_000, ge=0, le=2**31 - 1)


class CheckpointConfig(_Section):
    interval: int | None = Field(10, ge=1)  # iterations between checkpoints; None = final checkpoint only
    dir: str | None = Field(None, min_length=1)  # None: runs/<run name>


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
        floor = self.entropy.collapse.floor
        if control.enabled and floor is not None and floor >= control.min_target():
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

    # -- derived values the platform needs --------------------------------------------------------

    @property
    def run_name(self) -> str:
        return self.mlflow.run_name or self.name

    @property
    def checkpoint_dir(self) -> Path:
        return Path(self.checkpoint.dir or f"runs/{self.run_name}")


# ---------------------------------------------------------------------------------------- internals


def _yaml_switch(value: Any) -> Any:
    # YAML 1.1 (PyYAML) reads a bare on/off as true/false; give those words back to the Literal fields.
    return {True: "on", False: "off"}.get(value, value) if isinstance(value, bool) else value


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
