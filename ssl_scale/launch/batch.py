"""Many small independent calls (the cells of a benchmark suite) as one submitit job array, on SLURM or on
submitit's local executor, with the `slurm.*` keys and the checks of `ssl-scale launch`."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, List, Sequence

import yaml

from ssl_scale.config import ConfigError, config_from_yaml, parse_overrides

from .submit import check_slurm, executor_parameters


def batch_config(launcher: str, overrides: Sequence[str] = ()):
    """A config holding only `launcher` and the `slurm.*` keys given as `slurm.KEY=VALUE` (checked like a recipe)."""
    if launcher not in ("slurm", "local"):
        raise ConfigError(f"--submit: {launcher!r} is not a launcher (slurm or local)")
    for item in overrides:
        if not item.split("=", 1)[0].strip().startswith("slurm."):
            raise ConfigError(f"command line: {item!r}: only slurm.* keys choose how jobs are submitted")
    data = parse_overrides([f"launcher={launcher}", *overrides])
    cfg = config_from_yaml(yaml.safe_dump(data), "command line")
    if cfg.slurm.nodes != 1 or cfg.slurm.tasks_per_node != 1:
        raise ConfigError("'slurm.nodes' / 'slurm.tasks_per_node': each benchmark job is one process; set both to 1")
    return cfg


def submit_array(fn: Callable[..., Any], calls: Sequence[Sequence[Any]], folder: Path, cfg) -> List[Any]:
    """Checks (partition, time limit, writable folder), then submits `fn(*call)` for every call as one job
    array; returns the submitit jobs in the order of `calls` (job.result() waits for one)."""
    import submitit

    from ssl_scale.train.trainer import prepare_run_dir

    if cfg.launcher == "slurm":
        check_slurm(cfg)
    prepare_run_dir(Path(folder), True, key="slurm.log_dir")
    kw = {f"{cfg.launcher}_max_num_timeout": cfg.slurm.max_requeues}
    executor = submitit.AutoExecutor(folder=str(Path(folder) / "%j"), cluster=cfg.launcher, **kw)
    executor.update_parameters(**executor_parameters(cfg))
    if not calls:
        return []
    return executor.map_array(fn, *[list(col) for col in zip(*calls)])
