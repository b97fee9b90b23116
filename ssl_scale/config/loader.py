"""Strict recipe loading: YAML files with `_base_` inheritance, dotted command-line overrides, checks."""
from __future__ import annotations

import dataclasses
import difflib
import re
import typing
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import yaml
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from .schema import CHOICES, REGISTRY_KEYS, Config

BASE_KEY = "_base_"
REPO_ROOT = Path(__file__).resolve().parents[2]


class ConfigError(ValueError):
    """A recipe or override problem; the message is one line naming the key and where it came from."""


def find_recipe(recipe: str | Path) -> Path:
    """Resolve a recipe given as a path, or as a name under `configs/` (with or without `.yaml`)."""
    p = Path(recipe)
    candidates = [p, p.with_suffix(".yaml")] if p.suffix != ".yaml" else [p]
    for root in (Path.cwd() / "configs", REPO_ROOT / "configs"):
        candidates += [root / p, root / p.with_suffix(".yaml")]
    for c in candidates:
        if c.is_file():
            return c.resolve()
    known = sorted(str(q.relative_to(REPO_ROOT / "configs")) for q in (REPO_ROOT / "configs").rglob("*.yaml"))
    close = difflib.get_close_matches(str(recipe), known, n=2, cutoff=0.4)
    hint = f"; did you mean {' or '.join(close)}?" if close else f"; shipped recipes: {', '.join(known)}"
    raise ConfigError(f"recipe {str(recipe)!r} not found{hint}")


def _read_yaml(path: Path) -> Dict[str, Any]:
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark else ""
        raise ConfigError(f"{path}{where}: not valid YAML ({getattr(e, 'problem', e)})") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: a recipe must be a mapping of keys, got {type(data).__name__}")
    return data


def _layers(path: Path, seen: Tuple[Path, ...] = ()) -> List[Tuple[str, Dict[str, Any]]]:
    """The recipe and its bases, base first, each tagged with its file name."""
    if path in seen:
        raise ConfigError(f"{path}: `_base_` cycle through {', '.join(map(str, seen))}")
    data = _read_yaml(path)
    bases = data.pop(BASE_KEY, None) or []
    bases = [bases] if isinstance(bases, str) else bases
    out: List[Tuple[str, Dict[str, Any]]] = []
    for b in bases:
        bp = (path.parent / b).resolve()
        if not bp.is_file():
            raise ConfigError(f"{path}: `_base_` file {b!r} not found (looked at {bp})")
        out += _layers(bp, seen + (path,))
    out.append((str(path), data))
    return out


def _field_types(cls) -> Dict[str, Any]:
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls)}


def check_keys(data: Any, cls, prefix: str, source: str) -> None:
    """Reject keys that the schema does not know, naming the dotted key and suggesting a close one."""
    if not isinstance(data, dict):
        return
    types = _field_types(cls)
    for key, value in data.items():
        dotted = f"{prefix}{key}"
        if key not in types:
            close = difflib.get_close_matches(str(key), list(types), n=1, cutoff=0.6)
            hint = f"; did you mean '{prefix}{close[0]}'?" if close else f"; valid keys here: {', '.join(types)}"
            raise ConfigError(f"{source}: unknown key '{dotted}'{hint}")
        tp = types[key]
        if dataclasses.is_dataclass(tp):
            sub = tp
            if value is not None and not isinstance(value, dict):
                raise ConfigError(f"{source}: '{dotted}' is a section, set its keys (e.g. {dotted}.{next(iter(_field_types(sub)))}=...)")
            check_keys(value, sub, dotted + ".", source)
        elif typing.get_origin(tp) in (list, List) and isinstance(value, list):
            (item,) = typing.get_args(tp)
            if dataclasses.is_dataclass(item):
                for i, v in enumerate(value):
                    if not isinstance(v, dict):
                        raise ConfigError(f"{source}: '{dotted}[{i}]' must be a mapping with keys {', '.join(_field_types(item))}")
                    check_keys(v, item, f"{dotted}[{i}].", source)


