"""What the `entropilot` commands share: the group that turns an expected failure into `Error:` lines (and leaves a
bug its traceback), parameter types that refuse non-finite numbers and negative seeds, and checks of output paths
and tracking URIs made before any work."""

from __future__ import annotations

import math

import click


class Commands(click.Group):
    """The command group. An expected failure (`entropilot.errors.EntropilotError`: a refused input, an unreachable
    service, a refused flight) ends as `Error:` lines, one per problem, and exit status 1; any other exception is a
    bug and keeps its traceback."""

    def invoke(self, ctx: click.Context):
        from entropilot.errors import EntropilotError

        try:
            return super().invoke(ctx)
        except EntropilotError as err:
            for line in err.lines():
                click.echo(f"Error: {line}", err=True)
            ctx.exit(1)


class Finite(click.FloatRange):
    """A FloatRange that also refuses nan and inf (click lets nan through: every comparison with it is false)."""

    def convert(self, value, param, ctx):
        number = super().convert(value, param, ctx)
        if not math.isfinite(number):
            self.fail(f"{value!r} is not a finite number", param, ctx)
        return number


SEED = click.IntRange(0, 2**31 - 1)


def check_outputs(**paths: str | None) -> None:
    """Each given output file (option name -> path) can be written: checked before the work, not after it."""
    from entropilot.inputs import writable_file

    for option, path in paths.items():
        if path is not None:
            writable_file(path, f"--{option}")


def check_tracking_uri(uri: str | None) -> None:
    from entropilot.inputs import InputError, tracking_uri_problem

    problem = None if uri is None else tracking_uri_problem(uri)
    if problem:
        raise InputError("--tracking-uri", uri, problem)
