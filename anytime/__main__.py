"""``python -m anytime``: the same as the ``anytime`` command."""

import sys

from anytime.cli import main

sys.exit(main())
