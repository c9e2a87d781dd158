"""Live tuning: a running training takes entropy-control settings from its MLflow run's tags, checked by the
config's own schema, so a user can change them from the MLflow UI while it trains."""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from typing import Any

import yaml

from entropilot.platform.config import ConfigError, ControlConfig, ExperimentConfig, Problem, parse_config, read_yaml

LIVE_TAG_PREFIX = "entropilot.live."
# The `entropy.control` fields a running controller can take, per mode (`EntropyCoefficientController.retune`,
# or the learner's sigma schedule); `enabled` and `mode` only mean something when a run starts, and `coef` is where
# a lower_bound or track controller starts (after that, its own state).
MODE_FIELDS = {
    "lower_bound": ("target", "coef_min", "coef_max", "gain", "damping", "max_step"),
    "track": ("target", "coef_min", "coef_max", "gain", "damping", "max_step"),
    "fixed": ("coef",),
    "sigma_schedule": ("sigma",),
}
LIVE_FIELDS = ("target", "coef", "coef_min", "coef_max", "gain", "damping", "max_step", "sigma")


def live_tag(field: str) -> str:
    """The tag of a live field: the prefix + the field's dotted config path, as in a `--set` override."""
    return f"{LIVE_TAG_PREFIX}entropy.control.{field}"


LIVE_TAGS = {live_tag(field): field for field in LIVE_FIELDS}
# Outside the prefix, so it is never read back as a setting.
ERROR_TAG = "entropilot.live_error"
SOURCE = "MLflow live tags"


def live_tags(tags: Mapping[str, str]) -> dict[str, str]:
    """The tags that ask for a live setting (every tag under `entropilot.live.`, allowed or not)."""
    return {key: value for key, value in tags.items() if key.startswith(LIVE_TAG_PREFIX)}


def live_control(cfg: ExperimentConfig, tags: Mapping[str, str]) -> ControlConfig:
    """`cfg`'s `entropy.control` with the values of the live tags among `tags`.

    A tag's text is read as YAML, like a `--set` override (so JSON works: `2.5`, `[[0, 3], [200000, 1]]`),
    and the result is validated by the config schema together with the rest of `cfg`, so a live value
    obeys the same rules as one in the YAML file (e.g. coef_min <= coef_max, the collapse floor below
    every target). Raises ConfigError with one problem per bad tag, naming the tag, why, and its value.
    """
    tags = live_tags(tags)
    mode = cfg.entropy.control.mode
    problems = []
    values = {}
    for tag, text in sorted(tags.items()):
        field = LIVE_TAGS.get(tag)
        if field is None:
            problems.append(Problem(tag, f"not a live setting; allowed: {', '.join(LIVE_TAGS)}", text))
        elif not cfg.entropy.control.enabled:
            problems.append(Problem(tag, "entropy control is off in this run (entropy.control.enabled: false)", text))
        elif field not in MODE_FIELDS[mode]:
            used = ", ".join(live_tag(f) for f in MODE_FIELDS[mode])
            problems.append(Problem(tag, f"not used in entropy.control.mode {mode}; live there: {used}", text))
        else:
            try:
                values[field] = read_yaml(text)
            except yaml.YAMLError as exc:
                problems.append(Problem(tag, f"not valid YAML/JSON: {getattr(exc, 'problem', None) or exc}", text))
    if problems:
        raise ConfigError(problems, SOURCE)
    data = cfg.model_dump(mode="json")
    control = data["entropy"]["control"]
    control.update(values)
    # In lower_bound/track mode `coef` only sets where a run starts; a running coefficient outside new bounds is
    # clamped into them by the controller. So new bounds may exclude `coef`: check them against a clamped one.
    if mode in ("lower_bound", "track") and control["coef_min"] is not None:
        try:
            low, high = float(control["coef_min"]), float(control["coef_max"])
        except (TypeError, ValueError):
            pass  # the schema names the bad bound
        else:
            if low <= high:
                control["coef"] = min(max(control["coef"], low), high)
    try:
        return parse_config(data, source=SOURCE).entropy.control
    except ConfigError as exc:
        raise ConfigError([problem._replace(path=_tag_of(problem.path)) for problem in exc.problems], SOURCE) from None


