"""A search directory: its checkpoint and what a user reads.

- ``state.pt``: the whole search (configuration, agent weights, optimiser, baseline, random generators, every
  trial with its status) in one file, replaced atomically (``atomic_save``) after every finished trial, so a
  ``kill -9`` at any moment leaves the last consistent state;
- ``trials.jsonl``: one line per finished trial, by step (rewritten from the state, so it never holds a trial
  the state does not);
- ``best.json``: the best architecture so far, in the format of ``anytime/model/archs/`` (a model config
  takes it as ``"pyramid": "DIR/best.json"``), with its ``provenance``: the search directory (never a machine's
  absolute path), the step, the proxy preset, the reward, and the code's git commit when the search started (and
  at each resume that ran other code);
- ``top/top{1,2,3}.json``: the three best distinct architectures, in the same format: the ones to train with the
  full recipe, since the proxy only ranks them;
- ``search.json``: the resolved configuration.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

from anytime.files import atomic_write

FORMAT, VERSION = "anytime-search", 1
TOP = 3  # architectures written to DIR/top/


def state_path(out_dir: str | Path) -> Path:
    return Path(out_dir) / "state.pt"


def save_state(out_dir: str | Path, config: dict, loop_state: dict, agent_state: dict,
               commits: list[str] | None = None) -> None:
    from anytime.train.checkpoint import atomic_save

    atomic_save({"format": FORMAT, "version": VERSION, "config": config, "loop": loop_state, "agent": agent_state,
                 "commits": list(commits or [])}, state_path(out_dir))


def code_commit() -> str:
    """The git commit of the code running, ``-dirty`` when tracked files differ from it, or ``unknown`` outside a
    git checkout (an installed wheel): what a shipped architecture records of the code that found it."""
    root = Path(__file__).resolve().parents[2]
    try:
        head = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True,
                              timeout=10)
        if head.returncode != 0:
            return "unknown"
        dirty = subprocess.run(["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return head.stdout.strip() + ("-dirty" if dirty else "")


def add_commit(commits: list[str], commit: str) -> list[str]:
    """The commits a search ran on, in order: the start's, then each resume's that differs from the last."""
    return list(commits) if commits and commits[-1] == commit else [*commits, commit]


def load_state(out_dir: str | Path) -> dict:
    """The saved search, or a clear error when ``out_dir`` holds none."""
    import torch

    from anytime.cli import UserError

    path = state_path(out_dir)
    if not path.is_file():
        raise UserError(f"--resume: {out_dir} holds no search to resume ({path} does not exist)")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise UserError(f"--resume: {path} cannot be read ({type(e).__name__}: {e})") from None
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise UserError(f"--resume: {path} is not an anytime search state")
    return state


def trial_record(trial, space) -> dict:
    """One line of trials.jsonl."""
    arch = space.decode(trial.decisions, name=f"step{trial.step}").to_dict()
    return {"step": trial.step, "architecture": arch, "reward": trial.reward, "seconds": trial.seconds,
            "worker": trial.worker, "status": trial.status, "metrics": trial.metrics, "error": trial.error,
            "same_as": trial.same_as}


def write_outputs(out_dir: str | Path, loop, proxy_name: str, given: str | Path | None = None,
                  commits: list[str] | None = None, reward: str = "AP of the last exit") -> None:
    """trials.jsonl and best.json from the loop's current state."""
    out = Path(out_dir)
    lines = [json.dumps(trial_record(t, loop.space)) for t in loop.finished()]
    atomic_write(out / "trials.jsonl", "".join(line + "\n" for line in lines))
    where = provenance_dir(Path(given) if given is not None else out)

    def spec_of(trial, name: str, what: str) -> str:
        spec = loop.space.decode(trial.decisions, name=name).to_dict()
        spec["_comment"] = (f"The {what} architecture of the search in {where}: step {trial.step}, proxy "
                            f"reward {trial.reward:.4f} (proxy preset {proxy_name!r}).")
        spec["provenance"] = {"search": where, "step": trial.step, "proxy": proxy_name, "reward": reward,
                              "reward_value": round(trial.reward, 6), "commits": list(commits or [])}
        return json.dumps(spec, indent=2) + "\n"

    best = loop.best()
    if best is not None:
        atomic_write(out / "best.json", spec_of(best, "search-best", "best"))
    # The few best, for training with the full recipe: the proxy ranks, full training decides.
    (out / "top").mkdir(exist_ok=True)
    for rank, trial in enumerate(loop.top(TOP), 1):
        atomic_write(out / "top" / f"top{rank}.json", spec_of(trial, f"search-top{rank}", f"rank-{rank}"))


def provenance_dir(out: Path) -> str:
    """The search directory as a shipped file may name it: as given when relative (``runs/search-ppo``), else its
    name alone, never an absolute path of the machine it ran on."""
    return str(out) if not out.is_absolute() else out.name


def read_records(out_dir: str | Path) -> list[dict]:
    path = Path(out_dir) / "trials.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.exists() else []
