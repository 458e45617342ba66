"""Termination signals deferred to the next step boundary of a training loop.

SIGTERM (``timeout``, a scheduler, a container stop) and Ctrl-C raise an exception in the
main thread wherever it happens to be: half-way through ``optimizer.step()`` the weights are
part-updated and cannot be checkpointed. Inside :func:`deferred_signals` the two signals are
only noted; the loop asks ``stop.pending`` at the top of each step, writes its resume
checkpoint, and calls ``stop.deliver()``, which hands the signal to whoever handled it before
(Prefect's TerminationSignal, Python's KeyboardInterrupt, the default of ending the process).
"""
from __future__ import annotations

import signal
import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

DEFERRED_SIGNALS = (signal.SIGINT, signal.SIGTERM)


class PendingStop:
    def __init__(self) -> None:
        self.signum: int | None = None
        self.previous: dict[int, object] = {}

    @property
    def pending(self) -> bool:
        return self.signum is not None

    def _note(self, signum, frame) -> None:
        self.signum = signum

    def restore(self) -> None:
        for signum, handler in self.previous.items():
            signal.signal(signum, handler)
        self.previous = {}

    def deliver(self) -> None:
        """Put the earlier handlers back and re-raise the noted signal through them."""
        self.restore()
        if self.signum is not None:
            signum, self.signum = self.signum, None
            signal.raise_signal(signum)


@contextmanager
def deferred_signals() -> Iterator[PendingStop]:
    """Note SIGINT/SIGTERM instead of acting on them until ``deliver()`` or the end of the
    block (which delivers one still pending). Outside the main thread, where Python cannot
    set handlers, nothing is deferred and ``pending`` stays False."""
    stop = PendingStop()
    if threading.current_thread() is threading.main_thread():
        for signum in DEFERRED_SIGNALS:
            stop.previous[signum] = signal.signal(signum, stop._note)
    try:
        yield stop
    finally:
        stop.deliver()


def checkpoint_then_stop(stop: PendingStop, save: Callable[[int], None] | None, steps_done: int, start: int,
                         checkpoint_path: Path | None) -> None:
    """What a loop does with a pending signal at a step boundary: write its resume checkpoint
    (``save(steps_done)``; None where it cannot, e.g. DDP ranks that would have to agree on the
    step) when it trained since starting or resuming, say so, and deliver the signal."""
    if save is not None and checkpoint_path and steps_done > start:
        save(steps_done)
        print(f"stopped after step {steps_done}: resume checkpoint written to {checkpoint_path}",
              file=sys.stderr, flush=True)
    stop.deliver()
