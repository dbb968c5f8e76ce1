"""``python -m fastdnas ...``: the command line of fastdnas.cli."""
import sys

from .cli import main

sys.exit(main())
