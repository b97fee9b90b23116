"""Transfer benchmark suites: every evaluation of a suite YAML on every checkpoint, one results table.

    ssl-scale benchmark SUITE.yaml --checkpoint A [--checkpoint B ...] [--out DIR] [key=value ...]
    ssl-scale benchmark SUITE.yaml --watch RUN_DIR [--watch-timeout S] [--out DIR]
    ssl-scale benchmark SUITE.yaml --checkpoint A ... --submit slurm|local [slurm.partition=P slurm.timeout_min=M ...]

Suite YAML (unknown keys are errors):

    name: cifar_small
    model: {trunk: resnet18, stem: cifar}        # for `random` and plain torchvision state dicts
    seed: 0
    device: auto                                 # auto | cpu | cuda | cuda:N
    features: {batch_size: 256, bf16: false, layer: pooled, cache_dir: null, num_workers: 0}
    datasets:
      cifar: {path: DIR (with train/ and test/) | train: DIR-or-LIST, test: DIR-or-LIST,
              image_size: 32, resize: null, mean: [...], std: [...], max_per_class: null}
    evaluations:
      - {name: knn, dataset: cifar, k: 20, temperature: 0.07}
      - {name: linear, dataset: cifar, weight_decays: [...], val_fraction: 0.2}
      - {name: lowshot, dataset: cifar, shots: [1, 5, 10], seeds: [0, 1, 2]}
      - {name: finetune, dataset: cifar, label_fraction: 0.1, epochs: 20}
"""
from __future__ import annotations

import argparse
import copy
import dataclasses
import logging
import os
import sys
import time
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence

import torch
import yaml

from .cache import FeatureCache
from .checkpoints import TrunkSource, check_fits, resolve_checkpoint_spec
from .datasets import load_train_test
from .evals import EVALUATIONS, EvalContext, parse_params
from .features import POOLED, extract_features
from .report import markdown_table, write_results

log = logging.getLogger("ssl_scale")

CONFIG_DIR = Path(__file__).resolve().parents[2] / "configs" / "benchmark"
IMAGENET_MEAN = [0.485, 0.456, 0.406]
IMAGENET_STD = [0.229, 0.224, 0.225]

TOP_KEYS = {"name": None, "description": "", "model": None, "seed": 0, "device": "auto", "features": None,
            "datasets": None, "evaluations": None}
MODEL_KEYS = {"trunk": "resnet50", "stem": "imagenet"}
FEATURE_KEYS = {"batch_size": 256, "bf16": False, "layer": POOLED, "cache_dir": None, "num_workers": 0}
DATASET_KEYS = {"path": None, "train": None, "test": None, "root": None, "image_size": 224, "resize": None,
                "mean": IMAGENET_MEAN, "std": IMAGENET_STD, "max_per_class": None, "max_per_class_test": None}
CACHE_VERSION = 1


# ----- loading ------------------------------------------------------------------------------------
def find_suite(suite: str | os.PathLike) -> Path:
    """A suite file, or the name of one under configs/benchmark/ (e.g. "cifar_small")."""
    p = Path(os.path.expanduser(str(suite)))
    if p.is_file():
        return p
    for cand in (CONFIG_DIR / f"{suite}.yaml", CONFIG_DIR / str(suite)):
        if cand.is_file():
            return cand
    known = sorted(q.stem for q in CONFIG_DIR.glob("*.yaml")) if CONFIG_DIR.is_dir() else []
    raise FileNotFoundError(f"benchmark suite {str(suite)!r} not found (a YAML file, or one of: {', '.join(known)})")


