"""``python -m bench.gpu_check [--out DIR] [--budget 450] [--smoke]``: see the package docstring."""

from __future__ import annotations

import sys

from .cli import main

sys.exit(main())
