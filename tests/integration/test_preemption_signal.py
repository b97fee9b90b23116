"""A real SIGUSR2 (the signal SLURM sends before a time limit or a preemption) reaching a training job:
the job writes the checkpoint of the step it was at, and past slurm.max_requeues it stops with a message
that says so instead of requeueing; the signal handlers are given back afterwards."""
import os
import signal
import threading
import time

import pytest

from ssl_scale.checkpoint import latest_checkpoint
from ssl_scale.checkpoint.manager import checkpoint_info
from ssl_scale.config import to_yaml
from ssl_scale.launch import RequeueLimitReached, TrainJob
from tests.helpers import tiny_config


def _signal_when(path, signum):
    def poke():
        deadline = time.monotonic() + 300
        while not path.exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        os.kill(os.getpid(), signum)

    threading.Thread(target=poke, daemon=True).start()


def test_signal_past_the_requeue_limit_checkpoints_and_stops(tmp_path):
    run = tmp_path / "run"
    cfg = tiny_config(run, "data.batch_size=8", "train.max_steps=200", "run.checkpoint_every=1000",
                      "slurm.max_requeues=1")
    before = signal.getsignal(signal.SIGUSR2), signal.getsignal(signal.SIGTERM)
    _signal_when(run / "metrics.jsonl", signal.SIGUSR2)  # after the first logged step
    with pytest.raises(RequeueLimitReached, match=r"after 1 requeues \(slurm.max_requeues=1\): not requeued again"):
        TrainJob(to_yaml(cfg), requeues=1)()
    last = latest_checkpoint(run)
    info = checkpoint_info(last)
    assert 1 <= info["step"] < 200 and not info["final"]  # the checkpoint written at the signal
    assert (signal.getsignal(signal.SIGUSR2), signal.getsignal(signal.SIGTERM)) == before
