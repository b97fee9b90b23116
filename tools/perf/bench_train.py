#!/usr/bin/env python
"""SwAV training throughput of ssl_scale against a peer assembled from `lightly`, in one process and one run.

    python tools/perf/bench_train.py [--recipe default|cifar] [--batch 64] [--rounds 5] [--steps 4]
    python tools/perf/bench_train.py --speed none     # both sides in fp32, contiguous, eager
    python tools/perf/bench_train.py --peer-same-settings   # the peer also in bf16 / channels_last
    python tools/perf/bench_train.py --sinkhorn        # Sinkhorn + loss share: 3,000 prototypes, batch 256

Both sides get the same torchvision ResNet-18 trunk, crops, batch, head sizes and optimizer (torch SGD
with the recipe's momentum, weight decay and learning rate), and are fed the same pre-generated crops
held in memory, so the data pipeline does not mask model speed. The ssl_scale side is the engine's
own Trainer (recipe, builders, `train_step`) with its speed settings (`--speed`, default `all`: bf16
autocast, channels_last and torch.compile of the trunk, the recipe keys `train.precision`,
`train.channels_last`, `train.compile`; crops of one resolution always go through one forward). The
peer is lightly's SwaVProjectionHead, SwaVPrototypes and SwaVLoss driven as lightly's SwAV example
drives them: fp32, contiguous, eager, one forward per view, prototypes normalised before each step;
`--peer-same-settings` gives it our precision and memory format too (compile stays ours alone). They alternate for several rounds (the
order swapped every round) so that a shared, loaded machine slows both alike; the ratio is the
median of the per-round ratios. Prototypes are never frozen (steady-state steps). Needs
`pip install -e ".[bench]"` for the peer; `--no-peer` runs ssl_scale alone.
"""
from __future__ import annotations

import argparse
import contextlib
import os
import platform
import statistics
import sys
import tempfile
import time
from typing import Callable, Dict, List, Optional, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

# The default: ResNet-18 (ImageNet stem), 2x64 + 4x32 crops, SwAV's head (2048-128, 3,000
# prototypes), momentum SGD, fp32. "cifar" is configs/pretrain/swav_resnet18_cifar.yaml as shipped.
RECIPES = {
    "default": ("base", ["model.trunk=resnet18", "model.stem=imagenet",
                         "data.crops=[{size: 64, count: 2}, {size: 32, count: 4}]",
                         "optim.name=sgd", "schedule.warmup_epochs=0"]),
    "cifar": ("pretrain/swav_resnet18_cifar", []),
}
# The engine's speed settings (recipe keys); the peer keeps lightly's example settings unless told otherwise.
SPEED = {"none": [],
         "bf16": ["train.precision=bf16"],
         "bf16_cl": ["train.precision=bf16", "train.channels_last=true"],
         "all": ["train.precision=bf16", "train.channels_last=true", "train.compile=true"]}
PARTS = ("data", "forward", "loss", "backward", "optim")
PART_NAMES = {"data": "data wait", "forward": "forward", "loss": "Sinkhorn + loss", "backward": "backward",
              "optim": "optimizer"}


def bench_config(recipe: str, batch: int, extra: Sequence[str] = (), run_dir: Optional[str] = None):
    """The resolved recipe the ssl_scale side trains (the data source is only used to count steps)."""
    from ssl_scale.config import load_config

    name, overrides = RECIPES[recipe]
    run_dir = run_dir or tempfile.mkdtemp(prefix="bench_train_")
    common = [f"run.dir={run_dir}", "run.progress=false", "run.tensorboard=false", "run.resume=false",
              "data.train.source=embedded", "data.num_workers=0", f"data.batch_size={batch}",
              "loss.freeze_prototypes_iters=0", "eval.knn_at_end=false"]
    return load_config(name, list(overrides) + common + list(extra))


def make_batches(cfg, n: int, device: torch.device, seed: int = 0) -> List[List[torch.Tensor]]:
    """`n` batches of normalised-looking random crops in the recipe's sizes, made once, shared by both sides."""
    g = torch.Generator().manual_seed(seed)
    b = cfg.data.batch_size
    return [[torch.randn(b, 3, c.size, c.size, generator=g).to(device) for c in cfg.data.crops for _ in range(c.count)]
            for _ in range(n)]


