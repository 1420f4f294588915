"""``python -m graphthrift.cli``."""

import sys

from graphthrift.cli import main

sys.exit(main())
