"""The one user-facing error type.

A :class:`MetaedgeError` is printed by the CLI as a single line -- what is wrong and what to do
next -- and exits with code 2. Anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

__all__ = ["MetaedgeError", "EXIT_USAGE"]

EXIT_USAGE = 2


class MetaedgeError(Exception):
    """A problem with the user's input or environment, with the fix in the message."""

    def __init__(self, problem: str, fix: str | None = None) -> None:
        self.problem = problem
        self.fix = fix
        super().__init__(self.one_line())

    def one_line(self) -> str:
        text = self.problem.rstrip(". ")
        if self.fix:
            text += f"; {self.fix.rstrip('. ')}"
        return " ".join(text.split())  # one line, whatever the message held
