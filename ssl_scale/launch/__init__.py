"""Launchers: `ssl-scale launch` submits a recipe with submitit, to SLURM or to the local executor; the
job trains on every task, checkpoints on a preemption signal and requeues itself (see docs/slurm.md)."""
from .job import JobTerminated, RequeueLimitReached, TrainJob
from .submit import check_launch, submit, submitit_folder

__all__ = ["JobTerminated", "RequeueLimitReached", "TrainJob", "check_launch", "submit", "submitit_folder"]
