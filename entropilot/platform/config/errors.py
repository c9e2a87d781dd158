"""What a rejected config says: one `Problem` per bad field, carried by `ConfigError` for callers to use as data."""

from __future__ import annotations

from typing import Any, NamedTuple

from pydantic import ValidationError
from pydantic_core import InitErrorDetails, PydanticCustomError

from entropilot.errors import EntropilotError, one_line


class _NoValue:
    """The value of a problem that is about a whole section or a missing file, not a value someone gave."""

    def __repr__(self) -> str:
        return "<no value>"


NO_VALUE: Any = _NoValue()


class Problem(NamedTuple):
    """One reason a config is refused: the dotted path of the field (`algorithm.lr`, `entropy.control.target[1]`),
    what is wrong with it (including the allowed range where the schema knows one) and the value given."""

    path: str
    message: str
    value: Any = NO_VALUE

    def describe(self) -> str:
        got = "" if self.value is NO_VALUE else f" (got {short_repr(self.value)})"
        return f"{self.path or '<top>'}: {self.message}{got}"


class ConfigError(EntropilotError, ValueError):
    """A config that cannot be used. `problems` lists every `Problem` found; the message has one line per problem."""

    def __init__(self, problems: list[Problem] | list[tuple], source: str | None = None):
        self.problems = [Problem(*problem) for problem in problems]
        self.source = source
        where = f" ({source})" if source else ""
        lines = [f"invalid experiment config{where}:"]
        lines += [f"  - {problem.describe()}" for problem in self.problems]
        super().__init__("\n".join(lines))

    def lines(self) -> list[str]:
        where = f"{self.source}: " if self.source else ""
        # A problem with the whole file (path "") reads better without the "<top>" placeholder of `describe`.
        return [one_line(f"{where}{problem.describe().removeprefix('<top>: ')}") for problem in self.problems]


class FieldProblem(ValueError):
    """Raised by validators that check several fields, so the error points at the offending field (a path relative
    to the model raising it), not at its section."""

    def __init__(self, field: str, message: str, value: Any = NO_VALUE):
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message
        self.value = value


def conflict(model: str, *problems: FieldProblem) -> ValidationError:
    """One rule that several fields break together, stated once in each field's own terms (raise it from a model
    validator): whichever of them a person changed (a sweep's value, a live tag), one problem speaks about it."""
    return ValidationError.from_exception_data(
        model,
        [
            InitErrorDetails(
                type=PydanticCustomError("value_error", problem.message),  # no context: braces stay text
                loc=tuple(problem.field.split(".")),
                input=problem.value,
            )
            for problem in problems
        ],
    )


def short_repr(value: Any, limit: int = 120) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."
