"""One exception family for everything a user can get wrong.

Formats and statistics raise these with a message a user can act on; the CLI turns them into one
line on stderr and exit status 2, the app into a notification.
"""

from __future__ import annotations

from pathlib import Path


class ImatrixError(Exception):
    """A problem with an imatrix file or with what was asked of it."""

    def __init__(self, message: str, path: str | Path | None = None) -> None:
        self.path = None if path is None else str(path)
        self.reason = message
        super().__init__(f"{self.path}: {message}" if self.path else message)

    def __reduce__(self):  # the statistics' worker processes send these back to the parent
        return (self.__class__, (self.reason, self.path))


class NotFoundError(ImatrixError):
    """The file does not exist (or is a directory where a file was expected)."""


class FormatError(ImatrixError):
    """The bytes are not an imatrix: not GGUF and not legacy, or a GGUF that is not an imatrix."""


class TruncatedError(FormatError):
    """The file ends before its own header says it should (often: it is being rewritten)."""


class CorruptError(FormatError):
    """The file parses but holds impossible values (NaN, negative counts, mismatched shapes)."""


class OverwriteError(ImatrixError):
    """Writing would replace a file the user already has, and --force was not given."""
