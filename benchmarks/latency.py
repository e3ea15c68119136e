"""What does every exit cost at batch 1 through PyTorch eager, ONNX Runtime and Triton, and what does batching gain?

Latency benchmark: every exit at batch 1 through PyTorch eager, ONNX Runtime and Triton, measured in one run,
with the ratios; and Triton throughput at batch 1 against larger batches and against concurrent batch-1
requests merged by Triton's dynamic batcher.

    .venv/bin/python benchmarks/latency.py [--repository model_repository] [--runs 50]

Exports the embedded default model first if the repository is empty. Writes runs/bench/latency.{json,png}.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--repository", type=Path, default=Path("model_repository"))
    ap.add_argument("--runs", type=int, default=50)
    ap.add_argument("--batch-sizes", default="1,2,4,8")
    ap.add_argument("--out", type=Path, default=Path("runs/bench"))
    args = ap.parse_args()

    from anytime.config import DEFAULT_CHECKPOINT
    from anytime.export.ensure import ensure_exported
    from anytime.serving.measure import ProfileSettings, format_table, plot, run_profile
    from anytime.export.repository import read_manifest
    from anytime.train.checkpoint import load_model

    ensure_exported(args.repository, DEFAULT_CHECKPOINT)
    manifest = read_manifest(args.repository)
    model, _ = load_model(manifest["checkpoint"])
    settings = ProfileSettings(batch_sizes=tuple(int(b) for b in args.batch_sizes.split(",")), runs=args.runs)
    profile = run_profile(args.repository, settings, model=model, progress=lambda m: print(m, file=sys.stderr))
    print(format_table(profile))
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "latency.json").write_text(json.dumps(profile, indent=1))
    plot(profile, args.out / "latency.png")
    print(f"\nwrote {args.out / 'latency.json'} and {args.out / 'latency.png'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
