"""What a run reports: progress bar, metrics.jsonl, TensorBoard, health warnings, the final plot."""
from __future__ import annotations

import json
import logging
import math
from pathlib import Path
from typing import Dict, List, Optional

log = logging.getLogger("ssl_scale")


class Telemetry:
    """Rank 0 writes; other ranks hold a silent instance so call sites need no rank checks."""

    def __init__(self, run_dir: Path, enabled: bool, total_steps: int, start_step: int,
                 progress: bool = True, tensorboard: bool = True, num_prototypes: Optional[List[int]] = None):
        self.enabled = enabled
        self.run_dir = run_dir
        self.ln_k = [math.log(k) for k in (num_prototypes or [])]
        self._near_ln_k = 0
        self.bar = None
        self.tb = None
        if not enabled:
            return
        self.metrics_path = run_dir / "metrics.jsonl"
        self._f = open(self.metrics_path, "a", buffering=1)
        if progress:
            from tqdm.auto import tqdm

            self.bar = tqdm(total=total_steps, initial=start_step, desc="train", unit="step", dynamic_ncols=True)
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self.tb = SummaryWriter(log_dir=str(run_dir / "tensorboard"))
            except ImportError:  # tensorboard is a declared dependency; keep training if it is broken
                log.warning("TensorBoard is not importable; metrics go to metrics.jsonl only")

    def advance(self, n: int = 1) -> None:
        if self.bar is not None:
            self.bar.update(n)

    def log(self, metrics: Dict[str, float]) -> None:
        if not self.enabled:
            return
        self._f.write(json.dumps(metrics) + "\n")
        step = int(metrics["step"])
        if self.tb is not None:
            for k, v in metrics.items():
                if k != "step" and isinstance(v, (int, float)):
                    self.tb.add_scalar(f"train/{k}", v, step)
        if self.bar is not None:
            self.bar.set_postfix(loss=f"{metrics['loss']:.3f}", lr=f"{metrics['lr']:.3g}",
                                 img_s=f"{metrics['images_per_s']:.0f}", refresh=False)
        self._health(metrics)

    def _health(self, m: Dict[str, float]) -> None:
        if self.ln_k and abs(m["loss"] - self.ln_k[0]) < 0.01 * self.ln_k[0]:
            self._near_ln_k += 1
            if self._near_ln_k == 3:
                log.warning("loss has sat at ln(K)=%.3f for 3 logs: the assignments may have collapsed "
                            "(check the learning rate, loss.epsilon and loss.freeze_prototypes_iters)", self.ln_k[0])
        else:
            self._near_ln_k = 0
        usage = m.get("prototype_usage")
        if usage is not None and m["step"] > 0 and usage < 0.01:
            log.warning("step %d: only %.1f%% of the prototypes receive any sample: assignments are collapsing",
                        m["step"], 100 * usage)

    def write(self, msg: str) -> None:
        if not self.enabled:
            return
        if self.bar is not None:
            self.bar.write(msg)
        else:
            print(msg, flush=True)

    def close(self) -> None:
        if not self.enabled:
            return
        if self.bar is not None:
            self.bar.close()
        if self.tb is not None:
            self.tb.close()
        self._f.close()
        try:
            plot_metrics(self.metrics_path, self.run_dir / "training_curves.png")
        except Exception as e:  # a plot must never fail a finished run
            log.warning("could not draw training_curves.png: %s", e)


def read_metrics(path: Path) -> List[Dict[str, float]]:
    rows = []
    with open(path) as f:
        for line in f:
            line = line.strip()
            if line:
                rows.append(json.loads(line))
    return rows


def plot_metrics(metrics_path: Path, out: Path) -> Path:
    """Loss, learning rate, images/s and prototype usage against the step, in one PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = read_metrics(metrics_path)
    keys = [k for k in ("loss", "lr", "images_per_s", "prototype_usage", "assignment_entropy") if any(k in r for r in rows)]
    fig, axes = plt.subplots(1, len(keys), figsize=(4 * len(keys), 3.2))
    axes = [axes] if len(keys) == 1 else axes
    for ax, k in zip(axes, keys):
        pts = [(r["step"], r[k]) for r in rows if k in r]
        ax.plot([p[0] for p in pts], [p[1] for p in pts])
        ax.set_title(k)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out