def live_settings(control: ControlConfig) -> dict[str, Any]:
    """The live fields of `control`'s mode as the learner's `retune_entropy_control` takes them."""
    settings = {field: getattr(control, field) for field in MODE_FIELDS[control.mode]}
    if "coef_min" in settings:
        settings["coef_min"] = control.resolved_coef_min
    return settings


def retune_learners(algo, control: ControlConfig) -> None:
    """Give every learner's entropy controllers the live fields of `control`, keeping their integrator state."""
    settings = live_settings(control)
    for result in algo.learner_group.foreach_learner(lambda learner: learner.retune_entropy_control(settings)):
        result.get()  # a learner's error surfaces here


class LiveTuner:
    """Once per iteration `poll` reads the run's live tags. When they differ from the ones in force, it
    validates them all together (`live_control`) and then either applies them to every learner, logs each
    changed field as metric `live/<field>` at that iteration and echoes it, or applies nothing and reports
    why: a console warning and the `entropilot.live_error` tag, once per distinct set of tags.

    A removed tag puts its field back to the config's value. `applied_tags` goes into the training state,
    so a resumed run knows which tags are already in force (the learners' checkpoint holds the settings).
    """

    def __init__(
        self, cfg: ExperimentConfig, echo: Callable[[str], None], applied_tags: Mapping[str, str] | None = None
    ):
        self._cfg = cfg
        self._echo = echo
        self.applied_tags = dict(applied_tags or {})
        self._control = live_control(cfg, self.applied_tags)  # valid when applied, with this same config
        self._rejected: dict[str, str] | None = None

    def poll(self, tracker, algo, iteration: int, env_steps: float) -> None:
        """Before training iteration `iteration` (at `env_steps` lifetime env steps): apply changed live tags.

        One MLflow call (none while the server is away: the tracker then answers from its last read)."""
        all_tags = tracker.get_tags()
        tags = live_tags(all_tags)
        # An error shown for tags no longer there (fixed, removed, or from before a resume) must be cleared.
        stale_error = not all_tags.get(ERROR_TAG, "none").startswith("none")
        if tags == self._rejected or (tags == self.applied_tags and not stale_error):
            return
        try:
            control = live_control(self._cfg, tags)
        except ConfigError as exc:
            self._rejected = tags
            reasons = "; ".join(problem.describe() for problem in exc.problems)
            self._echo(
                f"WARNING: live settings not applied at iteration {iteration}, the ones in force stay: {reasons}"
            )
            tracker.set_tag(ERROR_TAG, f"iteration {iteration}: {reasons}")
            return
        old, new = live_settings(self._control), live_settings(control)
        changed = [field for field in new if new[field] != old[field]]
        if changed:
            retune_learners(algo, control)
            for field in changed:
                tag = live_tag(field)
                source = f"from MLflow tag {tag}" if tag in tags else f"tag {tag} removed: the config's value"
                self._echo(
                    f"live: entropy.control.{field} {_text(old[field])} → {_text(new[field])} ({source}) "
                    f"at iteration {iteration}"
                )
            # A schedule is logged as its value now.
            now = {"target": control.target_at(int(env_steps)), "sigma": control.sigma_at(int(env_steps))}
            tracker.log_metrics({f"live/{field}": now.get(field, new[field]) for field in changed}, step=iteration)
        if stale_error:
            tracker.set_tag(ERROR_TAG, f"none since iteration {iteration}")
        self._rejected = None
        self._control, self.applied_tags = control, tags


def _tag_of(path: str) -> str:
    """The live tag a config error path points at (`entropy.control.target[1]` too), else the path itself."""
    for tag, field in LIVE_TAGS.items():
        dotted = f"entropy.control.{field}"
        if path == dotted or path.startswith(dotted + "["):
            return tag
    return path


def _text(value: Any) -> str:
    if isinstance(value, (int, float)):
        return f"{value:g}"
    return json.dumps([list(point) for point in value])
