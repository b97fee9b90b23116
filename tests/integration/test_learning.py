"""Learning on real photos: the CIFAR recipe, trained for a fixed number of steps on cifar10-mini/train,
raises 200-NN top-1 on cifar10-mini/test well above the same trunk at its random initialisation, and the
transfer suite run on the run's own checkpoint puts it ahead of `random` on kNN, linear probe and low-shot."""
import json

import pytest
import yaml

from ssl_scale.benchmarks.suite import run_suite
from ssl_scale.config import load_config
from ssl_scale.config.loader import find_recipe
from ssl_scale.train.evaluate import knn_report
from ssl_scale.train.trainer import Trainer

# The recipe as shipped (optimizer, LR rule, prototypes, Sinkhorn epsilon 0.03, augmentations); only the
# run length and the crop size are cut down to fit CI: 2 crops of 16 pixels, 5 epochs of 10,000 images
# at batch 128 (390 steps, about 8 minutes on 2 cores). Measured at 16 pixels, one thread a run
# (random init 29.2% for seed 0): seed 0 33.8%, seed 1 35.7%, seed 2 33.7%; the assertion asks for 2.5 points.
SHORT = ["data.batch_size=128", "train.epochs=5", "data.crops=[{size: 16, count: 2, scale: [0.14, 1.0], blur_p: 0.0}]",
         "eval.image_size=16", "run.progress=false", "run.tensorboard=false", "run.checkpoint_every=100000"]
MARGIN = 0.025


@pytest.mark.slow
def test_cifar_recipe_beats_random_init(tmp_path, cifar_mini):
    cfg = load_config("pretrain/swav_resnet18_cifar", [
        f"run.dir={tmp_path / 'run'}", f"data.train.path={cifar_mini / 'train'}", "eval.source=folder",
        f"eval.train_path={cifar_mini / 'train'}", f"eval.test_path={cifar_mini / 'test'}", *SHORT])
    trainer = Trainer(cfg)
    result = trainer.fit()
    assert result["step"] == 390
    assert result["loss"] < 6.0  # well below ln(512) = 6.238, the loss of uniform predictions (measured: 5.4-5.5)
    report = knn_report(cfg, trainer.model.trunk)
    random_top1, trained_top1 = report["random"]["top1"], report["trained"]["top1"]
    assert 0.2 < random_top1 < 0.4  # the baseline itself is sane (10 classes)
    assert trained_top1 >= random_top1 + MARGIN, (random_top1, trained_top1)

    # The transfer suite on the checkpoint this run wrote (cifar_small's evaluations at 16 px, the linear sweep
    # and the fine-tuning left out for time; fine-tuning is proven in test_benchmark_suite.py).
    suite = yaml.safe_load(find_recipe("benchmark/cifar_small").read_text())
    suite["device"] = "cpu"
    suite["features"]["cache_dir"] = str(tmp_path / "cache")
    suite["datasets"]["cifar"].update(path=str(cifar_mini), image_size=16)
    suite["evaluations"] = [e for e in suite["evaluations"] if e["name"] != "finetune"]
    for e in suite["evaluations"]:
        if e["name"] == "linear":
            e.update(weight_decays=[1.0e-4, 1.0e-2], max_iter=100)
    (tmp_path / "suite.yaml").write_text(yaml.safe_dump(suite))
    run_suite(str(tmp_path / "suite.yaml"), ["random", str(tmp_path / "run")], tmp_path / "bench", echo=print)
    res = json.loads((tmp_path / "bench" / "results.json").read_text())
    rows = {r["checkpoint"]: r["metrics"] for r in res["rows"]}
    rand, trained = rows["random"], rows[str(tmp_path / "run")]
    headline = [c for c in res["columns"] if c.endswith("top1")]
    assert len(headline) == 5  # knn, linear, lowshot 1/5/10
    behind = [c for c in headline if not trained[c] > rand[c]]
    assert not behind, f"SwAV checkpoint not ahead of random on {behind}: {rand} vs {trained}"
