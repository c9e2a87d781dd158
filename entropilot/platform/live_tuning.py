"""Live tuning: a running training takes its entropy-control settings from its MLflow run's tags (one tag per setting,
pre-filled with the value in force), checked by the config's own schema, so a person tunes it from the MLflow UI."""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Mapping
from typing import Any, get_args

import yaml

from entropilot.platform.config import (
    ALIASES,
    TARGET_MODES,
    ConfigError,
    ControlConfig,
    ExperimentConfig,
    Problem,
    read_yaml,
    to_flat_params,
    with_overrides,
)
from entropilot.platform.names import LIVE_ERROR_TAG, LIVE_TAG_PREFIX, Metric

SECTION = "entropy.control"


def _live_modes(field: str) -> list[str]:
    """The control modes in which the schema marks `field` live (`schema.live`)."""
    extra = ControlConfig.model_fields[field].json_schema_extra
    return list(extra.get("live", [])) if isinstance(extra, dict) else []


# The fields a running controller takes (`EntropyCoefficientController.retune`, or the learner's sigma schedule):
# those the schema marks live, and per mode the ones that mean something there. `enabled` and `mode` only mean
# something when a run starts, and so does `coef` outside mode fixed (where a lower_bound or track controller starts;
# after that, the coefficient is its own state).
LIVE_FIELDS = tuple(field for field in ControlConfig.model_fields if _live_modes(field))
MODE_FIELDS = {
    mode: tuple(field for field in LIVE_FIELDS if mode in _live_modes(field))
    for mode in get_args(ControlConfig.model_fields["mode"].annotation)
}
SOURCE = "MLflow live tags"


def live_tag(field: str) -> str:
    """The tag of a live field: the prefix + the field's dotted config path, as in a `--set` override."""
    return f"{LIVE_TAG_PREFIX}{SECTION}.{field}"


def tag_names(field: str) -> tuple[str, ...]:
    """Every tag that sets `field`: its own, then one per `--set` shortcut of its path (`...live.entropy.target`)."""
    path = f"{SECTION}.{field}"
    return (live_tag(field), *(LIVE_TAG_PREFIX + alias for alias, real in ALIASES.items() if real == path))


def live_tags(tags: Mapping[str, str]) -> dict[str, str]:
    """The tags that ask for a live setting (every tag under `entropilot.live.`, allowed or not)."""
    return {key: value for key, value in tags.items() if key.startswith(LIVE_TAG_PREFIX)}


def config_settings(cfg: ExperimentConfig) -> dict[str, str]:
    """{live field of the run's mode: its value in `cfg` as tag text}, the same text as the run's params (YAML reads
    it back equal), but for coef_min: its value resolved for the mode where the config leaves it null."""
    control, params = cfg.entropy.control, to_flat_params(cfg)
    settings = {field: params[f"{SECTION}.{field}"] for field in MODE_FIELDS[control.mode]}
    if "coef_min" in settings:
        settings["coef_min"] = json.dumps(control.resolved_coef_min)
    return settings


def initial_tags(cfg: ExperimentConfig) -> dict[str, str]:
    """The tags a new run starts with: every live setting of its mode with the config's value (none when control is
    off)."""
    if not cfg.entropy.control.enabled:
        return {}
    return {live_tag(field): text for field, text in config_settings(cfg).items()}


