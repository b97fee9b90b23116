"""The launch side that needs no cluster: `slurm.*` keys and their checks, SLURM time limits, the
rendezvous read from a SLURM task's environment, and the sbatch script submitit writes from the keys."""
import os

import pytest
import torch

from ssl_scale.config import ConfigError, config_from_yaml, load_config, to_yaml
from ssl_scale.distributed.env import cluster_rendezvous, rendezvous_port
from ssl_scale.launch.submit import executor_parameters, parse_slurm_time


@pytest.mark.parametrize("text,minutes", [
    ("30", 30), ("30:00", 30), ("30:01", 31), ("2:00:00", 120), ("1-00:00:00", 1440), ("2-3", 2 * 1440 + 180),
    ("1-2:30", 1440 + 150), ("infinite", None), ("UNLIMITED", None),
])
def test_slurm_time_limits(text, minutes):
    assert parse_slurm_time(text) == minutes


def test_slurm_time_rejects_garbage():
    with pytest.raises(ValueError, match="not a SLURM time limit"):
        parse_slurm_time("2h")


@pytest.mark.parametrize("override,needle", [
    ("slurm.timeout_min=2h", "'slurm.timeout_min'"),
    ("slurm.timeout_min=1:00:00", "'slurm.timeout_min'"),  # not YAML's base-60 integer 3600
    ("slurm.timeout_min=0", "'slurm.timeout_min': must be positive"),
    ("slurm.tasks_per_node=0", "'slurm.tasks_per_node'"),
    ("slurm.partiton=gpu", "did you mean 'slurm.partition'"),
    ("launcher=cloud", "'launcher': invalid choice 'cloud'; valid: slurm, local"),
    ("slurm.signal_delay_s=7200", "'slurm.signal_delay_s': must be shorter than slurm.timeout_min"),
])
def test_bad_slurm_keys_name_the_key(override, needle):
    with pytest.raises(ConfigError, match=None) as e:
        load_config("quickstart", [override])
    assert needle in str(e.value) and len(str(e.value).splitlines()) == 1


def test_resolved_recipe_round_trips_through_yaml():
    cfg = load_config("quickstart", ["slurm.nodes=2", "slurm.setup=[module load cuda]", "launcher=local",
                                     "slurm.additional_parameters={exclusive: true}"])
    back = config_from_yaml(to_yaml(cfg))
    assert to_yaml(back) == to_yaml(cfg)
    assert back.slurm.setup == ["module load cuda"] and back.launcher == "local"


def test_sbatch_script_carries_the_slurm_keys(tmp_path):
    import submitit

    cfg = load_config("quickstart", ["slurm.partition=gpu", "slurm.nodes=4", "slurm.tasks_per_node=8",
                                     "slurm.gpus_per_node=8", "slurm.cpus_per_task=10", "slurm.mem_gb=480",
                                     "slurm.timeout_min=4320", "slurm.account=vision", "slurm.qos=high",
                                     "slurm.constraint=volta32gb", "slurm.job_name=seer", "slurm.signal_delay_s=300",
                                     "slurm.setup=[source env.sh]", "slurm.additional_parameters={comment: seer10b}"])
    ex = submitit.AutoExecutor(folder=str(tmp_path), cluster="slurm")
    ex.update_parameters(**executor_parameters(cfg))
    script = ex._executor._make_submission_file_text("python job.py", "uid")
    for line in ["--partition=gpu", "--nodes=4", "--ntasks-per-node=8", "--gpus-per-node=8", "--cpus-per-task=10",
                 "--mem=480GB", "--time=4320", "--account=vision", "--qos=high", "--constraint=volta32gb",
                 "--job-name=seer", "--signal=USR2@300", "--requeue", "--comment=seer10b"]:
        assert f"#SBATCH {line}\n" in script + "\n", line
    assert "source env.sh" in script


def test_rendezvous_from_a_slurm_task(monkeypatch):
    for k in ("WORLD_SIZE", "RANK", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT", "SUBMITIT_EXECUTOR"):
        monkeypatch.setenv(k, "unset")  # recorded as absent, so the rendezvous below is undone afterwards
        monkeypatch.delenv(k)
    # what srun gives task 5 of a 2-node x 4-task step of job 4242 (SLURM's own variable names)
    monkeypatch.setenv("SLURM_STEP_ID", "0")
    monkeypatch.setenv("SLURM_JOB_ID", "4242")
    monkeypatch.setenv("SLURM_PROCID", "5")
    monkeypatch.setenv("SLURM_LOCALID", "1")
    monkeypatch.setenv("SLURM_NTASKS", "8")
    monkeypatch.setenv("SLURM_JOB_NUM_NODES", "2")
    monkeypatch.setenv("SLURM_NODEID", "1")
    monkeypatch.setenv("SLURM_JOB_NODELIST", "gpu[017-018]")
    got = cluster_rendezvous()
    assert got == {"RANK": "5", "WORLD_SIZE": "8", "LOCAL_RANK": "1", "LOCAL_WORLD_SIZE": "4",
                   "MASTER_ADDR": "gpu017", "MASTER_PORT": str(20000 + 4242 % 20000)}
    assert all(os.environ[k] == v for k, v in got.items())
    assert cluster_rendezvous() is None  # torchrun's variables are set now: nothing to do


def test_rendezvous_port_is_per_job():
    assert rendezvous_port("4242") == rendezvous_port("4242") == 24242
    assert rendezvous_port("123_4") == 20000 + 1234
    assert len({rendezvous_port(str(j)) for j in range(1000, 1100)}) == 100
    assert 20000 <= rendezvous_port("99999999") < 40000  # above the privileged ports, below the ephemeral range


@pytest.mark.parametrize("env, cpus, expected", [(None, 3, 3), ("2", 5, 2)])
def test_task_threads_follow_cpus_per_task_unless_the_user_set_them(monkeypatch, env, cpus, expected):
    from ssl_scale.launch.job import task_threads

    before = torch.get_num_threads()
    if env is None:
        monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    else:
        monkeypatch.setenv("OMP_NUM_THREADS", env)
    try:
        assert task_threads(cpus) == expected
        assert torch.get_num_threads() == expected and os.environ["OMP_NUM_THREADS"] == str(expected)
    finally:
        torch.set_num_threads(before)
