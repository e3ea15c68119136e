"""``anytime search`` end to end through the real command (tiny proxy, 2 workers on a local Ray), a kill -9 of
the driver and ``--resume``, and what the outputs are good for (``anytime info``, ``anytime train``, ``draw``)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from anytime.cli import main
from anytime.model.spec import PyramidSpec

TRIALS = 6
# PPO batches of 2 so that the controller learns (and has optimiser state to resume) within 6 trials.
CONFIG = {"proxy": {"preset": "tiny"}, "ppo": {"batch": 2, "epochs": 2}, "seed": 1}


def search_command(out: Path, config: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "anytime.cli", "search", "--out", str(out), "--config", str(config),
            "--trials", str(TRIALS), "--workers", "2", "--no-progress", *extra]


def run_search(out: Path, config: Path, *extra: str) -> subprocess.CompletedProcess:
    proc = subprocess.run(search_command(out, config, *extra), capture_output=True, text=True, timeout=900,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def trials(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "trials.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("search")
    (d / "config.json").write_text(json.dumps({**CONFIG, "data_cache": str(d / "cache")}))
    return d


@pytest.fixture(scope="module")
def reference(workdir, ray_watch) -> tuple[Path, str]:
    """One uninterrupted tiny search with 2 workers."""
    before = ray_watch.pids()
    out = workdir / "reference"
    proc = run_search(out, workdir / "config.json")
    ray_watch.wait_for_no_new(before)
    return out, proc.stdout


def test_a_tiny_search_end_to_end(reference):
    out, stdout = reference
    records = trials(out)
    assert [r["step"] for r in records] == list(range(TRIALS))
    for r in records:
        assert set(r) >= {"step", "architecture", "reward", "seconds", "worker", "status"}
        assert r["status"] in ("ok", "reused") and 0.0 <= r["reward"] <= 1.0
        PyramidSpec.from_dict(r["architecture"])
    best = max(records, key=lambda r: (r["reward"], -r["step"]))
    spec = PyramidSpec.load(out / "best.json")
    assert spec.cells == PyramidSpec.from_dict(best["architecture"]).cells
    written = json.loads((out / "best.json").read_text())  # provenance, never a machine's path
    assert f"search in {out.name}:" in written["_comment"] and str(out.parent) not in json.dumps(written)
    provenance = written["provenance"]
    assert provenance["search"] == out.name and provenance["step"] == best["step"]
    assert provenance["proxy"] == "tiny" and provenance["reward_value"] == pytest.approx(best["reward"], abs=1e-6)
    commit = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True,
                            cwd=Path(__file__).parent).stdout.strip()
    assert len(provenance["commits"]) == 1 and provenance["commits"][0].startswith(commit or "unknown")
    ranked, seen = [], set()  # the top 3 distinct architectures, best first, for full training
    for r in sorted((r for r in records if r["status"] != "failed"), key=lambda r: (-r["reward"], r["step"])):
        cells = json.dumps(r["architecture"]["cells"])
        if cells not in seen:
            seen.add(cells)
            ranked.append(r)
    tops = sorted((out / "top").glob("top*.json"))
    assert [p.name for p in tops] == [f"top{k}.json" for k in range(1, min(3, len(ranked)) + 1)]
    for path, r in zip(tops, ranked):
        assert PyramidSpec.load(path).cells == PyramidSpec.from_dict(r["architecture"]).cells
        assert json.loads(path.read_text())["provenance"]["step"] == r["step"]
    for name in ("reward_curve.png", "unique_archs.png", "search.json", "state.pt"):
        assert (out / name).stat().st_size > 0, name
    assert f"search ppo: {TRIALS} trials" in stdout and f"best reward {best['reward']:.4f}" in stdout
    state = __import__("torch").load(out / "state.pt", weights_only=True)
    assert state["loop"]["learned"] == 3  # the controller learned from every complete batch of 2


def test_resume_after_kill_9_gives_the_same_search(reference, workdir, ray_watch):
    ref_out, _ = reference
    out = workdir / "killed"
    before = ray_watch.pids()
    proc = subprocess.Popen(search_command(out, workdir / "config.json"), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, env={**os.environ, "OMP_NUM_THREADS": "1"})
    deadline = time.monotonic() + 900
    while time.monotonic() < deadline and proc.poll() is None:
        if (out / "trials.jsonl").exists() and len(trials(out)) >= 2:
            break
        time.sleep(0.2)
    assert proc.poll() is None, "the search ended before it could be killed"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    ray_watch.wait_for_no_new(before)  # the watchdog took Ray down with the driver
    done_before = {r["step"]: r for r in trials(out)}
    assert 2 <= len(done_before) < TRIALS
    stamps = {s: (out / "trials" / f"{s:05d}" / "train" / "final.pt").stat().st_mtime_ns
              for s, r in done_before.items() if r["status"] == "ok"}

    run_search(out, workdir / "config.json", "--resume")
    ray_watch.wait_for_no_new(before)
    resumed, expected = trials(out), trials(ref_out)
    assert [r["step"] for r in resumed] == list(range(TRIALS))
    for got, want in zip(resumed, expected):
        assert got["architecture"]["cells"] == want["architecture"]["cells"], got["step"]
        assert got["status"] == want["status"]
        assert got["reward"] == pytest.approx(want["reward"], abs=1e-6)
    assert PyramidSpec.load(out / "best.json").cells == PyramidSpec.load(ref_out / "best.json").cells
    for s, r in done_before.items():  # finished trials were not run again
        assert resumed[s]["seconds"] == r["seconds"] and resumed[s]["worker"] == r["worker"]
        if s in stamps:
            assert (out / "trials" / f"{s:05d}" / "train" / "final.pt").stat().st_mtime_ns == stamps[s]


def test_the_best_architecture_is_a_model_config_pyramid(reference, tiny_synth_dir, tmp_path, capsys):
    out, _ = reference
    config = tmp_path / "model.json"
    config.write_text(json.dumps({
        "model": {"pyramid": str(out / "best.json"), "backbone": "resnet10", "backbone_width": 0.25, "width": 16,
                  "repeats": 2, "image_size": 128, "num_classes": None},
        "train": {"data_dir": str(tiny_synth_dir), "out_dir": str(tmp_path / "run"), "batch_size": 4,
                  "max_iters": 2, "warmup_iters": 1, "lr": 0.01}}))
    assert main(["info", str(config), "--num-classes", "3", "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert len(info["exits"]) == 2 and info["config"]["pyramid"] == str(out / "best.json")
    assert main(["train", "--config", str(config), "--no-progress"]) == 0
    assert (tmp_path / "run" / "final.pt").is_file()
    assert main(["draw", "nasfpn", str(out / "best.json"), "--out", str(tmp_path / "fig7.png")]) == 0
    assert (tmp_path / "fig7.png").stat().st_size > 10_000


@pytest.mark.parametrize("args, message", [
    (["--workers", "0"], "workers must be a positive integer"),
    (["--proxy", "huge"], "unknown proxy preset"),
    (["--proxy", "paper"], "needs proxy.data_dir"),
    (["--resume"], "holds no search to resume"),
])
def test_user_mistakes_are_one_line(args, message, tmp_path, capsys):
    assert main(["search", "--out", str(tmp_path / "s"), *args]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1


def test_an_existing_search_is_not_overwritten_nor_resumed_differently(reference, capsys):
    out, _ = reference
    assert main(["search", "--out", str(out), "--proxy", "tiny"]) == 2
    assert "already holds a search" in capsys.readouterr().err
    assert main(["search", "--out", str(out), "--resume", "--controller", "random"]) == 2
    assert "controller differ" in capsys.readouterr().err


def test_other_commands_do_not_import_ray():
    code = "import sys; from anytime.cli import build_parser; build_parser(); print('ray' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"


def test_provenance_names_no_machine_path_and_keeps_each_commit_a_search_ran_on():
    from anytime.search.state import add_commit, code_commit, provenance_dir

    assert provenance_dir(Path("runs/search-ppo")) == "runs/search-ppo"
    assert provenance_dir(Path("/home/someone/runs/search-ppo")) == "search-ppo"
    assert add_commit([], "a") == ["a"] and add_commit(["a"], "a") == ["a"] and add_commit(["a"], "b") == ["a", "b"]
    commit = code_commit()
    assert commit == "unknown" or len(commit.removesuffix("-dirty")) == 40