def parse_overrides(overrides: Sequence[str]) -> Dict[str, Any]:
    """`a.b=1 c=[1,2]` -> nested dict; values are parsed as YAML (so `null`, lists and numbers work)."""
    out: Dict[str, Any] = {}
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"command line: override {item!r} must look like key=value (e.g. data.batch_size=32)")
        key, raw = item.split("=", 1)
        key = key.strip()
        if not key or any(not part for part in key.split(".")):
            raise ConfigError(f"command line: override {item!r} has an empty key")
        try:
            # YAML 1.1 reads "1:00:00" as the base-60 integer 3600; keep such text a string, so that a
            # time written SLURM's way is refused by the key's type instead of silently meaning 3600.
            sexagesimal = re.fullmatch(r"[-+]?\d+(:[0-5]?\d)+", raw.strip())
            value = raw if sexagesimal else (yaml.safe_load(raw) if raw != "" else "")
        except yaml.YAMLError:
            value = raw
        node = out
        parts = key.split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"command line: override {item!r} conflicts with another override of '{part}'")
        node[parts[-1]] = value
    return out


def _merge(base: DictConfig, layer: Dict[str, Any], source: str) -> DictConfig:
    check_keys(layer, Config, "", source)
    try:
        return OmegaConf.merge(base, layer)
    except OmegaConfBaseException as e:
        key = getattr(e, "full_key", None) or "?"
        msg = str(getattr(e, "msg", None) or e).splitlines()[0]
        raise ConfigError(f"{source}: bad value for '{key}': {msg}") from None


def _get(cfg: DictConfig, dotted: str) -> Any:
    return OmegaConf.select(cfg, dotted)


def check_choices(cfg: DictConfig, registries: Optional[Dict[str, Any]] = None) -> None:
    """Invalid choices and unknown registered names, with the valid ones listed."""
    for key, valid in CHOICES.items():
        v = _get(cfg, key)
        if v not in valid:
            raise ConfigError(f"'{key}': invalid choice {v!r}; valid: {', '.join(valid)}")
    if registries is None:
        from ssl_scale import components

        registries = components.REGISTRIES
    for key, kind in REGISTRY_KEYS.items():
        reg = registries.get(kind)
        v = _get(cfg, key)
        if reg is not None and v not in reg:
            raise ConfigError(f"'{key}': {reg.unknown_message(v)}")
    _check_values(cfg)


