"""The base of every failure entropilot expects (a refused input, an unreachable service, a refused flight): the
`entropilot` command prints one as an `Error:` line and exits 1; any other exception is a bug and keeps its
traceback."""


class EntropilotError(Exception):
    """An expected failure whose message says what was wrong and what is allowed, in one line."""

    def lines(self) -> list[str]:
        """The message as the `Error:` lines the command prints: one (a multi-line message is joined), unless a
        subclass lists several problems."""
        return [one_line(str(self))]


def one_line(text: str) -> str:
    """``text`` (an error message, perhaps a library's multi-line one) as one line."""
    return " ".join(line.strip() for line in text.splitlines() if line.strip())
