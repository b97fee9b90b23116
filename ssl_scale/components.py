"""Every registry of the engine, filled by importing the modules that register into them."""
from __future__ import annotations

from ssl_scale.benchmarks.evals import EVALUATIONS
from ssl_scale.data import DATASETS, TRANSFORMS
from ssl_scale.methods import LOSSES
from ssl_scale.models.heads import HEADS
from ssl_scale.models.trunks import TRUNKS
from ssl_scale.optim import OPTIMIZERS, SCHEDULES

REGISTRIES = {
    "trunk": TRUNKS,
    "head": HEADS,
    "loss": LOSSES,
    "dataset": DATASETS,
    "transform": TRANSFORMS,
    "optimizer": OPTIMIZERS,
    "schedule": SCHEDULES,
    "evaluation": EVALUATIONS,
}
