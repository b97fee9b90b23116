"""The registered evaluations of a benchmark suite and their parameters (strictly checked).

Each evaluation is a class with a `Params` dataclass (the keys a suite may set, with defaults), a
`uses_features` flag (frozen, cached features vs. a trunk to train) and `run(ctx, params)` returning
(metrics as fractions -> shown as %, details such as chosen hyper-parameters).
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Optional, Tuple

import torch

from ssl_scale.registry import Registry

from .features import POOLED
from .finetune import finetune
from .knn import knn_accuracy
from .linear import DEFAULT_WEIGHT_DECAYS, linear_probe
from .lowshot import DEFAULT_COSTS, lowshot_eval

EVALUATIONS: Registry = Registry("evaluation")

Metrics = Dict[str, float]


@dataclass
class EvalContext:
    """What an evaluation gets for one (checkpoint, dataset)."""

    features: Callable[[str, str], Tuple[torch.Tensor, torch.Tensor]]  # (split, layer) -> (feats, labels)
    build_trunk: Callable[[], torch.nn.Module]  # a fresh copy of the checkpoint's trunk
    train_set: Any
    test_set: Any
    num_classes: int
    dataset: Dict[str, Any]  # the suite's entry (image_size, resize, mean, std, ...)
    eval_transform: Any
    layer: str  # the suite's features.layer
    seed: int
    device: str
    num_workers: int = 0


@dataclass
class _Common:
    dataset: str = ""
    label: Optional[str] = None  # column name of the evaluation (default: derived from the parameters)


@dataclass
class _FeatureCommon(_Common):
    layer: Optional[str] = None  # overrides features.layer for this evaluation


def _layer(ctx: EvalContext, params) -> str:
    return params.layer or ctx.layer


def _with_layer(name: str, params, suite_layer: str) -> str:
    layer = params.layer or suite_layer
    return name if layer == POOLED else f"{name}@{layer}"


@EVALUATIONS.register("knn", "weighted k-NN on cosine similarity of frozen features (top-1/top-5)")
class KNN:
    uses_features = True

    @dataclass
    class Params(_FeatureCommon):
        k: int = 20
        temperature: float = 0.07

    @staticmethod
    def label(p, suite_layer: str) -> str:
        return p.label or _with_layer("knn", p, suite_layer)

    @staticmethod
    def run(ctx: EvalContext, p) -> Tuple[Metrics, Dict[str, Any]]:
        layer = _layer(ctx, p)
        xtr, ytr = ctx.features("train", layer)
        xte, yte = ctx.features("test", layer)
        m = knn_accuracy(xtr, ytr, xte, yte, k=p.k, temperature=p.temperature, num_classes=ctx.num_classes)
        return {"top1": m["top1"], "top5": m["top5"]}, {"k": p.k, "temperature": p.temperature}


@EVALUATIONS.register("linear", "linear probe (logistic regression, L-BFGS) on standardised frozen features")
class Linear:
    uses_features = True

    @dataclass
    class Params(_FeatureCommon):
        weight_decays: List[float] = field(default_factory=lambda: list(DEFAULT_WEIGHT_DECAYS))
        val_fraction: float = 0.2
        max_iter: int = 300

    @staticmethod
    def label(p, suite_layer: str) -> str:
        return p.label or _with_layer("linear", p, suite_layer)

    @staticmethod
    def run(ctx: EvalContext, p) -> Tuple[Metrics, Dict[str, Any]]:
        layer = _layer(ctx, p)
        xtr, ytr = ctx.features("train", layer)
        xte, yte = ctx.features("test", layer)
        m = linear_probe(xtr, ytr, xte, yte, ctx.num_classes, p.weight_decays, p.val_fraction, ctx.seed, p.max_iter)
        return {"top1": m["top1"], "top5": m["top5"]}, {"weight_decay": m["weight_decay"], "val_top1": m["val_top1"]}


@EVALUATIONS.register("lowshot", "k images per class, several seeds: linear SVM with a cross-validated cost")
class LowShot:
    uses_features = True

    @dataclass
    class Params(_FeatureCommon):
        shots: List[int] = field(default_factory=lambda: [1, 5, 10])
        seeds: List[int] = field(default_factory=lambda: [0, 1, 2])
        costs: List[float] = field(default_factory=lambda: list(DEFAULT_COSTS))
        classifier: str = "svm"
        folds: int = 3
        val_per_class: int = 5

    @staticmethod
    def label(p, suite_layer: str) -> str:
        return p.label or _with_layer("lowshot", p, suite_layer)

    @staticmethod
    def run(ctx: EvalContext, p) -> Tuple[Metrics, Dict[str, Any]]:
        layer = _layer(ctx, p)
        xtr, ytr = ctx.features("train", layer)
        xte, yte = ctx.features("test", layer)
        seeds = [ctx.seed + int(s) for s in p.seeds]
        m = lowshot_eval(xtr, ytr, xte, yte, [int(k) for k in p.shots], seeds, p.costs, p.classifier,
                         p.folds, p.val_per_class)
        return m, {"seeds": seeds, "classifier": p.classifier}


@EVALUATIONS.register("finetune", "whole trunk + linear head end to end on a fraction of the labels (top-1)")
class FineTune:
    uses_features = False

    @dataclass
    class Params(_Common):
        label_fraction: float = 0.1
        epochs: int = 20
        steps: Optional[int] = None  # when set, overrides epochs
        batch_size: int = 64
        lr: float = 0.01
        head_lr: float = 0.1
        weight_decay: float = 1e-4
        momentum: float = 0.9
        crop_scale: List[float] = field(default_factory=lambda: [0.08, 1.0])

    @staticmethod
    def label(p, suite_layer: str) -> str:
        pct = 100 * p.label_fraction
        return p.label or f"finetune{pct:g}%"

    @staticmethod
    def run(ctx: EvalContext, p) -> Tuple[Metrics, Dict[str, Any]]:
        d = ctx.dataset
        m = finetune(ctx.build_trunk(), ctx.train_set, ctx.test_set, ctx.num_classes, ctx.eval_transform,
                     int(d["image_size"]), d["mean"], d["std"], p.label_fraction, p.epochs, p.steps, p.batch_size,
                     p.lr, p.head_lr, p.weight_decay, p.momentum, p.crop_scale, ctx.seed, ctx.device,
                     ctx.num_workers)
        return {"top1": m["top1"], "top5": m["top5"]}, {"steps": int(m["steps"]),
                                                          "labelled_images": int(m["labelled_images"])}


def parse_params(name: str, raw: Dict[str, Any], where: str):
    """The evaluation's Params from a suite entry; unknown keys and wrong types are one-line errors."""
    if name not in EVALUATIONS:
        raise ValueError(f"{where}: {EVALUATIONS.unknown_message(name)}")
    cls = EVALUATIONS.get(name).Params
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = [k for k in raw if k not in fields]
    if unknown:
        import difflib

        close = difflib.get_close_matches(unknown[0], list(fields), n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        raise ValueError(f"{where}: unknown key {unknown[0]!r} for evaluation {name!r}{hint} "
                         f"(valid: {', '.join(k for k in fields)})")
    kwargs = {}
    for k, v in raw.items():
        default = fields[k].default if fields[k].default is not dataclasses.MISSING else fields[k].default_factory()
        kwargs[k] = _coerce(v, default, f"{where}.{k}")
    return cls(**kwargs)


def _coerce(v, default, where: str):
    if v is None or default is None:
        return v
    if isinstance(default, bool):
        if not isinstance(v, bool):
            raise ValueError(f"{where}: expected true/false, got {v!r}")
        return v
    if isinstance(default, (int, float)) and not isinstance(default, bool):
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            raise ValueError(f"{where}: expected a number, got {v!r}")
        if isinstance(default, int) and not float(v).is_integer():
            raise ValueError(f"{where}: expected an integer, got {v!r}")
        return type(default)(v)
    if isinstance(default, list):
        if not isinstance(v, (list, tuple)):
            v = [v]
        if default:
            return [_coerce(x, default[0], f"{where}[{i}]") for i, x in enumerate(v)]
        return list(v)
    if isinstance(default, str):
        if not isinstance(v, str):
            raise ValueError(f"{where}: expected a string, got {v!r}")
    return v
