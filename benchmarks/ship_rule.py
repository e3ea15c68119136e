"""Does a searched pyramid replace NAS-FPN as the shipped model? The ship rule (``anytime.search.ship``) on eval
reports of several seeds each, and on ONNX Runtime latency per exit when both models are exported.

    # AP and GMACs from `anytime eval --json` reports (they carry their model config; docs/eval-reports/)
    .venv/bin/python benchmarks/ship_rule.py \\
        --candidate runs/ship/cand-seed0.json --candidate runs/ship/cand-seed1.json \\
        --baseline docs/eval-reports/nasfpn-seed0.json --baseline docs/eval-reports/nasfpn-seed1.json
    # and latency: both exported (`anytime export --checkpoint CKPT --out DIR --no-stages`), timed in alternation
    .venv/bin/python benchmarks/ship_rule.py ... --repositories runs/ship/cand-repo model_repository

Latency is exit by exit at batch 1 through ONNX Runtime (default threads), the two models alternating for
``--rounds`` rounds; each exit's figure is the median over rounds of its p50, and the rule compares their ratio.
Prints the checks as a table; exits 0 if the candidate ships, 1 if not. Measure on a quiet machine.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--candidate", action="append", required=True, metavar="EVAL.json", help="one per seed")
    ap.add_argument("--baseline", action="append", required=True, metavar="EVAL.json", help="one per seed")
    ap.add_argument("--repositories", nargs=2, metavar=("CANDIDATE_REPO", "BASELINE_REPO"),
                    help="exported repositories of both models, for the latency check")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--runs", type=int, default=30, help="timed calls per exit per round")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)

    from anytime.eval.scaling import model_point_set
    from anytime.search.ship import decide

    cand = [model_point_set(p) for p in args.candidate]
    base = [model_point_set(p) for p in args.baseline]
    ms = latency(args.repositories, args.rounds, args.runs) if args.repositories else (None, None)
    verdict = decide([[e["AP"] for e in m["exits"]] for m in cand], [[e["AP"] for e in m["exits"]] for m in base],
                     [e["gmacs"] for e in cand[0]["exits"]], [e["gmacs"] for e in base[0]["exits"]], *ms)
    if args.json:
        print(json.dumps({**verdict.to_dict(), "candidate": cand, "baseline": base,
                          "latency_ms": {"candidate": ms[0], "baseline": ms[1]}}))
    else:
        print(f"candidate: {cand[0]['pyramid']} ({len(cand)} seeds); baseline: {base[0]['pyramid']} "
              f"({len(base)} seeds)\n")
        print(verdict.table())
        if ms[0]:
            print("p50 ms per exit, candidate / baseline: "
                  + ", ".join(f"{c:.1f} / {b:.1f}" for c, b in zip(*ms)))
    return 0 if verdict.ships else 1


def latency(repos: list[str], rounds: int, runs: int) -> tuple[list[float], list[float]]:
    """Median over alternating rounds of each exit's batch-1 p50 (ms), for the candidate and the baseline."""
    from anytime.export.repository import read_manifest
    from anytime.serving.measure import ProfileSettings, profile_onnxruntime

    settings = ProfileSettings(batch_sizes=(1,), runs=runs, backends=("onnxruntime",))
    p50s: list[list[list[float]]] = [[], []]
    for r in range(rounds):
        for i, repo in enumerate(repos):
            repo = Path(repo)
            summary = profile_onnxruntime(repo, read_manifest(repo), settings, progress=lambda *_: None).summary()
            p50s[i].append([summary["exits"][e][1]["p50"] for e in sorted(summary["exits"])])
        print(f"latency round {r + 1}/{rounds} done", file=sys.stderr, flush=True)
    return tuple([round(statistics.median(col), 3) for col in zip(*rounds_)] for rounds_ in p50s)


if __name__ == "__main__":
    sys.exit(main())