def live_control(cfg: ExperimentConfig, settings: Mapping[str, str]) -> ControlConfig:
    """`cfg`'s `entropy.control` with `settings` ({live field: text}) in place of the config's values.

    A text is read as YAML, like a `--set` value (so `2.5`, `1e-3`, `[[0, 3], [200000, 1]]`), and validated by the
    schema together with the rest of `cfg`, so a live value obeys the same rules as one in the YAML file (coef_min <=
    coef_max, every target above the collapse floor...). Raises ConfigError whose problems name config paths.
    """
    values, problems = {}, []
    for field, text in settings.items():
        try:
            values[f"{SECTION}.{field}"] = read_yaml(text)
        except yaml.YAMLError as exc:
            problems.append(
                Problem(f"{SECTION}.{field}", f"not valid YAML: {getattr(exc, 'problem', None) or exc}", text)
            )
    if problems:
        raise ConfigError(problems, SOURCE)
    control = cfg.entropy.control
    # What only means something when a run starts does not hold a running one back. In lower_bound/track mode `coef`
    # is where the coefficient started, and a running one outside new bounds is clamped into them by the controller:
    # new bounds may exclude `coef`, so check them against a clamped one.
    if control.mode in TARGET_MODES:
        low, high = (values.get(f"{SECTION}.{bound}", getattr(control, bound)) for bound in ("coef_min", "coef_max"))
        if _is_number(high) and (low is None or _is_number(low)):
            low = control.model_copy(update={"coef_min": low, "coef_max": high}).resolved_coef_min
            if low <= high:
                values[f"{SECTION}.coef"] = min(max(control.coef, low), high)
    # In sigma_schedule mode model.initial_std, if set, must equal the schedule's start, which a running one is past.
    if "sigma" in settings and cfg.model.initial_std is not None:
        values["model.initial_std"] = None
    return with_overrides(cfg, values, source=SOURCE).entropy.control


def accepted_range(cfg: ExperimentConfig, settings: Mapping[str, str], field: str) -> str:
    """The numbers live `field` may take with the other `settings` as they are, found by asking the schema (its field
    bounds and cross-field rules alike): "(0, 1]", "> -3". "" if no number in `field`'s setting is accepted alone.
    (For a schedule target: what each of its values may be.)"""

    def accepted(value: float) -> bool:
        try:
            live_control(cfg, {**settings, field: repr(value)})
        except ConfigError:
            return False
        return True

    try:
        inside = next((number for number in _numbers(read_yaml(settings[field])) if accepted(number)), None)
    except yaml.YAMLError:
        inside = None
    if inside is None:
        return ""
    low, high = (_edge(accepted, inside, far) for far in (-_FAR, _FAR))
    if low is None and high is None:
        return "any number"
    if high is None:
        return f"{'>=' if low[1] else '>'} {low[0]:g}"
    if low is None:
        return f"{'<=' if high[1] else '<'} {high[0]:g}"
    return f"{'[' if low[1] else '('}{low[0]:g}, {high[0]:g}{']' if high[1] else ')'}"


_FAR = 1e9  # "no bound" for a setting


def _edge(accepted: Callable[[float], bool], inside: float, far: float) -> tuple[float, bool] | None:
    """Where the accepted interval around `inside` ends toward `far`: (end, whether the end itself is accepted), or
    None if it reaches `far`. Bisection, then the end as the shortest decimal in the last step (what a config holds)."""
    if accepted(far):
        return None
    good, bad = inside, far
    while abs(bad - good) > 1e-12 * max(1.0, abs(good)):
        middle = (good + bad) / 2
        good, bad = (middle, bad) if accepted(middle) else (good, middle)
    low, high = sorted((good, bad))
    end = next((rounded for digits in range(17) if low <= (rounded := float(f"{bad:.{digits}f}")) <= high), bad)
    return end + 0.0, accepted(end)  # + 0.0: no "-0"


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


Requests = Mapping[str, tuple[str | None, str]]  # {field: (the tag asking, or None when all were removed, text)}


