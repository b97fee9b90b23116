"""Export the trunk of a training checkpoint as a plain state dict (torch + safetensors) that the
matching torchvision model loads strictly. Reads the trunk tensors only, a few at a time; the
optimizer state is never read."""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Dict, Tuple

import torch
import torch.distributed.checkpoint as dcp
import yaml
from torch.distributed.checkpoint.metadata import TensorStorageMetadata

from .manager import COMPLETE, CheckpointManager, no_dist, resolve_checkpoint

TRUNK_PREFIX = "model.trunk."


def checkpoint_info(ckpt: Path) -> Dict[str, str]:
    """trunk name and stem recorded with the checkpoint (or in the run's config.yaml)."""
    info = json.loads((ckpt / COMPLETE).read_text()) if (ckpt / COMPLETE).is_file() else {}
    run_config = ckpt.parent.parent / "config.yaml"
    if "trunk" not in info and run_config.is_file():
        model = (yaml.safe_load(run_config.read_text()) or {}).get("model", {})
        info.update(trunk=model.get("trunk"), stem=model.get("stem", "imagenet"))
    return info


def read_trunk_state_dict(path: str | Path, chunk_bytes: int = 1 << 30) -> Tuple[Dict[str, torch.Tensor], Dict[str, str]]:
    """The trunk weights of a checkpoint (run dir or checkpoint dir), loaded in chunks of keys."""
    ckpt = resolve_checkpoint(path)
    meta = CheckpointManager.keys(ckpt)
    keys = [k for k, m in meta.items() if k.startswith(TRUNK_PREFIX) and isinstance(m, TensorStorageMetadata)]
    if not keys:
        raise ValueError(f"{ckpt} holds no trunk weights (no '{TRUNK_PREFIX}*' keys)")
    out: Dict[str, torch.Tensor] = {}
    batch: Dict[str, torch.Tensor] = {}
    size = 0

    def flush():
        nonlocal batch, size
        if batch:
            dcp.load(batch, checkpoint_id=str(ckpt), **no_dist(dcp.load, always=True))
            out.update({k[len(TRUNK_PREFIX):]: v for k, v in batch.items()})
        batch, size = {}, 0

    for k in keys:
        m = meta[k]
        t = torch.empty(tuple(m.size), dtype=m.properties.dtype)
        batch[k] = t
        size += t.numel() * t.element_size()
        if size >= chunk_bytes:
            flush()
    flush()
    return out, checkpoint_info(ckpt)


def export_trunk(path: str | Path, out: str | Path) -> Dict[str, Path]:
    """Write `<out>/trunk.pth`, `<out>/trunk.safetensors` and `<out>/trunk.json` (or, when `out` ends
    in .pt/.pth, that file with a .safetensors and .json beside it). Files appear complete or not at all."""
    from safetensors.torch import save_file

    sd, info = read_trunk_state_dict(path)
    out = Path(out)
    if out.suffix in (".pt", ".pth"):
        out.parent.mkdir(parents=True, exist_ok=True)
        pth, st, js = out, out.with_suffix(".safetensors"), out.with_suffix(".json")
    else:
        out.mkdir(parents=True, exist_ok=True)
        pth, st, js = out / "trunk.pth", out / "trunk.safetensors", out / "trunk.json"
    sd = {k: v.contiguous() for k, v in sd.items()}
    _atomic(pth, lambda p: torch.save(sd, p))
    _atomic(st, lambda p: save_file(sd, str(p), metadata={k: str(v) for k, v in info.items() if v is not None}))
    desc = dict(info, num_tensors=len(sd), num_parameters=sum(v.numel() for v in sd.values()),
                load=("m = ssl_scale.models.trunks.torchvision_reference(trunk, stem); "
                      "m.load_state_dict(torch.load('trunk.pth'), strict=True)"))
    _atomic(js, lambda p: p.write_text(json.dumps(desc, indent=1)))
    return {"pth": pth, "safetensors": st, "json": js}


def _atomic(path: Path, write) -> None:
    tmp = path.with_name(path.name + ".tmp")
    write(tmp)
    os.replace(tmp, path)
