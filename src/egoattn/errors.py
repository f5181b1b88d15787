"""Errors that name the file and the problem, so a user can fix their data."""

from __future__ import annotations

from pathlib import Path


class EgoattnError(Exception):
    """Base class of every error egoattn raises on purpose."""


class BadInputError(EgoattnError):
    """A file (video, frame, manifest, checkpoint, config) that cannot be used as given."""

    def __init__(self, path: str | Path | None, problem: str) -> None:
        self.path = None if path is None else Path(path)
        self.problem = problem
        super().__init__(f"{path}: {problem}" if path is not None else problem)


class ConfigError(EgoattnError):
    """A recipe or option that is unknown, of the wrong type, or inconsistent."""
