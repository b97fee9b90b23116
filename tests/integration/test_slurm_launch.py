"""`ssl-scale launch` against a real SLURM (the one-node cluster of extra_scripts/local_slurm.sh, started
by the `slurm_cluster` fixture): a 2-task job joins one process group and ends with the weights of the same
recipe under torchrun; preempted twice (SLURM's warning signal, then `scontrol requeue`) it comes back by
itself, resumes from the checkpoints written at the signals and ends with the same weights; bad input is
refused before anything is submitted."""
import contextlib
import io
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from ssl_scale.cli import main
from tests.helpers import TINY

pytestmark = pytest.mark.slow

STEPS = 12
REPO = Path(__file__).resolve().parents[2]
TERMINAL = {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY", "BOOT_FAIL", "DEADLINE"}


def recipe(run_dir, *extra):
    return ["quickstart", f"run.dir={run_dir}", *TINY, "data.batch_size=8", f"train.max_steps={STEPS}",
            "run.checkpoint_every=1000", "slurm.tasks_per_node=2", "slurm.timeout_min=30", *extra]


STARTED = []  # the job ids these tests submitted: cancelled at the end of the module if still queued


@pytest.fixture(scope="module", autouse=True)
def cancel_our_jobs():
    """A failing test must not leave its job behind (on a shared cluster above all): exactly the jobs these
    tests started, and nothing else, are cancelled when the module ends (a no-op for the ended ones)."""
    yield
    if STARTED:
        subprocess.run(["scancel", *STARTED], capture_output=True, timeout=60)


def launch(args):
    """`ssl-scale launch ARGS` (no --wait): the job id it prints."""
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        code = main(["launch", *args])
    assert code == 0, out.getvalue()
    jid = re.search(r"submitted job (\S+)", out.getvalue()).group(1)
    STARTED.append(jid)
    return jid


def job_state(jid):
    r = subprocess.run(["squeue", "-h", "-j", jid, "-o", "%T"], capture_output=True, text=True)
    return r.stdout.strip()


def wait_for(cond, timeout, what):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return
        time.sleep(0.5)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def wait_job(jid, timeout=600):
    try:
        wait_for(lambda: job_state(jid) in TERMINAL | {""}, timeout, f"job {jid} to end")
    except AssertionError as e:  # say why: still pending (and the reason), or running
        why = subprocess.run(["squeue", "-h", "-j", jid, "-o", "%T %r"], capture_output=True, text=True).stdout
        raise AssertionError(f"{e}; squeue says: {why.strip()}") from None
    return job_state(jid)


def logged_steps(run_dir):
    p = Path(run_dir) / "metrics.jsonl"
    return [json.loads(l)["step"] for l in p.read_text().splitlines()] if p.exists() else []


def final_state(run_dir):
    """Model and optimizer tensors of the run's newest checkpoint, read back with DCP's own converter."""
    from torch.distributed.checkpoint.format_utils import dcp_to_torch_save

    from ssl_scale.checkpoint import latest_checkpoint

    ckpt = latest_checkpoint(run_dir)
    out = Path(run_dir) / "final_state.pt"
    dcp_to_torch_save(ckpt, out)
    sd = torch.load(out, weights_only=False)
    return ckpt, sd


def assert_same_weights(a, b):
    assert a["model"].keys() == b["model"].keys()
    for k in a["model"]:
        assert torch.equal(a["model"][k], b["model"][k]), k
    for k, v in a["optim"].items():
        if isinstance(v, torch.Tensor):
            assert torch.equal(v, b["optim"][k]), k


def job_log(run_dir, jid):
    return "".join(p.read_text() for p in sorted((Path(run_dir) / "slurm" / jid).glob("*_log.*")))


@pytest.fixture(scope="module")
def reference(slurm_cluster, tmp_path_factory):
    """The same recipe twice, uninterrupted: as a 2-task SLURM job, and under torchrun (run meanwhile)."""
    root = tmp_path_factory.mktemp("slurm_ref")
    jid = launch(recipe(root / "slurm"))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                    "-m", "ssl_scale.cli", "train", *recipe(root / "torchrun")], check=True, env=env, cwd=REPO,
                   capture_output=True, timeout=600)
    state = wait_job(jid)
    assert state in ("COMPLETED", ""), f"job {jid} ended {state}:\n{job_log(root / 'slurm', jid)[-3000:]}"
    return {"slurm": root / "slurm", "torchrun": root / "torchrun", "jid": jid}


