"""The recipe flag train.compile: the trunk compiled with torch.compile trains to the losses of the eager
trunk, and its checkpoint has the eager model's keys (it resumes into, and exports from, either)."""
import json

import pytest
import torch

from ssl_scale.train.trainer import Trainer

from tests.helpers import tiny_config

# One crop resolution: one graph to compile (the CPU compile is the slow part of this test).
ONE_SIZE = ["data.crops=[{size: 16, count: 2, scale: [0.3, 1.0], blur_p: 0.0}]", "data.batch_size=8",
            "train.max_steps=3", "run.checkpoint_every=3"]


@pytest.mark.slow
def test_compiled_trunk_trains_like_eager(tmp_path):
    runs = {}
    for compiled in (False, True):
        torch._dynamo.reset()
        t = Trainer(tiny_config(tmp_path / str(compiled), *ONE_SIZE, f"train.compile={str(compiled).lower()}"))
        t.fit()
        lines = (tmp_path / str(compiled) / "metrics.jsonl").read_text().splitlines()
        runs[compiled] = (t, [json.loads(line)["loss"] for line in lines])
    (eager, eager_losses), (compiled, compiled_losses) = runs[False], runs[True]
    assert len(eager_losses) == 3
    torch.testing.assert_close(torch.tensor(compiled_losses), torch.tensor(eager_losses), rtol=1e-4, atol=1e-4)
    # the compiled trunk really is compiled, and the parameter names did not change
    assert hasattr(compiled.model.trunk, "_compiled_call_impl") and compiled.model.trunk._compiled_call_impl is not None
    a, b = eager.model.state_dict(), compiled.model.state_dict()
    assert a.keys() == b.keys()
    for k in a:
        if a[k].is_floating_point():
            torch.testing.assert_close(b[k], a[k], rtol=1e-3, atol=1e-4, msg=k)
    ckpt_a = sorted((tmp_path / "False" / "checkpoints").iterdir())[-1].name
    ckpt_b = sorted((tmp_path / "True" / "checkpoints").iterdir())[-1].name
    assert ckpt_a == ckpt_b == "step_000000003"
