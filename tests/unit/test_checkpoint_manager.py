"""Checkpoints count only once complete; retention keeps the newest N; crashed writes are ignored."""

import pytest
import torch

from ssl_scale.checkpoint import CheckpointManager, latest_checkpoint, list_checkpoints, resolve_checkpoint
from ssl_scale.checkpoint import manager as mgr


def _state(v):
    return {"model": {"w": torch.full((3,), float(v))}, "progress": {"step": v}}


def test_save_load_and_retention(tmp_path):
    m = CheckpointManager(tmp_path, keep_last=2)
    for step in (10, 20, 30):
        m.save(step, _state(step))
    names = [p.name for p in list_checkpoints(tmp_path / "checkpoints")]
    assert names == ["step_000000020", "step_000000030"]
    target = {"model": {"w": torch.zeros(3)}, "progress": {"step": 0}}
    CheckpointManager.load(latest_checkpoint(tmp_path), target)
    assert torch.equal(target["model"]["w"], torch.full((3,), 30.0)) and target["progress"]["step"] == 30
    assert resolve_checkpoint(tmp_path) == tmp_path / "checkpoints" / "step_000000030"


def test_interrupted_write_is_never_resumed(tmp_path, monkeypatch):
    m = CheckpointManager(tmp_path, keep_last=3)
    m.save(10, _state(10))
    real_save = mgr.dcp.save

    def crash(state, checkpoint_id, **kw):
        real_save(state, checkpoint_id=checkpoint_id, **kw)  # shards and .metadata are on disk...
        raise KeyboardInterrupt("killed before the checkpoint was marked complete")

    monkeypatch.setattr(mgr.dcp, "save", crash)
    with pytest.raises(KeyboardInterrupt):
        m.save(20, _state(20))
    assert (tmp_path / "checkpoints" / "step_000000020.partial" / ".metadata").is_file()
    assert latest_checkpoint(tmp_path).name == "step_000000010"
    # a complete-looking folder without the marker (e.g. copied by hand mid-write) is not picked either
    fake = tmp_path / "checkpoints" / "step_000000030"
    fake.mkdir()
    (fake / ".metadata").write_bytes(b"")
    assert latest_checkpoint(tmp_path).name == "step_000000010"
    with pytest.raises(ValueError, match="incomplete"):
        resolve_checkpoint(fake)
    monkeypatch.setattr(mgr.dcp, "save", real_save)
    m.save(40, _state(40))  # the next good save cleans up the crashed partial folder
    assert not (tmp_path / "checkpoints" / "step_000000020.partial").exists()


def test_missing_checkpoint_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        resolve_checkpoint(tmp_path / "nope")
    with pytest.raises(FileNotFoundError, match="no complete checkpoint"):
        resolve_checkpoint(tmp_path)