def apply_overrides(data: Dict[str, Any], overrides: Sequence[str]) -> Dict[str, Any]:
    """`a.b=1 evaluations.0.k=5 c=[1,2]`: dotted keys (list items by index), YAML-parsed values."""
    data = copy.deepcopy(data)
    for item in overrides:
        if "=" not in item:
            raise ValueError(f"override {item!r} must look like key=value (e.g. datasets.cifar.train=/data/train)")
        key, raw = item.split("=", 1)
        parts = key.strip().split(".")
        if not key.strip() or any(not s for s in parts):
            raise ValueError(f"override {item!r} has an empty key")
        try:
            value = yaml.safe_load(raw) if raw != "" else ""
        except yaml.YAMLError:
            value = raw
        node: Any = data
        for i, part in enumerate(parts):
            last = i == len(parts) - 1
            if isinstance(node, list):
                if not part.isdigit() or int(part) >= len(node):
                    raise ValueError(f"override {item!r}: {'.'.join(parts[:i]) or 'root'} is a list of "
                                     f"{len(node)}; use an index 0..{len(node) - 1}")
                if last:
                    node[int(part)] = value
                else:
                    node = node[int(part)]
            elif isinstance(node, dict):
                if last:
                    node[part] = value
                else:
                    if node.get(part) is None:
                        node[part] = {}
                    node = node[part]
            else:
                raise ValueError(f"override {item!r}: {'.'.join(parts[:i])} is a value, not a mapping")
    return data


