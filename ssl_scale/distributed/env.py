"""Process-group wiring: ranks from torchrun or SLURM, device choice, and the reduce callables
that losses use. The only module (with parallelize.py) that touches torch.distributed."""
from __future__ import annotations

import datetime
import os
from dataclasses import dataclass
from typing import Callable, Dict, Optional

import torch
import torch.distributed as dist


@dataclass
class DistEnv:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")
    backend: Optional[str] = None  # None: single process, no process group
    owns_group: bool = False  # this run created the process group (and so destroys it at the end)

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def _env_int(*names: str, default: int) -> int:
    for n in names:
        if n in os.environ:
            return int(os.environ[n])
    return default


def pick_device(pref: str, local_rank: int) -> torch.device:
    if pref == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("train.device=cuda but no CUDA device is visible; use train.device=cpu or auto")
    if pref in ("cuda", "auto") and torch.cuda.is_available():
        torch.cuda.set_device(local_rank % torch.cuda.device_count())
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def rendezvous_port(job_id: str) -> int:
    """The port of a job's rendezvous, derived from its id: the same for every task and every restart of
    the job, and different for jobs that share a node (unless their ids are 20,000 apart)."""
    digits = "".join(ch for ch in str(job_id) if ch.isdigit()) or "0"
    return 20000 + int(digits) % 20000


def cluster_rendezvous() -> Optional[Dict[str, str]]:
    """Inside a task of a submitit job (SLURM or local executor) or of a plain `srun` step, set torchrun's
    variables (RANK, WORLD_SIZE, LOCAL_RANK, LOCAL_WORLD_SIZE, MASTER_ADDR, MASTER_PORT) from the cluster's.

    The address is the first host of the job's node list; the port comes from the job id. Returns the
    variables set, or None where torchrun already set them or no cluster job is seen."""
    if "WORLD_SIZE" in os.environ:
        return None
    if os.environ.get("SUBMITIT_EXECUTOR"):
        import submitit

        job = submitit.JobEnvironment()
    elif "SLURM_STEP_ID" in os.environ and "SLURM_PROCID" in os.environ:  # srun, without submitit
        from submitit.slurm.slurm import SlurmJobEnvironment

        job = SlurmJobEnvironment()
    else:
        return None
    addr = job.hostnames[0] if job.cluster == "slurm" else "127.0.0.1"
    values = {"RANK": str(job.global_rank), "WORLD_SIZE": str(job.num_tasks), "LOCAL_RANK": str(job.local_rank),
              "LOCAL_WORLD_SIZE": str(job.num_tasks // max(job.num_nodes, 1)),
              "MASTER_ADDR": os.environ.get("MASTER_ADDR", addr),
              "MASTER_PORT": os.environ.get("MASTER_PORT", str(rendezvous_port(job.raw_job_id)))}
    os.environ.update(values)
    return values


def init_distributed(device_pref: str = "auto", timeout_s: int = 1800) -> DistEnv:
    """Join the process group described by the environment (torchrun's RANK/WORLD_SIZE/LOCAL_RANK, or a
    SLURM / submitit job's, see `cluster_rendezvous`); one process otherwise."""
    if dist.is_initialized():  # joined already (a test harness, a launcher): use that group
        world, rank = dist.get_world_size(), dist.get_rank()
        local = _env_int("LOCAL_RANK", default=rank)
        device = pick_device(device_pref, local)
        return DistEnv(rank, world, local, device, dist.get_backend())
    cluster_rendezvous()
    world = _env_int("WORLD_SIZE", default=1)
    rank = _env_int("RANK", default=0)
    local = _env_int("LOCAL_RANK", default=0)
    device = pick_device(device_pref, local)
    if world <= 1:
        return DistEnv(0, 1, 0, device, None)
    backend = "nccl" if device.type == "cuda" else "gloo"
    if not dist.is_initialized():
        kwargs = {"device_id": device} if backend == "nccl" else {}
        dist.init_process_group(backend, rank=rank, world_size=world,
                                timeout=datetime.timedelta(seconds=timeout_s), **kwargs)
    return DistEnv(rank, world, local, device, backend, owns_group=True)


def destroy(env: Optional[DistEnv] = None) -> None:
    """Tear down the process group if `env` created it (or unconditionally when env is None)."""
    if dist.is_initialized() and (env is None or env.owns_group):
        dist.destroy_process_group()


def barrier() -> None:
    if dist.is_initialized():
        dist.barrier()


def all_reduce_sum(t: torch.Tensor) -> torch.Tensor:
    """In-place sum over all ranks (no-op in one process); returns `t`."""
    if dist.is_initialized() and dist.get_world_size() > 1:
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t


def all_reduce_max(t: torch.Tensor) -> torch.Tensor:
    if dist.is_initialized() and dist.get_world_size() > 1:
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return t


def any_rank(flag: bool, device: torch.device) -> bool:
    """True on every rank when `flag` is true on at least one (one one-element all-reduce)."""
    t = torch.tensor(1.0 if flag else 0.0, device=device)
    return bool(all_reduce_max(t))


def broadcast_object(obj, src: int = 0):
    if not (dist.is_initialized() and dist.get_world_size() > 1):
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def reduce_fns() -> tuple[Callable[[torch.Tensor], torch.Tensor], Callable[[torch.Tensor], torch.Tensor]]:
    """(sum, max) in-place all-reduce callables handed to the Sinkhorn / SwAV loss."""
    return all_reduce_sum, all_reduce_max
