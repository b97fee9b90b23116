"""One training run from a loaded config: trainer, fit, the closing kNN report, clean shutdown."""
from __future__ import annotations

import logging
from typing import Any, Callable, Dict, Optional

from ssl_scale.distributed import destroy, init_distributed

log = logging.getLogger("ssl_scale")


def train(cfg, stop: Optional[Callable[[], bool]] = None) -> Dict[str, Any]:
    """Train `cfg` in this process (joining the process group its environment describes).

    Args:
        stop: polled between steps; when it turns True the run checkpoints and returns with "stopped".
    """
    from ssl_scale.train.trainer import Trainer

    env = init_distributed(cfg.train.device)
    try:
        trainer = Trainer(cfg, env)
        result = trainer.fit(stop)
        result["rank"] = env.rank
        if cfg.eval.knn_at_end and env.is_main and not result["stopped"]:
            from ssl_scale.train.evaluate import knn_report

            rep = knn_report(cfg, trainer.model.trunk, env.device)
            result["knn"] = rep
            print(f"\n{cfg.eval.k}-NN top-1 on held-out images ({cfg.model.trunk}):")
            print(f"  random init : {100 * rep['random']['top1']:.1f}%")
            print(f"  after SwAV  : {100 * rep['trained']['top1']:.1f}%   ({result['step']} steps, run dir {cfg.run.dir})")
        return result
    finally:
        destroy(env)
