"""Resume check: a search killed with ``kill -9`` and resumed ends as the same search run without a stop.

Runs ``anytime search`` three times through the real command: a reference run, the same run killed (SIGKILL to
the driver, from outside) once ``--kill-after`` trials have finished, and ``--resume`` on the killed one. Then
compares trial by trial (architecture, status, reward), the best architecture, that no finished trial ran
again, and that no Ray process outlived the killed driver.

    .venv/bin/python benchmarks/search_resume.py                       # tiny proxy, 16 trials, ~3 min
    .venv/bin/python benchmarks/search_resume.py --trials 24 --kill-after 9 --controller random
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from anytime.search.reaper import ray_processes as ray_pids


def records(out: Path) -> list[dict]:
    path = out / "trials.jsonl"
    return [json.loads(x) for x in path.read_text().splitlines()] if path.exists() else []


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--proxy", default="tiny")
    ap.add_argument("--trials", type=int, default=16)
    ap.add_argument("--kill-after", type=int, default=7, help="finished trials before the kill")
    ap.add_argument("--controller", default="ppo")
    ap.add_argument("--out", default="runs/search_resume")
    args = ap.parse_args(argv)

    root = Path(args.out).resolve()
    root.mkdir(parents=True, exist_ok=True)
    config = root / "config.json"
    config.write_text(json.dumps({"proxy": {"preset": args.proxy}, "ppo": {"batch": 4}, "seed": 0}))
    env = {**os.environ, "OMP_NUM_THREADS": "1"}

    def command(out: Path, *extra: str) -> list[str]:
        return [sys.executable, "-m", "anytime.cli", "search", "--out", str(out), "--config", str(config),
                "--trials", str(args.trials), "--workers", "2", "--controller", args.controller, "--no-progress", *extra]

    ref, killed = root / "reference", root / "killed"
    for d in (ref, killed):
        subprocess.run(["rm", "-rf", str(d)], check=True)
    t0 = time.perf_counter()
    subprocess.run(command(ref), check=True, env=env, stdout=subprocess.DEVNULL)
    t_ref = time.perf_counter() - t0

    before = ray_pids()
    proc = subprocess.Popen(command(killed), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    while proc.poll() is None and len(records(killed)) < args.kill_after:
        time.sleep(0.2)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    at_kill = {r["step"]: r for r in records(killed)}
    deadline = time.monotonic() + 30
    while ray_pids() - before and time.monotonic() < deadline:
        time.sleep(0.5)
    left = sorted(ray_pids() - before)
    t1 = time.perf_counter()
    subprocess.run(command(killed, "--resume"), check=True, env=env, stdout=subprocess.DEVNULL)
    t_resume = time.perf_counter() - t1

    a, b = records(ref), records(killed)
    same = [x["architecture"]["cells"] == y["architecture"]["cells"] and x["status"] == y["status"]
            and abs(x["reward"] - y["reward"]) < 1e-9 for x, y in zip(a, b)]
    rerun = [s for s, r in at_kill.items() if (b[s]["seconds"], b[s]["worker"]) != (r["seconds"], r["worker"])]
    best_a = json.loads((ref / "best.json").read_text())["cells"]
    best_b = json.loads((killed / "best.json").read_text())["cells"]
    print(f"| check | result |\n|---|---|\n"
          f"| trials (reference / killed+resumed) | {len(a)} / {len(b)} |\n"
          f"| finished when killed (kill -9 of the driver) | {len(at_kill)} |\n"
          f"| Ray processes left after the kill (30 s grace) | {len(left)} |\n"
          f"| trials identical (architecture, status, reward) | {sum(same)} of {len(a)} |\n"
          f"| finished trials run again after --resume | {len(rerun)} |\n"
          f"| best architecture identical | {best_a == best_b} |\n"
          f"| wall time: reference / resume part | {t_ref:.0f} s / {t_resume:.0f} s |")
    return 0 if len(a) == len(b) == args.trials and all(same) and not rerun and best_a == best_b and not left else 1


if __name__ == "__main__":
    sys.exit(main())
