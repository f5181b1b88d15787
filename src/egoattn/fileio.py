"""Small file helpers: atomic writes, safe YAML, JSON. Nothing here executes code from a file."""

from __future__ import annotations

import contextlib
import errno
import json
import os
import tempfile
from pathlib import Path
from typing import Any, Iterator

import yaml

from egoattn.errors import BadInputError, OutputError

#: errno values that mean "this output cannot be written here" (not a bug, not a bad input).
WRITE_ERRNOS = {errno.EACCES, errno.EPERM, errno.EROFS, errno.ENOSPC, errno.EDQUOT, errno.EFBIG}


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside `path`; on success it replaces `path` in one rename.

    A reader never sees a half-written file, and an interrupted writer leaves the old file intact
    (a SIGKILL may leave the hidden temporary `.<name>.*.tmp<suffix>` behind; nothing reads it).
    A read-only folder or a full disk becomes an OutputError naming `path`.
    """
    path = Path(path)
    tmp_path: Path | None = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp" + path.suffix, dir=path.parent)
        os.close(fd)
        tmp_path = Path(tmp)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp_path, 0o666 & ~umask)  # mkstemp makes 0600; give the file the usual permissions
        yield tmp_path
        os.replace(tmp_path, path)
    except BaseException as e:
        if tmp_path is not None:
            tmp_path.unlink(missing_ok=True)
        if _cannot_write(e, path):
            raise OutputError(path, f"cannot write the file: {e.strerror or os.strerror(e.errno)}") from e
        raise


def _cannot_write(e: BaseException, path: Path) -> bool:
    """An OSError about writing `path` (its temporary, its folder), not about reading some input."""
    if not isinstance(e, OSError) or e.errno not in WRITE_ERRNOS:
        return False
    where = None if e.filename is None else Path(e.filename)
    return where is None or where == path or where.parent == path.parent or where in path.parents


def write_text_atomic(path: str | Path, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def write_json(path: str | Path, obj: Any) -> None:
    write_text_atomic(path, json.dumps(obj, indent=2, sort_keys=False, default=_json_default) + "\n")


def _json_default(obj: Any) -> Any:
    if hasattr(obj, "tolist"):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


def read_json(path: str | Path) -> Any:
    path = Path(path)
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise BadInputError(path, "file not found") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise BadInputError(path, f"not valid JSON ({e})") from None


def read_yaml(path: str | Path) -> Any:
    """Load YAML with the safe loader (no object construction)."""
    path = Path(path)
    try:
        return yaml.safe_load(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise BadInputError(path, "file not found") from None
    except yaml.YAMLError as e:
        raise BadInputError(path, f"not valid YAML ({e})") from None
