"""How `stare-lit compare` stops and resumes its runs: a resumed run's metrics stitched whole, and a real compare
stopped by SIGTERM, then run again."""

from __future__ import annotations

import json
import math
import os
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import torch

from stare_lit.commands.compare_runs import last_checkpoint, parts, set_aside, stitch
from tests.cli import ROOT, STARE_CONFIG


def rows(steps, val_steps=(), value=0.0) -> pd.DataFrame:
    """A CSV logger's rows: a training row per step (train/reward = ``value``), a validation row per val step."""
    train = pd.DataFrame({"step": list(steps), "train/reward": value})
    val = pd.DataFrame({"step": list(val_steps), "val/mean@2": value})
    return pd.concat([train, val], ignore_index=True)


def test_a_resumed_run_s_metrics_are_stitched_whole(tmp_path):
    metrics = tmp_path / "run" / "metrics.csv"
    metrics.parent.mkdir()
    set_aside(metrics)  # nothing logged yet: nothing to set aside
    assert parts(metrics) == []
    rows(range(0, 4), val_steps=[1]).to_csv(metrics, index=False)  # stopped after step 4
    set_aside(metrics)
    # Resumed from a periodic last.ckpt of step 3 and killed after step 6: steps 3 and 4 run again.
    rows(range(3, 6), val_steps=[3], value=1.0).to_csv(metrics, index=False)
    set_aside(metrics)
    assert [p.name for p in parts(metrics)] == ["metrics.part1.csv", "metrics.part2.csv"] and not metrics.exists()
    rows(range(6, 8), val_steps=[7], value=2.0).to_csv(metrics, index=False)  # the last part, to the end
    stitch(metrics)
    whole = pd.read_csv(metrics)
    assert whole["step"].tolist() == [0, 1, 2, 1, 3, 4, 5, 3, 6, 7, 7]
    train = whole.dropna(subset=["train/reward"])
    assert train["step"].tolist() == list(range(8))  # each step once
    assert train["train/reward"].tolist() == [0.0] * 3 + [1.0] * 3 + [2.0] * 2  # the later part wins from step 3 on
    val = whole.dropna(subset=["val/mean@2"])
    assert val.set_index("step")["val/mean@2"].to_dict() == {1: 0.0, 3: 1.0, 7: 2.0}
    assert parts(metrics) == []  # stitched: the parts are gone
    stitch(metrics)  # a run that was never stopped: unchanged
    assert pd.read_csv(metrics).equals(whole)
    # Resumed from the checkpoint of its last step (compare stopped before it noted the run done): nothing more logged.
    set_aside(metrics)
    stitch(metrics)
    assert pd.read_csv(metrics).equals(whole)


def test_last_checkpoint_is_the_newest_under_the_run(tmp_path):
    assert last_checkpoint(tmp_path) is None
    old, new = tmp_path / "a" / "last.ckpt", tmp_path / "run" / "checkpoints" / "last.ckpt"
    for path, at in ((old, 100.0), (new, 200.0)):
        path.parent.mkdir(parents=True)
        path.write_bytes(b"x")
        os.utime(path, (at, at))
    assert last_checkpoint(tmp_path) == new


# ---------------------------------------------------------------- a real compare, stopped and resumed

STEPS = 6


def overlay(folder: Path, name: str, wait_at: int) -> str:
    """A scheme overlay that changes nothing but the callbacks: a ModelCheckpoint (last.ckpt) and
    tests.user_callbacks.WaitForSignal, which holds the run inside step ``wait_at`` (writing folder/<name>.waiting)."""
    callbacks = [{"class_path": "lightning.pytorch.callbacks.ModelCheckpoint",
                  "init_args": {"every_n_train_steps": 100, "save_last": True}},
                 {"class_path": "tests.user_callbacks.WaitForSignal",
                  "init_args": {"step": wait_at, "marker": str(folder / f"{name}.waiting")}}]
    path = folder / f"{name}.yaml"
    path.write_text(json.dumps({"trainer": {"callbacks": callbacks}}))  # JSON is YAML
    return str(path)


def children_of(out: Path) -> list[str]:
    """Processes still running whose command line names ``out`` (a run the comparison started)."""
    found = []
    for proc in Path("/proc").iterdir():
        try:
            cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        if proc.name.isdigit() and int(proc.name) != os.getpid() and str(out) in cmdline:
            found.append(cmdline)
    return found


def by_step(metrics_csv: Path) -> pd.DataFrame:
    """A run's metrics, one row per logged step (training and validation rows merged), timings dropped."""
    frame = pd.read_csv(metrics_csv)
    noisy = [c for c in frame.columns if c.startswith("time/") or c.endswith("_per_s") or c == "train/mfu"]
    return frame.drop(columns=noisy).groupby("step").first().sort_index(axis=1)


