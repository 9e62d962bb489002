"""``python -m legolas_ml.cli``: the ``legolas`` command where the entry point is not on PATH."""

import sys

from legolas_ml.cli import main

sys.exit(main())
