"""The shipped benchmark suites load and validate; the `benchmark` subcommand parses options and overrides
in any order; reports are written as Markdown, CSV, JSON and PNG."""
import argparse
import json

import pytest

from ssl_scale.benchmarks.evals import EVALUATIONS
from ssl_scale.benchmarks.report import markdown_table, write_results
from ssl_scale.benchmarks.suite import CONFIG_DIR, _parse_rest, add_benchmark_parser, find_suite, load_suite, suite_as_dict


def test_shipped_suites_load():
    cifar = load_suite("cifar_small")
    assert cifar["model"] == {"trunk": "resnet18", "stem": "cifar"}
    d = cifar["datasets"]["cifar"]
    assert d["image_size"] == 32 and d["train"].endswith("cifar10-mini/train") and d["test"].endswith("cifar10-mini/test")
    assert [e["name"] for e in cifar["evaluations"]] == ["knn", "linear", "lowshot", "finetune"]
    assert cifar["evaluations"][2]["params"].shots == [1, 5, 10]
    img = load_suite(CONFIG_DIR / "imagenet_style.yaml", ["datasets.imagenet.train=/data/train"])
    d = img["datasets"]["imagenet"]
    assert (d["image_size"], d["resize"], d["train"]) == (224, 256, "/data/train")
    assert img["model"] == {"trunk": "resnet50", "stem": "imagenet"}
    assert {e["label"] for e in img["evaluations"]} >= {"knn", "linear", "lowshot", "finetune1%", "finetune10%"}
    json.dumps(suite_as_dict(img))  # JSON-able for results.json
    with pytest.raises(FileNotFoundError, match="benchmark suite 'nope' not found .*cifar_small, imagenet_style"):
        find_suite("nope")


def test_every_evaluation_is_registered_with_a_description():
    assert EVALUATIONS.names() == ["finetune", "knn", "linear", "lowshot"]
    assert all(desc for _, desc in EVALUATIONS.describe())


def test_cli_accepts_options_and_overrides_in_any_order():
    p = argparse.ArgumentParser(prog="ssl-scale")
    sub = p.add_subparsers(dest="command", required=True)
    add_benchmark_parser(sub)
    a = _parse_rest(p.parse_args(["benchmark", "s.yaml", "--checkpoint", "A", "seed=1", "--checkpoint", "B",
                                  "--out", "o", "datasets.c.train=/x"]))
    assert (a.suite, a.checkpoint, a.out, a.overrides) == ("s.yaml", ["A", "B"], "o", ["seed=1", "datasets.c.train=/x"])
    b = _parse_rest(p.parse_args(["benchmark", "--checkpoint", "random", "s.yaml"]))
    assert (b.checkpoint, b.overrides, b.watch) == (["random"], [], None)
    c = _parse_rest(p.parse_args(["benchmark", "s.yaml", "--watch", "runs/x", "--watch-timeout", "60"]))
    assert (c.watch, c.watch_timeout, c.watch_interval) == ("runs/x", 60.0, 30.0)
    assert callable(c.fn)


def test_reports(tmp_path):
    res = {"suite": "t", "columns": ["d/knn/top1", "d/lowshot/1shot_top1", "d/lowshot/1shot_top1_std"],
           "rows": [{"checkpoint": "random", "trunk": "resnet18", "stem": "cifar", "step": None,
                     "metrics": {"d/knn/top1": 10.0, "d/lowshot/1shot_top1": 12.5, "d/lowshot/1shot_top1_std": 1.25}},
                    {"checkpoint": "a.pth", "trunk": "resnet18", "stem": "cifar", "step": None,
                     "metrics": {"d/knn/top1": 55.123, "d/lowshot/1shot_top1": 30.0, "d/lowshot/1shot_top1_std": 2.0}}]}
    files = write_results(res, tmp_path)
    md = (tmp_path / "results.md").read_text()
    assert "| checkpoint | d/knn/top1 | d/lowshot/1shot_top1 | d/lowshot/1shot_top1_std |" in md
    assert "| a.pth | 55.12 | 30.00 | 2.00 |" in md
    assert (tmp_path / "results.csv").read_text().splitlines()[2] == "a.pth,resnet18,cifar,,55.12,30.00,2.00"
    assert json.loads((tmp_path / "results.json").read_text()) == res
    pngs = sorted(p.name for p in tmp_path.glob("*.png"))
    assert pngs == ["chart_d_knn.png", "chart_d_lowshot.png"]
    assert all((tmp_path / n).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" for n in pngs)
    assert markdown_table(res).count("\n") == 4 and files["md"].is_file()
