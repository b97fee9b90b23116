"""Checkpoints reshard: a run saved on 4 FSDP processes (prototypes split, activation checkpointing)
resumes on 2 and on 1, and a one-process run resumes on 2, each continuing with the same losses and
ending with the same weights as an uninterrupted one-process run of the same global batch; the trunk
exported from the 4-process checkpoint loads strictly into torchvision's model."""
import json
import shutil

import pytest
import torch

from tests.distributed._spawn import run_distributed
from tests.helpers import SMALL_MODEL, needs_fsdp_on_cpu

pytestmark = needs_fsdp_on_cpu

GLOBAL_BATCH, HALF, STEPS = 16, 2, 4
FSDP = ["parallel.mode=fsdp", "parallel.shard_prototypes=true", "parallel.activation_checkpointing=block"]


def _fit(jobs, world):
    """Trains each (run_dir, max_steps, overrides) in turn on this process group."""
    from ssl_scale.distributed import full_state_dict
    from ssl_scale.train.trainer import Trainer
    from tests.helpers import tiny_config

    out = []
    for run_dir, steps, extra in jobs:
        t = Trainer(tiny_config(run_dir, f"data.batch_size={GLOBAL_BATCH // world}", *SMALL_MODEL,
                                "run.checkpoint_every=2", "run.keep_last=5", f"train.max_steps={steps}", *extra))
        t.fit()
        resumed = t.resumed_from.name if t.resumed_from else None
        out.append((resumed, {k: v.detach().clone() for k, v in full_state_dict(t.model).items()}))
    return out


def _losses(run_dir):
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return {r["step"]: r["loss"] for r in rows}  # a resumed run appends its steps


def _copy_at_half(src, dst):
    shutil.copytree(src, dst)
    for ckpt in (dst / "checkpoints").iterdir():
        if ckpt.name != f"step_{HALF:09d}":
            shutil.rmtree(ckpt)


@pytest.mark.slow
@pytest.mark.timeout(2400)  # about a minute on 2 idle cores; six process groups on a busy machine take far longer
def test_save_on_four_resume_on_two_and_one_and_one_on_two(tmp_path):
    (_, ref_sd), = _fit([(tmp_path / "ref", STEPS, [])], 1)
    ref_losses = _losses(tmp_path / "ref")
    (_, four_sd), = run_distributed(_fit, 4, [(tmp_path / "four", HALF, FSDP)], 4)[0]
    _copy_at_half(tmp_path / "four", tmp_path / "four_to_two")
    _copy_at_half(tmp_path / "four", tmp_path / "four_to_one")
    _copy_at_half(tmp_path / "ref", tmp_path / "one_to_two")
    two = run_distributed(_fit, 2, [(tmp_path / "four_to_two", STEPS, FSDP), (tmp_path / "one_to_two", STEPS, FSDP)], 2)
    one = _fit([(tmp_path / "four_to_one", STEPS, [])], 1)
    resumed = {"four_to_two": two[0][0], "one_to_two": two[0][1], "four_to_one": one[0]}
    for name, (step, sd) in resumed.items():
        assert step == f"step_{HALF:09d}", name
        losses = _losses(tmp_path / name)
        for s in range(1, STEPS + 1):
            assert abs(losses[s] - ref_losses[s]) < 1e-5, (name, s, losses, ref_losses)
        assert sd.keys() == ref_sd.keys()
        for k, v in ref_sd.items():
            if v.is_floating_point():
                torch.testing.assert_close(sd[k], v, atol=2e-5, rtol=1e-4, msg=lambda m: f"{name} {k}: {m}")

    # export from the sharded 4-process checkpoint: plain trunk weights, equal to the run's
    from ssl_scale.checkpoint.export import export_trunk
    from ssl_scale.models.trunks import torchvision_reference

    files = export_trunk(tmp_path / "four", tmp_path / "export")
    exported = torch.load(files["pth"])
    torchvision_reference("regnet_y_debug", "cifar").load_state_dict(exported, strict=True)
    for k, v in exported.items():
        assert torch.equal(v, four_sd["trunk." + k]), k
