"""Errors that name the file and the problem, so a user can fix their data."""

from __future__ import annotations

from pathlib import Path


class EgoattnError(Exception):
    """Base class of every error egoattn raises on purpose."""


class _FileError(EgoattnError):
    """An error about one file; the message is `"<path>: <problem>"`."""

    def __init__(self, path: str | Path | None, problem: str | None = None) -> None:
        if problem is None:
            # Re-raised from a message alone (pickling, DataLoader workers): keep the message as is.
            path, problem, message = None, str(path), str(path)
        else:
            message = f"{path}: {problem}" if path is not None else problem
        self.path = None if path is None else Path(path)
        self.problem = problem
        super().__init__(message)


class BadInputError(_FileError):
    """A file (video, frame, manifest, checkpoint, config) that cannot be used as given."""


class OutputError(_FileError):
    """An output file that cannot be written (read-only folder, disk full). The input is fine, so
    `--skip-bad` does not skip it: the run stops, and what it wrote before stays."""


class ConfigError(EgoattnError):
    """A recipe or option that is unknown, of the wrong type, or inconsistent."""
