#!/usr/bin/env python
"""Submit a recipe with submitit: same as `ssl-scale launch RECIPE [key=value ...] [--wait]`."""
import sys

from ssl_scale.cli import main

if __name__ == "__main__":
    sys.exit(main(["launch", *sys.argv[1:]]))
