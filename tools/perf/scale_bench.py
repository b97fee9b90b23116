"""Scale benchmarks on CPU (gloo): each prints a markdown table. Not a test; the figures go to docs/scale.md.

    python tools/perf/scale_bench.py state      # params + grads + optimizer state per rank, 1/2/4 ranks, DDP vs FSDP
    python tools/perf/scale_bench.py ac         # activation memory and step time with / without checkpointing
    python tools/perf/scale_bench.py prototypes # a SwAV step with 1,000,000 prototypes split over 4 ranks
    python tools/perf/scale_bench.py seer       # one training step of the SEER RegNetY-256GF recipe on 4 ranks

Every configuration runs in fresh processes (spawned, gloo on 127.0.0.1), so peak resident memory
(ru_maxrss) belongs to that configuration alone.
"""
from __future__ import annotations

import argparse
import os
import socket
import sys
import tempfile
import time
from datetime import timedelta

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

MB = 2 ** 20


def _worker(rank, world, port, fn, args, out_dir):
    torch.set_num_threads(int(os.environ.get("BENCH_THREADS", "1")))
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world),
                      LOCAL_RANK=str(rank))
    dist.init_process_group("gloo", rank=rank, world_size=world, timeout=timedelta(seconds=3600))
    try:
        torch.save(fn(*args), os.path.join(out_dir, f"{rank}.pt"))
    finally:
        dist.barrier()
        dist.destroy_process_group()


def spawn(fn, world, *args):
    """fn(*args) on `world` fresh gloo processes; their results in rank order."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with tempfile.TemporaryDirectory() as d:
        mp.spawn(_worker, args=(world, port, fn, args, d), nprocs=world, join=True)
        return [torch.load(os.path.join(d, f"{r}.pt"), weights_only=False) for r in range(world)]


def _trainer(overrides, recipe="quickstart"):
    from ssl_scale.config import load_config
    from ssl_scale.train.trainer import Trainer

    run_dir = tempfile.mkdtemp(prefix="scale_bench_")
    base = [f"run.dir={run_dir}", "run.progress=false", "run.tensorboard=false", "eval.knn_at_end=false",
            "data.num_workers=0", "run.checkpoint_every=100000", "train.channels_last=false"]
    return Trainer(load_config(recipe, base + list(overrides)))


def _bytes(tensors):
    from torch.distributed.tensor import DTensor

    return sum((t.to_local() if isinstance(t, DTensor) else t).numel() * t.element_size() for t in tensors)


def _state_worker(overrides):
    from ssl_scale.train.flops import peak_memory_bytes

    t = _trainer(overrides)
    t.fit()
    params = list(t.model.parameters())
    optim = [v for s in t.optimizer.state.values() for v in s.values() if torch.is_tensor(v) and v.dim() > 0]
    return {"params": _bytes(params), "grads": _bytes(p.grad for p in params if p.grad is not None),
            "optim": _bytes(optim), "rss": peak_memory_bytes(torch.device("cpu"))}


def bench_state(args):
    common = [f"model.trunk={args.trunk}", "data.batch_size=8", "train.max_steps=1", "loss.freeze_prototypes_iters=0",
              "data.crops=[{size: 32, count: 2, scale: [0.3, 1.0]}]", "model.head.num_prototypes=[3000]"]
    print(f"\nPer-rank parameters + gradients + optimizer state (LARS momentum), {args.trunk}, fp32, after one step\n")
    print("| mode | ranks | params MiB | grads MiB | optim MiB | total MiB | x 1/N of 1-rank total | peak RSS MiB |")
    print("|---|---|---|---|---|---|---|---|")
    single = None
    for mode, world in [("ddp", 1), ("ddp", 2), ("fsdp", 2), ("fsdp", 4)]:
        rows = spawn(_state_worker, world, common + [f"parallel.mode={mode}", f"data.batch_size={8 // world}"])
        r = max(rows, key=lambda x: x["params"] + x["grads"] + x["optim"])
        total = r["params"] + r["grads"] + r["optim"]
        single = single or total
        print(f"| {mode} | {world} | {r['params'] / MB:.1f} | {r['grads'] / MB:.1f} | {r['optim'] / MB:.1f} | "
              f"{total / MB:.1f} | {total / (single / world):.3f} | {max(x['rss'] for x in rows) / MB:.0f} |", flush=True)


def _saved_activation_bytes(model, x) -> int:
    """Bytes the autograd graph holds for backward after one forward: every tensor saved by an op,
    counted once per storage, parameters and the input excluded (under activation checkpointing a
    block saves only its input; the recomputed tensors never reach this hook)."""
    skip = {p.untyped_storage().data_ptr() for p in model.parameters()} | {x.untyped_storage().data_ptr()}
    held = {}

    def pack(t):
        st = t.untyped_storage()
        if st.data_ptr() not in skip and t.device.type != "meta":
            held[st.data_ptr()] = st.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = model(x).sum()
    out.backward()
    return sum(held.values())


def _peak_allocated_bytes(step) -> int:
    """Peak over `step()` (a forward + backward) of the bytes torch allocated on the CPU, above what was
    allocated when it began (parameters and gradients): from the profiler's memory timeline, the CPU
    counterpart of CUDA's max_memory_allocated. 0 when this torch cannot export it."""
    import json
    import warnings

    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True, record_shapes=True, with_stack=True) as prof:
        step()
    with tempfile.TemporaryDirectory() as d, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            prof.export_memory_timeline(os.path.join(d, "m.json"), device="cpu")
        except Exception:  # noqa: BLE001 - the exporter is deprecated upstream; the other measures stand
            return 0
        with open(os.path.join(d, "m.json")) as f:
            _, sizes = json.load(f)
    totals = [sum(row) for row in sizes]
    return max(totals) - totals[0] if totals else 0


