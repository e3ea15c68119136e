#!/usr/bin/env python3
"""One image through the anytime gateway, from a checkout, with nothing but grpcio, protobuf, numpy and Pillow:

    python clients/detect.py IMAGE --server HOST:PORT --budget-ms 40 [--json] [--draw OUT.png]

No torch and no install of the ``anytime`` package: this script puts the checkout on the path and runs
``anytime.clients.detect``, which imports only the generated gRPC stubs and ``anytime.imaging``.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from anytime.clients.detect import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
