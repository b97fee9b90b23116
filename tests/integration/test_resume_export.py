"""Exact resume (N + N steps == 2N steps, bitwise), resume picks only complete checkpoints, export."""
import json

import pytest
import torch

from ssl_scale.cli import main as cli_main
from ssl_scale.models.trunks import torchvision_reference
from ssl_scale.train.trainer import Trainer, TrainingDiverged

from tests.helpers import tiny_config

QUEUE = ["loss.queue_length=32", "loss.queue_start_epoch=0"]  # the queue is run state too


def _fit(run_dir, steps, *extra):
    t = Trainer(tiny_config(run_dir, f"train.max_steps={steps}", "run.checkpoint_every=3", *QUEUE, *extra))
    t.fit()
    return t


def _full_and_resumed(tmp_path, first, extra=(), extra_resumed=None):
    """A 6-step run, and one stopped after `first` steps and resumed to 6 (with `extra_resumed`, when
    given, instead of `extra`); checks that the second resumed from step `first`."""
    full = _fit(tmp_path / "full", 6, *extra)
    _fit(tmp_path / "split", first, *extra)
    resumed = _fit(tmp_path / "split", 6, *(extra if extra_resumed is None else extra_resumed))
    assert resumed.resumed_from.name == f"step_{first:09d}"
    return full, resumed


def _assert_weights_equal(a, b):
    a, b = a.model.state_dict(), b.model.state_dict()
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


def test_resume_is_bitwise_exact(tmp_path):
    full, resumed = _full_and_resumed(tmp_path, 3)
    _assert_weights_equal(full, resumed)
    assert torch.equal(full.loss_fn.queue, resumed.loss_fn.queue)
    assert torch.equal(full.optimizer.state_dict()["state"][0]["momentum_buffer"],
                       resumed.optimizer.state_dict()["state"][0]["momentum_buffer"])
    steps = [json.loads(l)["step"] for l in (tmp_path / "split" / "metrics.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3, 4, 5, 6]  # nothing repeated, nothing skipped


def test_resume_from_a_checkpoint_written_while_prototypes_are_frozen(tmp_path):
    # At step 2 of 4 frozen steps the prototypes have no momentum yet; resuming must not demand one.
    frozen = ["loss.freeze_prototypes_iters=4", "run.checkpoint_every=2"]
    _assert_weights_equal(*_full_and_resumed(tmp_path, 2, frozen))


def test_resume_with_the_optimizer_stepped_in_backward(tmp_path):
    """optim.in_backward=true: N + N steps equal 2N bitwise, momentum included; and a checkpoint
    written with it resumes without it (one optimizer layout into the other) to the weights of a run
    that never used it."""
    ib = ["optim.in_backward=true"]
    full, resumed = _full_and_resumed(tmp_path / "ib", 3, ib)
    _assert_weights_equal(full, resumed)
    for p, q in zip(full.model.parameters(), resumed.model.parameters()):
        assert torch.equal(full.optimizer.state[p]["momentum_buffer"], resumed.optimizer.state[q]["momentum_buffer"])
    plain, switched = _full_and_resumed(tmp_path / "switched", 3, ib, extra_resumed=[])
    a, b = plain.model.state_dict(), switched.model.state_dict()
    for k in a:
        torch.testing.assert_close(b[k], a[k], rtol=1e-5, atol=1e-6, msg=lambda m: f"{k}: {m}")


def test_export_loads_strictly_into_torchvision(tmp_path):
    t = _fit(tmp_path / "run", 2)
    assert cli_main(["export", str(tmp_path / "run"), str(tmp_path / "out")]) == 0
    sd = torch.load(tmp_path / "out" / "trunk.pth")
    ref = torchvision_reference("resnet18", "cifar")
    ref.load_state_dict(sd, strict=True)
    from safetensors.torch import load_file

    st = load_file(str(tmp_path / "out" / "trunk.safetensors"))
    assert st.keys() == sd.keys() and all(torch.equal(st[k], sd[k]) for k in sd)
    x = torch.randn(4, 3, 28, 28)
    ref.eval()
    t.model.trunk.eval()
    with torch.no_grad():
        assert torch.allclose(ref(x), t.model.trunk(x), atol=1e-6)


def test_checkpoint_of_another_model_is_a_clear_error(tmp_path):
    _fit(tmp_path / "run", 1)
    with pytest.raises(Exception, match="written by another model"):
        Trainer(tiny_config(tmp_path / "run", "model.trunk=resnet34", "train.max_steps=2"))


def test_outputs_metrics_tensorboard_and_plot(tmp_path):
    _fit(tmp_path / "run", 2, "run.tensorboard=true")
    rows = [json.loads(l) for l in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert {"step", "loss", "lr", "images_per_s", "world_size", "prototype_usage"} <= rows[-1].keys()
    assert list((tmp_path / "run" / "tensorboard").glob("events.out.tfevents.*"))
    assert (tmp_path / "run" / "training_curves.png").stat().st_size > 1000
    assert (tmp_path / "run" / "config.yaml").read_text().count("batch_size: 16") == 1


def test_non_finite_loss_stops_and_keeps_the_good_checkpoint(tmp_path):
    _fit(tmp_path / "run", 2)
    t = Trainer(tiny_config(tmp_path / "run", "train.max_steps=6", "run.checkpoint_every=1", *QUEUE))
    real = t.loss_fn.forward
    t.loss_fn.forward = lambda *a, **k: real(*a, **k) * float("nan")
    with pytest.raises(TrainingDiverged, match="non-finite"):
        t.fit()
    ckpts = sorted(p.name for p in (tmp_path / "run" / "checkpoints").iterdir())
    assert ckpts == ["step_000000002"]


def test_bad_images_are_skipped_and_counted(tmp_path, cifar_mini):
    import shutil

    folder = tmp_path / "imgs"
    folder.mkdir()
    for p in sorted((cifar_mini / "train" / "cat").glob("*.jpg"))[:46]:
        shutil.copy(p, folder / p.name)
    (folder / "empty.jpg").write_bytes(b"")
    (folder / "notes.jpg").write_text("not a picture")
    _fit(tmp_path / "run", 3, "data.train.source=folder", f"data.train.path={folder}")
    rows = [json.loads(l) for l in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert rows[-1]["bad_samples"] == 2  # 48 files, 3 batches of 16: every file is drawn once
