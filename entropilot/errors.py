"""The base of every failure entropilot expects (a refused input, an unreachable service, a refused flight): the
`entropilot` command prints one as an `Error:` line and exits 1; any other exception is a bug and keeps its
traceback."""


class EntropilotError(Exception):
    """An expected failure whose message says what was wrong and what is allowed, in one line."""

    def lines(self) -> list[str]:
        """The message as the `Error:` lines the command prints: one (a multi-line message is joined), unless a
        subclass lists several problems."""
        return [" ".join(line.strip() for line in str(self).splitlines() if line.strip())]
