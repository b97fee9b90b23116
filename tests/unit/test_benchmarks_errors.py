"""Clear one-line errors for what a user gets wrong: a dataset without class sub-folders, a test class the
train split lacks, an unknown evaluation or key, a checkpoint that does not fit the trunk; plus the
dataset forms (folders, file lists) and the command-line override syntax."""
import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from ssl_scale.benchmarks.checkpoints import resolve_checkpoint_spec
from ssl_scale.benchmarks.datasets import load_split, load_train_test
from ssl_scale.benchmarks.suite import Runner, apply_overrides, load_suite, main, run_suite
from ssl_scale.models.trunks import torchvision_reference


def _img(path, value):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((8, 8, 3), value, dtype=np.uint8)).save(path)


def _folders(root, train=("cat", "dog"), test=("cat", "dog"), n=2):
    for split, classes in (("train", train), ("test", test)):
        for c in classes:
            for i in range(n):
                _img(root / split / c / f"{i}.png", 40 * i + 10)
    return root


def _suite(root, **extra):
    s = {"model": {"trunk": "resnet18", "stem": "cifar"}, "device": "cpu",
         "datasets": {"d": {"path": str(root), "image_size": 8}},
         "evaluations": [{"name": "knn", "dataset": "d", "k": 2}]}
    s.update(extra)
    return s


def test_folder_without_class_subfolders(tmp_path):
    for i in range(3):
        _img(tmp_path / "flat" / f"{i}.png", i)
    with pytest.raises(ValueError, match=r"has no class sub-folders") as e:
        load_split(tmp_path / "flat", "train")
    assert "\n" not in str(e.value) and "flat" in str(e.value)


def test_test_class_missing_from_train(tmp_path):
    _folders(tmp_path, train=("cat", "dog"), test=("cat", "cow"))
    with pytest.raises(ValueError, match=r"test split .*: class 'cow' is not in the train split"):
        load_train_test(tmp_path / "train", tmp_path / "test")


def test_missing_split_folder(tmp_path):
    with pytest.raises(FileNotFoundError, match="train split .*nowhere.* does not exist"):
        load_split(tmp_path / "nowhere", "train")


def test_test_split_uses_train_class_indices_and_max_per_class(tmp_path):
    _folders(tmp_path, train=("ant", "bee", "cat"), test=("cat",), n=3)
    tr, te = load_train_test(tmp_path / "train", tmp_path / "test", max_per_class=2)
    assert tr.classes == ["ant", "bee", "cat"] and len(tr) == 6 and len(te) == 2
    assert te.labels.tolist() == [2, 2]
    img, label = te[0]
    assert img.mode == "RGB" and label == 2


def test_file_list_with_names_or_integer_labels(tmp_path):
    _folders(tmp_path, n=2)
    (tmp_path / "train.txt").write_text("# path label\ntrain/cat/0.png cat\ntrain/dog/0.png dog\ntrain/dog/1.png dog\n")
    (tmp_path / "test.txt").write_text(f"{tmp_path}/test/dog/0.png dog\n")
    tr, te = load_train_test(tmp_path / "train.txt", tmp_path / "test.txt")
    assert tr.classes == ["cat", "dog"] and tr.labels.tolist() == [0, 1, 1] and te.labels.tolist() == [1]
    (tmp_path / "ints.txt").write_text("train/cat/0.png 10\ntrain/dog/0.png 9\n")
    assert load_split(tmp_path / "ints.txt", "train").classes == ["9", "10"]
    (tmp_path / "bad.txt").write_text("train/cat/0.png\n")
    with pytest.raises(ValueError, match=r"bad.txt' line 1: expected 'path label'"):
        load_split(tmp_path / "bad.txt", "train")


def test_unknown_evaluation_lists_valid_ones(tmp_path):
    s = _suite(tmp_path, evaluations=[{"name": "linearr", "dataset": "d"}])
    with pytest.raises(ValueError, match=r"evaluations\[0\]: unknown evaluation 'linearr'; did you mean 'linear'\? "
                                         r"\(valid: finetune, knn, linear, lowshot\)"):
        load_suite(s)


def test_unknown_keys_and_types_are_errors(tmp_path):
    with pytest.raises(ValueError, match=r"unknown key 'kk' for evaluation 'knn'; did you mean 'k'\?"):
        load_suite(_suite(tmp_path, evaluations=[{"name": "knn", "kk": 3}]))
    with pytest.raises(ValueError, match=r"evaluations\[0\]\.k: expected an integer"):
        load_suite(_suite(tmp_path, evaluations=[{"name": "knn", "k": 2.5}]))
    with pytest.raises(ValueError, match=r"unknown key 'feature'; did you mean 'features'\?"):
        load_suite(_suite(tmp_path, feature={}))
    with pytest.raises(ValueError, match=r"datasets.d: unknown key 'imagesize'"):
        load_suite(_suite(tmp_path, datasets={"d": {"path": str(tmp_path), "imagesize": 8}}))
    with pytest.raises(ValueError, match=r"dataset 'e' is not defined"):
        load_suite(_suite(tmp_path, evaluations=[{"name": "knn", "dataset": "e"}]))
    with pytest.raises(ValueError, match=r"repeats evaluations\[0\]; give one a 'label'"):
        load_suite(_suite(tmp_path, evaluations=[{"name": "knn"}, {"name": "knn", "k": 5}]))
    with pytest.raises(ValueError, match=r"model.trunk: unknown trunk 'resnet19'"):
        load_suite(_suite(tmp_path, model={"trunk": "resnet19"}))


