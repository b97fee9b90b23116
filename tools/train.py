#!/usr/bin/env python
"""Pretrain from a recipe: same as `ssl-scale train RECIPE [key=value ...]`."""
import sys

from ssl_scale.cli import main

if __name__ == "__main__":
    sys.exit(main(["train", *sys.argv[1:]]))
