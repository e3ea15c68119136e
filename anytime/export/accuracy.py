"""Each exit's accuracy in the manifest, from the model's own evaluation.

Serving decisions that trade accuracy for time (the peers benchmark's utility, a scheduler weighing exits) need
every exit's AP next to its latency. The AP comes from an evaluation report of *this* checkpoint (``anytime eval``
writes ``report.json`` with the checkpoint's SHA-256), never from a number typed in: a report is accepted only when
its hash is the checkpoint's, so a repository never carries another model's accuracy.

Where ``anytime export`` looks, in order: ``--ap-report FILE``; ``<checkpoint>.eval.json`` beside the checkpoint
(the shipped model carries one: ``anytime/assets/default_model.eval.json``, its AP on the default benchmark's val);
``<checkpoint dir>/eval_val/report.json`` (where ``anytime eval --checkpoint`` writes). None found: the manifest
says ``"ap": null`` and tools that need it say how to get it.
"""

from __future__ import annotations

import json
from pathlib import Path


class ReportMismatch(ValueError):
    """A report that is not of this checkpoint, or lacks an exit the export writes."""


def report_candidates(checkpoint: str | Path) -> list[Path]:
    checkpoint = Path(checkpoint)
    return [checkpoint.with_suffix(".eval.json"), checkpoint.parent / "eval_val" / "report.json"]


def ap_per_exit(report: dict, checkpoint_sha256: str | None, exits: list[int], source: str = "report") -> dict[int, float]:
    """{exit: AP} from an evaluation report, checked against the checkpoint's hash and the exported exits."""
    sha = report.get("checkpoint_sha256")
    if sha is None or checkpoint_sha256 is None or sha != checkpoint_sha256:
        raise ReportMismatch(f"{source} is not an evaluation of this checkpoint (its checkpoint_sha256 "
                             f"{str(sha)[:12]} differs from {str(checkpoint_sha256)[:12]}); run `anytime eval` on it")
    ap = {int(e["exit"]): e.get("AP") for e in report.get("exits", [])}
    missing = [k for k in exits if ap.get(k) is None]
    if missing:
        raise ReportMismatch(f"{source} has no AP for exit(s) {missing}")
    return {k: float(ap[k]) for k in exits}


def find_ap(checkpoint: str | Path, checkpoint_sha256: str | None, exits: list[int],
            report: str | Path | None = None) -> tuple[dict[int, float] | None, str | None]:
    """({exit: AP}, where it came from), or (None, None) when no report of this checkpoint is found. A report named
    explicitly must match (``ReportMismatch`` otherwise); the default places are skipped when they do not."""
    found, source = find_report(checkpoint, checkpoint_sha256, exits, report)
    return (ap_per_exit(found, checkpoint_sha256, exits, source), source) if found else (None, None)


def find_report(checkpoint: str | Path, checkpoint_sha256: str | None, exits: list[int],
                report: str | Path | None = None) -> tuple[dict | None, str | None]:
    """(the evaluation report of this checkpoint, where it came from), found as ``find_ap`` finds it; the whole
    report, for what it holds beyond each exit's AP (``report["sizes"]``: AP per input size)."""
    if report is not None:
        path = Path(report)
        data = _read(path)
        ap_per_exit(data, checkpoint_sha256, exits, str(path))
        return data, str(path)
    for path in report_candidates(checkpoint):
        if path.is_file():
            try:
                data = _read(path)
                ap_per_exit(data, checkpoint_sha256, exits, str(path))
            except ReportMismatch:
                continue
            return data, _shown(path)
    return None, None


def manifest_ap(manifest: dict) -> dict[int, float] | None:
    """{exit: AP} from a manifest, when every exit has one."""
    ap = {int(e["exit"]): e.get("ap") for e in manifest.get("exits", [])}
    if not ap or any(v is None for v in ap.values()):
        return None
    return {k: float(v) for k, v in ap.items()}


def _read(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise ReportMismatch(f"cannot read the evaluation report {path}: {e}") from None


def _shown(path: Path) -> str:
    """A path inside this package by its place in it (a manifest must not carry this machine's paths)."""
    package = Path(__file__).resolve().parents[1]
    try:
        return str(path.resolve().relative_to(package.parent))
    except ValueError:
        return str(path)
