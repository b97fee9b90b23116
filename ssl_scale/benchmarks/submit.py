"""`ssl-scale benchmark --submit slurm|local`: one submitit job per (checkpoint, evaluation), each writing its
cell to <out>/jobs/c<i>_e<j>/cell.json; then the results files of the in-process run, assembled from the cells.

A cell already on disk for the same suite, checkpoint (by content identity) and evaluation is reused, so
running the command again after a failed job submits only the missing cells.
"""
from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence

from .cache import cache_key
from .report import markdown_table, write_results
from .suite import Runner, suite_as_dict

log = logging.getLogger("ssl_scale")


class JobsFailed(RuntimeError):
    """Some benchmark jobs failed; the cells of the others are kept for the next run."""


def run_cell(cfg: Dict[str, Any], spec: str, index: int, out: str, cell_path: str, key: str) -> str:
    """Inside a job: evaluation `index` of the suite on checkpoint `spec`; writes cell.json atomically."""
    one = dict(cfg, evaluations=[cfg["evaluations"][index]])
    runner = Runner(one, out, echo=lambda s: None)  # the suite's feature cache folder, shared by all jobs
    row = runner.evaluate(runner.resolve(spec))
    cell = {"key": key, "columns": runner.columns, "row": row,
            "cache": {"hits": runner.cache.hits, "extractions": runner.cache.extractions}}
    path = Path(cell_path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(cell, indent=1) + "\n")
    os.replace(tmp, path)
    return str(path)


def _read_cell(path: Path, key: str) -> Optional[Dict[str, Any]]:
    try:
        cell = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return cell if isinstance(cell, dict) and cell.get("key") == key else None


def assemble(cfg: Dict[str, Any], cells: Sequence[Sequence[Dict[str, Any]]]) -> Dict[str, Any]:
    """cells[i][j] (checkpoint i, evaluation j) -> the results dict `run_suite` builds in one process."""
    columns: List[str] = []
    rows = []
    for per_ckpt in cells:
        row: Dict[str, Any] = {}
        for cell in per_ckpt:
            r = cell["row"]
            if not row:
                row = {k: r[k] for k in ("checkpoint", "trunk", "stem", "step")}
                row.update(metrics={}, details={})
            row["metrics"].update(r["metrics"])
            row["details"].update(r["details"])
            columns += [c for c in cell["columns"] if c not in columns]
        rows.append(row)
    return {"suite": cfg["name"], "columns": columns, "rows": rows, "config": suite_as_dict(cfg)}


def submit_suite(cfg: Dict[str, Any], checkpoints: Sequence[str], out: os.PathLike, launcher: str = "slurm",
                 slurm_overrides: Sequence[str] = (), echo: Callable[[str], None] = print) -> Dict[str, Any]:
    """Like `run_suite`, but every (checkpoint, evaluation) runs as a submitit job (one job array); waits
    for them and writes the same results.{md,csv,json} and charts into `out`."""
    from ssl_scale.launch.batch import batch_config, submit_array

    if not checkpoints:
        raise ValueError("benchmark: give at least one --checkpoint (a run dir, checkpoint, exported trunk, "
                         ".pth state dict, or 'random')")
    jcfg = batch_config(launcher, slurm_overrides)  # bad slurm.* keys fail before any work
    out = Path(os.path.expanduser(str(out))).resolve()
    if cfg["features"]["cache_dir"] is None:  # jobs share one cache folder, wherever they run from
        cfg = dict(cfg, features=dict(cfg["features"], cache_dir=str(out / "feature_cache")))
    runner = Runner(cfg, out, echo)
    sources = [runner.resolve(str(c)) for c in checkpoints]  # every spec checked before anything is submitted
    suite_id = suite_as_dict(cfg)
    cells: List[List[Optional[Dict[str, Any]]]] = []
    todo = []
    for i, src in enumerate(sources):
        cells.append([])
        for j, ev in enumerate(cfg["evaluations"]):
            key = cache_key({"suite": suite_id, "checkpoint": src.spec, "identity": src.identity, "evaluation": j})
            path = out / "jobs" / f"c{i}_e{j}" / "cell.json"
            cell = _read_cell(path, key)
            cells[i].append(cell)
            if cell is None:
                todo.append(((i, j), (cfg, src.spec, j, str(out), str(path), key)))
    folder = Path(jcfg.slurm.log_dir) if jcfg.slurm.log_dir else out / "jobs" / "submitit"
    jobs = submit_array(run_cell, [call for _, call in todo], folder, jcfg)
    reused = sum(c is not None for per in cells for c in per)
    if jobs:
        echo(f"submitted {len(jobs)} job(s) ({launcher}; {reused} cell(s) reused), first {jobs[0].job_id}; "
             f"logs in {folder}")
    failed = []
    for ((i, j), call), job in zip(todo, jobs):
        try:
            cells[i][j] = json.loads(Path(job.result()).read_text())
        except Exception as e:  # the job's own error, raised in the job and reported by submitit
            last = [line for line in str(e).splitlines() if line.strip()]
            failed.append(f"{call[1]} x {cfg['evaluations'][j]['label']}: "
                          f"{last[-1] if last else type(e).__name__} (log: {job.paths.stdout})")
    if failed:
        raise JobsFailed(f"{len(failed)} of {len(jobs)} benchmark job(s) failed; the others' cells are kept "
                         f"in {out}/jobs and reused by the same command: " + "; ".join(failed))
    results = assemble(cfg, cells)  # type: ignore[arg-type]
    write_results(results, out)
    echo(markdown_table(results))
    results["cache"] = {k: sum(c["cache"][k] for per in cells for c in per) for k in ("hits", "extractions")}
    results["jobs"] = {"submitted": len(jobs), "reused": reused}
    return results