@pytest.mark.slow  # two tiny `stare-lit fit` runs in subprocesses, twice, under a compare
@pytest.mark.skipif(not Path("/proc/self/cmdline").exists(), reason="finds left-over runs through /proc")
def test_sigterm_stops_every_run_with_a_checkpoint_and_the_same_compare_resumes_them(tiny_model_dir, tmp_path):
    """Two runs of the same settings wait inside steps 3 and 4 (the second where a validation is due). SIGTERM to
    compare: both save last.ckpt and stop, nothing is left running, compare exits 143 with the command that resumes.
    That command resumes both to the end: both log every step and validation once, and the same numbers (the resumed
    fit logs what the uninterrupted one does, tests/train/test_preemption.py; here they were stopped at other steps)."""
    out = tmp_path / "out"
    schemes = [overlay(tmp_path, "a", 3), overlay(tmp_path, "a2", 4)]
    extra = ["--model.policy.name_or_path", tiny_model_dir, "--trainer.val_check_interval", "2",
             "--model.rewards", '[{"class_path": "tests.helpers.DigitShare"}]', "--model.group_size", "4",
             "--model.sampling.max_new_tokens", "8", "--model.validation.samples", "2", "--model.optimizer.init_args.lr",
             "3e-3", "--data.init_args.batch_size", "4", "--data.init_args.num_train_prompts", "12",
             "--data.init_args.num_val_prompts", "4", "--data.init_args.val_batch_size", "4"]
    command = [sys.executable, "-m", "stare_lit.commands.cli", "compare", "--schemes", json.dumps(schemes),
               "--seeds", "[0]", "--base", STARE_CONFIG, "--max_steps", str(STEPS), "--out_dir", str(out),
               "--extra_args", json.dumps(extra), "--jobs", "2"]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    with open(tmp_path / "console.txt", "w") as console:
        process = subprocess.Popen(command, stdout=console, stderr=subprocess.STDOUT, env=env, cwd=tmp_path)
        deadline = time.monotonic() + 300
        while (not all((tmp_path / f"{n}.waiting").exists() for n in ("a", "a2")) and process.poll() is None
               and time.monotonic() < deadline):
            time.sleep(0.05)
        waiting = [n for n in ("a", "a2") if (tmp_path / f"{n}.waiting").exists()]
        assert waiting == ["a", "a2"], (tmp_path / "console.txt").read_text()[-3000:]
        process.send_signal(signal.SIGTERM)
        code = process.wait(timeout=300)
    said = (tmp_path / "console.txt").read_text()
    assert code == 128 + signal.SIGTERM, said[-3000:]
    assert not children_of(out), "runs left running without their compare"
    for name, step in (("a", 3), ("a2", 4)):
        last = out / name / "seed0" / "run" / "checkpoints" / "last.ckpt"
        assert torch.load(last, weights_only=True)["global_step"] == step, name
        assert f"stopped by SIGTERM after step {step}" in (out / name / "seed0" / "log.txt").read_text()
    resume = next(line for line in said.splitlines() if line.startswith("to resume: "))
    assert "Traceback" not in said

    again = shlex.split(resume.removeprefix("to resume: "))
    assert again[:2] == ["stare-lit", "compare"]
    done = subprocess.run([sys.executable, "-m", "stare_lit.commands.cli", *again[1:]], capture_output=True, text=True,
                          env=env, cwd=tmp_path, timeout=300)
    assert done.returncode == 0, (done.stdout + done.stderr)[-3000:]
    assert "a seed 0: resumed from" in done.stdout and "a2 seed 0: resumed from" in done.stdout
    metrics = {name: out / name / "seed0" / "run" / "metrics.csv" for name in ("a", "a2")}
    for name, path in metrics.items():
        logged = pd.read_csv(path)
        assert logged.dropna(subset=["train/reward"])["step"].tolist() == list(range(STEPS)), name  # each step once
        assert logged.dropna(subset=["val/mean@2"])["step"].tolist() == [1, 3, 5], name  # each validation once
        assert not parts(path) and (out / name / "seed0" / "wall_time_s.txt").exists()
    expected, got = by_step(metrics["a"]), by_step(metrics["a2"])
    assert list(got.columns) == list(expected.columns) and list(got.index) == list(range(STEPS))
    differ = [c for c in got.columns if not all(x == y or (math.isnan(x) and math.isnan(y))
                                                 for x, y in zip(got[c], expected[c]))]
    assert not differ, f"stopped after step 3 vs after step 4: {differ}"
    assert (out / "summary.md").exists()
