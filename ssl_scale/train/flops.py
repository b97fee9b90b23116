"""Model FLOPs of a training step (PyTorch's own flop counter, on the meta device: no memory, no
state touched), the accelerator's measured peak, and peak memory: the inputs of MFU and memory
telemetry."""
from __future__ import annotations

import resource
import sys
import time
from typing import Optional, Sequence, Tuple

import torch
from torch.utils.flop_counter import FlopCounterMode


def step_flops(model_cfg, crops: Sequence[Tuple[int, int]], batch_size: int) -> int:
    """FLOPs of one forward and backward of the SSL model on one process's batch.

    Counted on a meta-device copy built from `model_cfg`, so any size costs nothing; activation
    recomputation is not counted (model FLOPs, as MFU defines them).

    Args:
        model_cfg: the `model` section of a recipe.
        crops: (size, count) of each crop group.
        batch_size: images per process.
    """
    from ssl_scale.train.build import build_ssl_model

    model = build_ssl_model(model_cfg, device="meta")
    inputs = [torch.empty(batch_size, 3, size, size, device="meta") for size, count in crops for _ in range(count)]
    with FlopCounterMode(display=False) as counter:
        z, scores = model(inputs)
        (z.sum() + sum(s.sum() for s in scores)).backward()
    return int(counter.get_total_flops())


def measured_peak_flops(device: torch.device, dtype: torch.dtype = torch.bfloat16, n: int = 8192,
                        repeats: int = 10) -> Optional[float]:
    """FLOP/s of a large matrix product on a CUDA device (None elsewhere: no MFU on CPUs)."""
    if device.type != "cuda":
        return None
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    a @ b  # warm-up
    torch.cuda.synchronize(device)
    t0 = time.perf_counter()
    for _ in range(repeats):
        a @ b
    torch.cuda.synchronize(device)
    return 2 * n ** 3 * repeats / (time.perf_counter() - t0)


def resident_memory_bytes(field: str = "VmRSS") -> int:
    """This process's resident memory now (Linux /proc/self/status): VmRSS (all), RssAnon (its own),
    RssFile (mapped files, i.e. page cache)."""
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith(field + ":")) * 1024


def peak_memory_bytes(device: torch.device) -> int:
    """Peak memory of this process: allocated accelerator memory on CUDA, resident set size on CPU."""
    if device.type == "cuda":
        return int(torch.cuda.max_memory_allocated(device))
    kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(kib if sys.platform == "darwin" else kib * 1024)  # macOS reports bytes, Linux KiB
