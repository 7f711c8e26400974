"""Preemption: a real signal sent to a ``stare-lit fit`` process mid-step saves ``last.ckpt`` and exits 128 + n;
resuming from it logs exactly (==) what the uninterrupted run logs (see stare_lit.train.preemption).

The signal is sent from outside the process while it waits inside step k (tests.user_callbacks.WaitForSignal),
so it arrives mid-step at a known step: at an epoch boundary (the last batch of epoch 1) and mid-epoch.
"""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import torch
import torch.distributed as dist

from stare_lit.commands.cli import main
from tests.cli import ROOT, STARE_CONFIG

pytestmark = pytest.mark.slow  # real signals to `stare-lit fit` runs, in subprocesses and on 2 ranks

STEPS = 6  # 3 batches per epoch: two epochs


def args(model: str, folder: Path, *extra: str) -> list[str]:
    return ["fit", "--config", STARE_CONFIG, "--model.policy.name_or_path", model,
            "--trainer.default_root_dir", str(folder), "--trainer.logger.init_args.save_dir", str(folder),
            "--trainer.max_steps", str(STEPS), "--trainer.val_check_interval", "2",
            "--trainer.enable_progress_bar", "false",
            "--model.rewards", '[{"class_path": "tests.helpers.DigitShare"}]', "--model.group_size", "4",
            "--model.sampling.max_new_tokens", "8", "--model.validation.samples", "2",
            "--model.optimizer.init_args.lr", "3e-3",
            "--data.init_args.batch_size", "4", "--data.init_args.num_train_prompts", "12",
            "--data.init_args.num_val_prompts", "4", "--data.init_args.val_batch_size", "4", *extra]


def metrics(folder: Path) -> pd.DataFrame:
    frame = pd.read_csv(next(folder.rglob("metrics.csv")))
    noisy = [c for c in frame.columns if c.startswith("time/") or c.endswith("_per_s") or c == "train/mfu"]
    return frame.drop(columns=noisy).groupby("step").first().sort_index(axis=1)


@pytest.fixture(scope="module")
def uninterrupted(tiny_model_dir, tmp_path_factory):
    folder = tmp_path_factory.mktemp("uninterrupted")
    main(args(tiny_model_dir, folder))
    return metrics(folder)


def waiter(folder: Path, step: int, send: int | None = None, rank: int | None = None) -> str:
    return "--trainer.callbacks+=" + json.dumps({"class_path": "tests.user_callbacks.WaitForSignal", "init_args": {
        "step": step, "marker": str(folder / "in-step"), "send": send, "rank": rank}})


def interrupt(model: str, folder: Path, step: int, signum: int) -> subprocess.CompletedProcess:
    """Run ``stare-lit fit`` in a subprocess and send it ``signum`` while it is inside step ``step``."""
    marker = folder / "in-step"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    process = subprocess.Popen([sys.executable, "-m", "stare_lit.commands.cli", *args(model, folder, waiter(folder, step))],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=folder)
    deadline = time.monotonic() + 300
    while not marker.exists() and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert marker.exists(), f"never reached step {step}: {process.communicate()[1][-3000:]}"
    process.send_signal(signum)
    out, err = process.communicate(timeout=300)
    return subprocess.CompletedProcess(process.args, process.returncode, out, err)


@pytest.mark.parametrize("stop_at,signum", [(3, signal.SIGTERM), (4, signal.SIGINT)],
                         ids=["epoch-boundary-SIGTERM", "mid-epoch-SIGINT"])
def test_signal_saves_last_ckpt_and_the_resumed_run_matches(uninterrupted, tiny_model_dir, tmp_path, stop_at, signum):
    first, second = tmp_path / "first", tmp_path / "second"
    first.mkdir()
    done = interrupt(tiny_model_dir, first, stop_at, signum)
    assert done.returncode == 128 + signum, done.stderr[-3000:]
    last = first / "version_0" / "checkpoints" / "last.ckpt"  # where the run's ModelCheckpoint saves
    name = signal.Signals(signum).name
    assert f"stare-lit: stopped by {name} after step {stop_at}; saved {last}" in done.stderr, done.stderr[-3000:]
    assert f"--ckpt_path {last}" in done.stderr and "Traceback" not in done.stderr
    state = torch.load(last, weights_only=True)
    assert state["global_step"] == stop_at and state["run_state"]["rollouts"] == stop_at
    assert not list(first.rglob(".*.tmp*"))  # written atomically: no temporary left behind
    # The interrupted run logged every step it finished.
    assert metrics(first)["train/reward"].dropna().index.max() == stop_at - 1

    main(args(tiny_model_dir, second, "--ckpt_path", str(last)))
    expected, got = uninterrupted, metrics(second)
    expected, got = expected[expected.index >= stop_at], got[got.index >= stop_at]
    assert list(got.index) == list(expected.index) == list(range(stop_at, STEPS))
    columns = sorted(set(expected.columns) | set(got.columns))
    expected, got = expected.reindex(columns=columns), got.reindex(columns=columns)
    assert got["train/reward"].notna().all() and got["val/mean@2"].notna().any()
    differ = {column: (expected[column].tolist(), got[column].tolist()) for column in columns
              if not all(x == y or (math.isnan(x) and math.isnan(y))
                         for x, y in zip(expected[column].tolist(), got[column].tolist()))}
    assert not differ, f"uninterrupted vs resumed: {differ}"