def test_two_task_slurm_job_equals_torchrun(reference):
    run = reference["slurm"]
    ckpt, sd = final_state(run)
    assert ckpt.name == f"step_{STEPS:09d}"
    assert_same_weights(sd, final_state(reference["torchrun"])[1])
    rows = [json.loads(l) for l in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["world_size"] for r in rows] == [2] * STEPS  # both tasks joined one process group
    log = job_log(run, reference["jid"])
    assert "global_rank=0(2)" in log and "global_rank=1(2)" in log
    assert "1 intra-op threads per task" in log  # slurm.cpus_per_task=1, as torchrun gives OMP_NUM_THREADS=1


def test_preempted_job_requeues_itself_and_ends_with_the_same_weights(reference, tmp_path):
    run = tmp_path / "preempted"
    jid = launch(recipe(run))
    # 1. SLURM's warning signal (what it sends slurm.signal_delay_s before a time limit or a preemption)
    wait_for(lambda: len(logged_steps(run)) >= 2, 600, "step 2")
    subprocess.run(["scancel", "--signal=USR2", jid], check=True)
    wait_for(lambda: (run / "checkpoints").is_dir() and any((run / "checkpoints").glob("step_*[0-9]")), 300,
             "the checkpoint at the signal")
    first = int(sorted(p.name for p in (run / "checkpoints").glob("step_*[0-9]"))[0][5:])
    assert first < STEPS
    # 2. the job comes back by itself; then a requeue by the administrator (SIGTERM, then a restart)
    wait_for(lambda: len(logged_steps(run)) >= first + 2, 600, "progress after the first requeue")
    subprocess.run(["scontrol", "requeue", jid], check=True)
    assert wait_job(jid, 900) in ("COMPLETED", "")
    log = job_log(run, jid)
    resumed = [int(s) for s in re.findall(r"resumed from \S+/step_(\d+) at step", log)]
    assert len(resumed) == 2 and resumed[0] == first and first < resumed[1] < STEPS, log[-3000:]
    assert "requeueing the job (requeue 1" in log and "terminated (SIGTERM)" in log
    assert logged_steps(run) == list(range(1, STEPS + 1))  # no step lost or done twice
    ckpt, sd = final_state(run)
    assert ckpt.name == f"step_{STEPS:09d}"
    assert_same_weights(sd, final_state(reference["slurm"])[1])


def test_local_launcher_runs_the_same_job(reference, tmp_path, capsys):
    run = tmp_path / "local"
    code = main(["launch", *recipe(run, "launcher=local")])
    out, err = capsys.readouterr()
    assert code == 0, err
    assert f"finished at step {STEPS}" in out
    assert_same_weights(final_state(run)[1], final_state(reference["torchrun"])[1])


@pytest.mark.parametrize("args,needle", [
    (["slurm.partition=no_such_partition"], "'slurm.partition': no partition 'no_such_partition' on this cluster (partitions: debug"),
    (["slurm.timeout_min=1:00:00"], "'slurm.timeout_min'"),
    (["run.dir=BLOCKED/sub"], "'run.dir': cannot write"),
])
def test_bad_input_is_refused_before_submission(slurm_cluster, tmp_path, capsys, args, needle):
    blocker = tmp_path / "file"
    blocker.write_text("a file, not a folder")
    args = [a.replace("BLOCKED", str(blocker)) for a in args]
    before = subprocess.run(["squeue", "-h", "-o", "%i"], capture_output=True, text=True).stdout
    code = main(["launch", "quickstart", f"run.dir={tmp_path / 'run'}", *args])
    _, err = capsys.readouterr()
    assert code == 2 and needle in err and len(err.strip().splitlines()) == 1, err
    after = subprocess.run(["squeue", "-h", "-o", "%i"], capture_output=True, text=True).stdout
    assert after == before  # nothing was submitted
