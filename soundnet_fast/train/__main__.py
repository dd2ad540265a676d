"""``python -m soundnet_fast.train`` and ``torchrun ... -m soundnet_fast.train``: the trainer's command line."""

import sys

from soundnet_fast.train.trainer import main

sys.exit(main())
