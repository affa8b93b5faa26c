"""The run_grid helper process: python -m atlas_core.studies.adapters JOB.pkl (see `grid.start_helper`)."""

import sys

from .grid import helper_main

try:
    helper_main(sys.argv[1])
except KeyboardInterrupt:
    pass