def _check_values(cfg: DictConfig) -> None:
    def need(cond: bool, key: str, what: str) -> None:
        if not cond:
            raise ConfigError(f"'{key}': {what} (got {_get(cfg, key)!r})")

    need(cfg.data.batch_size > 0, "data.batch_size", "must be a positive number of images per process")
    need(len(cfg.data.crops) > 0, "data.crops", "needs at least one crop group")
    for i, c in enumerate(cfg.data.crops):
        need(c.size > 0 and c.count > 0, f"data.crops[{i}]", "size and count must be positive")
        need(len(c.scale) == 2 and 0 < c.scale[0] <= c.scale[1] <= 1, f"data.crops[{i}].scale", "must be [min, max] with 0 < min <= max <= 1")
    n_crops = sum(c.count for c in cfg.data.crops)
    need(all(0 <= i < n_crops for i in cfg.loss.crops_for_assign) and len(cfg.loss.crops_for_assign) > 0,
         "loss.crops_for_assign", f"must list crop indices in [0, {n_crops - 1}]")
    need(n_crops >= 2, "data.crops", "SwAV needs at least two crops in total")
    need(cfg.train.epochs > 0, "train.epochs", "must be positive")
    need(cfg.train.max_steps is None or cfg.train.max_steps >= 0, "train.max_steps", "must be >= 0 (0 or null = no limit)")
    need(cfg.loss.temperature > 0 and cfg.loss.epsilon > 0, "loss.temperature", "temperature and epsilon must be positive")
    need(len(cfg.model.head.num_prototypes) > 0 and all(k > 0 for k in cfg.model.head.num_prototypes),
         "model.head.num_prototypes", "needs at least one positive prototype count")
    need(cfg.run.keep_last >= 1, "run.keep_last", "must keep at least one checkpoint")
    need(cfg.run.checkpoint_every > 0 and cfg.run.log_every > 0, "run.checkpoint_every", "intervals must be positive")
    need(0 <= cfg.data.max_bad_fraction <= 1, "data.max_bad_fraction", "must be in [0, 1]")
    par = cfg.parallel
    need(par.fsdp_max_unit_params >= 0, "parallel.fsdp_max_unit_params", "must be >= 0 (0 = never split a block)")
    need(par.ac_every >= 1, "parallel.ac_every", "must be >= 1 (1 = every block)")
    need(not par.shard_prototypes or par.mode == "fsdp", "parallel.shard_prototypes", "needs parallel.mode=fsdp")
    need(not par.shard_prototypes or cfg.loss.queue_length == 0, "parallel.shard_prototypes",
         "does not support the SwAV queue yet; set loss.queue_length=0")
    need(par.mode != "fsdp" or cfg.train.precision != "fp16", "train.precision",
         "fp16 needs a gradient scaler that FSDP does not share; use bf16 with parallel.mode=fsdp")
    if cfg.optim.in_backward:
        need(cfg.optim.clip_grad_norm == 0, "optim.clip_grad_norm",
             "needs every gradient at once; set 0 or optim.in_backward=false")
        need(cfg.train.precision != "fp16", "train.precision",
             "fp16's gradient scaler needs every gradient at once; use bf16 with optim.in_backward=true")
    need(cfg.run.stop_check_every > 0, "run.stop_check_every", "must be a positive number of steps")
    sl = cfg.slurm
    for key in ("nodes", "tasks_per_node", "cpus_per_task", "timeout_min"):
        need(sl[key] > 0, f"slurm.{key}", "must be positive" + (" (minutes, e.g. 240 for 4 hours)" if key == "timeout_min" else ""))
    for key in ("gpus_per_node", "max_requeues", "signal_delay_s"):
        need(sl[key] >= 0, f"slurm.{key}", "must be >= 0")
    need(sl.signal_delay_s < sl.timeout_min * 60, "slurm.signal_delay_s", f"must be shorter than slurm.timeout_min ({sl.timeout_min} min)")
    if cfg.data.train.source in ("folder", "filelist", "shards"):
        need(bool(cfg.data.train.path), "data.train.path",
             f"is required when data.train.source={cfg.data.train.source}")
    if cfg.data.train.source == "synthetic":
        need(cfg.data.train.num_samples >= 1, "data.train.num_samples", "must be at least 1 image")
        need(cfg.data.train.image_size >= 2, "data.train.image_size", "must be at least 2 pixels")
    need(cfg.data.train.shuffle_buffer >= 1, "data.train.shuffle_buffer", "must be at least 1 (1 = no shuffle within shards)")


def load_config(recipe: str | Path, overrides: Sequence[str] = (), check: bool = True) -> DictConfig:
    """Load a recipe, its bases and the overrides into a typed, read-only config."""
    cfg = OmegaConf.structured(Config)
    for source, layer in _layers(find_recipe(recipe)):
        cfg = _merge(cfg, layer, source)
    cfg = _merge(cfg, parse_overrides(overrides), "command line")
    if check:
        check_choices(cfg)
    OmegaConf.set_readonly(cfg, True)
    return cfg


def config_from_yaml(text: str, source: str = "resolved recipe") -> DictConfig:
    """A config from the YAML of a resolved recipe (`to_yaml`'s output), checked like a recipe file."""
    try:
        data = yaml.safe_load(text) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"{source}: not valid YAML ({getattr(e, 'problem', e)})") from None
    cfg = _merge(OmegaConf.structured(Config), data, source)
    check_choices(cfg)
    OmegaConf.set_readonly(cfg, True)
    return cfg


def to_yaml(cfg: DictConfig) -> str:
    return OmegaConf.to_yaml(cfg, resolve=True)
