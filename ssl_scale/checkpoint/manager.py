"""Checkpoints of the whole run state with torch.distributed.checkpoint: atomic, complete-only,
newest-first resume, keep-last-N retention."""
from __future__ import annotations

import inspect
import json
import logging
import os
import re
import shutil
import time
import warnings
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional

import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint import FileSystemReader

log = logging.getLogger(__name__)

COMPLETE = "COMPLETE"  # written last, after every rank's shard and DCP's .metadata exist
_STEP_DIR = re.compile(r"^step_(\d{9})$")


def step_dir_name(step: int) -> str:
    return f"step_{step:09d}"


def is_complete(path: Path) -> bool:
    return (path / COMPLETE).is_file() and (path / ".metadata").is_file()


def list_checkpoints(ckpt_root: Path) -> List[Path]:
    """Complete checkpoints under `ckpt_root`, oldest first. Partial writes are never listed."""
    if not ckpt_root.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in ckpt_root.iterdir() if (m := _STEP_DIR.match(p.name)) and is_complete(p)]
    return [p for _, p in sorted(found)]


def latest_checkpoint(run_dir: str | Path) -> Optional[Path]:
    ckpts = list_checkpoints(Path(run_dir) / "checkpoints")
    return ckpts[-1] if ckpts else None


def checkpoint_info(path: Path) -> Dict[str, Any]:
    """What the COMPLETE record of a checkpoint says (step, time, stop_step, final ...); {} if unreadable."""
    try:
        return json.loads((Path(path) / COMPLETE).read_text())
    except (OSError, ValueError):
        return {}


def resolve_checkpoint(path: str | Path) -> Path:
    """A run directory (its newest complete checkpoint), a `checkpoints/` folder, or one checkpoint."""
    p = Path(path)
    if not p.exists():
        raise FileNotFoundError(f"checkpoint {str(p)!r} does not exist")
    if is_complete(p):
        return p
    for root in (p / "checkpoints", p):
        ckpts = list_checkpoints(root)
        if ckpts:
            return ckpts[-1]
    if (p / ".metadata").is_file():
        raise ValueError(f"checkpoint {str(p)!r} is incomplete (its write was interrupted); use an older one")
    raise FileNotFoundError(f"no complete checkpoint in {str(p)!r} (expected {p}/checkpoints/step_*/ with a {COMPLETE} file)")


def _rank() -> int:
    return dist.get_rank() if dist.is_initialized() else 0


def no_dist(fn: Callable, always: bool = False) -> Dict[str, bool]:
    """Keyword arguments telling `fn` (dcp.save / dcp.load) to work in this process alone: when no
    process group exists (or `always`), and only where `fn` takes `no_dist` (torch 2.6 does not, and
    assumes it by itself when there is no process group)."""
    if (dist.is_initialized() and not always) or "no_dist" not in inspect.signature(fn).parameters:
        return {}
    return {"no_dist": True}


# DCP warns on every single-process save/load even when told no_dist=True; that is the normal case here.
warnings.filterwarnings("ignore", message="torch.distributed is disabled, unavailable or uninitialized")


def _barrier() -> None:
    if dist.is_initialized():
        dist.barrier()


class CheckpointManager:
    """Saves `state` (a dict of state_dict()-able values) under run_dir/checkpoints/step_N/.

    A checkpoint is written into `step_N.partial/` by all ranks, then rank 0 adds the COMPLETE
    marker and renames the folder: a crash at any point leaves no folder that resume would pick.
    """

    def __init__(self, run_dir: str | Path, keep_last: int = 2):
        self.root = Path(run_dir) / "checkpoints"
        self.keep_last = keep_last

    def save(self, step: int, state: Dict[str, Any], info: Optional[Dict[str, Any]] = None) -> Path:
        final = self.root / step_dir_name(step)
        tmp = self.root / (step_dir_name(step) + ".partial")
        if _rank() == 0:
            self.root.mkdir(parents=True, exist_ok=True)
            if tmp.exists():
                shutil.rmtree(tmp)
        _barrier()
        t0 = time.perf_counter()
        dcp.save(state, checkpoint_id=str(tmp), **no_dist(dcp.save))
        _barrier()
        if _rank() == 0:
            (tmp / COMPLETE).write_text(json.dumps({"step": step, "time": time.time(), **(info or {})}, indent=1))
            _fsync_dir(tmp)
            if final.exists():  # re-save of the same step (e.g. at a signal right after a periodic save)
                shutil.rmtree(final)
            os.replace(tmp, final)
            _fsync_dir(self.root)
            self._retain()
            log.info("checkpoint %s written in %.1fs", final, time.perf_counter() - t0)
        _barrier()
        return final

    def _retain(self) -> None:
        ckpts = list_checkpoints(self.root)
        for old in ckpts[: max(0, len(ckpts) - self.keep_last)]:
            shutil.rmtree(old, ignore_errors=True)
        for partial in self.root.glob("*.partial"):  # leftovers of crashed writes
            shutil.rmtree(partial, ignore_errors=True)

    @staticmethod
    def keys(path: str | Path) -> Dict[str, Any]:
        """The flattened keys stored in a checkpoint, with their metadata (no tensor is read)."""
        return dict(FileSystemReader(str(path)).read_metadata().state_dict_metadata)

    @staticmethod
    def load(path: str | Path, state: Dict[str, Any]) -> None:
        """Load into `state` in place (DCP reshards to this run's layout)."""
        dcp.load(state, checkpoint_id=str(path), **no_dist(dcp.load))


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    except OSError:
        pass
