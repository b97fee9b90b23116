"""The recipe flag train.compile: the trunk compiled with torch.compile trains to the losses of the eager
trunk, and its checkpoint has the eager model's keys (it resumes into, and exports from, either)."""
import json

import pytest
import torch

from ssl_scale.train.trainer import Trainer

from tests.helpers import needs_fsdp_on_cpu, tiny_config

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


def _fsdp_compiled(run_dir):
    import torch.distributed as dist

    from tests.helpers import SMALL_MODEL

    torch._dynamo.reset()
    world = dist.get_world_size() if dist.is_initialized() else 1
    extra = ["parallel.mode=fsdp", "train.compile=true"] if world > 1 else []
    t = Trainer(tiny_config(run_dir, *ONE_SIZE, f"data.batch_size={16 // world}", "run.checkpoint_every=100",
                            *SMALL_MODEL, *extra))
    t.fit()
    compiled = getattr(t.model.trunk, "_compiled_call_impl", None) is not None
    return [json.loads(line)["loss"] for line in (run_dir / "metrics.jsonl").read_text().splitlines()], compiled


@pytest.mark.slow
@needs_fsdp_on_cpu
def test_compiled_trunk_under_fsdp_trains_like_one_eager_process(tmp_path):
    """train.compile=true with parallel.mode=fsdp on 2 processes (the trunk compiled around its FSDP
    units): the losses of one eager process with the same global batch."""
    from tests.distributed._spawn import run_distributed

    eager, was_compiled = _fsdp_compiled(tmp_path / "one")
    assert not was_compiled and len(eager) == 3
    for losses, compiled in run_distributed(_fsdp_compiled, 2, tmp_path / "two"):
        assert compiled
        torch.testing.assert_close(torch.tensor(losses), torch.tensor(eager), rtol=1e-4, atol=1e-4)
