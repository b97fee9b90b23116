"""A stop request (what a preemption signal turns into) seen by one rank only stops every rank at the same
step with a checkpoint of that step; resuming from it ends with the weights of an uninterrupted run."""
import json

import torch

from tests.distributed._spawn import run_distributed

STEPS = 5
ARGS = ["data.batch_size=8", f"train.max_steps={STEPS}", "run.checkpoint_every=100"]


def _fit(run_dir, stop_rank, stop_after):
    import torch.distributed as dist

    from ssl_scale.train.trainer import Trainer
    from tests.helpers import tiny_config

    t = Trainer(tiny_config(run_dir, *ARGS))
    stop = (lambda: dist.get_rank() == stop_rank and t.step >= stop_after) if stop_rank is not None else None
    result = t.fit(stop)
    return result, {k: v.detach().clone() for k, v in t.model.state_dict().items()}


def test_stop_on_one_rank_checkpoints_all_and_resumes_exactly(tmp_path):
    full = run_distributed(_fit, 2, tmp_path / "full", None, 0)
    stopped = run_distributed(_fit, 2, tmp_path / "split", 1, 2)  # only rank 1 sees the "signal"
    assert [r[0]["stopped"] for r in stopped] == [True, True]
    assert [r[0]["step"] for r in stopped] == [2, 2]  # both ranks stopped after the same step
    ckpts = sorted(p.name for p in (tmp_path / "split" / "checkpoints").iterdir())
    assert ckpts == ["step_000000002"]  # written at the stop, not a periodic one (every 100)
    resumed = run_distributed(_fit, 2, tmp_path / "split", None, 0)
    assert resumed[0][0]["step"] == STEPS and not resumed[0][0]["stopped"]
    for k, v in full[0][1].items():
        assert torch.equal(v, resumed[0][1][k]), k
    steps = [json.loads(l)["step"] for l in (tmp_path / "split" / "metrics.jsonl").read_text().splitlines()]
    assert steps == list(range(1, STEPS + 1))  # nothing lost or repeated around the stop