def test_sigusr1_in_process_saves_and_exits_138(tiny_model_dir, tmp_path, capsys):
    """SLURM's ``--signal=USR1@90``: the same stop, here sent by the process to itself during step 2."""
    with pytest.raises(SystemExit, match=f"^{128 + signal.SIGUSR1}$") as exit_info:
        main(args(tiny_model_dir, tmp_path, waiter(tmp_path, 2, send=int(signal.SIGUSR1)), "--trainer.max_steps", "3"))
    assert exit_info.value.code == 128 + signal.SIGUSR1
    last = tmp_path / "version_0" / "checkpoints" / "last.ckpt"
    assert f"stopped by SIGUSR1 after step 2; saved {last}" in capsys.readouterr().err
    assert torch.load(last, weights_only=True)["global_step"] == 2
    assert signal.getsignal(signal.SIGUSR1) in (signal.SIG_DFL, None)  # Lightning put back what was there


def test_slurm_auto_requeue_saves_the_hpc_checkpoint_at_the_step_end_and_requeues(tiny_model_dir, tmp_path, capsys,
                                                                                  monkeypatch):
    """On SLURM (``SLURMEnvironment(auto_requeue=True)``, detected from the environment), SIGUSR1 also saves
    Lightning's hpc_ckpt — which the requeued job resumes from by itself — and calls ``scontrol requeue``."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "scontrol").write_text(f'#!/bin/sh\necho "$@" > {tmp_path}/scontrol.args\n')
    (bin_dir / "scontrol").chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}:{os.environ['PATH']}")
    for key, value in {"SLURM_NTASKS": "1", "SLURM_JOB_NAME": "grpo", "SLURM_JOB_ID": "4242", "SLURM_PROCID": "0",
                       "SLURM_LOCALID": "0", "SLURM_NODEID": "0"}.items():
        monkeypatch.setenv(key, value)
    run = tmp_path / "run"
    with pytest.raises(SystemExit, match=f"^{128 + signal.SIGUSR1}$") as exit_info:
        main(args(tiny_model_dir, run, waiter(tmp_path, 2, send=int(signal.SIGUSR1)), "--trainer.max_steps", "3"))
    assert exit_info.value.code == 128 + signal.SIGUSR1
    assert (tmp_path / "scontrol.args").read_text().split() == ["requeue", "4242"]
    hpc = torch.load(run / "hpc_ckpt_1.ckpt", weights_only=True)
    last = torch.load(run / "version_0" / "checkpoints" / "last.ckpt", weights_only=True)
    assert hpc["global_step"] == last["global_step"] == 2
    assert all(torch.equal(hpc["state_dict"][k], v) for k, v in last["state_dict"].items())


@pytest.mark.skipif(not (dist.is_available() and dist.is_gloo_available()), reason="needs torch.distributed with gloo")
def test_two_ranks_agree_and_both_take_part_in_the_sharded_save(tiny_model_dir, tmp_path):
    """FSDP2 on 2 CPU processes (gloo): only rank 0 gets SIGTERM (rank 1 is its child and never sees it); the
    all-reduce at the step's end makes both ranks save the sharded last.ckpt together and exit 143."""
    marker = tmp_path / "in-step"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "TOKENIZERS_PARALLELISM": "false"}
    env.pop("MASTER_PORT", None)
    command = [sys.executable, "-m", "stare_lit.commands.cli", *args(tiny_model_dir, tmp_path, waiter(tmp_path, 2, rank=0)),
               "--trainer.max_steps", "4", "--trainer.devices", "2", "--trainer.strategy",
               "stare_lit.train.AtomicModelParallelStrategy", "--trainer.strategy.init_args.data_parallel_size", "2",
               "--trainer.strategy.init_args.tensor_parallel_size", "1",
               "--trainer.strategy.init_args.process_group_backend", "gloo",
               "--data.init_args.batch_size", "2", "--data.init_args.num_val_prompts", "4"]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env,
                               cwd=tmp_path, start_new_session=True)
    try:
        deadline = time.monotonic() + 300
        while not marker.exists() and process.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert marker.exists(), process.communicate()[0][-4000:]
        process.send_signal(signal.SIGTERM)  # rank 0 only
        output, _ = process.communicate(timeout=300)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
    assert process.returncode == 143, output[-4000:]
    last = tmp_path / "version_0" / "checkpoints" / "last.ckpt"
    assert output.count(f"stopped by SIGTERM after step 2; saved {last}") == 1, output[-4000:]  # rank 0 prints
    assert (last / ".metadata").is_file() and len(list(last.glob("*.distcp"))) == 2  # both ranks wrote a shard
    assert not list(last.parent.glob(".*"))  # swapped in whole: no .tmp or .old left
