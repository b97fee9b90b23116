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


def _trainer(overrides):
    from ssl_scale.config import load_config
    from ssl_scale.train.trainer import Trainer

    run_dir = tempfile.mkdtemp(prefix="scale_bench_")
    base = [f"run.dir={run_dir}", "run.progress=false", "run.tensorboard=false", "eval.knn_at_end=false",
            "data.num_workers=0", "run.checkpoint_every=100000", "train.channels_last=false"]
    return Trainer(load_config("quickstart", base + list(overrides)))


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


def _ac_worker(trunk, ac, batch, px):
    """Memory of one configuration, alone in its process (so that its peak RSS is its own)."""
    from ssl_scale.distributed.parallelize import apply_ac
    from ssl_scale.models.trunks import build_trunk
    from ssl_scale.train.flops import peak_memory_bytes

    torch.manual_seed(0)
    model = build_trunk(trunk)
    if ac:
        apply_ac(model)
    x = torch.randn(batch, 3, px, px)
    model(x[:2]).sum().backward()  # warm-up: gradients allocated, kernels chosen
    base = peak_memory_bytes(torch.device("cpu"))
    model(x).sum().backward()
    rss = peak_memory_bytes(torch.device("cpu")) - base
    return {"saved": _saved_activation_bytes(model, x), "peak": _peak_allocated_bytes(lambda: model(x).sum().backward()),
            "rss": rss}


