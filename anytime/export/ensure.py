"""Export only when the repository needs it, and then in a child process.

``anytime serve`` (with no ``--triton``) and ``anytime demo`` make sure the repository holds a usable export before
they start Triton. Deciding that takes the manifest and, at most, one file hash; exporting takes torch, which costs
seconds to import and several hundred MB that a process never gives back. So the decision runs here, torch-free,
and an export, when one is needed, runs as ``python -m anytime export`` in a child process that exits when it is
done: the process that goes on serving never imports torch.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from anytime.export.accuracy import find_ap, manifest_ap
from anytime.export.repository import MANIFEST_NAME, read_manifest, refresh_runners, sha256_file, write_manifest


class ExportFailed(RuntimeError):
    """The child process that exported exited with an error; it printed why on its own stderr."""


def has_split_stages(manifest: dict) -> bool:
    """Whether the manifest has a progressive model of features and head graphs (an export from before stages
    were split in two counts as having none: today's progressive model cannot serve it)."""
    stages = (manifest.get("progressive") or {}).get("stages") or []
    return bool(stages) and all("head" in s for s in stages)


def export_needed(repository: str | Path, checkpoint: str | Path, *, replace_stale: bool = False,
                  stages: bool = True) -> bool:
    """Whether ``repository`` must be (re)exported from ``checkpoint``: it holds no export; or, with ``stages``
    (progressive execution needs them), one without the progressive model; or, with ``replace_stale``, an export
    of any other checkpoint (by file hash). Without ``replace_stale`` an existing export is served as it is,
    whatever model it holds."""
    repository = Path(repository)
    if not (repository / MANIFEST_NAME).exists():
        return True
    held = read_manifest(repository)
    if stages and not has_split_stages(held):
        return True
    if "options" not in held:  # an export from before input sizes were options: the gateway reads them
        return True
    return replace_stale and held.get("checkpoint_sha256") != sha256_file(checkpoint)


def ensure_exported(repository: str | Path, checkpoint: str | Path, replace_stale: bool = False,
                    stages: bool = True, progress=print) -> Path:
    """Export ``checkpoint`` into ``repository`` (every exit and the progressive model, the ``anytime export``
    defaults) if ``export_needed`` says so, in a child process whose output goes where this process's does;
    otherwise bring the repository's python runners up to this version's. ``ExportFailed`` if the export fails."""
    repository = Path(repository)
    if not export_needed(repository, checkpoint, replace_stale=replace_stale, stages=stages):
        replaced = refresh_runners(repository)
        if replaced:
            progress(f"{repository}/: updated the python runner of {', '.join(replaced)} to this version's")
        if add_ap(repository, checkpoint):
            progress(f"{repository}/: added each exit's AP to the manifest from this checkpoint's evaluation report")
        return repository
    progress(f"exporting {checkpoint} into {repository}/ (in a child process)")
    cmd = [sys.executable, "-m", "anytime", "export", "--checkpoint", str(checkpoint), "--out", str(repository)]
    sys.stdout.flush()  # what this process printed comes before what the child prints
    sys.stderr.flush()
    code = subprocess.run(cmd).returncode
    if code != 0:
        raise ExportFailed(f"exporting {checkpoint} into {repository}/ failed (`{' '.join(cmd)}` exited with "
                           f"status {code}; its error is above)")
    return repository


def add_ap(repository: str | Path, checkpoint: str | Path) -> bool:
    """Give an export made before manifests carried AP each exit's AP, when the repository holds ``checkpoint``
    (by hash) and a report of it is found (``anytime.export.accuracy``). Whether the manifest changed."""
    manifest = read_manifest(repository)
    if manifest_ap(manifest) is not None or not Path(checkpoint).is_file():
        return False
    sha = manifest.get("checkpoint_sha256")
    if sha is None or sha != sha256_file(checkpoint):
        return False
    ap, source = find_ap(checkpoint, sha, [e["exit"] for e in manifest["exits"]])
    if ap is None:
        return False
    for e in manifest["exits"]:
        e["ap"] = ap[e["exit"]]
    manifest["ap_source"] = source
    write_manifest(repository, manifest)
    return True
