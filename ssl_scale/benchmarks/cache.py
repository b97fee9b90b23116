"""On-disk feature cache: one torch.save file per (checkpoint, dataset split, layer, transform), keyed by
a hash of those; files are written to a temp name then os.replace'd, so a reader never sees half a file."""
from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
from pathlib import Path
from typing import Any, Callable, Dict, Optional, Tuple

import torch

log = logging.getLogger("ssl_scale")

Features = Tuple[torch.Tensor, torch.Tensor]


def cache_key(parts: Dict[str, Any]) -> str:
    """Stable hash of a JSON-able description (keys sorted)."""
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:32]


class FeatureCache:
    """`get(parts, compute)` returns cached (feats, labels) or computes, stores and returns them.

    Counts `hits` and `extractions` (misses); an in-memory layer avoids re-reading a file within a run.
    `directory=None` keeps features in memory only.
    """

    def __init__(self, directory: Optional[os.PathLike] = None):
        self.directory = Path(directory) if directory is not None else None
        self.hits = 0
        self.extractions = 0
        self._memory: Dict[str, Features] = {}

    def path(self, key: str) -> Optional[Path]:
        return self.directory / f"feats_{key}.pt" if self.directory is not None else None

    def get(self, parts: Dict[str, Any], compute: Callable[[], Features]) -> Features:
        key = cache_key(parts)
        if key in self._memory:
            self.hits += 1
            return self._memory[key]
        p = self.path(key)
        if p is not None and p.is_file():
            try:
                blob = torch.load(p, map_location="cpu", weights_only=True)
                if blob.get("parts") == json.loads(json.dumps(parts, sort_keys=True, default=str)):
                    self.hits += 1
                    self._memory[key] = (blob["feats"], blob["labels"])
                    return self._memory[key]
            except Exception as e:  # a corrupt or foreign file: recompute and overwrite it
                log.warning("feature cache file %s is unreadable (%s); extracting again", p, e)
        feats, labels = compute()
        self.extractions += 1
        if p is not None:
            self._write(p, {"parts": json.loads(json.dumps(parts, sort_keys=True, default=str)),
                            "feats": feats.contiguous(), "labels": labels.contiguous()})
        self._memory[key] = (feats, labels)
        return self._memory[key]

    def _write(self, p: Path, blob: Dict[str, Any]) -> None:
        p.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=p.name + ".", suffix=".tmp", dir=str(p.parent))
        os.close(fd)
        try:
            torch.save(blob, tmp)
            os.replace(tmp, p)
        except BaseException:
            if os.path.exists(tmp):
                os.unlink(tmp)
            raise