def _ac_timing_worker(trunk, batch, px, steps):
    """Step times of both configurations in one process, alternating step by step (the order swapped
    every round), so that a change of load on a shared machine slows both alike."""
    from ssl_scale.distributed.parallelize import apply_ac
    from ssl_scale.models.trunks import build_trunk

    models = {}
    for ac in (False, True):
        torch.manual_seed(0)
        models[ac] = build_trunk(trunk)
        if ac:
            apply_ac(models[ac])
    x = torch.randn(batch, 3, px, px)
    times = {ac: {"forward": [], "backward": []} for ac in models}
    for r in range(steps + 1):
        for ac in ((False, True) if r % 2 == 0 else (True, False)):
            t0 = time.perf_counter()
            out = models[ac](x).sum()
            t1 = time.perf_counter()
            out.backward()
            t2 = time.perf_counter()
            if r:  # the first round warms up
                times[ac]["forward"].append(t1 - t0)
                times[ac]["backward"].append(t2 - t1)
    med = lambda v: sorted(v)[len(v) // 2]  # noqa: E731
    return {ac: {k: med(v) for k, v in t.items()} | {"step": med([a + b for a, b in zip(t["forward"], t["backward"])])}
            for ac, t in times.items()}


def bench_ac(args):
    threads = os.environ.get("BENCH_THREADS", "1")
    print(f"\nActivation checkpointing on {args.ac_trunk}, batch {args.ac_batch} x {args.ac_px} px, forward + backward, "
          f"1 process, {threads} thread(s); step times: median of {args.steps} alternating steps in one process\n")
    print("saved: tensors autograd holds for backward after the forward (parameters and input excluded); "
          "peak allocated: the profiler's CPU memory timeline, peak over forward + backward above parameters "
          "and gradients; peak RSS: growth of the process's resident set over a step (allocator slack included)\n")
    print("| activation checkpointing | saved activations MiB | peak allocated MiB | peak RSS growth MiB | "
          "forward s | backward s | step s |")
    print("|---|---|---|---|---|---|---|")
    mem = {ac: spawn(_ac_worker, 1, args.ac_trunk, ac, args.ac_batch, args.ac_px)[0] for ac in (False, True)}
    tim = spawn(_ac_timing_worker, 1, args.ac_trunk, args.ac_batch, args.ac_px, args.steps)[0]
    for ac in (False, True):
        m, t = mem[ac], tim[ac]
        print(f"| {'every block' if ac else 'none'} | {m['saved'] / MB:.0f} | {m['peak'] / MB:.0f} | {m['rss'] / MB:.0f} | "
              f"{t['forward']:.3f} | {t['backward']:.3f} | {t['step']:.3f} |", flush=True)
    ratio = lambda k: mem[False][k] / max(mem[True][k], 1)  # noqa: E731
    print(f"\nless memory with checkpointing: saved activations {ratio('saved'):.2f}x, peak allocated "
          f"{ratio('peak'):.2f}x, peak RSS {ratio('rss'):.2f}x (target >= 2.5x); step time "
          f"{tim[True]['step'] / tim[False]['step']:.2f}x (target <= 1.4x; the recomputation costs one more forward, "
          f"{tim[False]['forward'] / tim[False]['step']:.0%} of a step without checkpointing here)")


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


def _seer_worker(px, extra=()):
    from ssl_scale.distributed import local_numel
    from ssl_scale.train.flops import peak_memory_bytes, resident_memory_bytes

    t = _trainer([
        "model.trunk=regnet_y_256gf", "model.stem=imagenet", "model.head.hidden_dims=[10444, 10444]",
        "model.head.output_dim=256", "model.head.num_prototypes=[16000]", "loss.epsilon=0.03",
        "loss.sinkhorn_iterations=10", "data.batch_size=2", "train.precision=bf16",
        f"data.crops=[{{size: {px}, count: 2, scale: [0.14, 1.0]}}, {{size: {px // 2}, count: 2, scale: [0.05, 0.14]}}]",
        "parallel.mode=fsdp", "parallel.meta_init=true", "parallel.activation_checkpointing=block",
        "parallel.shard_prototypes=true", "loss.freeze_prototypes_iters=0", "run.log_every=1", *extra])
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


def bench_seer(args):
    print(f"\nSEER RegNetY-256GF + SwAV head (MLP 10444-10444-10444-256, 16,000 prototypes), FSDP over 4 CPU "
          f"processes, meta init, bf16 parameters, activation checkpointing, prototypes split; crops 2x{args.seer_px} "
          f"+ 2x{args.seer_px // 2}, 2 images per rank{', ' + ' '.join(args.seer_overrides) if args.seer_overrides else ''}\n")
    # glibc keeps freed large blocks for reuse once its mmap threshold has grown; with ~18 GB of state in
    # 24 GB that slack matters: blocks of 4 MiB and more go straight back to the system (read at start-up
    # by the spawned processes).
    os.environ.setdefault("MALLOC_MMAP_THRESHOLD_", str(4 * MB))
    rows = spawn(_seer_worker, 4, args.seer_px, list(args.seer_overrides))
    print("| rank | parameters held | of the model | RSS before the step MiB | after MiB | peak RSS MiB | step s "
          "(forward / loss / backward / optimizer) | loss |")
    print("|---|---|---|---|---|---|---|---|")
    for i, r in enumerate(rows):
        split = " / ".join(f"{r['split'][k]:.1f}" for k in ("t_forward", "t_loss", "t_backward", "t_optim"))
        print(f"| {i} | {r['numel'] / 1e6:.1f} M | {r['total'] / 1e9:.3f} B | {r['before'] / MB:.0f} | {r['after'] / MB:.0f} | "
              f"{r['rss'] / MB:.0f} | {r['time']:.1f} ({split}) | {r['loss']:.4f} |", flush=True)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("what", choices=["state", "ac", "prototypes", "seer", "all"])
    ap.add_argument("--trunk", default="resnet50")
    ap.add_argument("--ac-trunk", default="regnet_y_800mf")
    ap.add_argument("--ac-batch", type=int, default=32)
    ap.add_argument("--ac-px", type=int, default=128)
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--num-prototypes", type=int, default=1_000_000)
    ap.add_argument("--proto-batch", type=int, default=16)
    ap.add_argument("--seer-px", type=int, default=32)
    ap.add_argument("--seer-overrides", nargs="*", default=[], metavar="KEY=VALUE",
                    help="recipe overrides for the SEER step, e.g. optim.momentum=0 (no momentum buffers)")
    args = ap.parse_args()
    todo = ["state", "ac", "prototypes", "seer"] if args.what == "all" else [args.what]
    for what in todo:
        globals()[f"bench_{what}"](args)


if __name__ == "__main__":
    main()
