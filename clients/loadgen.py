#!/usr/bin/env python3
"""The batch evaluation client: a COCO dataset through the gateway at open-loop Poisson load, scored on the
client's clock (COCO AP at budget, budget met, latency, exits used; plots). Needs the full package (the scoring
uses pycocotools and the dataset tools); the same as ``anytime loadgen``:

    python clients/loadgen.py --server HOST:PORT --data DIR --budgets-ms 20,40 --rates 20,50
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from anytime.cli import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main(["loadgen", *sys.argv[1:]]))