def test_overrides_are_dotted_yaml_values(tmp_path):
    s = _suite(tmp_path)
    out = apply_overrides(s, ["datasets.d.train=/x/train", "evaluations.0.k=7", "features.layer=layer3",
                              "evaluations.0.label=knn7", "seed=3"])
    assert out["datasets"]["d"]["train"] == "/x/train" and out["evaluations"][0]["k"] == 7 and out["seed"] == 3
    assert s["evaluations"][0]["k"] == 2  # the input is not modified
    cfg = load_suite(s, ["evaluations.0.k=7", "features.layer=layer3"])
    assert cfg["evaluations"][0]["params"].k == 7 and cfg["evaluations"][0]["label"] == "knn@layer3"
    with pytest.raises(ValueError, match="must look like key=value"):
        apply_overrides(s, ["seed"])
    with pytest.raises(ValueError, match=r"evaluations is a list of 1; use an index 0..0"):
        apply_overrides(s, ["evaluations.3.k=1"])


def _save_state_dict(path, trunk, stem, with_fc=True):
    torch.manual_seed(0)
    m = torchvision_reference(trunk, stem)
    if with_fc:
        m.fc = torch.nn.Linear(m.fc.in_features if hasattr(m.fc, "in_features") else 512, 3)
    torch.save(m.state_dict(), path)
    return path


def test_trunk_mismatch_names_the_checkpoint(tmp_path):
    _folders(tmp_path / "data")
    wrong = _save_state_dict(tmp_path / "r34.pth", "resnet34", "cifar")
    runner = Runner(load_suite(_suite(tmp_path / "data")), tmp_path / "out", echo=lambda s: None)
    with pytest.raises(ValueError, match=r"checkpoint '.*r34.pth' does not fit trunk 'resnet18' \(cifar stem\): "
                                         r"unexpected key 'layer1.2.conv1.weight'"):
        runner.resolve(str(wrong))
    stem = _save_state_dict(tmp_path / "r18_imagenet.pth", "resnet18", "imagenet")
    with pytest.raises(ValueError, match=r"r18_imagenet.pth' does not fit .*'conv1.weight' has shape "
                                         r"\(64, 3, 7, 7\) there and \(64, 3, 3, 3\) here"):
        runner.resolve(str(stem))
    (tmp_path / "junk.pth").write_bytes(b"not a torch file")
    with pytest.raises(ValueError, match=r"checkpoint '.*junk.pth' cannot be read as a torch state dict"):
        runner.resolve(str(tmp_path / "junk.pth"))
    # through the command line: exit code 2 and one line on stderr naming the checkpoint
    suite_file = tmp_path / "s.yaml"
    suite_file.write_text(yaml.safe_dump(_suite(tmp_path / "data")))
    assert main([str(suite_file), "--checkpoint", str(wrong), "--out", str(tmp_path / "o")]) == 2


def test_plain_state_dict_exported_trunk_and_random(tmp_path):
    good = _save_state_dict(tmp_path / "r18.pth", "resnet18", "cifar")  # torchvision dict with its fc head
    src = resolve_checkpoint_spec(str(good), "resnet18", "cifar")
    trunk = src.build()
    ref = torchvision_reference("resnet18", "cifar")
    ref.load_state_dict({k: v for k, v in torch.load(good).items() if not k.startswith("fc.")})
    assert torch.equal(trunk.conv1.weight, ref.conv1.weight)
    trunk.conv1.weight.data.add_(1.0)  # a build is a copy: fine-tuning one never changes the next
    assert torch.equal(src.build().conv1.weight, ref.conv1.weight)
    # an exported trunk folder: trunk.pth + trunk.json naming its trunk and stem (the suite's are ignored)
    exp = tmp_path / "export"
    exp.mkdir()
    torch.save({k: v for k, v in torch.load(good).items() if not k.startswith("fc.")}, exp / "trunk.pth")
    (exp / "trunk.json").write_text('{"trunk": "resnet18", "stem": "cifar"}')
    e = resolve_checkpoint_spec(str(exp), "resnet50", "imagenet")
    assert (e.trunk, e.stem) == ("resnet18", "cifar")
    r1, r2 = resolve_checkpoint_spec("random", "resnet18", "cifar", seed=5), resolve_checkpoint_spec("random", "resnet18", "cifar", seed=5)
    assert torch.equal(r1.build().conv1.weight, r2.build().conv1.weight)
    assert not torch.equal(r1.build().conv1.weight, resolve_checkpoint_spec("random", "resnet18", "cifar", 6).build().conv1.weight)
    with pytest.raises(FileNotFoundError, match="checkpoint 'nope.pth' does not exist"):
        resolve_checkpoint_spec("nope.pth", "resnet18", "cifar")


def test_no_checkpoint_is_an_error(tmp_path):
    _folders(tmp_path)
    with pytest.raises(ValueError, match="give at least one --checkpoint"):
        run_suite(_suite(tmp_path), [], tmp_path / "out")
