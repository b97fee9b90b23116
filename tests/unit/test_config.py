"""Strict recipes: inheritance, overrides, one-line errors naming key and source, derived values."""
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from ssl_scale.config import ConfigError, load_config, parse_overrides
from ssl_scale.config.derived import derive

REPO = Path(__file__).resolve().parents[2]
RECIPES = sorted(str(p.relative_to(REPO / "configs")) for p in (REPO / "configs").rglob("*.yaml")
                 if "benchmark" not in p.parts)


@pytest.mark.parametrize("recipe", RECIPES)
def test_every_shipped_recipe_loads_and_builds_on_meta(recipe):
    from ssl_scale.train.build import build_ssl_model

    cfg = load_config(REPO / "configs" / recipe, ["data.train.path=/any/folder"])
    model = build_ssl_model(cfg.model, device="meta")
    z, scores = model([torch.empty(2, 3, cfg.data.crops[0].size, cfg.data.crops[0].size, device="meta")])
    assert z.shape == (2, cfg.model.head.output_dim)
    assert [s.shape[1] for s in scores] == list(cfg.model.head.num_prototypes)


def write(tmp_path, name, text):
    p = tmp_path / name
    p.write_text(text)
    return p


def test_base_inheritance_and_override_precedence(tmp_path):
    write(tmp_path, "base.yaml", "seed: 3\ndata: {batch_size: 8}\nmodel: {trunk: resnet18}\n")
    child = write(tmp_path, "child.yaml", "_base_: base.yaml\ndata: {batch_size: 16}\n")
    cfg = load_config(child, ["train.epochs=7", "train.max_steps=null", "data.train.source=embedded"])
    assert (cfg.seed, cfg.data.batch_size, cfg.train.epochs, cfg.train.max_steps) == (3, 16, 7, None)
    assert cfg.model.trunk == "resnet18"
    # schema defaults fill what no layer sets
    assert cfg.loss.temperature == 0.1 and cfg.optim.trust_coefficient == 0.001


def test_unknown_key_in_file_names_file_key_and_suggestion(tmp_path):
    p = write(tmp_path, "r.yaml", "data: {batchsize: 8}\n")
    with pytest.raises(ConfigError) as e:
        load_config(p)
    msg = str(e.value)
    assert str(p) in msg and "data.batchsize" in msg and "data.batch_size" in msg and "\n" not in msg


def test_unknown_key_in_list_item_has_full_path(tmp_path):
    p = write(tmp_path, "r.yaml", "data:\n  crops:\n    - {size: 32, cnt: 2}\n")
    with pytest.raises(ConfigError, match=r"data\.crops\[0\]\.cnt.*data\.crops\[0\]\.count"):
        load_config(p)


def test_unknown_key_on_command_line(tmp_path):
    p = write(tmp_path, "r.yaml", "data: {train: {source: embedded}}\n")
    with pytest.raises(ConfigError, match=r"^command line: unknown key 'train\.max_step'; did you mean 'train\.max_steps'\?"):
        load_config(p, ["train.max_step=3"])


def test_wrong_type_names_key_and_source(tmp_path):
    p = write(tmp_path, "r.yaml", "data: {train: {source: embedded}}\n")
    with pytest.raises(ConfigError, match=r"command line: bad value for 'data.batch_size'"):
        load_config(p, ["data.batch_size=many"])
    q = write(tmp_path, "q.yaml", "seed: 1.5\n")
    with pytest.raises(ConfigError, match=r"q.yaml: bad value for 'seed'"):
        load_config(q)


def test_invalid_choice_and_unknown_registered_name(tmp_path):
    p = write(tmp_path, "r.yaml", "data: {train: {source: embedded}}\n")
    with pytest.raises(ConfigError, match=r"'train.precision': invalid choice 'bf32'; valid: fp32, bf16, fp16"):
        load_config(p, ["train.precision=bf32"])
    with pytest.raises(ConfigError, match=r"'model.trunk': unknown trunk 'resnet5'.*did you mean.*'resnet50'"):
        load_config(p, ["model.trunk=resnet5"])


def test_missing_recipe_and_bad_override_syntax(tmp_path):
    with pytest.raises(ConfigError, match="recipe 'quikstart' not found; did you mean quickstart.yaml"):
        load_config("quikstart")
    with pytest.raises(ConfigError, match="must look like key=value"):
        parse_overrides(["data.batch_size"])


def test_folder_source_requires_path(tmp_path):
    p = write(tmp_path, "r.yaml", "data: {train: {source: folder}}\n")
    with pytest.raises(ConfigError, match="'data.train.path': is required"):
        load_config(p)


