"""`ssl-scale` commands: listings, and bad input as one clear line with exit code 2."""
import pytest

from ssl_scale.cli import main


def run(capsys, *argv):
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_list_shows_every_kind_with_descriptions(capsys):
    code, out, _ = run(capsys, "list")
    assert code == 0
    for header in ("trunks:", "heads:", "losses:", "datasets:", "transforms:", "optimizers:", "schedules:"):
        assert header in out
    code, out, _ = run(capsys, "list", "trunks")
    line = next(l for l in out.splitlines() if l.strip().startswith("regnet_y_256gf"))
    assert len(line.split()) > 2  # a description follows the name
    code, _, err = run(capsys, "list", "trunkz")
    assert code == 2 and "did you mean 'trunks'" in err


@pytest.mark.parametrize("args,needle", [
    (["data.train.source=folder", "data.train.path=/does/not/exist"], "/does/not/exist"),
    (["data.train.source=folder"], "'data.train.path': is required"),
    (["model.trunk=resnet19"], "unknown trunk 'resnet19'"),
])
def test_train_bad_input_is_one_line(tmp_path, capsys, args, needle):
    code, _, err = run(capsys, "train", "quickstart", f"run.dir={tmp_path}", *args)
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("ssl-scale train: error:") and needle in lines[0]


def test_folder_without_images_and_unwritable_run_dir(tmp_path, capsys):
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "notes.txt").write_text("no pictures here")
    code, _, err = run(capsys, "train", "quickstart", f"run.dir={tmp_path / 'r'}", "data.train.source=folder",
                       f"data.train.path={empty}")
    assert code == 2 and str(empty) in err and len(err.strip().splitlines()) == 1
    blocker = tmp_path / "file"
    blocker.write_text("x")
    code, _, err = run(capsys, "train", "quickstart", f"run.dir={blocker / 'sub'}")
    assert code == 2 and "'run.dir'" in err


def test_missing_recipe_and_checkpoint(tmp_path, capsys):
    code, _, err = run(capsys, "train", "no_such_recipe")
    assert code == 2 and "recipe 'no_such_recipe' not found" in err
    code, _, err = run(capsys, "export", str(tmp_path / "nothing"), str(tmp_path / "out"))
    assert code == 2 and "does not exist" in err
