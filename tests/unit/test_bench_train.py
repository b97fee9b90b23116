"""tools/perf/bench_train.py at tiny sizes: both engines' steps run, and the peer does the same work
(lightly's SwAV loss equals the engine's on the same scores; the same trunk and head sizes)."""
import importlib.util
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

NEEDS_LIGHTLY = "the peer of the training benchmark needs lightly: pip install -e '.[bench]'"
SCRIPT = Path(__file__).resolve().parents[2] / "tools" / "perf" / "bench_train.py"
TINY = ["data.crops=[{size: 16, count: 2}, {size: 8, count: 2}]", "model.head.hidden_dims=[32]",
        "model.head.num_prototypes=[24]"]


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("bench_train", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_engine_side_alone(bench, tmp_path):
    """What runs without the peer (--no-peer, --sinkhorn): the engine's timed steps and its table."""
    cfg = bench.bench_config("default", 4, TINY, run_dir=str(tmp_path))
    ssl = bench.SslScaleSide(cfg, [])
    ssl.batches = bench.make_batches(cfg, 2, ssl.device)
    res = bench.run_rounds([ssl], rounds=2, steps=1, warmup=0, batch=4, log=lambda s: None)
    assert ssl.trainer.step == 2 and all(math.isfinite(float(x)) for x in ssl.losses)
    # the engine's own Sinkhorn + loss timing is part of its split
    for parts in res["ssl_scale"]["parts"]:
        assert set(parts) == set(bench.PARTS) and min(parts.values()) >= 0 and parts["loss"] > 0
    table = bench.table(res, bench.summarize(res), "caption")
    assert "| ssl_scale |" in table and "lightly" not in table


@pytest.mark.parametrize("speed", ["none", "bf16", "bf16_cl", "all"])
def test_speed_presets_are_recipe_settings(bench, speed, tmp_path):
    """--speed sets the engine's own recipe keys; the bf16 + channels_last step runs (compile has its own test)."""
    cfg = bench.bench_config("default", 4, bench.SPEED[speed] + TINY, run_dir=str(tmp_path))
    assert cfg.train.precision == ("fp32" if speed == "none" else "bf16")
    assert cfg.train.channels_last == (speed in ("bf16_cl", "all")) and cfg.train.compile == (speed == "all")
    if speed == "bf16_cl":
        ssl = bench.SslScaleSide(cfg, [])
        ssl.batches = bench.make_batches(cfg, 1, ssl.device)
        parts = ssl.step()
        assert math.isfinite(float(ssl.losses[0])) and parts["forward"] > 0


@pytest.mark.parametrize("recipe", ["default", "cifar"])
def test_both_engines_step_on_the_same_crops(bench, recipe, tmp_path):
    pytest.importorskip("lightly", reason=NEEDS_LIGHTLY)
    cfg = bench.bench_config(recipe, 4, TINY, run_dir=str(tmp_path))
    ssl = bench.SslScaleSide(cfg, [])
    ssl.batches = bench.make_batches(cfg, 1, ssl.device)
    peer = bench.LightlySide(cfg, ssl.batches, ssl.trainer.derived.lr, ssl.device)
    # Same trunk and head sizes; lightly's prototype layers have a bias per prototype (24) and its
    # hidden Linear none before the batch norm (32).
    count = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    assert count(peer.model) == count(ssl.trainer.model) + 24 - 32
    res = bench.run_rounds([ssl, peer], rounds=2, steps=1, warmup=1, batch=4, log=lambda s: None)
    for side in (ssl, peer):
        assert len(side.losses) == 3 and all(math.isfinite(float(x)) for x in side.losses)
        assert len(res[side.name]["ips"]) == 2 and min(res[side.name]["ips"]) > 0
        for parts in res[side.name]["parts"]:
            assert set(parts) == set(bench.PARTS) and min(parts.values()) >= 0
    # Both start from a loss near ln K (random init).
    assert abs(float(ssl.losses[0]) - math.log(24)) < 1.0 and abs(float(peer.losses[0]) - math.log(24)) < 1.0
    table = bench.table(res, bench.summarize(res), "caption")
    assert "| ssl_scale |" in table and "| lightly |" in table and "ratios" in table


def test_peer_loss_is_the_engines_swav_loss():
    """The two engines optimise the same objective: lightly's SwaVLoss on per-view scores equals
    ssl_scale's SwAVLoss on the crop-major rows (2 assignment crops, 4 crops, 3 Sinkhorn iterations)."""
    pytest.importorskip("lightly", reason=NEEDS_LIGHTLY)
    from lightly.loss import SwaVLoss as LightlyLoss

    from ssl_scale.methods.swav import SwAVLoss

    g = torch.Generator().manual_seed(0)
    b, k, n = 8, 30, 4
    z = F.normalize(torch.randn(n * b, 16, generator=g), dim=1)
    protos = F.normalize(torch.randn(k, 16, generator=g), dim=1)
    scores = z @ protos.t()
    ours = SwAVLoss(temperature=0.1, epsilon=0.05, sinkhorn_iterations=3, crops_for_assign=(0, 1), num_crops=n)
    views = list(scores.split(b))
    theirs = LightlyLoss(temperature=0.1, sinkhorn_iterations=3, sinkhorn_epsilon=0.05)(views[:2], views[2:])
    torch.testing.assert_close(ours(z, scores, protos), theirs.reshape(()), rtol=1e-5, atol=1e-6)
