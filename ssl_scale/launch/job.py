"""The function a submitit job runs on each of its tasks: join the job's process group, train, and on a
stop signal write the checkpoint of the current step on every rank, then requeue through submitit."""
from __future__ import annotations

import logging
import os
import signal
from typing import Any, Dict

log = logging.getLogger("ssl_scale")


class RequeueLimitReached(RuntimeError):
    """The job was preempted or timed out more than slurm.max_requeues times; its checkpoint is kept."""


class JobTerminated(RuntimeError):
    """SIGTERM (scancel, `scontrol requeue`, preemption without a warning signal): checkpointed and stopped."""


def finished_step(run_dir: str):
    """The step of the run's final checkpoint when the run has finished, else None."""
    from ssl_scale.checkpoint import latest_checkpoint
    from ssl_scale.checkpoint.manager import checkpoint_info

    last = latest_checkpoint(run_dir)
    info = checkpoint_info(last) if last is not None else {}
    return info.get("step") if info.get("final") else None


def task_threads(cpus_per_task: int) -> int:
    """The intra-op threads of one task: its own CPUs (slurm.cpus_per_task), not every core of the node,
    as torchrun gives each of its workers OMP_NUM_THREADS=1; an OMP_NUM_THREADS the user set wins."""
    import torch

    threads = int(os.environ.get("OMP_NUM_THREADS") or cpus_per_task)
    os.environ["OMP_NUM_THREADS"] = str(threads)
    torch.set_num_threads(threads)
    return threads


class TrainJob:
    """Picklable callable for submitit. It carries the resolved recipe as YAML text (so the job does not
    depend on the recipe files staying unchanged) and how many times submitit requeued it.

    submitit calls `checkpoint()` before it requeues the job; it returns the same job, one requeue further.
    """

    def __init__(self, recipe_yaml: str, requeues: int = 0):
        self.recipe_yaml = recipe_yaml
        self.requeues = requeues

    def checkpoint(self, *args: Any, **kwargs: Any):
        from submitit.helpers import DelayedSubmission

        return DelayedSubmission(TrainJob(self.recipe_yaml, self.requeues + 1))

    def __call__(self) -> Dict[str, Any]:
        import submitit

        from ssl_scale.cli import _setup_logging
        from ssl_scale.config import config_from_yaml
        from ssl_scale.distributed.env import cluster_rendezvous
        from ssl_scale.launch.preemption import StopOnSignal
        from ssl_scale.train.run import train

        cluster_rendezvous()
        _setup_logging()
        cfg = config_from_yaml(self.recipe_yaml)
        log.info("%d intra-op threads per task", task_threads(cfg.slurm.cpus_per_task))
        done = finished_step(cfg.run.dir)
        if done is not None:
            log.info("run %s already finished at step %s: nothing to do", cfg.run.dir, done)
            return {"step": done, "run_dir": cfg.run.dir, "stopped": False, "already_finished": True}
        usr = submitit.JobEnvironment._usr_sig()  # what SLURM sends slurm.signal_delay_s before the end
        with StopOnSignal([usr, signal.SIGTERM]) as stop:
            result = train(cfg, stop=stop)
        if not result["stopped"]:
            return result
        step = result["step"]
        if stop.signum == signal.SIGTERM:
            raise JobTerminated(f"terminated (SIGTERM) at step {step}; the checkpoint of that step is written "
                                f"and a restart of the job resumes from it")
        restarts = max(self.requeues, int(os.environ.get("SLURM_RESTART_COUNT", "0") or 0))
        limit = cfg.slurm.max_requeues
        if restarts >= limit:
            raise RequeueLimitReached(
                f"preempted or timed out at step {step} after {restarts} requeues (slurm.max_requeues={limit}): "
                f"not requeued again; the checkpoint of step {step} is kept, and launching the same recipe "
                f"again (or with a higher slurm.max_requeues) continues from it")
        if result.get("rank", 0) != 0:
            return {**result, "requeued": True}  # rank 0 requeues the whole job
        log.warning("requeueing the job (requeue %d of at most slurm.max_requeues=%d)", restarts + 1, limit)
        _requeue(stop.previous(usr), usr, step)
        return {**result, "requeued": True}  # not reached under submitit: its handler exits


def _requeue(handler, signum: int, step: int) -> None:
    """Hand over to submitit's own handler: it pickles `TrainJob.checkpoint()`'s submission, requeues the
    job (`scontrol requeue`, or a restart by the local executor) and exits."""
    from submitit.core.job_environment import SignalHandler

    if not isinstance(getattr(handler, "__self__", None), SignalHandler):
        raise RuntimeError(f"stopped by a signal at step {step} outside a submitit job, so nothing requeues it; "
                           f"the checkpoint of step {step} is written: start the run again to resume")
    handler(signum, None)
