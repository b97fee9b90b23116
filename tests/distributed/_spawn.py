"""Test helper: run a function on N local gloo processes and collect each rank's return value.

Usage (from a test)::

    from tests.distributed._spawn import run_distributed

    def _work(x):                            # module level, so that spawned processes can import it
        import torch.distributed as dist
        return x.chunk(dist.get_world_size())[dist.get_rank()] * 2

    outs = run_distributed(_work, 2, torch.arange(4.0))   # [rank 0's result, rank 1's result]

Each rank runs with torch.set_num_threads(1), the environment torchrun would give it (MASTER_ADDR
127.0.0.1, a free MASTER_PORT, RANK, WORLD_SIZE, LOCAL_RANK) and an initialised gloo process
group, destroyed after `fn` returns. Return values travel through torch.save files, so tensors,
numbers and plain containers of them all work. An exception in any rank fails the call with that
rank's traceback."""
from __future__ import annotations

import os
import socket
import tempfile
from datetime import timedelta
from typing import Any, Callable, List

import torch
import torch.distributed as dist
import torch.multiprocessing as mp


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank: int, world_size: int, port: int, fn: Callable, args: tuple, out_dir: str, timeout_s: int) -> None:
    torch.set_num_threads(1)
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank),
                      WORLD_SIZE=str(world_size), LOCAL_RANK=str(rank))
    dist.init_process_group("gloo", rank=rank, world_size=world_size, timeout=timedelta(seconds=timeout_s))
    try:
        result = fn(*args)
        torch.save(result, os.path.join(out_dir, f"rank{rank}.pt"))
    finally:
        if dist.is_initialized():
            dist.barrier()  # no rank tears down gloo while a peer still talks to it
            dist.destroy_process_group()


def run_distributed(fn: Callable[..., Any], world_size: int, *args: Any, timeout_s: int = 300) -> List[Any]:
    """Runs ``fn(*args)`` on ``world_size`` gloo processes; returns their results in rank order.

    Args:
        fn: a module-level function (spawned processes import it by name).
        world_size: number of processes.
        args: picklable arguments, the same for every rank.
        timeout_s: collective timeout of the process group.
    """
    for attempt in range(3):  # another process may take the free port before rank 0 binds it
        with tempfile.TemporaryDirectory(prefix="ssl_scale_dist_") as out_dir:
            try:
                mp.spawn(_worker, args=(world_size, free_port(), fn, args, out_dir, timeout_s),
                         nprocs=world_size, join=True)
            except mp.ProcessRaisedException as e:
                in_use = "EADDRINUSE" in str(e) or "address already in use" in str(e).lower()
                if in_use and attempt < 2:
                    continue
                raise
            return [torch.load(os.path.join(out_dir, f"rank{r}.pt"), weights_only=False) for r in range(world_size)]
    raise RuntimeError("could not find a free port for the process group")
