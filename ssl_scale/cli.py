"""`ssl-scale` command line: train, launch, config, list, export, benchmark."""
from __future__ import annotations

import argparse
import logging
import sys
from typing import List, Optional

log = logging.getLogger("ssl_scale")

KINDS = {"trunks": "trunk", "heads": "head", "losses": "loss", "datasets": "dataset", "transforms": "transform",
         "optimizers": "optimizer", "schedules": "schedule",
         "evaluations": "evaluation"}


def _setup_logging(quiet: bool = False) -> None:
    import os

    rank = int(os.environ.get("RANK", "0"))
    level = logging.INFO if rank == 0 and not quiet else logging.WARNING
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(message)s", datefmt="%H:%M:%S")


def cmd_train(args) -> int:
    from ssl_scale.config import load_config
    from ssl_scale.train.run import train

    cfg = load_config(args.recipe, args.overrides)
    train(cfg)
    return 0


def cmd_launch(args) -> int:
    from ssl_scale.config import load_config
    from ssl_scale.launch import submit

    cfg = load_config(args.recipe, args.overrides)
    # Without SLURM accounting, submitit warns at every poll that it reads squeue instead of sacct: harmless.
    logging.getLogger("submitit").addFilter(lambda r: "Bypassing sacct error" not in r.getMessage())
    job = submit(cfg)
    s = cfg.slurm
    print(f"submitted job {job.job_id} ({cfg.launcher}: {s.nodes} node(s) x {s.tasks_per_node} task(s)), run dir {cfg.run.dir}")
    print(f"logs: {job.paths.stdout} (task 0; every task's log is in {job.paths.folder})", flush=True)
    if not (args.wait or cfg.launcher == "local"):  # the local executor's job ends with this process
        return 0
    try:
        results = job.results()
    except Exception as e:  # the job's own error, raised in the job and reported by submitit
        last = [line for line in str(e).splitlines() if line.strip()]
        print(f"ssl-scale launch: job {job.job_id} failed: {last[-1] if last else type(e).__name__} "
              f"(log: {job.paths.stdout})", file=sys.stderr)
        return 1
    print(f"job {job.job_id} finished at step {results[0]['step']}; run dir {cfg.run.dir}")
    return 0


def cmd_config(args) -> int:
    from ssl_scale.config import load_config, to_yaml

    print(to_yaml(load_config(args.recipe, args.overrides)), end="")
    return 0


def cmd_list(args) -> int:
    from ssl_scale.components import REGISTRIES

    if args.kind:
        kind = KINDS.get(args.kind) or (args.kind if args.kind in REGISTRIES else None)
        if kind is None:
            import difflib

            close = difflib.get_close_matches(args.kind, list(KINDS), n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            raise ValueError(f"unknown kind {args.kind!r}{hint} (valid: {', '.join(KINDS)})")
        kinds = [kind]
    else:
        kinds = list(KINDS.values())
    for kind in kinds:
        plural = next(p for p, k in KINDS.items() if k == kind)
        print(f"{plural}:")
        for name, desc in REGISTRIES[kind].describe():
            print(f"  {name:<22} {desc}")
    return 0


def cmd_export(args) -> int:
    from ssl_scale.checkpoint.export import export_trunk

    paths = export_trunk(args.checkpoint, args.out)
    for kind, p in paths.items():
        print(f"wrote {p}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="ssl-scale", description="SwAV/SEER self-supervised pretraining at scale")
    sub = p.add_subparsers(dest="command", required=True)
    t = sub.add_parser("train", help="pretrain from a recipe (resumes from run.dir automatically)")
    t.add_argument("recipe", help="recipe file, or a name under configs/ (e.g. quickstart)")
    t.add_argument("overrides", nargs="*", help="dotted overrides, e.g. data.batch_size=32 run.dir=runs/x")
    t.set_defaults(fn=cmd_train)
    la = sub.add_parser("launch", help="submit a training run with submitit (launcher=slurm|local, slurm.* keys)")
    la.add_argument("recipe", help="recipe file, or a name under configs/")
    la.add_argument("overrides", nargs="*", help="dotted overrides, e.g. slurm.nodes=2 slurm.partition=gpu")
    la.add_argument("--wait", action="store_true", help="wait for the job to finish (always so for launcher=local)")
    la.set_defaults(fn=cmd_launch)
    c = sub.add_parser("config", help="print the fully resolved recipe as YAML")
    c.add_argument("recipe")
    c.add_argument("overrides", nargs="*")
    c.set_defaults(fn=cmd_config)
    ls = sub.add_parser("list", help="registered components, each with a one-line description")
    ls.add_argument("kind", nargs="?", help=", ".join(KINDS))
    ls.set_defaults(fn=cmd_list)
    e = sub.add_parser("export", help="write trunk weights as a plain state dict (+ safetensors)")
    e.add_argument("checkpoint", help="a run directory or one checkpoint directory")
    e.add_argument("out", help="output folder, or a .pth file")
    e.set_defaults(fn=cmd_export)
    from ssl_scale.benchmarks.suite import add_benchmark_parser

    add_benchmark_parser(sub)
    return p


def main(argv: Optional[List[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    _setup_logging()
    from ssl_scale.config import ConfigError

    try:
        return args.fn(args)
    except (ConfigError, FileNotFoundError, ValueError, KeyError, NotADirectoryError, PermissionError) as e:
        msg = str(e).splitlines()[0] if str(e) else type(e).__name__
        print(f"ssl-scale {args.command}: error: {msg}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"ssl-scale {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