def _timed(device: torch.device) -> Callable[[], float]:
    """A clock that waits for the device first (host clocks alone would time CUDA kernel launches)."""
    def now() -> float:
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        return time.perf_counter()

    return now


class Side:
    """One engine's step on the pre-generated batches: `step()` returns its time split in seconds."""

    name = ""

    def __init__(self, batches: List[List[torch.Tensor]], channels_last: bool, device: torch.device):
        self.batches, self.channels_last, self.device, self.i = batches, channels_last, device, 0
        self.now = _timed(device)
        self.losses: List[torch.Tensor] = []

    def next_crops(self) -> List[torch.Tensor]:
        crops = self.batches[self.i % len(self.batches)]
        self.i += 1
        crops = [c.to(self.device, non_blocking=True) for c in crops]
        if self.channels_last:
            crops = [c.contiguous(memory_format=torch.channels_last) for c in crops]
        return crops


class SslScaleSide(Side):
    """The engine itself: `Trainer` built from the recipe, stepped with `Trainer.train_step`."""

    name = "ssl_scale"

    def __init__(self, cfg, batches):
        from ssl_scale.train.trainer import Trainer

        self.trainer = Trainer(cfg)
        super().__init__(batches, cfg.train.channels_last, self.trainer.env.device)

    def step(self) -> Dict[str, float]:
        t0 = self.now()
        crops = self.next_crops()
        t1 = self.now()
        out = self.trainer.train_step(crops)
        self.trainer.step += 1
        t2 = self.now()
        self.losses.append(out["loss"])
        # train_step's own split; on CUDA its host clocks are not synchronised, so the rest goes to backward
        parts = {"data": t1 - t0, "forward": out["t_forward"], "loss": out["t_loss"], "optim": out["t_optim"]}
        parts["backward"] = (t2 - t1) - parts["forward"] - parts["loss"] - parts["optim"]
        return parts


