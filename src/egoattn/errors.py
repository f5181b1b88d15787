"""Errors that name the file and the problem, so a user can fix their data."""

from __future__ import annotations

from pathlib import Path


class EgoattnError(Exception):
    """Base class of every error egoattn raises on purpose."""


class BadInputError(EgoattnError):
    """A file (video, frame, manifest, checkpoint, config) that cannot be used as given."""

    def __init__(self, path: str | Path | None, problem: str | None = None) -> None:
        if problem is None:
            # Re-raised from a message alone (pickling, DataLoader workers): keep the message as is.
            path, problem, message = None, str(path), str(path)
        else:
            message = f"{path}: {problem}" if path is not None else problem
        self.path = None if path is None else Path(path)
        self.problem = problem
        super().__init__(message)


class ConfigError(EgoattnError):
    """A recipe or option that is unknown, of the wrong type, or inconsistent."""
