#!/usr/bin/env python
"""Transfer benchmarks: same as `ssl-scale benchmark SUITE.yaml --checkpoint A [--checkpoint B ...] [--out DIR] [key=value ...]`."""
import sys

from ssl_scale.benchmarks.suite import main

if __name__ == "__main__":
    sys.exit(main())
