"""Atomic checkpoint writes: a crash at any point of a save leaves the previous checkpoint complete."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import lightning as L
import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint

import stare_lit.train.checkpoint as checkpoint_file
from stare_lit.train.checkpoint import AtomicCheckpointIO
from stare_lit.errors import ConfigError

ROOT = Path(__file__).parents[2]


def state(value: float) -> dict:
    return {"state_dict": {"w": torch.full((256, 256), value)}, "global_step": int(value)}


def test_save_then_load_with_weights_only(tmp_path):
    io = AtomicCheckpointIO()
    io.save_checkpoint(state(1.0), tmp_path / "sub" / "a.ckpt")
    loaded = io.load_checkpoint(tmp_path / "sub" / "a.ckpt")
    assert torch.equal(loaded["state_dict"]["w"], state(1.0)["state_dict"]["w"])
    assert [p.name for p in (tmp_path / "sub").iterdir()] == ["a.ckpt"]  # no temporary file left


def test_a_failed_write_keeps_the_previous_file(tmp_path, monkeypatch):
    io = AtomicCheckpointIO()
    path = tmp_path / "last.ckpt"
    io.save_checkpoint(state(1.0), path)
    before = path.read_bytes()

    def disk_full(obj, f):  # half the bytes reach the disk, then the write fails
        f.write(b"\0" * 1000)
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(checkpoint_file.torch, "save", disk_full)
    with pytest.raises(OSError, match="No space left"):
        io.save_checkpoint(state(2.0), path)
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.ckpt"]


CRASH = """
import os, signal, sys, torch
sys.path.insert(0, {root!r})
import stare_lit.train.checkpoint as c
real_save = torch.save
def save_and_die(obj, f):  # the process is killed halfway through writing the file
    import io as _io
    buffer = _io.BytesIO()
    real_save(obj, buffer)
    f.write(buffer.getvalue()[: len(buffer.getvalue()) // 2])
    f.flush()
    os.kill(os.getpid(), signal.SIGKILL)
c.torch.save = save_and_die
c.AtomicCheckpointIO().save_checkpoint({{"state_dict": {{"w": torch.full((256, 256), 2.0)}}}}, {path!r})
"""


@pytest.mark.slow
def test_a_process_killed_mid_save_leaves_the_previous_checkpoint(tmp_path):
    """SIGKILL halfway through writing the new checkpoint: the old one is still there, complete."""
    path = tmp_path / "last.ckpt"
    AtomicCheckpointIO().save_checkpoint(state(1.0), path)
    script = CRASH.format(root=str(ROOT), path=str(path))
    done = subprocess.run([sys.executable, "-c", textwrap.dedent(script)], capture_output=True, timeout=120)
    assert done.returncode == -9, done.stderr.decode()[-2000:]  # it really died mid-write
    assert any(".tmp-" in p.name for p in tmp_path.iterdir())  # the half-written file, under its temporary name
    assert AtomicCheckpointIO().load_checkpoint(path)["global_step"] == 1  # the previous checkpoint, complete


@pytest.mark.slow
def test_last_ckpt_survives_a_failing_save_during_training(tiny_policy, tmp_path, monkeypatch):
    """Through the Trainer: the save at step 2 fails, last.ckpt is still step 1's, complete."""
    from tests.live import make_module
    from stare_lit.data.tasks.arithmetic import ArithmeticDataModule

    io = AtomicCheckpointIO()
    real_save, calls = torch.save, []

    def fail_second_step(obj, f):
        calls.append(obj["global_step"])
        if obj["global_step"] == 2:
            f.write(b"partial")
            raise OSError(5, "Input/output error")
        real_save(obj, f)

    monkeypatch.setattr(checkpoint_file.torch, "save", fail_second_step)
    L.seed_everything(0)
    trainer = L.Trainer(accelerator="cpu", max_steps=3, logger=False, enable_progress_bar=False, plugins=[io],
                        callbacks=[ModelCheckpoint(dirpath=tmp_path, every_n_train_steps=1, save_last=True)],
                        enable_model_summary=False)
    with pytest.raises(OSError, match="Input/output error"):
        trainer.fit(make_module(tiny_policy), ArithmeticDataModule(batch_size=4, num_train_prompts=64, num_val_prompts=4))
    assert 2 in calls
    saved = io.load_checkpoint(tmp_path / "last.ckpt")
    assert saved["global_step"] == 1
    assert not [p for p in os.listdir(tmp_path) if ".tmp-" in p]


class Payload:
    """A pickled object that runs code when unpickled (what weights_only refuses to load)."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (Path(self.marker),))


def test_weights_only_refuses_pickled_code(tmp_path):
    marker = tmp_path / "code-ran"
    torch.save({"state_dict": {}, "payload": Payload(str(marker))}, tmp_path / "evil.ckpt")
    with pytest.raises(ConfigError, match="weights_only"):
        AtomicCheckpointIO().load_checkpoint(tmp_path / "evil.ckpt")
    assert not marker.exists()


def test_sharded_checkpoint_swap_keeps_the_previous_one_until_the_new_one_is_whole(tmp_path):
    """AtomicModelParallelStrategy's last step, without processes: a save that died left a half-written
    `.NAME.tmp` (the previous checkpoint is untouched); the next save replaces it and swaps in whole."""
    from stare_lit.train.strategy import _remove, swap_in

    path = tmp_path / "last.ckpt"
    path.mkdir()
    (path / "__0_0.distcp").write_text("step 1")
    crashed = tmp_path / ".last.ckpt.tmp"
    crashed.mkdir()
    (crashed / "__0_0.distcp").write_text("half of step 2")
    assert (path / "__0_0.distcp").read_text() == "step 1"  # what a resume after the crash reads

    _remove(crashed)  # the next save starts by clearing what the crash left
    crashed.mkdir()
    (crashed / "__0_0.distcp").write_text("step 3")
    swap_in(crashed, path)
    assert (path / "__0_0.distcp").read_text() == "step 3"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.ckpt"]

    single = tmp_path / "file.ckpt"  # a single-file checkpoint at that name is replaced as well
    single.write_text("file")
    new = tmp_path / ".file.ckpt.tmp"
    new.mkdir()
    swap_in(new, single)
    assert single.is_dir()