def requested_settings(
    tags: Mapping[str, str], in_force: Mapping[str, str], config: Mapping[str, str], control: ControlConfig
) -> dict[str, tuple[str | None, str]]:
    """What the live tags among `tags` ask for, given the settings `in_force` and the `config`'s ({field: text} each,
    the fields of `control`'s mode).

    A field is asked to change when one of its tags (its own or a shortcut's) holds another text than the one in force,
    or when all its tags are gone (back to the config's text, tag None). Two of its tags asking for different texts,
    a tag that is no live setting or one of a field the mode does not use, or any live tag while entropy control is
    off: ConfigError naming the tags."""
    problems = []
    names = {name: field for field in LIVE_FIELDS for name in tag_names(field)}
    used = MODE_FIELDS[control.mode]
    for tag, text in sorted(live_tags(tags).items()):
        if tag not in names:
            live = f"live in {SECTION}.mode {control.mode}: {', '.join(used)}"
            problems.append(Problem(tag, f"not a live setting; {live}", text))
        elif not control.enabled:
            problems.append(Problem(tag, "entropy control is off in this run (entropy.control.enabled: false)", text))
        elif names[tag] not in used:
            problems.append(
                Problem(tag, f"not used in {SECTION}.mode {control.mode} (live there: {', '.join(used)})", text)
            )
    requests = {}
    for field in used:
        present = {name: tags[name] for name in tag_names(field) if name in tags}
        asking = {name: text for name, text in present.items() if text != in_force[field]}
        if len(set(asking.values())) > 1:
            problems.append(Problem(" and ".join(asking), "differ: change one of them", " vs ".join(asking.values())))
        elif asking:
            requests[field] = next(iter(asking.items()))
        elif not present and in_force[field] != config[field]:
            requests[field] = (None, config[field])
    if problems:
        raise ConfigError(problems, SOURCE)
    return requests


def refusal(
    cfg: ExperimentConfig, in_force: Mapping[str, str], requests: Requests, exc: ConfigError
) -> tuple[str, str]:
    """Why live tags were refused, in the person's terms: (the console's text, the `entropilot.live_error` chip's).

    The console names each tag set, the text typed and the rule broken; the chip, short enough to read in the MLflow
    UI, names the field, the text and the range the schema accepts with the settings `in_force` (the rule where no
    range says it). A cross-field rule is stated about each field it involves: only statements about fields asked
    for are reported, so target=-4 speaks of the target, not of the collapse floor."""
    reports = []  # (tag, live field or None, text typed, problem)
    for problem in exc.problems:
        field = problem.path.removeprefix(f"{SECTION}.").split("[")[0]
        if problem.path.startswith(LIVE_TAG_PREFIX) or " and " in problem.path:  # about the tags themselves
            reports.append((problem.path, None, problem.value, problem))
        elif field in requests:
            tag, text = requests[field]
            reports.append((tag or live_tag(field), field, text, problem))
    reports = reports or [(problem.path, None, problem.value, problem) for problem in exc.problems]
    console, chip = [], []
    for tag, field, text, problem in reports:
        where = problem.path[problem.path.index("[") :] + " " if "[" in problem.path else ""
        got = f" (got {problem.value})" if where else ""
        console.append(f"{tag} = {text}: {where}{problem.message}{got}")
        typed = _read_or_none(text)
        accepted = accepted_range(cfg, in_force, field) if field and not isinstance(typed, list) else ""
        if accepted and _is_number(typed):
            rule = f"needs {accepted}"
        elif accepted:
            rule = f"needs a number {'' if accepted[0] in '<>' else 'in '}{accepted}"
        else:
            rule = where + problem.message.split("; ")[0]
        chip.append(f"{tag.removeprefix(LIVE_TAG_PREFIX).rsplit('.', 1)[-1]}={text}: {rule}")
    return "; ".join(console), "; ".join(chip)


