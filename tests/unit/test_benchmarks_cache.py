"""Feature extraction (pooled and earlier stages), the on-disk feature cache (a second evaluation on the
same features extracts nothing), deterministic results, and --watch on a run whose checkpoints appear."""
import json
import threading
import time

import pytest
import torch

from ssl_scale.benchmarks.cache import FeatureCache, cache_key
from ssl_scale.benchmarks.datasets import load_split
from ssl_scale.benchmarks.features import extract_features
from ssl_scale.benchmarks.suite import load_suite, run_suite, watch_run
from ssl_scale.data import TRANSFORMS
from ssl_scale.models.trunks import build_trunk

CLASSES = ["airplane", "automobile", "bird", "cat"]


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture
def lists(tmp_path, cifar_mini):
    """File lists of real cifar10-mini photos: 6 train and 3 test images for each of 4 classes."""
    root = cifar_mini
    for split, n in (("train", 6), ("test", 3)):
        lines = [f"{p} {c}" for c in CLASSES for p in sorted((root / split / c).glob("*.jpg"))[:n]]
        (tmp_path / f"{split}.txt").write_text("\n".join(lines) + "\n")
    return tmp_path / "train.txt", tmp_path / "test.txt"


def _suite(lists, cache_dir, **extra):
    s = {"name": "tiny", "model": {"trunk": "resnet18", "stem": "cifar"}, "device": "cpu", "seed": 0,
         "features": {"batch_size": 64, "cache_dir": str(cache_dir)},
         "datasets": {"c": {"train": str(lists[0]), "test": str(lists[1]), "image_size": 16}},
         "evaluations": [{"name": "knn", "k": 3},
                         {"name": "linear", "weight_decays": [1e-2, 1e-1], "val_fraction": 0.34, "max_iter": 50},
                         {"name": "lowshot", "shots": [1, 2], "seeds": [0], "costs": [1.0]}]}
    s.update(extra)
    return s


def test_cache_hit_extracts_nothing_and_results_repeat(lists, tmp_path):
    quiet = dict(echo=lambda s: None)
    first = run_suite(_suite(lists, tmp_path / "cache"), ["random"], tmp_path / "a", **quiet)
    # three evaluations on the same features: one extraction per split
    assert first["cache"] == {"hits": 4, "extractions": 2}
    assert len(list((tmp_path / "cache").glob("feats_*.pt"))) == 2
    assert not list((tmp_path / "cache").glob("*.tmp"))
    second = run_suite(_suite(lists, tmp_path / "cache"), ["random"], tmp_path / "b", **quiet)
    assert second["cache"]["extractions"] == 0
    assert (tmp_path / "a" / "results.json").read_bytes() == (tmp_path / "b" / "results.json").read_bytes()
    assert (tmp_path / "a" / "results.csv").read_text().splitlines()[0].startswith(
        "checkpoint,trunk,stem,step,c/knn/top1,c/knn/top5,c/linear/top1")
    # another layer, seed or image size is another cache entry
    third = run_suite(_suite(lists, tmp_path / "cache"), ["random"], tmp_path / "c",
                      overrides=["features.layer=layer2"], **quiet)
    assert third["cache"]["extractions"] == 2
    assert third["columns"][0] == "c/knn@layer2/top1"
    fourth = run_suite(_suite(lists, tmp_path / "cache", seed=1), ["random"], tmp_path / "d", **quiet)
    assert fourth["cache"]["extractions"] == 2


def test_feature_cache_counts_and_survives_a_new_process_view(tmp_path):
    calls = []

    def compute():
        calls.append(1)
        return torch.arange(6.0).view(3, 2), torch.tensor([0, 1, 0])

    parts = {"checkpoint": "random", "split": "train", "layer": "pooled"}
    c1 = FeatureCache(tmp_path)
    a = c1.get(parts, compute)
    assert c1.get(parts, compute) is a and (c1.extractions, c1.hits) == (1, 1)
    c2 = FeatureCache(tmp_path)  # a fresh cache object reads the file
    f, y = c2.get(dict(parts), compute)
    assert torch.equal(f, a[0]) and torch.equal(y, a[1]) and (c2.extractions, c2.hits, len(calls)) == (0, 1, 1)
    assert cache_key(parts) != cache_key({**parts, "layer": "layer3"})
    c2.path(cache_key(parts)).write_bytes(b"garbage")  # a corrupt file is re-extracted, not fatal
    c3 = FeatureCache(tmp_path)
    c3.get(parts, compute)
    assert c3.extractions == 1


def test_earlier_stage_features_are_pooled_stage_outputs(lists):
    ds = load_split(lists[0], "train", max_per_class=2)
    tf = TRANSFORMS.get("eval")(16)
    torch.manual_seed(0)
    trunk = build_trunk("resnet18", "cifar").eval()
    pooled, labels = extract_features(trunk, ds, tf, batch_size=5)
    l3, labels3 = extract_features(trunk, ds, tf, batch_size=5, layer="layer3")
    assert pooled.shape == (8, 512) and l3.shape == (8, 256) and torch.equal(labels, labels3)
    x = torch.stack([tf(ds[i][0]) for i in range(len(ds))])
    with torch.no_grad():
        h = trunk.maxpool(trunk.relu(trunk.bn1(trunk.conv1(x))))
        h = trunk.layer3(trunk.layer2(trunk.layer1(h)))
    torch.testing.assert_close(l3, h.mean(dim=(2, 3)), rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(pooled, trunk(x), rtol=1e-4, atol=1e-5)
    with pytest.raises(ValueError, match="feature layer 'layer9' is not a module of the trunk"):
        extract_features(trunk, ds, tf, layer="layer9")


def _save_engine_checkpoint(run_dir, step, seed):
    from ssl_scale.checkpoint.manager import CheckpointManager

    torch.manual_seed(seed)
    trunk = build_trunk("resnet18", "cifar")
    CheckpointManager(run_dir, keep_last=5).save(step, {"model": {"trunk": trunk.state_dict()}},
                                                 info={"trunk": "resnet18", "stem": "cifar"})


def test_watch_evaluates_checkpoints_as_they_appear(lists, tmp_path):
    run = tmp_path / "run"
    _save_engine_checkpoint(run, 10, seed=1)
    suite = _suite(lists, tmp_path / "cache", evaluations=[{"name": "knn", "k": 3}])
    writer = threading.Thread(target=lambda: (time.sleep(1.0), _save_engine_checkpoint(run, 20, seed=2)))
    writer.start()
    try:
        res = watch_run(suite, run, tmp_path / "w", timeout=120, interval=0.2, final_step=20, echo=lambda s: None)
    finally:
        writer.join()
    assert res["finished"] and [r["step"] for r in res["rows"]] == [10, 20]
    assert all(r["trunk"] == "resnet18" and r["stem"] == "cifar" for r in res["rows"])
    assert (tmp_path / "w" / "accuracy_vs_step.png").is_file()
    table = (tmp_path / "w" / "accuracy_vs_step.md").read_text().splitlines()
    assert table[0].startswith("| step | checkpoint | c/knn/top1") and table[2].startswith("| 10 |")
    # no final checkpoint: stops at the timeout with what it has
    res = watch_run(load_suite(suite), run, tmp_path / "w2", timeout=0.3, interval=0.1, final_step=99,
                    echo=lambda s: None)
    assert not res["finished"] and len(res["rows"]) == 2
    assert json.loads((tmp_path / "w2" / "results.json").read_text())["rows"][1]["step"] == 20
    with pytest.raises(FileNotFoundError, match="--watch: run directory"):
        watch_run(suite, tmp_path / "nope", tmp_path / "w3", timeout=0.1)