class LightlySwAV(nn.Module):
    """lightly's SwAV example model: trunk, SwaVProjectionHead, L2 norm, SwaVPrototypes."""

    def __init__(self, trunk: nn.Module, feat_dim: int, hidden_dim: int, output_dim: int, num_prototypes: int):
        from lightly.models.modules import SwaVProjectionHead, SwaVPrototypes

        super().__init__()
        self.backbone = trunk
        self.projection_head = SwaVProjectionHead(feat_dim, hidden_dim, output_dim)
        self.prototypes = SwaVPrototypes(output_dim, n_prototypes=num_prototypes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.backbone(x).flatten(start_dim=1)
        x = F.normalize(self.projection_head(x), dim=1, p=2)
        return self.prototypes(x)


def peer_trunk(name: str, stem: str) -> nn.Module:
    """A torchvision ResNet without its classifier, the CIFAR stem written out as lightly users do."""
    import torchvision

    resnet = getattr(torchvision.models, name)(weights=None)
    if stem == "cifar":
        resnet.conv1 = nn.Conv2d(3, resnet.conv1.out_channels, kernel_size=3, stride=1, padding=1, bias=False)
        resnet.maxpool = nn.Identity()
    return nn.Sequential(*list(resnet.children())[:-1])


class LightlySide(Side):
    """The peer: lightly's heads and loss, trained as lightly's SwAV example trains them."""

    name = "lightly"

    def __init__(self, cfg, batches, lr: float, device: torch.device, precision: str = "fp32",
                 channels_last: bool = False):
        from lightly.loss import SwaVLoss

        h, m = cfg.model.head, cfg.model
        if len(h.hidden_dims) != 1 or len(h.num_prototypes) != 1 or not h.batch_norm:
            raise SystemExit("the lightly peer has one hidden layer with batch norm and one prototype set; "
                             f"model.head is {dict(h)}")
        if list(cfg.loss.crops_for_assign) != list(range(cfg.data.crops[0].count)):
            raise SystemExit("lightly's SwaVLoss assigns codes to the first resolution's crops; "
                             f"loss.crops_for_assign={list(cfg.loss.crops_for_assign)} differs")
        torch.manual_seed(cfg.seed)
        self.model = LightlySwAV(peer_trunk(m.trunk, m.stem), 512 if m.trunk in ("resnet18", "resnet34") else 2048,
                                 h.hidden_dims[0], h.output_dim, h.num_prototypes[0]).to(device)
        if channels_last:
            self.model.to(memory_format=torch.channels_last)
        self.model.train()
        o, lc = cfg.optim, cfg.loss
        self.optimizer = torch.optim.SGD(self.model.parameters(), lr=lr, momentum=o.momentum, weight_decay=o.weight_decay)
        self.criterion = SwaVLoss(temperature=lc.temperature, sinkhorn_iterations=lc.sinkhorn_iterations,
                                  sinkhorn_epsilon=lc.epsilon)
        self.n_high = cfg.data.crops[0].count
        dtype = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[precision]
        self.autocast = (lambda: torch.autocast(device.type, dtype=dtype)) if dtype else contextlib.nullcontext
        self.settings = f"{precision}, channels_last {channels_last}, eager, one forward per view"
        super().__init__(batches, channels_last, device)

    def step(self) -> Dict[str, float]:
        t0 = self.now()
        crops = self.next_crops()
        t1 = self.now()
        self.model.prototypes.normalize()
        with self.autocast():
            outs = [self.model(view) for view in crops]
        outs = [o.float() for o in outs]
        t2 = self.now()
        loss = self.criterion(outs[: self.n_high], outs[self.n_high:])
        t3 = self.now()
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        t4 = self.now()
        self.optimizer.step()
        t5 = self.now()
        self.losses.append(loss.detach())
        return {"data": t1 - t0, "forward": t2 - t1, "loss": t3 - t2, "backward": t4 - t3, "optim": t5 - t4}


def run_rounds(sides: Sequence[Side], rounds: int, steps: int, warmup: int, batch: int,
               log: Callable[[str], None] = print) -> Dict[str, Dict[str, list]]:
    """Alternates the sides (`steps` steps each per round, order swapped every round) after `warmup`
    untimed steps each; per side: images/s of every round and the split of every timed step."""
    for side in sides:
        for _ in range(warmup):
            side.step()
    res = {s.name: {"ips": [], "cpu_ips": [], "parts": []} for s in sides}
    for r in range(rounds):
        order = list(sides) if r % 2 == 0 else list(reversed(sides))
        for side in order:
            t0, c0 = side.now(), time.process_time()
            parts = [side.step() for _ in range(steps)]
            dt, cpu = side.now() - t0, time.process_time() - c0
            res[side.name]["ips"].append(steps * batch / dt)
            res[side.name]["cpu_ips"].append(steps * batch / cpu)
            res[side.name]["parts"].extend(parts)
        log(f"round {r + 1}/{rounds}: " + ", ".join(f"{s.name} {res[s.name]['ips'][-1]:.1f} img/s" for s in sides))
    return res


def summarize(res: Dict[str, Dict[str, list]]) -> Dict[str, Dict[str, float]]:
    out = {}
    for name, r in res.items():
        ips = sorted(r["ips"])
        parts = {k: statistics.mean(p[k] for p in r["parts"]) for k in PARTS}
        out[name] = {"median": statistics.median(ips), "min": ips[0], "max": ips[-1],
                     "cpu_median": statistics.median(r["cpu_ips"]),
                     "step_ms": 1000 * sum(parts.values()), **{k: 1000 * v for k, v in parts.items()}}
    return out


def table(res, summary, caption: str) -> str:
    rows = [caption, "",
            "| engine | images/s median | min - max | images per CPU-s | step ms | " + " | ".join(PART_NAMES[k] + " ms (%)" for k in PARTS) + " |",
            "|---|---:|---:|---:|---:|" + "---:|" * len(PARTS)]
    for name, s in summary.items():
        split = " | ".join(f"{s[k]:.1f} ({100 * s[k] / s['step_ms']:.1f}%)" for k in PARTS)
        rows.append(f"| {name} | {s['median']:.1f} | {s['min']:.1f} - {s['max']:.1f} | {s['cpu_median']:.1f} | {s['step_ms']:.0f} | {split} |")
    if "ssl_scale" in res and "lightly" in res:
        rows.append("")
        for key, what in (("ips", "images/s"), ("cpu_ips", "images per CPU-second")):
            ratios = sorted(a / b for a, b in zip(res["ssl_scale"][key], res["lightly"][key]))
            rows.append(f"ssl_scale / lightly {what}: median of per-round ratios {statistics.median(ratios):.2f} "
                        f"(min {ratios[0]:.2f}, max {ratios[-1]:.2f}, {len(ratios)} rounds); target >= 1.5")
    return "\n".join(rows)


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(l.split(":", 1)[1].strip() for l in f if l.startswith("model name"))
    except (OSError, StopIteration):
        pass
    load = " ".join(f"{x:.2f}" for x in os.getloadavg())
    return f"{cpu}, {os.cpu_count()} cores, torch {torch.__version__}, {torch.get_num_threads()} threads, load average {load}"


def main(argv: Optional[Sequence[str]] = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--recipe", choices=sorted(RECIPES), default="default")
    ap.add_argument("--batch", type=int, default=64, help="images per step (default 64)")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--steps", type=int, default=4, help="timed steps per side per round")
    ap.add_argument("--warmup", type=int, default=2, help="untimed steps per side before the rounds")
    ap.add_argument("--sinkhorn", action="store_true",
                    help="ssl_scale alone at batch 256 with 3,000 prototypes: the Sinkhorn + loss share (target <= 3%%)")
    ap.add_argument("--no-peer", action="store_true", help="ssl_scale alone")
    ap.add_argument("--speed", choices=sorted(SPEED), default="all",
                    help="ssl_scale's speed settings (default all: bf16 autocast, channels_last, torch.compile)")
    ap.add_argument("--peer-same-settings", action="store_true",
                    help="give the peer our precision and memory format (default: fp32, contiguous, as lightly's example)")
    ap.add_argument("overrides", nargs="*", help="dotted recipe overrides, e.g. data.crops=... (model, crops and "
                    "optimizer reach both sides; train.* only ssl_scale)")
    a = ap.parse_args(argv)
    extra = SPEED[a.speed] + list(a.overrides)
    if a.sinkhorn:
        a.batch, a.no_peer = 256, True
        extra.append("model.head.num_prototypes=[3000]")
    cfg = bench_config(a.recipe, a.batch, extra)
    ssl = SslScaleSide(cfg, [])
    ssl.batches = make_batches(cfg, 2, ssl.device)
    sides: List[Side] = [ssl]
    if not a.no_peer:
        try:
            import lightly
        except ImportError:
            raise SystemExit("the peer needs lightly: pip install -e '.[bench]' (or pass --no-peer)") from None
        peer = (cfg.train.precision, cfg.train.channels_last) if a.peer_same_settings else ("fp32", False)
        sides.append(LightlySide(cfg, ssl.batches, ssl.trainer.derived.lr, ssl.device, *peer))
    crops = " + ".join(f"{c.count}x{c.size}" for c in cfg.data.crops)
    print(f"machine: {machine()}")
    print(f"recipe {a.recipe}: {cfg.model.trunk} ({cfg.model.stem} stem), crops {crops}, batch {a.batch}, head "
          f"{list(cfg.model.head.hidden_dims)}-{cfg.model.head.output_dim}, prototypes {list(cfg.model.head.num_prototypes)}, "
          f"{cfg.optim.name} lr {ssl.trainer.derived.lr:.4g}")
    print(f"ssl_scale: {cfg.train.precision}, channels_last {cfg.train.channels_last}, compile {cfg.train.compile}, "
          "one forward per resolution")
    if not a.no_peer:
        print(f"lightly: {sides[1].settings}")
    res = run_rounds(sides, a.rounds, a.steps, a.warmup, a.batch)
    summary = summarize(res)
    versions = f"lightly {lightly.__version__}" if not a.no_peer else "no peer"
    caption = (f"{a.rounds} rounds x {a.steps} steps per engine after {a.warmup} warm-up steps, alternating; {versions}. "
               "Both engines are fed the same pre-generated crops held in memory, so data loading does not mask "
               "model speed ('data wait' is only the hand-over of the batch). Images per CPU-second (process CPU "
               "time) is the steadier figure on a shared machine; the split is the mean wall time per step.")
    print()
    print(table(res, summary, caption))
    if a.sinkhorn:
        s = summary["ssl_scale"]
        print(f"\nSinkhorn + loss share of the step, {cfg.model.head.num_prototypes[0]} prototypes at batch {a.batch}: "
              f"{100 * s['loss'] / s['step_ms']:.2f}% ({s['loss']:.1f} ms of {s['step_ms']:.0f} ms); target <= 3%")
    print(f"\nload average at the end: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")


if __name__ == "__main__":
    main()