def _strict(section: Any, defaults: Dict[str, Any], where: str) -> Dict[str, Any]:
    if section is None:
        section = {}
    if not isinstance(section, dict):
        raise ValueError(f"{where} must be a mapping with keys {', '.join(defaults)}")
    unknown = [k for k in section if k not in defaults]
    if unknown:
        import difflib

        close = difflib.get_close_matches(str(unknown[0]), list(defaults), n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        raise ValueError(f"{where}: unknown key {unknown[0]!r}{hint} (valid: {', '.join(defaults)})")
    return {k: copy.deepcopy(section.get(k, v)) for k, v in defaults.items()}


def load_suite(suite: str | os.PathLike | Dict[str, Any], overrides: Sequence[str] = ()) -> Dict[str, Any]:
    """The validated suite (defaults filled in, every evaluation's parameters parsed)."""
    if isinstance(suite, dict):
        src, data = "suite", suite
    else:
        path = find_suite(suite)
        src = str(path)
        try:
            data = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as e:
            raise ValueError(f"{src}: not valid YAML ({str(e).splitlines()[0]})") from None
        data.setdefault("name", path.stem)
    data = apply_overrides(data, overrides)
    cfg = _strict(data, TOP_KEYS, src)
    cfg["name"] = str(cfg["name"] or "benchmark")
    cfg["model"] = _strict(cfg["model"], MODEL_KEYS, f"{src}: model")
    cfg["features"] = _strict(cfg["features"], FEATURE_KEYS, f"{src}: features")
    from ssl_scale.models.trunks import STEMS, TRUNKS

    if cfg["model"]["trunk"] not in TRUNKS:
        raise ValueError(f"{src}: model.trunk: {TRUNKS.unknown_message(cfg['model']['trunk'])}")
    if cfg["model"]["stem"] not in STEMS:
        raise ValueError(f"{src}: model.stem {cfg['model']['stem']!r} is unknown (valid: {', '.join(STEMS)})")
    if not isinstance(cfg["seed"], int):
        raise ValueError(f"{src}: seed must be an integer, got {cfg['seed']!r}")
    if not cfg["datasets"] or not isinstance(cfg["datasets"], dict):
        raise ValueError(f"{src}: datasets must map names to {{train: ..., test: ...}} (none given)")
    datasets = {}
    for name, d in cfg["datasets"].items():
        d = _strict(d, DATASET_KEYS, f"{src}: datasets.{name}")
        if d["path"] is not None:
            base = Path(os.path.expanduser(str(d["path"])))
            d["train"] = d["train"] or str(base / "train")
            d["test"] = d["test"] or str(base / "test")
        for split in ("train", "test"):
            if not d[split]:
                raise ValueError(f"{src}: datasets.{name}.{split} is not set (a folder with class sub-folders, "
                                 f"a file list, or datasets.{name}.path with train/ and test/)")
        if not isinstance(d["image_size"], int) or d["image_size"] <= 0:
            raise ValueError(f"{src}: datasets.{name}.image_size must be a positive integer, got {d['image_size']!r}")
        datasets[str(name)] = d
    cfg["datasets"] = datasets
    evs = cfg["evaluations"]
    if not evs or not isinstance(evs, list):
        raise ValueError(f"{src}: evaluations must be a list of {{name: {'|'.join(EVALUATIONS.names())}, dataset: ...}}")
    parsed, labels = [], {}
    for i, e in enumerate(evs):
        where = f"{src}: evaluations[{i}]"
        if not isinstance(e, dict) or "name" not in e:
            raise ValueError(f"{where} must be a mapping with a 'name' ({', '.join(EVALUATIONS.names())})")
        raw = {k: v for k, v in e.items() if k != "name"}
        params = parse_params(str(e["name"]), raw, where)
        if not params.dataset:
            if len(datasets) != 1:
                raise ValueError(f"{where}: set 'dataset' (one of {', '.join(datasets)})")
            params.dataset = next(iter(datasets))
        if params.dataset not in datasets:
            raise ValueError(f"{where}: dataset {params.dataset!r} is not defined (datasets: {', '.join(datasets)})")
        ev = EVALUATIONS.get(str(e["name"]))
        label = ev.label(params, cfg["features"]["layer"])
        key = f"{params.dataset}/{label}"
        if key in labels:
            raise ValueError(f"{where}: evaluation {key!r} repeats evaluations[{labels[key]}]; give one a 'label'")
        labels[key] = i
        parsed.append({"name": str(e["name"]), "label": label, "params": params})
    cfg["evaluations"] = parsed
    return cfg


def suite_as_dict(cfg: Dict[str, Any]) -> Dict[str, Any]:
    """The resolved suite, JSON-able (for results.json); the cache location is left out."""
    out = {k: copy.deepcopy(v) for k, v in cfg.items() if k != "evaluations"}
    out["features"] = {k: v for k, v in out["features"].items() if k != "cache_dir"}
    out["evaluations"] = [{"name": e["name"], "label": e["label"], **dataclasses.asdict(e["params"])}
                          for e in cfg["evaluations"]]
    return out


def _device(name: str) -> str:
    if name in (None, "auto"):
        return "cuda" if torch.cuda.is_available() else "cpu"
    return str(name)


# ----- running ------------------------------------------------------------------------------------
class Runner:
    """Evaluates checkpoints of one suite; the datasets and the feature cache are shared across them."""

    def __init__(self, cfg: Dict[str, Any], out: os.PathLike, echo: Callable[[str], None] = print):
        from ssl_scale.data import TRANSFORMS

        self.cfg = cfg
        self.out = Path(out)
        self.echo = echo
        self.device = _device(cfg["device"])
        cache_dir = cfg["features"]["cache_dir"]
        self.cache = FeatureCache(Path(os.path.expanduser(str(cache_dir))) if cache_dir else self.out / "feature_cache")
        self.data: Dict[str, Dict[str, Any]] = {}
        for name in dict.fromkeys(e["params"].dataset for e in cfg["evaluations"]):
            d = cfg["datasets"][name]
            train, test = load_train_test(d["train"], d["test"], d["max_per_class"], d["max_per_class_test"], d["root"])
            tf = TRANSFORMS.get("eval")(d["image_size"], resize=d["resize"], mean=d["mean"], std=d["std"])
            self.data[name] = {"train": train, "test": test, "transform": tf}
        self.columns: List[str] = []
        self.rows: List[Dict[str, Any]] = []

    def resolve(self, spec: str) -> TrunkSource:
        from ssl_scale.models.trunks import build_trunk

        m = self.cfg["model"]
        src = resolve_checkpoint_spec(spec, m["trunk"], m["stem"], self.cfg["seed"])
        if src.state_dict is not None:  # a mismatch fails now, before any work, naming the checkpoint
            check_fits(build_trunk(src.trunk, src.stem, device="meta"), src.state_dict, spec, src.trunk, src.stem)
        return src

    def evaluate(self, src: TrunkSource) -> Dict[str, Any]:
        cfg, fcfg = self.cfg, self.cfg["features"]
        trunk_holder: Dict[str, torch.nn.Module] = {}

        def trunk() -> torch.nn.Module:
            if "t" not in trunk_holder:
                trunk_holder["t"] = src.build(self.device)
            return trunk_holder["t"]

        metrics: Dict[str, float] = {}
        details: Dict[str, Any] = {}
        for ev in cfg["evaluations"]:
            p = ev["params"]
            data = self.data[p.dataset]
            d = cfg["datasets"][p.dataset]

            def features(split: str, layer: str, data=data, d=d):
                ds = data[split]
                parts = {"version": CACHE_VERSION, "checkpoint": src.identity, "layer": layer,
                         "dataset": {"source": str(Path(ds.source).resolve()), "split": split, "n": len(ds),
                                     "fingerprint": ds.fingerprint()},
                         "transform": {"size": d["image_size"], "resize": d["resize"], "mean": list(d["mean"]),
                                       "std": list(d["std"])},
                         "bf16": bool(fcfg["bf16"])}
                return self.cache.get(parts, lambda: extract_features(
                    trunk(), ds, data["transform"], int(fcfg["batch_size"]), self.device, int(fcfg["num_workers"]),
                    bool(fcfg["bf16"]), layer))

            ctx = EvalContext(features=features, build_trunk=lambda: src.build(self.device), train_set=data["train"],
                              test_set=data["test"], num_classes=len(data["train"].classes), dataset=d,
                              eval_transform=data["transform"], layer=fcfg["layer"], seed=int(cfg["seed"]),
                              device=self.device, num_workers=int(fcfg["num_workers"]))
            t0 = time.perf_counter()
            m, det = EVALUATIONS.get(ev["name"]).run(ctx, p)
            group = f"{p.dataset}/{ev['label']}"
            for k, v in m.items():
                col = f"{group}/{k}"
                metrics[col] = round(100.0 * float(v), 4)
                if col not in self.columns:
                    self.columns.append(col)
            details[group] = det
            log.info("%s: %s done in %.1fs", src.spec, group, time.perf_counter() - t0)
        row = {"checkpoint": src.spec, "trunk": src.trunk, "stem": src.stem, "step": src.step,
               "metrics": metrics, "details": details}
        self.rows.append(row)
        return row

    def results(self) -> Dict[str, Any]:
        return {"suite": self.cfg["name"], "columns": list(self.columns), "rows": self.rows,
                "config": suite_as_dict(self.cfg)}


def run_suite(suite, checkpoints: Sequence[str], out: os.PathLike, overrides: Sequence[str] = (),
              echo: Callable[[str], None] = print) -> Dict[str, Any]:
    """Runs every evaluation on every checkpoint, writes results.{md,csv,json} + charts into `out`, prints
    the table. Returns the results dict (with "cache": {"hits", "extractions"} for this run)."""
    cfg = suite if isinstance(suite, dict) and _is_loaded(suite) else load_suite(suite, overrides)
    if not checkpoints:
        raise ValueError("benchmark: give at least one --checkpoint (a run dir, checkpoint, exported trunk, "
                         ".pth state dict, or 'random') or --watch RUN_DIR")
    runner = Runner(cfg, out, echo)
    sources = [runner.resolve(str(c)) for c in checkpoints]  # every spec checked before any work
    for src in sources:
        runner.evaluate(src)
    results = runner.results()
    write_results(results, out)
    echo(markdown_table(results))
    results["cache"] = {"hits": runner.cache.hits, "extractions": runner.cache.extractions}
    return results


def _is_loaded(cfg: Dict[str, Any]) -> bool:
    evs = cfg.get("evaluations") or []
    return bool(evs) and all(isinstance(e, dict) and "params" in e and "label" in e for e in evs)


def _final(ckpt: Path, final_step: Optional[int]) -> bool:
    from ssl_scale.checkpoint.manager import checkpoint_info

    info = checkpoint_info(ckpt)
    step = int(ckpt.name[5:]) if ckpt.name[5:].isdigit() else -1
    stop = final_step if final_step is not None else info.get("stop_step")
    return bool(info.get("final")) or (stop is not None and step >= int(stop))


def watch_run(suite, run_dir: os.PathLike, out: os.PathLike, overrides: Sequence[str] = (),
              timeout: float = 3600.0, interval: float = 30.0, final_step: Optional[int] = None,
              echo: Callable[[str], None] = print) -> Dict[str, Any]:
    """Evaluates every complete checkpoint of a training run as it appears, until the final one (its COMPLETE
    info says final / stop_step, or `final_step`) is evaluated or `timeout` seconds pass. Writes the usual
    results plus accuracy_vs_step.{md,png} after each checkpoint."""
    from ssl_scale.checkpoint.manager import list_checkpoints

    cfg = suite if isinstance(suite, dict) and _is_loaded(suite) else load_suite(suite, overrides)
    run_dir = Path(os.path.expanduser(str(run_dir)))
    if not run_dir.is_dir():
        raise FileNotFoundError(f"--watch: run directory {str(run_dir)!r} does not exist")
    runner = Runner(cfg, out, echo)
    seen: set = set()
    deadline = time.monotonic() + float(timeout)
    done = False
    while True:
        for ckpt in list_checkpoints(run_dir / "checkpoints"):
            if ckpt.name in seen:
                continue
            seen.add(ckpt.name)
            try:
                src = runner.resolve(str(ckpt))
            except (OSError, RuntimeError, ValueError):
                if ckpt.exists():
                    raise
                log.warning("checkpoint %s was removed (run retention) before it was read; skipped", ckpt)
                continue
            echo(f"evaluating {ckpt.name}")
            runner.evaluate(src)
            runner.rows.sort(key=lambda r: (r["step"] is None, r["step"] or 0))
            write_results(runner.results(), out, by_step=True)
            if _final(ckpt, final_step):
                done = True
        if done or time.monotonic() >= deadline:
            break
        time.sleep(max(0.0, min(float(interval), deadline - time.monotonic())))
    if not runner.rows:
        raise ValueError(f"--watch: no complete checkpoint appeared in {str(run_dir)!r} within {timeout:g}s")
    results = runner.results()
    echo(markdown_table(results, by_step=True))
    if not done:
        echo(f"stopped after --watch-timeout {timeout:g}s without seeing the run's final checkpoint")
    results["cache"] = {"hits": runner.cache.hits, "extractions": runner.cache.extractions}
    results["finished"] = done
    return results


# ----- command line -------------------------------------------------------------------------------
def _add_options(p: argparse.ArgumentParser, defaults: bool = True) -> None:
    d = (lambda v: v) if defaults else (lambda v: argparse.SUPPRESS)
    p.add_argument("--checkpoint", action="append", default=d([]), metavar="CKPT",
                   help="run dir, checkpoint dir, exported trunk (dir or .pth), torchvision state dict (.pth) "
                        "or 'random'; repeat for several")
    p.add_argument("--out", default=d(None), help="output folder (default: benchmarks/<suite name>)")
    p.add_argument("--watch", default=d(None), metavar="RUN_DIR",
                   help="evaluate every checkpoint of a training run as it appears")
    p.add_argument("--watch-timeout", type=float, default=d(3600.0), help="seconds to wait for new checkpoints")
    p.add_argument("--watch-interval", type=float, default=d(30.0), help="seconds between polls")
    p.add_argument("--watch-final-step", type=int, default=d(None),
                   help="stop after the checkpoint of this step (default: the one its run marks final)")
    p.add_argument("--submit", choices=("slurm", "local"), default=d(None),
                   help="run every (checkpoint, evaluation) as a submitit job (SLURM, or submitit's local "
                        "executor), wait, then write the same results; slurm.KEY=VALUE overrides set the jobs")


def add_benchmark_parser(subparsers) -> argparse.ArgumentParser:
    """Registers `benchmark` on an argparse subparsers object; `args.fn(args)` returns an exit code."""
    b = subparsers.add_parser(
        "benchmark", help="transfer benchmarks (kNN, linear, low-shot, fine-tune) of checkpoints",
        description="Runs every evaluation of a benchmark suite on every checkpoint and writes results.md/"
                    ".csv/.json and bar charts. Options and key=value overrides may follow the suite in any order.")
    b.add_argument("suite", help="suite YAML, or a name under configs/benchmark/ (cifar_small, imagenet_style)")
    _add_options(b)
    # Options may follow the positional overrides (`SUITE --checkpoint A key=v`), which one argparse pass
    # cannot parse; the rest of the line is parsed by a second, intermixed pass in cmd_benchmark.
    b.add_argument("rest", nargs=argparse.REMAINDER, metavar="key=value",
                   help="overrides (dotted keys, YAML values), e.g. datasets.cifar.train=/data/train")
    b.set_defaults(fn=cmd_benchmark)
    return b


def _parse_rest(args) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="ssl-scale benchmark SUITE", description="options and key=value overrides "
                                "after the suite (any order)")
    _add_options(p, defaults=False)
    p.add_argument("overrides", nargs="*")
    rest = p.parse_intermixed_args(list(getattr(args, "rest", []) or []))
    merged = dict(vars(args))
    for k, v in vars(rest).items():
        merged[k] = (list(args.checkpoint or []) + list(v)) if k == "checkpoint" else v
    merged.setdefault("overrides", [])
    return argparse.Namespace(**merged)


