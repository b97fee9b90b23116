"""Multi-process (gloo, CPU) tests; ``tests.distributed._spawn.run_distributed`` is the shared launcher."""
