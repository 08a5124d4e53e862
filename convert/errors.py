"""Errors the user can act on.

Every error that reaches the CLI is a :class:`ConvertError`: one line saying what is wrong
and where, optionally followed by a ``Hint:`` saying how to fix it. The CLI prints it and exits
with status 2; it never shows a traceback for one.
"""

from __future__ import annotations


class ConvertError(Exception):
    """A user-facing error.

    Args:
        message: What is wrong and where (a file, a spec key path, a stage name).
        hint: How to fix it; printed after ``Hint:``.
    """

    exit_code = 2

    def __init__(self, message: str, hint: str | None = None):
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return f"{self.message} Hint: {self.hint}" if self.hint else self.message


class SpecError(ConvertError):
    """The spec (YAML, overrides or a pass's parameters) is invalid."""


class PassError(ConvertError):
    """A pass failed on its input."""


class BackendMissing(ConvertError):
    """A pass needs a backend library that is not installed."""
