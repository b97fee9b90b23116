"""Multi-process (gloo, CPU) tests; ``tests.distributed.spawn.run_distributed`` is the shared launcher."""
