#!/usr/bin/env python
"""Export trunk weights: same as `ssl-scale export RUN_DIR_OR_CHECKPOINT OUT`."""
import sys

from ssl_scale.cli import main

if __name__ == "__main__":
    sys.exit(main(["export", *sys.argv[1:]]))
