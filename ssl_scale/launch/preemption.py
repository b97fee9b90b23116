"""Stop signals (SLURM's pre-termination signal, SIGTERM) turned into a flag the trainer polls between
steps, so that every rank checkpoints the same step before the job is requeued or killed."""
from __future__ import annotations

import logging
import signal
from typing import Dict, Iterable, Optional

log = logging.getLogger("ssl_scale")


class StopOnSignal:
    """Installs a handler for `signals` that only records which one arrived; calling the object says
    whether one did. The handler does nothing else: the work (a collective checkpoint) happens in the
    training loop, at a step boundary that every rank agrees on."""

    def __init__(self, signals: Iterable[int]):
        self.signum: Optional[int] = None
        self._previous: Dict[int, object] = {}
        for s in signals:
            self._previous[s] = signal.signal(s, self._on_signal)

    def _on_signal(self, signum: int, frame) -> None:
        if self.signum is None:
            log.warning("received %s: stopping after this step with a checkpoint", signal.Signals(signum).name)
            self.signum = signum

    def __call__(self) -> bool:
        return self.signum is not None

    def __enter__(self) -> "StopOnSignal":
        return self

    def __exit__(self, *exc) -> None:
        """Put the previous handlers back (a signal after training is theirs again)."""
        for s, h in self._previous.items():
            signal.signal(s, h)

    def previous(self, signum: int):
        """The handler that was installed for `signum` before this one (e.g. submitit's requeue handler)."""
        return self._previous.get(signum)
