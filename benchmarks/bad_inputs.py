"""A battery of bad command-line inputs, tried as a new user would, on every command.

    python benchmarks/bad_inputs.py                  # all cases; writes benchmarks/results/bad_inputs.md
    python benchmarks/bad_inputs.py --only compare   # one command's cases

Each case runs ``stare-lit COMMAND ...`` (``stare_lit.commands.cli.main``) in a forked child, in a
workspace that holds earlier good runs of every command (fit, evaluate, export, warmstart, compare).
A case is handled when the command
- exits with one line ``stare-lit: error: ...`` and no traceback,
- before any work: no model loaded (``from_pretrained``) or built with weights (a ``PreTrainedModel``
  constructed off the meta device), no Lightning run, no optimizer step, no subprocess (each hooked
  in the child and recorded),
- and leaves every file of the workspace byte-identical.
Anything else is mishandled, by kind: ``traceback``, ``accepted`` (exit 0 on bad input),
``not one line`` (e.g. a usage dump), ``late`` (the line came after work started), ``touched``
(an earlier file changed), ``timeout`` (still working after --timeout seconds).

Not a speed benchmark: it counts, and its table lists each case and what happened.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.common import RESULTS, header  # noqa: E402

RO = "/proc/stare-lit-battery"  # a path no one can create, root included (procfs takes no new entries)

# (command, case, arguments; {ws} is the workspace). Every case is a bad input.
FIT = ["fit", "--config", "configs/arithmetic_stare.yaml", "--model.policy.name_or_path", "{ws}/model",
       "--trainer.default_root_dir", "{ws}/run", "--trainer.logger.init_args.save_dir", "{ws}/run",
       "--trainer.max_steps", "1", "--data.init_args.num_val_prompts", "4"]
VALIDATE = ["validate", *FIT[1:]]
LORA = ["--model.policy.lora", "{rank: 2, alpha: 4.0, target_modules: [q_proj, no_such_proj]}"]
EVAL = ["evaluate", "--run_config", "{ws}/eval.yaml", "--n", "2", "--out_dir", "{ws}/ev_new"]
EXPORT = ["export", "--ckpt_path", "{ws}/run/version_0/checkpoints/last.ckpt", "--out", "{ws}/ex_new"]
WARM = ["warmstart", "--out_dir", "{ws}/ws_new", "--min_digits", "2", "--max_digits", "2", "--hidden_size", "16",
        "--num_layers", "1", "--num_heads", "2", "--max_steps", "2", "--batch_size", "4", "--eval_every", "1",
        "--eval_prompts", "4", "--target_accuracy", "0.99"]
CMP = ["compare", "--base", "configs/arithmetic_grpo.yaml", "--schemes", "[configs/schemes/grpo.yaml]",
       "--seeds", "[0]", "--max_steps", "1", "--out_dir", "{ws}/cmp_new",
       "--extra_args", "[--model.policy.name_or_path, {ws}/model, --data.init_args.num_val_prompts, '4']"]

CASES = [
    # ---- fit / validate: Lightning's settings
    ("fit", "trainer.max_steps -5", [*FIT, "--trainer.max_steps", "-5"]),
    ("fit", "trainer.max_steps 0", [*FIT, "--trainer.max_steps", "0"]),
    ("fit", "trainer.max_steps -2", [*FIT, "--trainer.max_steps", "-2"]),
    ("fit", "trainer.max_epochs -5", [*FIT, "--trainer.max_epochs", "-5"]),
    ("fit", "trainer.max_epochs 0", [*FIT, "--trainer.max_steps", "-1", "--trainer.max_epochs", "0"]),
    ("fit", "trainer.min_steps -3", [*FIT, "--trainer.min_steps", "-3"]),
    ("fit", "trainer.val_check_interval 0", [*FIT, "--trainer.val_check_interval", "0"]),
    ("fit", "trainer.val_check_interval -1", [*FIT, "--trainer.val_check_interval", "-1"]),
    ("fit", "trainer.val_check_interval 1.5", [*FIT, "--trainer.val_check_interval", "1.5"]),
    ("fit", "trainer.check_val_every_n_epoch 0", [*FIT, "--trainer.check_val_every_n_epoch", "0"]),
    ("fit", "trainer.devices 0", [*FIT, "--trainer.devices", "0"]),
    ("fit", "trainer.devices -3", [*FIT, "--trainer.devices", "-3"]),
    ("fit", "trainer.num_nodes 0", [*FIT, "--trainer.num_nodes", "0"]),
    ("fit", "trainer.accumulate_grad_batches 0", [*FIT, "--trainer.accumulate_grad_batches", "0"]),
    ("fit", "trainer.accumulate_grad_batches 2", [*FIT, "--trainer.accumulate_grad_batches", "2"]),
    ("fit", "trainer.gradient_clip_val 1.0", [*FIT, "--trainer.gradient_clip_val", "1.0"]),
    ("fit", "trainer.log_every_n_steps -1", [*FIT, "--trainer.log_every_n_steps", "-1"]),
    ("fit", "trainer.num_sanity_val_steps -5", [*FIT, "--trainer.num_sanity_val_steps", "-5"]),
    ("fit", "trainer.limit_val_batches -1", [*FIT, "--trainer.limit_val_batches", "-1"]),
    ("fit", "trainer.limit_train_batches 0", [*FIT, "--trainer.limit_train_batches", "0"]),
    ("fit", "trainer.precision foo", [*FIT, "--trainer.precision", "foo"]),
    ("fit", "trainer.accelerator foo", [*FIT, "--trainer.accelerator", "foo"]),
    ("fit", "trainer.max_time x", [*FIT, "--trainer.max_time", "x"]),
    ("fit", "trainer.reload_dataloaders_every_n_epochs -1", [*FIT, "--trainer.reload_dataloaders_every_n_epochs", "-1"]),
    ("fit", "trainer.default_root_dir is a file", [*FIT, "--trainer.default_root_dir", "{ws}/afile"]),
    ("fit", "logger save_dir is a file", [*FIT, "--trainer.logger.init_args.save_dir", "{ws}/afile"]),
    ("fit", "logger save_dir unwritable", [*FIT, "--trainer.logger.init_args.save_dir", RO]),
    ("fit", "seed_everything -1", [*FIT, "--seed_everything", "-1"]),
    ("fit", "trainer.max_steps wrong type", [*FIT, "--trainer.max_steps", "ten"]),
    ("fit", "LoRA target module that does not exist", [*FIT, *LORA]),
    ("fit", "LoRA target that is not a layer LoRA adapts",
     [*FIT, "--model.policy.lora", "{rank: 2, alpha: 4.0, target_modules: [mlp]}"]),
    ("fit", "LoRA target regex that matches nothing",
     [*FIT, "--model.policy.lora", "{rank: 2, alpha: 4.0, target_modules: '.*no_such.*'}"]),
    ("fit", "LoRA target_modules empty list", [*FIT, "--model.policy.lora", "{rank: 2, alpha: 4.0, target_modules: []}"]),
    ("fit", "ckpt_path missing", [*FIT, "--ckpt_path", "{ws}/no_such.ckpt"]),
    ("fit", "ckpt_path a plain directory", [*FIT, "--ckpt_path", "{ws}/emptydir"]),
    ("fit", "ckpt_path truncated", [*FIT, "--ckpt_path", "{ws}/truncated.ckpt"]),
    ("fit", "config file missing", [*FIT, "--config", "{ws}/no_such.yaml"]),
    ("fit", "config not YAML", [*FIT, "--config", "{ws}/bad.yaml"]),
    ("fit", "config a directory", [*FIT, "--config", "{ws}/emptydir"]),
    ("fit", "model path is a file", [*FIT, "--model.policy.name_or_path", "{ws}/afile"]),
    ("fit", "model path an empty directory", [*FIT, "--model.policy.name_or_path", "{ws}/emptydir"]),
    ("fit", "tokenizer path is a file", [*FIT, "--model.policy.tokenizer", "{ws}/afile"]),
    ("fit", "tokenizer path an empty directory", [*FIT, "--model.policy.tokenizer", "{ws}/emptydir"]),
    ("fit", "trainer.accelerator cuda on a machine without one", [*FIT, "--trainer.accelerator", "cuda"]),
    ("fit", "checkpoint dirpath is a file",
     [*FIT, "--trainer.callbacks+={class_path: lightning.pytorch.callbacks.ModelCheckpoint, "
            "init_args: {dirpath: {ws}/afile}}"]),
    ("fit", "trainer.limit_train_batches 1.5", [*FIT, "--trainer.limit_train_batches", "1.5"]),
    ("validate", "ckpt_path missing", [*VALIDATE, "--ckpt_path", "{ws}/no_such.ckpt"]),
    ("validate", "ckpt_path best with no fit", [*VALIDATE, "--ckpt_path", "best"]),
    ("validate", "trainer.max_steps -5", [*VALIDATE, "--trainer.max_steps", "-5"]),
    ("validate", "trainer.devices 0", [*VALIDATE, "--trainer.devices", "0"]),
    ("validate", "trainer.limit_val_batches -1", [*VALIDATE, "--trainer.limit_val_batches", "-1"]),
    ("validate", "LoRA target module that does not exist", [*VALIDATE, *LORA]),
    ("validate", "model.validation.samples 0", [*VALIDATE, "--model.validation.samples", "0"]),
    # ---- evaluate
    ("evaluate", "run_config missing", [*EVAL, "--run_config", "{ws}/no_such.yaml"]),
    ("evaluate", "run_config a directory", [*EVAL, "--run_config", "{ws}/emptydir"]),
    ("evaluate", "run_config not YAML", [*EVAL, "--run_config", "{ws}/bad.yaml"]),
    ("evaluate", "run_config a YAML list", [*EVAL, "--run_config", "{ws}/list.yaml"]),
    ("evaluate", "run_config not a fit config", [*EVAL, "--run_config", "{ws}/notfit.yaml"]),
    ("evaluate", "model missing", [*EVAL, "--model", "{ws}/no_such_model"]),
    ("evaluate", "model is a file", [*EVAL, "--model", "{ws}/afile"]),
    ("evaluate", "model an empty directory", [*EVAL, "--model", "{ws}/emptydir"]),
    ("evaluate", "ckpt_path missing", [*EVAL, "--ckpt_path", "{ws}/no_such.ckpt"]),
    ("evaluate", "ckpt_path a plain directory", [*EVAL, "--ckpt_path", "{ws}/emptydir"]),
    ("evaluate", "ckpt_path truncated", [*EVAL, "--ckpt_path", "{ws}/truncated.ckpt"]),
    ("evaluate", "data missing", [*EVAL, "--data", "{ws}/no_such.yaml"]),
    ("evaluate", "data without data section", [*EVAL, "--data", "{ws}/notfit.yaml"]),
    ("evaluate", "data not YAML", [*EVAL, "--data", "{ws}/bad.yaml"]),
    ("evaluate", "split with no loader", [*EVAL, "--split", "test"]),
    ("evaluate", "split unknown", [*EVAL, "--split", "dev"]),
    ("evaluate", "n 0", [*EVAL, "--n", "0"]),
    ("evaluate", "n -1", [*EVAL, "--n", "-1"]),
    ("evaluate", "n wrong type", [*EVAL, "--n", "four"]),
    ("evaluate", "temperature -1", [*EVAL, "--temperature", "-1"]),
    ("evaluate", "temperature 0 with n 2", [*EVAL, "--temperature", "0"]),
    ("evaluate", "top_p 0", [*EVAL, "--top_p", "0"]),
    ("evaluate", "top_p 1.5", [*EVAL, "--top_p", "1.5"]),
    ("evaluate", "top_k -1", [*EVAL, "--top_k", "-1"]),
    ("evaluate", "max_new_tokens 0", [*EVAL, "--max_new_tokens", "0"]),
    ("evaluate", "max_prompts 0", [*EVAL, "--max_prompts", "0"]),
    ("evaluate", "max_prompts -2", [*EVAL, "--max_prompts", "-2"]),
    ("evaluate", "device unknown", [*EVAL, "--device", "gpu0"]),
    ("evaluate", "device cuda without a GPU", [*EVAL, "--device", "cuda:7"]),
    ("evaluate", "out_dir is a file", [*EVAL, "--out_dir", "{ws}/afile"]),
    ("evaluate", "out_dir under a file", [*EVAL, "--out_dir", "{ws}/afile/sub"]),
    ("evaluate", "out_dir unwritable", [*EVAL, "--out_dir", RO]),
    ("evaluate", "seed -1", [*EVAL, "--seed", "-1"]),
    ("evaluate", "config missing", [*EVAL, "--config", "{ws}/no_such.yaml"]),
    ("evaluate", "run_config with a bad setting", [*EVAL, "--run_config", "{ws}/eval_bad.yaml"]),
    ("evaluate", "data with an unknown class", [*EVAL, "--data", "{ws}/data_unknown.yaml"]),
    ("evaluate", "max_new_tokens -1", [*EVAL, "--max_new_tokens", "-1"]),
    # ---- export
    ("export", "ckpt_path missing", ["export", "--ckpt_path", "{ws}/no_such.ckpt", "--out", "{ws}/ex_new"]),
    ("export", "ckpt_path a plain directory", ["export", "--ckpt_path", "{ws}/emptydir", "--out", "{ws}/ex_new"]),
    ("export", "ckpt_path truncated", ["export", "--ckpt_path", "{ws}/truncated.ckpt", "--out", "{ws}/ex_new"]),
    ("export", "ckpt_path not given", ["export", "--out", "{ws}/ex_new"]),
    ("export", "out not given", ["export", "--ckpt_path", "{ws}/run/version_0/checkpoints/last.ckpt"]),
    ("export", "out is a file", [*EXPORT, "--out", "{ws}/afile"]),
    ("export", "out under a file", [*EXPORT, "--out", "{ws}/afile/sub"]),
    ("export", "out unwritable", [*EXPORT, "--out", RO]),
    ("export", "out empty string", [*EXPORT, "--out", ""]),
    ("export", "fit_config missing", [*EXPORT, "--fit_config", "{ws}/no_such.yaml"]),
    ("export", "fit_config a directory", [*EXPORT, "--fit_config", "{ws}/emptydir"]),
    ("export", "fit_config not YAML", [*EXPORT, "--fit_config", "{ws}/bad.yaml"]),
    ("export", "fit_config a YAML list", [*EXPORT, "--fit_config", "{ws}/list.yaml"]),
    ("export", "fit_config without model.policy", [*EXPORT, "--fit_config", "{ws}/notfit.yaml"]),
    ("export", "adapter_only on a run without LoRA", [*EXPORT, "--adapter_only", "true"]),
    ("export", "adapter_only wrong type", [*EXPORT, "--adapter_only", "maybe"]),
    # ---- warmstart
    ("warmstart", "task unknown", [*WARM, "--task", "multiplication"]),
    ("warmstart", "max_steps 0", [*WARM, "--max_steps", "0"]),
    ("warmstart", "max_steps -5", [*WARM, "--max_steps", "-5"]),
    ("warmstart", "batch_size 0", [*WARM, "--batch_size", "0"]),
    ("warmstart", "batch_size -1", [*WARM, "--batch_size", "-1"]),
    ("warmstart", "lr 0", [*WARM, "--lr", "0"]),
    ("warmstart", "lr -1", [*WARM, "--lr", "-1"]),
    ("warmstart", "eval_every 0", [*WARM, "--eval_every", "0"]),
    ("warmstart", "eval_every -1", [*WARM, "--eval_every", "-1"]),
    ("warmstart", "eval_prompts 0", [*WARM, "--eval_prompts", "0"]),
    ("warmstart", "target_accuracy 0", [*WARM, "--target_accuracy", "0"]),
    ("warmstart", "target_accuracy 1.5", [*WARM, "--target_accuracy", "1.5"]),
    ("warmstart", "hidden_size 0", [*WARM, "--hidden_size", "0"]),
    ("warmstart", "num_layers 0", [*WARM, "--num_layers", "0"]),
    ("warmstart", "num_heads 0", [*WARM, "--num_heads", "0"]),
    ("warmstart", "num_heads not dividing hidden_size", [*WARM, "--num_heads", "3"]),
    ("warmstart", "min_digits 0", [*WARM, "--min_digits", "0"]),
    ("warmstart", "max_digits < min_digits", [*WARM, "--max_digits", "1"]),
    ("warmstart", "max_steps wrong type", [*WARM, "--max_steps", "many"]),
    ("warmstart", "seed -1", [*WARM, "--seed", "-1"]),
    ("warmstart", "out_dir is a file", [*WARM, "--out_dir", "{ws}/afile"]),
    ("warmstart", "out_dir under a file", [*WARM, "--out_dir", "{ws}/afile/sub"]),
    ("warmstart", "out_dir unwritable", [*WARM, "--out_dir", RO]),
    ("warmstart", "out_dir empty string", [*WARM, "--out_dir", ""]),
    ("warmstart", "lr inf", [*WARM, "--lr", "inf"]),
    ("warmstart", "eval_prompts more than the problems there are",
     [*WARM, "--min_digits", "1", "--max_digits", "1", "--eval_prompts", "100"]),
    ("warmstart", "odd head dimension", [*WARM, "--hidden_size", "12", "--num_heads", "4"]),
    # ---- compare
    ("compare", "base missing", [*CMP, "--base", "{ws}/no_such.yaml"]),
    ("compare", "base a directory", [*CMP, "--base", "{ws}/emptydir"]),
    ("compare", "base not YAML", [*CMP, "--base", "{ws}/bad.yaml"]),
    ("compare", "base not a fit config", [*CMP, "--base", "{ws}/notfit.yaml"]),
    ("compare", "scheme file missing", [*CMP, "--schemes", "[{ws}/no_such.yaml]"]),
    ("compare", "scheme a directory", [*CMP, "--schemes", "[{ws}/emptydir]"]),
    ("compare", "scheme with a bad setting", [*CMP, "--schemes", "[{ws}/bad_scheme.yaml]"]),
    ("compare", "two schemes with the same file name", [*CMP, "--schemes",
                                                        "[configs/schemes/grpo.yaml, {ws}/grpo.yaml]"]),
    ("compare", "schemes empty", [*CMP, "--schemes", "[]"]),
    ("compare", "seeds empty", [*CMP, "--seeds", "[]"]),
    ("compare", "seeds repeated", [*CMP, "--seeds", "[0, 0]"]),
    ("compare", "seed -1", [*CMP, "--seeds", "[-1]"]),
    ("compare", "seeds wrong type", [*CMP, "--seeds", "[a]"]),
    ("compare", "out_dir is a file", [*CMP, "--out_dir", "{ws}/afile"]),
    ("compare", "out_dir under a file", [*CMP, "--out_dir", "{ws}/afile/sub"]),
    ("compare", "out_dir unwritable", [*CMP, "--out_dir", RO]),
    ("compare", "jobs 0", [*CMP, "--jobs", "0"]),
    ("compare", "jobs -1", [*CMP, "--jobs", "-1"]),
    ("compare", "jobs wrong type", [*CMP, "--jobs", "x"]),
    ("compare", "max_steps 0", [*CMP, "--max_steps", "0"]),
    ("compare", "max_steps -5", [*CMP, "--max_steps", "-5"]),
    ("compare", "extra_args with an unknown key", [*CMP, "--extra_args", "[--model.no_such_key, '1']"]),
    ("compare", "extra_args with a bad value", [*CMP, "--extra_args", "[--model.group_size, '1']"]),
    ("compare", "config missing", [*CMP, "--config", "{ws}/no_such.yaml"]),
    ("compare", "extra_args setting trainer.max_steps 0", [*CMP, "--extra_args",
                                                          "[--model.policy.name_or_path, {ws}/model, --trainer.max_steps, '0']"]),
    ("compare", "base a scheme overlay, not a whole config", [*CMP, "--base", "configs/schemes/stare.yaml"]),
]

# Good inputs: each must still run (exit 0), so that "handled" above cannot come from refusing everything.
GOOD = [("fit", "GOOD: one step", FIT), ("validate", "GOOD", VALIDATE), ("evaluate", "GOOD", EVAL),
        ("export", "GOOD", EXPORT), ("warmstart", "GOOD", WARM), ("compare", "GOOD", CMP)]

EVENTS = "events.txt"


# ---------------------------------------------------------------- the workspace: earlier good runs
def setup(ws: Path) -> None:
    """Earlier good runs of every command, and the malformed inputs next to them (run once, in its own process)."""
    import torch
    import yaml
    from transformers import AutoModelForCausalLM

    from stare_lit.commands.cli import main
    from stare_lit.data.tasks.arithmetic import char_tokenizer
    from tests.conftest import tiny_config

    ws.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    AutoModelForCausalLM.from_config(tiny_config()).save_pretrained(ws / "model")
    char_tokenizer().save_pretrained(ws / "model")
    fill = {"ws": str(ws)}
    main([a.format(**fill) for a in FIT])
    (ws / "eval.yaml").write_text(yaml.safe_dump({
        "model": {"policy": {"name_or_path": str(ws / "model")},
                  "rewards": [{"class_path": "stare_lit.data.ArithmeticReward"}],
                  "sampling": {"max_new_tokens": 6}},
        "data": {"class_path": "stare_lit.data.ArithmeticDataModule",
                 "init_args": {"num_val_prompts": 4, "batch_size": 4}}}))
    main(["evaluate", "--run_config", str(ws / "eval.yaml"), "--n", "2", "--out_dir", str(ws / "ev")])
    main(["export", "--ckpt_path", str(ws / "run/version_0/checkpoints/last.ckpt"), "--out", str(ws / "ex")])
    main([a.format(**fill) for a in WARM[:2]] + [str(ws / "ws")] + WARM[3:])
    main([a.format(**fill) for a in CMP[:-4]] + ["--out_dir", str(ws / "cmp")] + [a.format(**fill) for a in CMP[-2:]])
    last = ws / "run/version_0/checkpoints/last.ckpt"
    (ws / "truncated.ckpt").write_bytes(last.read_bytes()[: last.stat().st_size // 2])
    (ws / "READY").write_text("")


def malformed(ws: Path) -> None:
    """The bad files the cases point at (rewritten every run, so a new case's file is always there)."""
    import yaml

    (ws / "afile").write_text("not a directory\n")
    (ws / "emptydir").mkdir(exist_ok=True)
    (ws / "bad.yaml").write_text("model: [unclosed\n")
    (ws / "list.yaml").write_text("- 1\n- 2\n")
    (ws / "notfit.yaml").write_text("foo: 1\n")
    (ws / "bad_scheme.yaml").write_text("model:\n  scheme:\n    class_path: stare_lit.schemes.STARE\n"
                                        "    init_args: {top_ratio: 1.5}\n")
    (ws / "grpo.yaml").write_text("model:\n  group_size: 4\n")
    bad = yaml.safe_load((ws / "eval.yaml").read_text())
    bad["model"]["group_size"] = 1
    (ws / "eval_bad.yaml").write_text(yaml.safe_dump(bad))
    (ws / "data_unknown.yaml").write_text("data:\n  class_path: no_such_package.NoSuchDataModule\n")


# ---------------------------------------------------------------- one case in a forked child
def hook_work(log: Path) -> None:
    """Record, in the child, every sign that work started: a model built, a Lightning run, an optimizer step,
    a subprocess."""
    import subprocess as sp

    import torch
    import transformers
    from lightning.pytorch import Trainer

    def note(what: str) -> None:
        with open(log, "a") as f:
            f.write(what + "\n")

    def wrap(owner, name, what):
        original = getattr(owner, name)

        def hooked(*args, **kwargs):
            note(what)
            return original(*args, **kwargs)

        setattr(owner, name, hooked)

    original_init = transformers.PreTrainedModel.__init__

    def model_init(self, *args, **kwargs):  # a skeleton on the meta device (no weights) is not a model load
        if torch.get_default_device().type != "meta":
            note("model built")
        return original_init(self, *args, **kwargs)

    transformers.PreTrainedModel.__init__ = model_init
    # from_pretrained builds on the meta device, then loads the weights: hook the load itself
    original_load = transformers.PreTrainedModel.from_pretrained.__func__

    def model_load(cls, *args, **kwargs):
        note("model loaded")
        return original_load(cls, *args, **kwargs)

    transformers.PreTrainedModel.from_pretrained = classmethod(model_load)
    wrap(Trainer, "_run", "Lightning run")
    wrap(sp.Popen, "__init__", "subprocess")
    # every optimizer's step (subclasses override step itself, so hook torch's global pre-step hook)
    from torch.optim.optimizer import register_optimizer_step_pre_hook

    register_optimizer_step_pre_hook(lambda *a: note("optimizer step"))


def run_case(ws: Path, args: list[str], timeout: float, out: Path) -> dict:
    """Run one case in a forked child; its exit, output and the work it started."""
    from stare_lit.commands.cli import main

    for name in ("out.txt", EVENTS, "code.txt"):
        (out / name).unlink(missing_ok=True)
    pid = os.fork()
    if pid == 0:  # the child: one command, its output in out.txt
        os.setsid()
        try:
            os.chdir(ws)
            fd = os.open(out / "out.txt", os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
            os.dup2(fd, 1)
            os.dup2(fd, 2)
            hook_work(out / EVENTS)
            code: object = 0
            try:
                main(args)
            except SystemExit as e:
                code = e.code if e.code is not None else 0
            except BaseException:  # noqa: BLE001 - an uncaught exception: its traceback is the evidence
                import traceback

                traceback.print_exc()
                code = "uncaught exception"
            sys.stdout.flush()
            sys.stderr.flush()
            (out / "code.txt").write_text(repr(code))
        except BaseException:  # noqa: BLE001 - the harness itself failed: say so
            import traceback

            (out / "code.txt").write_text(repr("harness failed: " + traceback.format_exc()))
        finally:
            os._exit(0)
    deadline = time.time() + timeout
    while time.time() < deadline:
        done, _ = os.waitpid(pid, os.WNOHANG)
        if done:
            break
        time.sleep(0.1)
    else:
        os.killpg(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
        return {"code": "timeout", "output": _read(out / "out.txt"), "events": _read(out / EVENTS)}
    return {"code": _read(out / "code.txt"), "output": _read(out / "out.txt"), "events": _read(out / EVENTS)}


def _read(path: Path) -> str:
    return path.read_text(errors="replace") if path.exists() else ""


def snapshot(ws: Path) -> dict[Path, str]:
    return {p: hashlib.sha256(p.read_bytes()).hexdigest() for p in ws.rglob("*") if p.is_file()}


def verdict(result: dict, before: dict, after: dict) -> tuple[str, str]:
    """(kind, detail): 'handled' or the way the case was mishandled."""
    import ast

    touched = sorted(str(p) for p in before if after.get(p) != before[p])
    code = result["code"]
    events = sorted(set(line for line in result["events"].splitlines() if line))
    if code == "timeout":
        return "timeout", f"still running; work: {', '.join(events) or 'none seen'}"
    code = ast.literal_eval(code) if code and code[0] in "'\"0123456789-" else code
    if "Traceback" in result["output"] or code == "uncaught exception":
        last = [line for line in result["output"].splitlines() if line.strip()][-1:] or [""]
        return "traceback", last[0][:160]
    if code in (0, None):
        return "accepted", f"exit 0; work: {', '.join(events) or 'none'}"
    if not isinstance(code, str):
        lines = [line for line in result["output"].splitlines() if line.strip()]
        return "not one line", f"exit {code}, {len(lines)} lines: {(lines[-1] if lines else '')[:120]}"
    if not code.startswith("stare-lit: error: ") or "\n" in code:
        return "not one line", code[:160]
    if touched:
        return "touched", f"{code[:120]} | changed: {touched[0]}"
    if events:
        return "late", f"{code[:120]} | after: {', '.join(events)}"
    new = sorted(str(p) for p in set(after) - set(before))
    litter = f" [left {len(new)} new file(s): {new[0]}]" if new else ""
    return "handled", code[len("stare-lit: error: "):][:200] + litter


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workspace", default="/tmp/stare-lit-bad-inputs")
    parser.add_argument("--only", default=None, help="one command's cases (fit, validate, evaluate, ...)")
    parser.add_argument("--timeout", type=float, default=90.0)
    parser.add_argument("--setup", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--out", default=str(RESULTS / "bad_inputs.md"))
    opts = parser.parse_args()
    ws = Path(opts.workspace).resolve()
    if opts.setup:
        setup(ws)
        return
    if not (ws / "READY").exists():
        shutil.rmtree(ws, ignore_errors=True)
        subprocess.run([sys.executable, __file__, "--setup", "--workspace", str(ws)], check=True, cwd=ROOT,
                       env={**os.environ, "OMP_NUM_THREADS": "1"})
    import torch

    torch.set_num_threads(1)
    import stare_lit.commands.cli  # noqa: F401 - imported once, before the forks
    import stare_lit.commands.compare, stare_lit.commands.evaluate, stare_lit.commands.export  # noqa: E401, F401
    import stare_lit.commands.warmstart  # noqa: F401

    malformed(ws)
    scratch = Path(os.environ.get("TMPDIR", "/tmp")) / f"bad-inputs-{os.getpid()}"
    scratch.mkdir(parents=True, exist_ok=True)
    rows, counts, good_rows = [], {}, []
    cases = [c for c in CASES if opts.only in (None, c[0])]
    for command, name, args in cases:
        kind, detail, seconds = try_case(ws, args, opts.timeout, scratch)
        counts[kind] = counts.get(kind, 0) + 1
        rows.append(f"| {command} | {name} | {kind} | {seconds:.1f} | {detail.replace('|', '/')} |")
        print(f"{command:9s} {name:45s} {kind:12s} {seconds:5.1f}s  {detail[:150]}", flush=True)
    for command, name, args in [c for c in GOOD if opts.only in (None, c[0])]:
        kind, detail, seconds = try_case(ws, args, opts.timeout, scratch)
        ran = kind == "accepted"  # exit 0: the good input ran
        good_rows.append(f"| {command} | {name} | {'ran' if ran else 'REFUSED'} | {seconds:.1f} | "
                         f"{detail.replace('|', '/')} |")
        print(f"{command:9s} {name:45s} {'ran' if ran else 'REFUSED':12s} {seconds:5.1f}s  {detail[:150]}", flush=True)
    shutil.rmtree(scratch, ignore_errors=True)
    handled = counts.get("handled", 0)
    summary = (f"**{len(cases) - handled} of {len(cases)} mishandled** ("
               + ", ".join(f"{k} {v}" for k, v in sorted(counts.items())) + "); good inputs that ran: "
               + f"{sum('| ran |' in r for r in good_rows)} of {len(good_rows)}")
    print(summary)
    text = (header("Bad command-line inputs: handled before any work, in one line?") + "\n" + summary + "\n\n"
            + "| command | case | result | s | message or what went wrong |\n|---|---|---|---|---|\n"
            + "\n".join(rows + good_rows) + "\n")
    if opts.only is None:
        Path(opts.out).write_text(text)
        print(f"written to {opts.out}")


def try_case(ws: Path, args: list[str], timeout: float, scratch: Path) -> tuple[str, str, float]:
    """Run one case; (kind, detail, seconds). The files it created are removed, so each case starts alike."""
    args = [a.replace("{ws}", str(ws)).replace("configs/", f"{ROOT}/configs/") for a in args]
    before = snapshot(ws)
    start = time.perf_counter()
    result = run_case(ws, args, timeout, scratch)
    seconds = time.perf_counter() - start
    after = snapshot(ws)
    kind, detail = verdict(result, before, after)
    for new in set(after) - set(before):
        new.unlink()
    for folder in sorted((p for p in ws.rglob("*") if p.is_dir()), reverse=True):
        if not any(folder.iterdir()) and folder.name != "emptydir":
            folder.rmdir()
    return kind, detail, seconds


if __name__ == "__main__":
    main()
