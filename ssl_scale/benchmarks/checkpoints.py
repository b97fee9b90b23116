"""What a benchmark `--checkpoint` may be, resolved to trunk weights and a stable identity.

- a run directory or checkpoint directory of this engine (its trunk and stem are recorded with it);
- an exported trunk: a directory holding trunk.pth (+ trunk.json with trunk/stem), or a .pth file
  (with X.json beside it when exported by `ssl-scale export`);
- a plain torchvision state dict (.pth/.pt); the suite's model.trunk / model.stem say which trunk;
- the keyword `random`: the suite's trunk at random init from a fixed seed.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, Optional

import torch
import torch.nn as nn

RANDOM = "random"
TORCH_SUFFIXES = (".pth", ".pt", ".bin", ".ckpt")


@dataclass
class TrunkSource:
    """A resolved checkpoint: `build()` returns a fresh trunk carrying its weights."""

    spec: str  # as the user wrote it (the table's row name)
    trunk: str
    stem: str
    identity: Dict[str, object]  # what the feature cache keys on
    state_dict: Optional[Dict[str, torch.Tensor]] = field(default=None, repr=False)
    seed: int = 0
    step: Optional[int] = None

    def build(self, device="cpu") -> nn.Module:
        from ssl_scale.models.trunks import build_trunk

        if self.state_dict is None:  # random init, reproducibly, without touching the global RNG
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(self.seed)
                model = build_trunk(self.trunk, self.stem)
        else:
            model = build_trunk(self.trunk, self.stem, device="meta")
            check_fits(model, self.state_dict, self.spec, self.trunk, self.stem)
            # copies (fine-tuning updates parameters in place), floating tensors in float32
            sd = {k: (v.float() if v.is_floating_point() else v).clone() for k, v in self.state_dict.items()}
            model.load_state_dict(sd, strict=True, assign=True)
        return model.to(device)


def check_fits(model: nn.Module, sd: Dict[str, torch.Tensor], spec: str, trunk: str, stem: str) -> None:
    """One-line ValueError naming the checkpoint when its keys or shapes do not fit the trunk."""
    want = model.state_dict()
    what = f"checkpoint {spec!r} does not fit trunk {trunk!r} ({stem} stem)"
    missing = [k for k in want if k not in sd]
    extra = [k for k in sd if k not in want]
    if missing:
        raise ValueError(f"{what}: it lacks {missing[0]!r} (and {len(missing) - 1} more keys, {len(extra)} "
                         "unexpected); set model.trunk/model.stem to the trunk it was trained with")
    if extra:
        raise ValueError(f"{what}: unexpected key {extra[0]!r} (and {len(extra) - 1} more); "
                         "set model.trunk/model.stem to the trunk it was trained with")
    for k, t in want.items():
        if tuple(sd[k].shape) != tuple(t.shape):
            raise ValueError(f"{what}: {k!r} has shape {tuple(sd[k].shape)} there and {tuple(t.shape)} here; "
                             "set model.trunk/model.stem to the trunk it was trained with")


def _file_identity(p: Path) -> Dict[str, object]:
    st = p.stat()
    return {"path": str(p.resolve()), "mtime_ns": st.st_mtime_ns, "size": st.st_size}


def _clean_state_dict(obj, spec: str) -> Dict[str, torch.Tensor]:
    if isinstance(obj, dict):
        for key in ("state_dict", "model", "trunk"):  # common wrappers around a state dict
            if key in obj and isinstance(obj[key], dict) and not isinstance(obj.get(key), torch.Tensor):
                obj = obj[key]
                break
    if not isinstance(obj, dict) or not obj or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise ValueError(f"checkpoint {spec!r} is not a state dict of tensors")
    sd = {}
    for k, v in obj.items():
        for prefix in ("module.", "_orig_mod.", "model.trunk.", "trunk."):
            if k.startswith(prefix):
                k = k[len(prefix):]
        if k.startswith("fc."):  # a torchvision classifier head: not part of the trunk
            continue
        sd[k] = v
    return sd


def _json_info(p: Path) -> Dict[str, str]:
    if p.is_file():
        try:
            info = json.loads(p.read_text())
        except (OSError, ValueError):
            return {}
        return {k: info[k] for k in ("trunk", "stem") if info.get(k)}
    return {}


def resolve_checkpoint_spec(spec: str, trunk: str, stem: str, seed: int = 0) -> TrunkSource:
    """A TrunkSource for one `--checkpoint` value; `trunk`/`stem` are the suite's (used for `random` and
    plain state dicts; engine checkpoints and exported trunks record their own)."""
    spec = str(spec)
    if spec == RANDOM:
        return TrunkSource(spec, trunk, stem, {"random": True, "trunk": trunk, "stem": stem, "seed": seed,
                                               "torch": torch.__version__.split("+")[0]}, None, seed)
    p = Path(os.path.expanduser(spec))
    if not p.exists():
        raise FileNotFoundError(f"checkpoint {spec!r} does not exist (give a run dir, a checkpoint dir, an "
                                f"exported trunk, a .pth state dict or '{RANDOM}')")
    if p.is_dir() and (p / "trunk.pth").is_file():
        p = p / "trunk.pth"
    if p.is_file():
        try:
            obj = torch.load(p, map_location="cpu", weights_only=True)
        except Exception as e:
            raise ValueError(f"checkpoint {spec!r} cannot be read as a torch state dict "
                             f"({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})") from None
        sd = _clean_state_dict(obj, spec)
        info = _json_info(p.with_suffix(".json"))
        t, s = info.get("trunk", trunk), info.get("stem", stem)
        return TrunkSource(spec, t, s, {**_file_identity(p), "trunk": t, "stem": s}, sd, seed)
    from ssl_scale.checkpoint.export import read_trunk_state_dict
    from ssl_scale.checkpoint.manager import COMPLETE, resolve_checkpoint

    ckpt = resolve_checkpoint(p)  # FileNotFoundError / ValueError with one line
    sd, info = read_trunk_state_dict(ckpt)
    t, s = info.get("trunk") or trunk, info.get("stem") or stem
    marker = ckpt / COMPLETE
    ident = {**_file_identity(marker), "checkpoint": str(ckpt.resolve()), "trunk": t, "stem": s}
    return TrunkSource(spec, t, s, ident, sd, seed, info.get("step"))
