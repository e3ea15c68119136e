"""Reading the project's JSON files (configs, architectures, manifests) with errors that name the file."""

from __future__ import annotations

import json
from pathlib import Path


def read_json(path: str | Path, error: type[Exception] = ValueError):
    """The parsed file; broken JSON raises ``error`` with the path and the parser's position."""
    try:
        return json.loads(Path(path).read_text())
    except json.JSONDecodeError as e:
        raise error(f"{path}: not valid JSON ({e})") from None
