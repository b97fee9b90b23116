"""Shared test helpers: a tiny but real training recipe, and where the shared photos are."""
import os
from pathlib import Path

import pytest

from ssl_scale.config import load_config

SHARED = Path(os.environ.get("SSL_SCALE_SHARED_DATA", Path(__file__).resolve().parents[1].parent / "shared" / "data"))


def shared_photos(*parts: str) -> Path:
    """SHARED / parts (e.g. "cifar10-mini", "test"), or a clear skip when that folder is absent."""
    path = SHARED.joinpath(*parts)
    if not path.is_dir():
        pytest.skip(f"shared photos not found at {path} (set SSL_SCALE_SHARED_DATA)")
    return path

TINY = [
    "data.batch_size=16", "data.num_workers=0", "run.progress=false", "run.tensorboard=false",
    "run.log_every=1", "eval.knn_at_end=false", "loss.freeze_prototypes_iters=1", "train.precision=fp32",
    # the optimizer and schedule these tests were written against (the quickstart moved to plain SGD, no warmup)
    "optim.name=lars_sgd", "schedule.warmup_epochs=1", "model.head.num_prototypes=[300]",
    "data.crops=[{size: 16, count: 2, scale: [0.3, 1.0], blur_p: 0.0}, {size: 8, count: 2, scale: [0.1, 0.5], blur_p: 0.0}]",
]


def tiny_config(run_dir, *overrides):
    """The quickstart recipe shrunk to 16/8-pixel crops and 16 images per process."""
    return load_config("quickstart", [f"run.dir={run_dir}", *TINY, *overrides])

# A smaller model for multi-process tests: the debug RegNetY, a narrow head, two prototype sets.
SMALL_MODEL = ["model.trunk=regnet_y_debug", "model.head.hidden_dims=[256]", "model.head.num_prototypes=[40, 20]",
               "train.sync_bn=global"]


def _needs_fsdp_on_cpu():
    from ssl_scale.distributed.parallelize import FSDP_ON_CPU_SINCE, torch_version

    since = ".".join(map(str, FSDP_ON_CPU_SINCE))
    return pytest.mark.skipif(torch_version() < FSDP_ON_CPU_SINCE,
                              reason=f"FSDP2 on CPU processes needs torch >= {since} (the engine says so in one line)")


# For tests that train with FSDP on CPU processes (gloo); CI runs the newest torch, where they all run.
needs_fsdp_on_cpu = _needs_fsdp_on_cpu()
