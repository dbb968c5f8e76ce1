"""``python -m fastdnas.cli ...``: the same as ``python -m fastdnas ...``."""
import sys

from .entry import main

sys.exit(main())