def test_derived_values_scale_lr_and_round_queue(tmp_path):
    p = write(tmp_path, "r.yaml", "data: {train: {source: embedded}, batch_size: 64}\n"
                                  "loss: {queue_length: 3840}\noptim: {base_lr: 0.3}\ntrain: {epochs: 2, max_steps: 5}\n")
    cfg = load_config(p)
    with pytest.raises(ConfigError, match="'loss.queue_length': 3840 is shorter than one global batch \\(4096\\)"):
        derive(cfg, world_size=64, dataset_len=4096 * 10)
    d = derive(load_config(p, ["loss.queue_length=0"]), world_size=64, dataset_len=4096 * 10)
    assert d.global_batch == 4096 and d.lr == pytest.approx(4.8) and d.queue_length == 0
    d4 = derive(cfg, world_size=4, dataset_len=10000)  # global batch 256: 3840 is already a multiple
    assert (d4.queue_length_total, d4.queue_length, d4.steps_per_epoch, d4.total_steps, d4.stop_step) == (3840, 960, 39, 78, 5)
    d3 = derive(cfg, world_size=3, dataset_len=10000)  # global batch 192 -> 3840 = 20 x 192, 1280 per process
    assert (d3.queue_length_total, d3.queue_length) == (3840, 1280)
    d5 = derive(cfg, 5, 10000)  # global batch 320 -> 3840 = 12 x 320, 768 per process
    assert (d5.queue_length_total, d5.queue_length) == (3840, 768)
    assert cfg.loss.queue_length == 3840  # the user's value is untouched
    with pytest.raises(ConfigError, match="cannot fill one global batch"):
        derive(cfg, world_size=1, dataset_len=10)


def test_cli_error_is_one_line_without_traceback(tmp_path):
    r = subprocess.run([sys.executable, "-m", "ssl_scale.cli", "config", "quickstart", "optim.nme=adamw"],
                       capture_output=True, text=True, cwd=REPO)
    assert r.returncode == 2
    assert r.stderr.strip() == ("ssl-scale config: error: command line: unknown key 'optim.nme'; "
                                "did you mean 'optim.name'?")
    ok = subprocess.run([sys.executable, "-m", "ssl_scale.cli", "config", "quickstart", "data.batch_size=32"],
                        capture_output=True, text=True, cwd=REPO)
    assert ok.returncode == 0 and "batch_size: 32" in ok.stdout


@pytest.mark.parametrize("overrides,message", [
    (["parallel.activation_checkpointing=all"], r"'parallel.activation_checkpointing': invalid choice 'all'; valid: none, block"),
    (["parallel.shard_prototypes=true"], r"'parallel.shard_prototypes': needs parallel.mode=fsdp"),
    (["parallel.mode=fsdp", "parallel.shard_prototypes=true", "loss.queue_length=64"],
     r"'parallel.shard_prototypes': does not support the SwAV queue"),
    (["parallel.mode=fsdp", "train.precision=fp16"], r"'train.precision': fp16 needs a gradient scaler"),
    (["parallel.ac_every=0"], r"'parallel.ac_every': must be >= 1"),
    (["optim.in_backward=true", "optim.clip_grad_norm=1.0"], r"'optim.clip_grad_norm': needs every gradient at once"),
    (["optim.in_backward=true", "train.precision=fp16"], r"'train.precision': fp16's gradient scaler needs every gradient"),
])
def test_parallel_keys_are_checked(tmp_path, overrides, message):
    with pytest.raises(ConfigError, match=message):
        load_config(write(tmp_path, "r.yaml", "data: {train: {source: embedded}}\n"), overrides)


def test_fsdp_on_cpu_with_a_torch_too_old_for_it_is_a_clear_error(tmp_path, monkeypatch):
    from ssl_scale.distributed import DistEnv, plan_parallelism

    cfg = load_config(write(tmp_path, "r.yaml", "data: {train: {source: embedded}}\n"), ["parallel.mode=fsdp"])
    monkeypatch.setattr(torch, "__version__", "2.6.0+cpu")
    with pytest.raises(ConfigError, match=r"^'parallel.mode': fsdp on CPU processes needs torch >= 2.9 \(this is 2.6.0\+cpu\)"):
        plan_parallelism(cfg, DistEnv(world_size=2))
    assert not plan_parallelism(cfg, DistEnv()).fsdp  # one process trains unsharded on any torch
    monkeypatch.setattr(torch, "__version__", "2.9.0")
    assert plan_parallelism(cfg, DistEnv(world_size=2)).fsdp


def test_parallel_plan_on_one_process_trains_unsharded_with_autocast(tmp_path):
    from ssl_scale.distributed import DistEnv, plan_parallelism

    cfg = load_config(write(tmp_path, "r.yaml", "data: {train: {source: embedded}}\n"),
                      ["parallel.mode=fsdp", "train.precision=bf16", "parallel.shard_prototypes=true"])
    one = plan_parallelism(cfg, DistEnv())
    assert not one.fsdp and not one.shard_prototypes and one.autocast_dtype == torch.bfloat16
    two = plan_parallelism(cfg, DistEnv(world_size=2, device=torch.device("cuda")))  # a plan only: no CPU torch limit
    assert two.fsdp and two.shard_prototypes and two.fsdp_bf16 and two.autocast_dtype is None
