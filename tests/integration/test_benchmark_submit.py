"""`ssl-scale benchmark --submit local|slurm`: every (checkpoint, evaluation) runs as its own submitit job
(submitit's local executor, and a real SLURM through the `slurm_cluster` fixture) and the assembled
results.json/csv/md are byte-identical to the same suite run in one process by `run_suite`; a second
submission reuses every cell; a partition that does not exist is refused before anything is submitted."""
import json

import pytest
import torch
import yaml

from ssl_scale.benchmarks.suite import main, run_suite
from ssl_scale.models.trunks import torchvision_reference
from tests.helpers import shared_photos

pytestmark = pytest.mark.slow

MEAN, STD = [0.4914, 0.4822, 0.4465], [0.2470, 0.2435, 0.2616]
FILES = ("results.json", "results.csv", "results.md")


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """The suite file, its two checkpoints (`random`, and a random-init torchvision resnet18 of another seed
    saved as a state dict) and the in-process results folder."""
    cifar_mini = shared_photos("cifar10-mini", "train").parent
    tmp = tmp_path_factory.mktemp("bench_submit")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the jobs run with OMP_NUM_THREADS=1 (set by `one_thread_env`)
    try:
        torch.manual_seed(1)
        ckpt = tmp / "resnet18_cifar_seed1.pth"
        torch.save(torchvision_reference("resnet18", "cifar").state_dict(), ckpt)
        suite = {
            "name": "cifar_submit",
            "model": {"trunk": "resnet18", "stem": "cifar"},
            "seed": 0,
            "device": "cpu",
            "features": {"batch_size": 200},
            "datasets": {"cifar": {"path": str(cifar_mini), "image_size": 16, "max_per_class": 20,
                                   "max_per_class_test": 10, "mean": MEAN, "std": STD}},
            "evaluations": [
                {"name": "knn", "dataset": "cifar", "k": 10},
                {"name": "lowshot", "dataset": "cifar", "shots": [1, 5], "seeds": [0, 1], "costs": [0.1, 1.0]},
            ],
        }
        suite_path = tmp / "suite.yaml"
        suite_path.write_text(yaml.safe_dump(suite))
        checkpoints = ["random", str(ckpt)]
        res = run_suite(str(suite_path), checkpoints, tmp / "in_process", echo=lambda s: None)
    finally:
        torch.set_num_threads(threads)
    assert len(res["rows"]) == 2 and len(res["columns"]) == 6  # knn top1, top5; 1/5-shot mean and std
    return suite_path, checkpoints, tmp / "in_process"


@pytest.fixture
def one_thread_env(monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # inherited by the jobs: same arithmetic as the reference


def submit(suite_path, checkpoints, out, launcher, *extra):
    args = [str(suite_path), "--out", str(out), "--submit", launcher, *extra]
    for c in checkpoints:
        args += ["--checkpoint", c]
    return main(args)


def assert_same_results(out, ref):
    for name in FILES:
        assert (out / name).read_bytes() == (ref / name).read_bytes(), name
    assert sorted(p.name for p in out.glob("chart_*.png")) == sorted(p.name for p in ref.glob("chart_*.png"))


def cells(out):
    return sorted(out.glob("jobs/c*_e*/cell.json"))


def test_submit_local_matches_in_process(reference, one_thread_env, tmp_path, capsys):
    suite_path, checkpoints, ref = reference
    out = tmp_path / "local"
    assert submit(suite_path, checkpoints, out, "local") == 0
    printed = capsys.readouterr().out
    assert "submitted 4 job(s) (local; 0 cell(s) reused)" in printed
    assert len(cells(out)) == 4  # one per checkpoint x evaluation
    assert_same_results(out, ref)
    # the same command again: every cell reused, nothing submitted, the same files
    mtimes = [p.stat().st_mtime_ns for p in cells(out)]
    assert submit(suite_path, checkpoints, out, "local") == 0
    assert "submitted" not in capsys.readouterr().out
    assert [p.stat().st_mtime_ns for p in cells(out)] == mtimes
    assert_same_results(out, ref)


def test_submit_slurm_matches_in_process(reference, one_thread_env, slurm_cluster, tmp_path, capsys):
    suite_path, checkpoints, ref = reference
    # bad input first: refused before any job exists
    bad = tmp_path / "bad"
    assert submit(suite_path, checkpoints, bad, "slurm", "slurm.partition=no_such_partition") == 2
    assert "no partition 'no_such_partition'" in capsys.readouterr().err
    assert not (bad / "jobs" / "submitit").exists() or not any((bad / "jobs" / "submitit").iterdir())

    out = tmp_path / "slurm"
    assert submit(suite_path, checkpoints, out, "slurm", "slurm.timeout_min=10", "slurm.job_name=bench") == 0
    printed = capsys.readouterr().out
    assert "submitted 4 job(s) (slurm; 0 cell(s) reused)" in printed
    assert len(cells(out)) == 4
    assert_same_results(out, ref)
    res = json.loads((out / "results.json").read_text())
    assert [r["checkpoint"] for r in res["rows"]] == checkpoints
