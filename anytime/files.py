"""Files the project writes and reads: crash-safe replacement, and JSON with errors that name the file."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Callable, IO


def atomic_write(path: str | Path, data: bytes | str | Callable[[IO[bytes]], None], mode: int = 0o644) -> Path:
    """Replace ``path`` with ``data`` (bytes, text, or a function that writes into the open binary file) so that
    a crash at any moment leaves either the old file or the new one, never half of one.

    The new content goes to a hidden temporary file in the same directory (Triton and globbing readers skip
    dot-files), is flushed and fsynced, renamed over ``path``, and the directory is fsynced so the rename
    itself survives a power cut.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            if callable(data):
                data(f)
            else:
                f.write(data.encode() if isinstance(data, str) else data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)
    return path


def read_json(path: str | Path, error: type[Exception] = ValueError):
    """The parsed file; broken JSON raises ``error`` with the path and the parser's position."""
    try:
        return json.loads(Path(path).read_text())
    except json.JSONDecodeError as e:
        raise error(f"{path}: not valid JSON ({e})") from None
