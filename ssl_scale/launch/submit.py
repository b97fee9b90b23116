"""Submitting a training run with submitit, to SLURM (sbatch) or to submitit's local executor, after
checking everything that can be checked before a job is queued (partition, time limit, writable folders)."""
from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path
from typing import Any, Dict, List, Optional

from ssl_scale.config import ConfigError, to_yaml


def submitit_folder(cfg) -> Path:
    """Where submitit keeps the job's script, pickles and logs: slurm.log_dir, else <run.dir>/slurm."""
    return Path(cfg.slurm.log_dir) if cfg.slurm.log_dir else Path(cfg.run.dir) / "slurm"


def parse_slurm_time(text: str) -> Optional[int]:
    """Minutes in a SLURM time limit ("MM", "MM:SS", "HH:MM:SS", "D-HH", "D-HH:MM", "D-HH:MM:SS");
    None for "infinite"/"UNLIMITED"."""
    text = text.strip()
    if text.lower() in ("infinite", "unlimited", "n/a", ""):
        return None
    m = re.fullmatch(r"(?:(\d+)-)?(\d+)(?::(\d+))?(?::(\d+))?", text)
    if not m:
        raise ValueError(f"not a SLURM time limit: {text!r}")
    days, a, b, c = m.group(1), int(m.group(2)), m.group(3), m.group(4)
    if days is not None:  # D-HH[:MM[:SS]]
        h, mi, s = a, int(b or 0), int(c or 0)
        return int(days) * 1440 + h * 60 + mi + (s > 0)
    if c is not None:  # HH:MM:SS
        return a * 60 + int(b) + (int(c) > 0)
    return a + (int(b or 0) > 0)  # MM or MM:SS


def _sinfo(*fields: str) -> List[List[str]]:
    out = subprocess.run(["sinfo", "-h", "-o", "|".join(fields)], capture_output=True, text=True, timeout=60)
    if out.returncode != 0:
        raise ConfigError(f"'launcher': slurm, but `sinfo` failed ({out.stderr.strip() or out.returncode}); "
                          f"is the SLURM controller reachable? (launcher=local runs on this machine instead)")
    return [line.split("|") for line in out.stdout.splitlines() if line.strip()]


def check_slurm(cfg) -> None:
    """The partition exists and the time limit fits it: a clear error now instead of a rejected sbatch."""
    if shutil.which("sbatch") is None:
        raise ConfigError("'launcher': slurm needs SLURM's `sbatch` on PATH and there is none here; use "
                          "launcher=local to run on this machine (extra_scripts/local_slurm.sh starts a one-node SLURM)")
    rows = _sinfo("%R", "%l", "%a")
    limits = {r[0]: r[1] for r in rows}
    part = cfg.slurm.partition
    if part is None:
        default = [r[0] for r in _sinfo("%P") if r[0].endswith("*")]
        part = default[0].rstrip("*") if default else None
    elif part not in limits:
        raise ConfigError(f"'slurm.partition': no partition {part!r} on this cluster "
                          f"(partitions: {', '.join(sorted(limits)) or 'none'})")
    if part in limits:
        cap = parse_slurm_time(limits[part])
        if cap is not None and cfg.slurm.timeout_min > cap:
            raise ConfigError(f"'slurm.timeout_min': {cfg.slurm.timeout_min} minutes is above the time limit of "
                              f"partition {part!r} ({limits[part]} = {cap} minutes)")


def check_launch(cfg) -> None:
    """Everything that can fail before submission, each as one line naming the key."""
    from ssl_scale.train.trainer import prepare_run_dir

    if cfg.launcher == "local" and cfg.slurm.nodes != 1:
        raise ConfigError(f"'slurm.nodes': launcher=local runs on this machine only; set slurm.nodes=1 "
                          f"(got {cfg.slurm.nodes})")
    if cfg.launcher == "slurm":
        check_slurm(cfg)
    prepare_run_dir(Path(cfg.run.dir), True)
    prepare_run_dir(submitit_folder(cfg), True, key="slurm.log_dir")


def executor_parameters(cfg) -> Dict[str, Any]:
    """submitit.AutoExecutor parameters from the `slurm.*` keys (the slurm_* ones are ignored locally)."""
    s = cfg.slurm
    extra = {"requeue": True, **dict(s.additional_parameters)}
    params = {"name": s.job_name, "nodes": s.nodes, "tasks_per_node": s.tasks_per_node,
              "cpus_per_task": s.cpus_per_task, "gpus_per_node": s.gpus_per_node, "timeout_min": s.timeout_min,
              "slurm_partition": s.partition, "slurm_constraint": s.constraint, "slurm_account": s.account,
              "slurm_qos": s.qos, "slurm_signal_delay_s": s.signal_delay_s, "slurm_setup": list(s.setup),
              "slurm_additional_parameters": extra}
    if s.mem_gb is not None:
        params["mem_gb"] = s.mem_gb
    if cfg.launcher == "local":
        params = {k: v for k, v in params.items() if not k.startswith("slurm_")}
        params["local_setup"] = list(s.setup)
    return {k: v for k, v in params.items() if v is not None}


def submit(cfg):
    """Check, then submit the run; returns the submitit Job (job.job_id, job.paths.stdout, job.results())."""
    import submitit

    from ssl_scale.launch.job import TrainJob

    check_launch(cfg)
    folder = submitit_folder(cfg)
    kw = {f"{cfg.launcher}_max_num_timeout": cfg.slurm.max_requeues}
    executor = submitit.AutoExecutor(folder=str(folder / "%j"), cluster=cfg.launcher, **kw)
    executor.update_parameters(**executor_parameters(cfg))
    return executor.submit(TrainJob(to_yaml(cfg)))