def _ac_model(trunk, stages):
    """The trunk with no checkpointing (stages None), every block checkpointed ([]), or the blocks of
    the listed stages."""
    from ssl_scale.distributed.parallelize import apply_ac
    from ssl_scale.models.trunks import build_trunk

    torch.manual_seed(0)
    model = build_trunk(trunk)
    if stages is not None:
        apply_ac(model, stages=stages)
    return model


def _ac_worker(trunk, stages, batch, px):
    """Memory of one configuration, alone in its process (so that its peak RSS is its own)."""
    from ssl_scale.train.flops import peak_memory_bytes

    model = _ac_model(trunk, stages)
    x = torch.randn(batch, 3, px, px)
    model(x[:2]).sum().backward()  # warm-up: gradients allocated, kernels chosen
    base = peak_memory_bytes(torch.device("cpu"))
    model(x).sum().backward()
    rss = peak_memory_bytes(torch.device("cpu")) - base
    return {"saved": _saved_activation_bytes(model, x), "peak": _peak_allocated_bytes(lambda: model(x).sum().backward()),
            "rss": rss}


def _ac_timing_worker(trunk, configs, batch, px, steps):
    """Step times of every configuration in one process, taking turns step by step (the order rotated
    every round), so that a change of load on a shared machine slows them all alike."""
    models = [_ac_model(trunk, stages) for stages in configs]
    x = torch.randn(batch, 3, px, px)
    times = [{"forward": [], "backward": []} for _ in models]
    for r in range(steps + 1):
        for i in [(r + j) % len(models) for j in range(len(models))]:
            t0 = time.perf_counter()
            out = models[i](x).sum()
            t1 = time.perf_counter()
            out.backward()
            t2 = time.perf_counter()
            if r:  # the first round warms up
                times[i]["forward"].append(t1 - t0)
                times[i]["backward"].append(t2 - t1)
    med = lambda v: sorted(v)[len(v) // 2]  # noqa: E731
    return [{k: med(v) for k, v in t.items()} | {"step": med([a + b for a, b in zip(t["forward"], t["backward"])])}
            for t in times]


def bench_ac(args):
    threads = os.environ.get("BENCH_THREADS", "1")
    stages = [int(v) for v in args.ac_stages.split(",")] if args.ac_stages else []
    configs = {"none": None, "every block": [], f"blocks of stages {args.ac_stages}": stages}
    print(f"\nActivation checkpointing on {args.ac_trunk}, batch {args.ac_batch} x {args.ac_px} px, forward + backward, "
          f"1 process, {threads} thread(s); step times: median of {args.steps} steps in one process, the configurations "
          f"taking turns\n")
    print("saved: tensors autograd holds for backward after the forward (parameters and input excluded); "
          "peak allocated: the profiler's CPU memory timeline, peak over forward + backward above parameters "
          "and gradients; peak RSS: growth of the process's resident set over a step (allocator slack included)\n")
    print("| activation checkpointing | saved activations MiB | peak allocated MiB | peak RSS growth MiB | "
          "forward s | backward s | step s | memory less (saved / peak allocated) | step time |")
    print("|---|---|---|---|---|---|---|---|---|")
    mem = [spawn(_ac_worker, 1, args.ac_trunk, st, args.ac_batch, args.ac_px)[0] for st in configs.values()]
    tim = spawn(_ac_timing_worker, 1, args.ac_trunk, list(configs.values()), args.ac_batch, args.ac_px, args.steps)[0]
    for name, m, t in zip(configs, mem, tim):
        print(f"| {name} | {m['saved'] / MB:.0f} | {m['peak'] / MB:.0f} | {m['rss'] / MB:.0f} | "
              f"{t['forward']:.3f} | {t['backward']:.3f} | {t['step']:.3f} | {mem[0]['saved'] / max(m['saved'], 1):.2f}x / "
              f"{mem[0]['peak'] / max(m['peak'], 1):.2f}x | {t['step'] / tim[0]['step']:.2f}x |", flush=True)
    print(f"\ntargets: >= 2.5x less activation memory for <= 1.4x the step time; the forward is "
          f"{tim[0]['forward'] / tim[0]['step']:.0%} of a step without checkpointing here")


def _proto_worker(k, dim, batch, crops, sharded):
    import torch.nn as nn
    import torch.nn.functional as F

    from ssl_scale.distributed import reduce_fns, shard_reductions
    from ssl_scale.methods import SwAVLoss
    from ssl_scale.train.flops import peak_memory_bytes

    world = dist.get_world_size()
    torch.manual_seed(0)
    base = peak_memory_bytes(torch.device("cpu"))
    z = F.normalize(torch.randn(crops * batch, dim), dim=1).requires_grad_(True)
    s, m = reduce_fns()
    if sharded:
        from torch.distributed.device_mesh import init_device_mesh

        from ssl_scale.distributed.prototypes import ShardedPrototypes

        with torch.device("meta"):  # the whole matrix is never allocated: only this rank's rows
            full = nn.Linear(dim, k, bias=False)
        layer = ShardedPrototypes(full, init_device_mesh("cpu", (world,))).to_empty(device="cpu")
        with torch.no_grad():
            layer.weight.to_local().normal_()
        loss_fn = SwAVLoss(num_crops=crops, reduce_sum=s, reduce_max=m, **shard_reductions(world))
    else:
        layer = nn.Linear(dim, k, bias=False)
        loss_fn = SwAVLoss(num_crops=crops, reduce_sum=s, reduce_max=m)
    def step():
        loss_fn(z, [layer(z)], [layer.weight]).backward()

    t0 = time.perf_counter()
    step()
    elapsed = time.perf_counter() - t0
    rss = peak_memory_bytes(torch.device("cpu")) - base
    w = layer.weight.to_local() if hasattr(layer.weight, "to_local") else layer.weight
    return {"time": elapsed, "rss": rss, "held": 2 * w.numel() * w.element_size(),  # rows and their gradient
            "peak": _peak_allocated_bytes(step)}


def bench_prototypes(args):
    k, dim, batch, crops = args.num_prototypes, 128, args.proto_batch, 4
    print(f"\nSwAV loss step (scores, Sinkhorn, swapped prediction, backward) with {k:,} prototypes of dim {dim}, "
          f"{batch} images x {crops} crops per rank\n")
    print("held: the rank's prototype rows and their gradient; peak allocated: the profiler's CPU memory timeline over "
          "the step (a second step, gradients already allocated); RSS growth: over the first step, runtime included\n")
    print("| prototypes | ranks | prototype rows per rank | scores per rank | held MiB | peak allocated MiB (max rank) | "
          "RSS growth MiB (max rank) | step s |")
    print("|---|---|---|---|---|---|---|---|")
    for sharded, world in [(False, 1), (True, 4)]:  # 4 unsharded ranks hold 4 copies: the 1-rank figure each
        rows = spawn(_proto_worker, world, k, dim, batch, crops, sharded)
        rows_held = k // world if sharded else k
        scored = batch * crops * (world if sharded else 1)
        print(f"| {'split by rows' if sharded else 'whole on every rank'} | {world} | {rows_held:,} | "
              f"{scored} x {rows_held:,} | {max(r['held'] for r in rows) / MB:.0f} | {max(r['peak'] for r in rows) / MB:.0f} | "
              f"{max(r['rss'] for r in rows) / MB:.0f} | {max(r['time'] for r in rows):.1f} |",
              flush=True)


def _seer_worker(recipe, px, extra=()):
    from ssl_scale.distributed import local_numel
    from ssl_scale.train.flops import peak_memory_bytes, resident_memory_bytes

    # The recipe itself, with synthetic images, 2 per rank, small crops, and the prototypes trained (and
    # given momentum) from the first step, as after the freeze.
    t = _trainer([
        "data.train.source=synthetic", "data.train.num_samples=64", f"data.train.image_size={px}", "data.batch_size=2",
        "loss.freeze_prototypes_iters=0",
        f"data.crops=[{{size: {px}, count: 2, scale: [0.14, 1.0]}}, {{size: {px // 2}, count: 2, scale: [0.05, 0.14]}}]",
        *extra], recipe=recipe)
    # One training step (Trainer.train_step: forward, Sinkhorn + loss, backward, LARS update) on crops of
    # the recipe's sizes; fit() would also write the final checkpoint, which is not part of a step.
    g = torch.Generator().manual_seed(dist.get_rank())
    crops = [torch.randn(2, 3, c.size, c.size, generator=g) for c in t.cfg.data.crops for _ in range(c.count)]
    before = resident_memory_bytes()
    t0 = time.perf_counter()
    out = t.train_step(crops)
    elapsed = time.perf_counter() - t0
    return {"loss": float(out["loss"]), "time": elapsed, "split": {k: out[k] for k in ("t_forward", "t_loss", "t_backward", "t_optim")},
            "numel": local_numel(t.model)["params"], "total": sum(p.numel() for p in t.model.parameters()),
            "before": before, "after": resident_memory_bytes(), "rss": peak_memory_bytes(torch.device("cpu"))}


class MemoryWatch:
    """Samples the machine's available memory (MemAvailable) every 0.1 s from a thread; the lowest value
    is the headroom the run left. Below `floor_mb` it ends the run's processes instead of letting the
    kernel's out-of-memory killer pick (and perhaps pick another program)."""

    def __init__(self, floor_mb: int = 300):
        import threading

        self.floor_mb, self.lowest_mb, self.tripped = floor_mb, float("inf"), False
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    @staticmethod
    def available_mb() -> float:
        with open("/proc/meminfo") as f:
            return next(int(line.split()[1]) for line in f if line.startswith("MemAvailable")) / 1024

    def _run(self):
        import signal

        while not self._stop.wait(0.1):
            self.lowest_mb = min(self.lowest_mb, self.available_mb())
            if self.lowest_mb < self.floor_mb and not self.tripped:
                self.tripped = True
                for child in mp.active_children():
                    os.kill(child.pid, signal.SIGKILL)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()


def bench_seer(args):
    from ssl_scale.config import load_config

    cfg = load_config(args.seer_recipe, list(args.seer_overrides), check=False)  # the workers add the data
    print(f"\nrecipe {args.seer_recipe} ({cfg.model.trunk}, head {cfg.model.head.hidden_dims} -> {cfg.model.head.output_dim}, "
          f"{list(cfg.model.head.num_prototypes)} prototypes; parallel: {dict(cfg.parallel)}; optim.in_backward="
          f"{cfg.optim.in_backward}) on 4 CPU processes; crops 2x{args.seer_px} + 2x{args.seer_px // 2}, 2 images per "
          f"rank{', ' + ' '.join(args.seer_overrides) if args.seer_overrides else ''}\n")
    # glibc keeps freed large blocks for reuse once its mmap threshold has grown; with ~18 GB of state in
    # 24 GB that slack matters: blocks of 4 MiB and more go straight back to the system (read at start-up
    # by the spawned processes).
    os.environ.setdefault("MALLOC_MMAP_THRESHOLD_", str(4 * MB))
    total_mb = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / MB
    start_mb = MemoryWatch.available_mb()
    with MemoryWatch() as watch:
        try:
            rows = spawn(_seer_worker, 4, args.seer_recipe, args.seer_px, list(args.seer_overrides))
        except Exception:
            if not watch.tripped:
                raise
            rows = None
    if rows is None:
        print(f"did not fit: the machine's available memory fell below {watch.floor_mb} MB and the run was ended "
              f"(available at the start {start_mb:,.0f} of {total_mb:,.0f} MiB)")
        return
    print("| rank | parameters held | of the model | RSS before the step MiB | after MiB | peak RSS MiB | step s "
          "(forward / loss / backward / optimizer) | loss |")
    print("|---|---|---|---|---|---|---|---|")
    for i, r in enumerate(rows):
        split = " / ".join(f"{r['split'][k]:.1f}" for k in ("t_forward", "t_loss", "t_backward", "t_optim"))
        print(f"| {i} | {r['numel'] / 1e6:.1f} M | {r['total'] / 1e9:.3f} B | {r['before'] / MB:.0f} | {r['after'] / MB:.0f} | "
              f"{r['rss'] / MB:.0f} | {r['time']:.1f} ({split}) | {r['loss']:.4f} |", flush=True)
    print(f"\nmachine memory: {total_mb:,.0f} MiB in all, {start_mb:,.0f} available at the start, lowest available during "
          f"the run {watch.lowest_mb:,.0f} MiB (sampled every 0.1 s)")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("what", choices=["state", "ac", "prototypes", "seer", "all"])
    ap.add_argument("--trunk", default="resnet50")
    ap.add_argument("--ac-trunk", default="regnet_y_800mf")
    ap.add_argument("--ac-batch", type=int, default=32)
    ap.add_argument("--ac-px", type=int, default=128)
    ap.add_argument("--ac-stages", default="0,1,2", help="stages checkpointed in the third configuration (comma-separated)")
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--num-prototypes", type=int, default=1_000_000)
    ap.add_argument("--proto-batch", type=int, default=16)
    ap.add_argument("--seer-px", type=int, default=32)
    ap.add_argument("--seer-recipe", default="pretrain/seer_regnet_y_256gf")
    ap.add_argument("--seer-overrides", nargs="*", default=[], metavar="KEY=VALUE",
                    help="recipe overrides for the SEER step, e.g. optim.momentum=0 (no momentum buffers)")
    args = ap.parse_args()
    todo = ["state", "ac", "prototypes", "seer"] if args.what == "all" else [args.what]
    for what in todo:
        globals()[f"bench_{what}"](args)


if __name__ == "__main__":
    main()
