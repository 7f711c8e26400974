"""Preemption-safe training: on SIGTERM, SIGINT or SIGUSR1, finish the step, save ``last.ckpt``, exit 128 + signal.

A spot instance, Kubernetes (``terminationGracePeriodSeconds``) or SLURM (``--signal``) sends a
signal some seconds before it kills a job. What happens then:

1. The signal handler only records the signal: nothing is saved from inside a handler, which could
   run halfway through an optimizer step.
2. At the end of every training step (``GRPOModule.on_train_batch_end``, the point where a scheduled
   ``ModelCheckpoint`` save happens) every rank asks whether any rank got a signal (one all-reduce
   of a flag under several processes: a signal reaches ranks at different times). If one did,
   every rank takes part in saving ``<ModelCheckpoint dirpath>/last.ckpt`` through the trainer's
   checkpoint plugin or strategy — atomic with stare-lit's ``AtomicCheckpointIO`` /
   ``AtomicModelParallelStrategy``. It is the content a scheduled save at that step has: weights,
   optimizer, LR scheduler, loop progress, the loader's position, RNG states, the scheme's and the
   callbacks' states.
3. Lightning's own stop then ends the run: its loops check ``trainer.received_sigterm`` once the
   step's metrics are logged (a validation due at that step stops after its first batch), raise
   ``SIGTERMException``, and the loggers are flushed. ``stare-lit fit`` prints where the checkpoint is and how to resume,
   and exits with 128 + the signal number (143 for SIGTERM, 130 for SIGINT, 138 for SIGUSR1), so a
   scheduler sees a job that did not finish.

Why not Lightning's ``_SignalConnector`` alone: on SIGTERM it prints "Received SIGTERM", stops at
the next step end without saving anything, and the process exits with status 0; it does not handle
SIGINT (Ctrl-C raises ``KeyboardInterrupt`` wherever the program is). So once training starts
(``on_train_start``, after Lightning installed its handlers), :func:`watch` puts these handlers in
their place; Lightning restores the handlers of before ``fit`` when it tears down. A second Ctrl-C
stops at once, without saving.
"""

from __future__ import annotations

import os
import signal
from dataclasses import dataclass

import torch
import torch.distributed as dist

from stare_lit.ops.distributed import is_distributed

SIGNALS = tuple(s for s in (getattr(signal, "SIGTERM", None), signal.SIGINT, getattr(signal, "SIGUSR1", None))
                if s is not None)


@dataclass
class Stop:
    """A stop that a signal asked for: which signal, and where the checkpoint went (None: not saved yet)."""

    signum: int
    step: int | None = None
    path: str | None = None
    rank_zero: bool = True  # the process that prints the message

    @property
    def exit_code(self) -> int:
        return 128 + self.signum

    @property
    def name(self) -> str:
        return signal.Signals(self.signum).name

    def message(self) -> str:
        if self.path is None:
            return (f"stare-lit: stopped by {self.name} before the first training step ended; there was "
                    "nothing to save")
        return (f"stare-lit: stopped by {self.name} after step {self.step}; saved {self.path}. To resume, "
                f"run the same command with --ckpt_path {self.path}")


_received: int | None = None  # the signal this process received, set by the handler
stopped: Stop | None = None  # set once the run has saved and is stopping; read by the CLI


def _handler(signum, frame) -> None:
    global _received
    if signum == signal.SIGINT and _received == signal.SIGINT:
        raise KeyboardInterrupt  # a second Ctrl-C: stop now, without saving
    if _received is None:
        _received = signum
        if signum == signal.SIGINT:
            print("stare-lit: Ctrl-C: saving at the end of this step (press it again to stop without saving)",
                  flush=True)


def watch(trainer) -> None:
    """Record SIGTERM, SIGINT and SIGUSR1 from now on (in the main thread; elsewhere signals cannot be set).

    A SIGTERM that Lightning's handler recorded before training started becomes ours, to be saved
    at the end of the first step.
    """
    global _received, stopped
    _received, stopped = None, None
    connector = trainer._signal_connector  # Lightning's: its flag would stop the run without a save
    if connector.received_sigterm:
        _received, connector.received_sigterm = signal.SIGTERM, False
    try:
        for signum in SIGNALS:
            signal.signal(signum, _handler)
    except ValueError:  # not the main thread
        return


def stop_if_signalled(trainer) -> Stop | None:
    """At a step's end, on every rank: if any rank got a signal, save ``last.ckpt`` and have Lightning stop.

    Every rank calls this at the same point (it is a collective under several processes) and they
    all come to the same answer.
    """
    global stopped
    if stopped is not None:
        return stopped
    flag = torch.tensor(_received or 0, device=trainer.strategy.root_device)
    if is_distributed():
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
    if flag.item() == 0:
        return None
    path = checkpoint_path(trainer)
    trainer.save_checkpoint(path)  # every rank: sharded saves are collectives
    stopped = Stop(int(flag.item()), trainer.global_step, os.path.abspath(path), trainer.is_global_zero)
    requeue_on_slurm(trainer, stopped.signum)
    # Lightning's loops end the run at this step's end once this is set (SIGTERMException).
    trainer._signal_connector.received_sigterm = True
    return stopped


def requeue_on_slurm(trainer, signum: int) -> None:
    """Under ``SLURMEnvironment(auto_requeue=True)``, its requeue signal (SIGUSR1 by default) also runs
    Lightning's requeue — here, at the step's end, on every rank, rather than inside its signal handler
    mid-step: it saves ``<default_root_dir>/hpc_ckpt_N.ckpt`` (which the requeued job, started with the
    same command, resumes from by itself) and rank 0 calls ``scontrol requeue``."""
    from lightning.fabric.plugins.environments import SLURMEnvironment

    environment = trainer._accelerator_connector.cluster_environment
    if (isinstance(environment, SLURMEnvironment) and environment.auto_requeue
            and signum == (environment.requeue_signal or signal.SIGUSR1)):
        trainer._signal_connector._slurm_sigusr_handler_fn(signum, None)


def checkpoint_path(trainer) -> str:
    """``last.ckpt`` where the run's ModelCheckpoint saves (its dirpath), else ``<log_dir>/checkpoints``."""
    callback = trainer.checkpoint_callback
    if callback is not None and callback.dirpath:
        return os.path.join(callback.dirpath, f"{callback.CHECKPOINT_NAME_LAST}{callback.FILE_EXTENSION}")
    return os.path.join(trainer.log_dir or trainer.default_root_dir, "checkpoints", "last.ckpt")


def stop_behind(error: BaseException) -> Stop | None:
    """The stop behind ``error`` (Lightning's SIGTERMException) when it came from a signal: saved, or
    recorded before any step ended."""
    from lightning.pytorch.utilities.exceptions import SIGTERMException

    if not isinstance(error, SIGTERMException):
        return None
    return stopped or Stop(_received or signal.SIGTERM)
