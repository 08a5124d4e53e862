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
        message, hint = _one_line(message), _one_line(hint) if hint else hint
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


def _one_line(text: str, limit: int = 600) -> str:
    """``text`` on one line (library messages quoted into ours often span several), at most ``limit``
    characters (a 5000-character value quoted back would bury the message)."""
    line = " ".join(part.strip() for part in str(text).splitlines() if part.strip())
    return line if len(line) <= limit else line[:limit - 1] + "…"


def from_os_error(e: OSError, where: str = "") -> ConvertError:
    """A file-system failure (full disk, read-only or unwritable folder) as one line with a hint.

    Args:
        e: The error.
        where: What was being done (``stage 'load' (pass load) failed``), put first.
    """
    import errno

    path = f" ({e.filename})" if getattr(e, "filename", None) else ""
    hint = {errno.ENOSPC: "free disk space (`convert gc` drops unpublished objects) or point --store / --artifacts "
                          "at a larger disk.",
            errno.EROFS: "the folder is read-only: point --store / --artifacts at a writable one (a read-only "
                         "store still answers `convert plan` and fully cached runs).",
            errno.EACCES: "no permission: point --store / --artifacts at a folder you can write.",
            errno.EDQUOT: "over the disk quota: free space or use another disk."}.get(
        e.errno, "check the store, artifacts and spec folders.")
    what = f"{where}: " if where else ""
    return ConvertError(f"{what}{e.strerror or e}{path}; the run stopped (completed stages stay in the store).",
                        hint=hint)