def cmd_benchmark(args) -> int:
    args = _parse_rest(args)
    slurm = [o for o in args.overrides if o.split("=", 1)[0].strip().startswith("slurm.")]
    if slurm and not args.submit:
        raise ValueError(f"benchmark: {slurm[0]!r} sets a submitted job; add --submit slurm|local")
    cfg = load_suite(args.suite, [o for o in args.overrides if o not in slurm])
    out = Path(args.out) if args.out else Path("benchmarks") / cfg["name"]
    if args.submit:
        from .submit import JobsFailed, submit_suite

        if args.watch:
            raise ValueError("benchmark: --submit evaluates --checkpoint lists; --watch runs in this process")
        try:
            submit_suite(cfg, args.checkpoint, out, args.submit, slurm)
        except JobsFailed as e:
            print(f"ssl-scale benchmark: {e}", file=sys.stderr)
            return 1
    elif args.watch:
        if args.checkpoint:
            raise ValueError("benchmark: give either --checkpoint or --watch, not both")
        watch_run(cfg, args.watch, out, timeout=args.watch_timeout, interval=args.watch_interval,
                  final_step=args.watch_final_step)
    else:
        run_suite(cfg, args.checkpoint, out)
    print(f"results in {out}/ (results.md, results.csv, results.json, charts)")
    return 0


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Standalone entry (tools/benchmark.py): `benchmark` subcommand with the CLI's one-line error handling."""
    parser = argparse.ArgumentParser(prog="ssl-scale")
    sub = parser.add_subparsers(dest="command", required=True)
    add_benchmark_parser(sub)
    args = parser.parse_args(["benchmark", *(sys.argv[1:] if argv is None else argv)])
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s", datefmt="%H:%M:%S")
    try:
        return args.fn(args)
    except (FileNotFoundError, ValueError, KeyError, NotADirectoryError, PermissionError) as e:
        msg = str(e).splitlines()[0] if str(e) else type(e).__name__
        print(f"ssl-scale benchmark: error: {msg}", file=sys.stderr)
        return 2
