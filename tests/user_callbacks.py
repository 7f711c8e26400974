"""Callbacks the tests pick by class_path (apart from tests/helpers.py, whose rewards a worker imports without Lightning)."""

from lightning.pytorch.callbacks import Callback


class WaitForSignal(Callback):
    """At the start of optimizer step ``step`` (1-based), write ``marker`` and wait there, mid-step, until a
    signal arrives (at most ``timeout`` seconds): the test sends a real one from outside the process, or
    ``send`` (a signal number) is sent to this process from here."""

    def __init__(self, step: int, marker: str, timeout: float = 120.0, send: int | None = None,
                 rank: int | None = None) -> None:
        self.step, self.marker, self.timeout, self.send, self.rank = step, marker, timeout, send, rank

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        import time
        from pathlib import Path

        from stare_lit.train import preemption

        if trainer.global_step != self.step - 1 or self.rank not in (None, trainer.global_rank):
            return  # with ``rank``, only that rank waits (the others go on, into the step's collectives)
        Path(self.marker).write_text(str(self.step))
        if self.send is not None:
            import os

            os.kill(os.getpid(), self.send)
        deadline = time.monotonic() + self.timeout
        while preemption._received is None and time.monotonic() < deadline:
            time.sleep(0.02)


class FailingCallback(Callback):
    """A user's callback with a bug: raises at the end of the first step."""

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        raise KeyError("bug in user callback")
