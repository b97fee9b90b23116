"""The transfer benchmark suite end to end on a subset of the shared cifar10-mini photos (100 train / 50 test
images a class, downscaled to 16 px to fit a CPU test): kNN, linear probe, low-shot 1/5/10 and 10% fine-tuning,
for `random` and for a real trained trunk (a resnet18-cifar fitted supervised on the train subset, saved as a
plain torchvision state dict). The trained trunk must lead on every evaluation, and a second run must give a
byte-identical results.json without extracting any feature again."""
import json
import math
import time
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
import yaml

from ssl_scale.benchmarks.datasets import load_split
from ssl_scale.benchmarks.suite import main, run_suite
from ssl_scale.data import TRANSFORMS
from ssl_scale.models.trunks import torchvision_reference

MEAN, STD = [0.4914, 0.4822, 0.4465], [0.2470, 0.2435, 0.2616]
SIZE = 16


def train_supervised_trunk(train_dir: Path, out: Path, steps: int = 60, batch: int = 64, seed: int = 0) -> Path:
    """A resnet18 (CIFAR stem) trained with labels on the benchmark's train subset; saved with its fc head as
    a plain torchvision state dict."""
    split = load_split(train_dir, "train", max_per_class=100)
    tf = TRANSFORMS.get("eval")(SIZE, mean=MEAN, std=STD)
    x = torch.stack([tf(split[i][0]) for i in range(len(split))])
    y = torch.as_tensor(split.labels)
    g = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    model = torchvision_reference("resnet18", "cifar")
    model.fc = torch.nn.Linear(512, len(split.classes))
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.05)  # learns fastest in few steps
    model.train()
    for step in range(steps):
        for grp in opt.param_groups:
            grp["lr"] = 3e-3 * 0.5 * (1 + math.cos(math.pi * step / steps))
        idx = torch.randint(0, len(x), (batch,), generator=g)
        xb = x[idx]
        flip = torch.rand(batch, generator=g) < 0.5
        xb = torch.where(flip.view(-1, 1, 1, 1), xb.flip(3), xb)
        xb = F.pad(xb, (2, 2, 2, 2), mode="reflect")
        i, j = torch.randint(0, 5, (2,), generator=g).tolist()
        xb = xb[:, :, i:i + SIZE, j:j + SIZE]
        loss = F.cross_entropy(model(xb), y[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
    torch.save(model.state_dict(), out)
    return out


@pytest.mark.slow
def test_benchmark_suite_random_vs_trained(tmp_path, cifar_mini, capsys, request):
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the CPU is shared: one thread is faster than oversubscribed two
    request.addfinalizer(lambda: torch.set_num_threads(threads))
    t0 = time.perf_counter()
    ckpt = train_supervised_trunk(cifar_mini / "train", tmp_path / "supervised_resnet18_cifar.pth")
    t_train = time.perf_counter() - t0
    suite = {
        "name": "cifar_subset",
        "model": {"trunk": "resnet18", "stem": "cifar"},
        "seed": 0,
        "device": "cpu",
        "features": {"batch_size": 250, "cache_dir": str(tmp_path / "cache")},
        "datasets": {"cifar": {"path": str(cifar_mini), "image_size": SIZE, "max_per_class": 100,
                               "max_per_class_test": 50, "mean": MEAN, "std": STD}},
        "evaluations": [
            {"name": "knn", "dataset": "cifar", "k": 20},
            {"name": "linear", "dataset": "cifar", "weight_decays": [1e-3, 1e-2, 1e-1], "max_iter": 100},
            {"name": "lowshot", "dataset": "cifar", "shots": [1, 5, 10], "seeds": [0, 1, 2], "costs": [0.1, 1.0, 10.0]},
            {"name": "finetune", "dataset": "cifar", "label_fraction": 0.1, "steps": 15, "batch_size": 32,
             "lr": 0.02, "head_lr": 0.2, "crop_scale": [0.35, 1.0]},
        ],
    }
    suite_path = tmp_path / "suite.yaml"
    suite_path.write_text(yaml.safe_dump(suite))

    # first run through the command line (options after the suite, a key=value override at the end)
    t1 = time.perf_counter()
    rc = main([str(suite_path), "--checkpoint", "random", "--checkpoint", str(ckpt), "--out", str(tmp_path / "a"),
               "evaluations.0.temperature=0.07"])
    t_first = time.perf_counter() - t1
    assert rc == 0
    printed = capsys.readouterr().out
    assert "| checkpoint |" in printed and "| random |" in printed
    out_a = tmp_path / "a"
    for name in ("results.md", "results.csv", "results.json"):
        assert (out_a / name).is_file()
    assert len(list(out_a.glob("chart_*.png"))) == 4
    res = json.loads((out_a / "results.json").read_text())
    rows = {r["checkpoint"]: r["metrics"] for r in res["rows"]}
    rand, trained = rows["random"], rows[str(ckpt)]
    headline = [c for c in res["columns"] if not c.endswith("_std") and not c.endswith("top5")]
    assert len(headline) == 6  # knn, linear, lowshot x3, finetune
    behind = [c for c in headline if not trained[c] > rand[c]]
    assert not behind, f"trained trunk not ahead of random on {behind}: {rand} vs {trained}"

    # second run: same cache, nothing extracted, identical results
    t2 = time.perf_counter()
    again = run_suite(str(suite_path), ["random", str(ckpt)], tmp_path / "b",
                      overrides=["evaluations.0.temperature=0.07"], echo=lambda s: None)
    t_second = time.perf_counter() - t2
    assert again["cache"]["extractions"] == 0 and again["cache"]["hits"] > 0
    assert (tmp_path / "b" / "results.json").read_bytes() == (out_a / "results.json").read_bytes()
    with capsys.disabled():
        print(f"\n[benchmark suite] supervised trunk {t_train:.0f}s, first run {t_first:.0f}s, "
              f"second run {t_second:.0f}s, total {time.perf_counter() - t0:.0f}s")
        print((out_a / "results.md").read_text())