class LiveTuner:
    """Once per iteration `poll` reads the run's live tags and asks `requested_settings` what they want. The settings
    asked for are validated all together (`live_control`), then either applied to every learner and echoed, or none
    is: a console warning and the `entropilot.live_error` tag say why (`refusal`).

    After each poll the tags show the settings in force: a removed tag comes back with the config's value, and a
    shortcut tag (`entropilot.live.entropy.target`) holds the same text as the field's own. `tags_in_force` goes
    into the training state, so a resumed run knows what is in force (the learners' checkpoint holds the settings).
    """

    def __init__(self, cfg: ExperimentConfig, echo: Callable[[str], None], in_force: Mapping[str, str] | None = None):
        self._cfg = cfg
        self._echo = echo
        self._config = config_settings(cfg)
        resumed = {tag.removeprefix(live_tag("")): text for tag, text in (in_force or {}).items()}
        # {field of the mode: tag text}, the settings in force
        self._settings = {field: resumed.get(field, text) for field, text in self._config.items()}
        self._control = live_control(cfg, self._settings) if cfg.entropy.control.enabled else cfg.entropy.control
        self._seen: dict[str, str] | None = None

    @property
    def tags_in_force(self) -> dict[str, str]:
        return {live_tag(field): text for field, text in self._settings.items()}

    def poll(self, tracker, algo, iteration: int) -> None:
        """Before training iteration `iteration`: apply changed live tags.

        One MLflow call (none while the server is away: the tracker then answers from its last read)."""
        all_tags = tracker.get_tags()
        tags = live_tags(all_tags)
        if tags == self._seen:
            return
        self._seen = tags
        requests: Requests = {}
        try:
            requests = requested_settings(tags, self._settings, self._config, self._cfg.entropy.control)
            settings = {**self._settings, **{field: text for field, (_, text) in requests.items()}}
            control = live_control(self._cfg, settings)
        except ConfigError as exc:
            console, chip = refusal(self._cfg, self._settings, requests, exc)
            self._echo(
                f"WARNING: live settings not applied at iteration {iteration}, the ones in force stay: {console}"
            )
            tracker.set_tag(LIVE_ERROR_TAG, chip)
            return
        old, new = live_settings(self._control), live_settings(control)
        changed = [field for field in new if new[field] != old[field]]
        if changed:
            retune_learners(algo, control)
        for field in changed:
            tag = requests[field][0]
            source = f"from MLflow tag {tag}" if tag else f"tag {live_tag(field)} removed: the config's value"
            self._echo(
                f"live: {SECTION}.{field} {_text(old[field])} → {_text(new[field])} ({source}) at iteration {iteration}"
            )
        self._control, self._settings = control, settings
        # The tags show what is in force; a run without entropy control has nothing live (`initial_tags`), and tags
        # written here would be refused at the next poll.
        for field in settings if self._cfg.entropy.control.enabled else ():
            for name in [name for name in tag_names(field) if name in tags] or [live_tag(field)]:
                if tags.get(name) != settings[field]:
                    tracker.set_tag(name, settings[field])
        if not all_tags.get(LIVE_ERROR_TAG, "none").startswith("none"):  # fixed, removed, or from before a resume
            tracker.set_tag(LIVE_ERROR_TAG, f"none since iteration {iteration}")

    def metrics(self, iteration_metrics: Mapping[str, float]) -> dict[str, float]:
        """The live settings in force as metrics `live/FIELD`, to log with an iteration's metrics: one point per
        iteration, so a change reads as a step. A schedule is the learners' own value of that iteration
        (`entropy_target`, `sigma_target`)."""
        if not self._cfg.entropy.control.enabled:
            return {}
        values = {f"live/{field}": value for field, value in live_settings(self._control).items()}
        for field, learners in (("target", Metric.ENTROPY_TARGET), ("sigma", Metric.SIGMA_TARGET)):
            if f"live/{field}" in values:
                values[f"live/{field}"] = iteration_metrics.get(learners)
        return {key: float(value) for key, value in values.items() if _is_number(value)}


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _numbers(value: Any) -> list[float]:
    """The finite numbers in a YAML value (a number, or a schedule's), in order."""
    if isinstance(value, (list, tuple)):
        return [number for item in value for number in _numbers(item)]
    return [float(value)] if _is_number(value) else []


def _read_or_none(text: str) -> Any:
    try:
        return read_yaml(text)
    except yaml.YAMLError:
        return None


def _text(value: Any) -> str:
    if isinstance(value, (int, float)):
        return f"{value:g}"
    return json.dumps([list(point) for point in value])
