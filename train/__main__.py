"""Entry point of ``python -m train``."""

import sys

from train.run import main

sys.exit(main())
