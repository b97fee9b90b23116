"""Fixtures shared by every test folder."""
import pytest
import torch

from tests.helpers import shared_photos


@pytest.fixture
def cifar_mini():
    """../shared/data/cifar10-mini (train/ and test/ class folders of real photos), or a clear skip."""
    shared_photos("cifar10-mini", "train")
    return shared_photos("cifar10-mini", "test").parent


@pytest.fixture
def one_thread():
    """Run the test on one torch thread (the CI machine has 2 cores; results do not depend on it)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="session")
def slurm_cluster(tmp_path_factory):
    """A running SLURM cluster: the one already up, else the one-node cluster of
    extra_scripts/local_slurm.sh, started here and stopped (exactly those daemons) at the end of the
    session. Skips with the reason where that cannot be done (not root, packages missing)."""
    import os
    import shutil
    import subprocess
    from pathlib import Path

    def up() -> bool:
        if shutil.which("sinfo") is None:
            return False
        r = subprocess.run(["sinfo", "-h", "-o", "%t"], capture_output=True, text=True, timeout=30)
        return r.returncode == 0 and any(s.strip("*~#") in ("idle", "mix", "alloc") for s in r.stdout.split())

    if up():
        yield "running"
        return
    missing = [b for b in ("slurmctld", "slurmd", "munged", "sbatch", "sinfo") if shutil.which(b) is None]
    if missing:
        pytest.skip(f"SLURM packages missing ({', '.join(missing)}): run extra_scripts/local_slurm.sh install as root")
    if os.geteuid() != 0:
        pytest.skip("starting the local SLURM daemons needs root (extra_scripts/local_slurm.sh start)")
    script = Path(__file__).resolve().parents[1] / "extra_scripts" / "local_slurm.sh"
    env = {**os.environ, "SSL_SCALE_SLURM_STATE": str(tmp_path_factory.mktemp("slurm_state"))}
    subprocess.run([str(script), "start"], check=True, env=env, timeout=120)
    try:
        yield "started"
    finally:
        subprocess.run([str(script), "stop"], check=False, env=env, timeout=120)
