"""``stare-lit export``: a fit checkpoint → a Hugging Face directory that loads back with the same logits.

The sharded case (a 2-process FSDP2 checkpoint) is in tests/train/test_fsdp.py.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from stare_lit.commands.cli import main
from stare_lit.commands.export import load_policy_from_checkpoint
from tests.cli import fit_args, run_main

pytestmark = pytest.mark.slow  # each test fits through the CLI first

PROMPTS = ["12+34=", "567+89="]


def fit(tiny_model_dir: str, folder: Path, *extra: str) -> Path:
    """Two steps of `stare-lit fit` with a graded reward, so the weights move; returns last.ckpt."""
    main(fit_args(tiny_model_dir, folder, "--trainer.max_steps", "2", "--model.group_size", "4",
                  "--model.sampling.max_new_tokens", "8", "--data.init_args.batch_size", "4",
                  "--model.rewards", "[{class_path: tests.helpers.ScriptedReward}]",
                  "--model.optimizer.init_args.lr", "0.01", *extra))
    return folder / "version_0" / "checkpoints" / "last.ckpt"


def logits(model, tokenizer) -> torch.Tensor:
    batch = tokenizer(PROMPTS, return_tensors="pt", padding=True)
    with torch.no_grad():
        return model(**batch).logits


def test_export_loads_back_with_identical_logits(tiny_model_dir, tmp_path, capsys):
    ckpt = fit(tiny_model_dir, tmp_path / "run")
    main(["export", "--ckpt_path", str(ckpt), "--out", str(tmp_path / "hf")])
    assert "exported the model" in capsys.readouterr().out

    exported = AutoModelForCausalLM.from_pretrained(tmp_path / "hf")
    tokenizer = AutoTokenizer.from_pretrained(tmp_path / "hf")
    trained, trained_tokenizer = load_policy_from_checkpoint(str(ckpt))
    assert tokenizer(PROMPTS).input_ids == trained_tokenizer(PROMPTS).input_ids
    state = torch.load(ckpt, weights_only=True)["state_dict"]
    for name, value in exported.state_dict().items():
        assert torch.equal(value, state["model." + name]), name
    assert torch.equal(logits(exported, tokenizer), logits(trained, tokenizer))
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    assert not torch.equal(logits(exported, tokenizer), logits(base, tokenizer))  # the trained weights, not the base


def test_export_merges_lora_or_saves_the_adapter(tiny_model_dir, tmp_path):
    from peft import PeftModel

    ckpt = fit(tiny_model_dir, tmp_path / "run", "--model.policy.lora", "{rank: 4, alpha: 8.0}",
               "--model.loss.beta", "0.05")
    peft_model, tokenizer = load_policy_from_checkpoint(str(ckpt), merge=False)
    expected = logits(peft_model, tokenizer)
    base_logits = logits(AutoModelForCausalLM.from_pretrained(tiny_model_dir), tokenizer)
    assert not torch.allclose(expected, base_logits, atol=1e-4)  # the adapters learned something

    main(["export", "--ckpt_path", str(ckpt), "--out", str(tmp_path / "merged")])
    merged = AutoModelForCausalLM.from_pretrained(tmp_path / "merged")
    assert not any("lora" in name for name in merged.state_dict())  # a plain model: W + (alpha/r)·BA
    assert torch.allclose(logits(merged, tokenizer), expected, atol=1e-5)  # merging rounds: W + BA in fp32

    main(["export", "--ckpt_path", str(ckpt), "--out", str(tmp_path / "adapter"), "--adapter_only", "true"])
    files = {p.name for p in (tmp_path / "adapter").iterdir()}
    assert {"adapter_config.json", "adapter_model.safetensors"} <= files and "model.safetensors" not in files
    adapter = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_model_dir), tmp_path / "adapter")
    assert torch.equal(logits(adapter.eval(), tokenizer), expected)


def test_export_errors_name_the_fix(tiny_model_dir, tmp_path, capsys):
    ckpt = fit(tiny_model_dir, tmp_path / "run")
    alone = tmp_path / "alone" / "last.ckpt"  # a checkpoint copied away from its run's config.yaml
    alone.parent.mkdir()
    shutil.copy(ckpt, alone)
    out = run_main(["export", "--ckpt_path", str(alone), "--out", str(tmp_path / "hf")], capsys)
    assert "--fit_config: no config.yaml" in out and "Traceback" not in out
    config = tmp_path / "run" / "version_0" / "config.yaml"
    main(["export", "--ckpt_path", str(alone), "--out", str(tmp_path / "hf"), "--fit_config", str(config)])
    assert (tmp_path / "hf" / "model.safetensors").is_file()
    out = run_main(["export", "--ckpt_path", str(ckpt), "--out", str(tmp_path / "x"), "--adapter_only", "true"], capsys)
    assert "--adapter_only: this run's model.policy has no LoRA adapters" in out
    out = run_main(["export", "--ckpt_path", str(tmp_path / "nothing.ckpt"), "--out", str(tmp_path / "x")], capsys)
    assert "ckpt_path: " in out and "is not a checkpoint" in out



def test_export_at_fit_end_matches_the_last_checkpoint(tiny_model_dir, tmp_path):
    """callbacks.ExportAtFitEnd writes the final weights; here the last checkpoint is of the same step."""
    callback = "[{class_path: callbacks.ExportAtFitEnd, init_args: {out: %s}}, " % (tmp_path / "hf") + \
               "{class_path: lightning.pytorch.callbacks.ModelCheckpoint, init_args: {save_last: true}}]"
    ckpt = fit(tiny_model_dir, tmp_path / "run", "--model.policy.lora", "{rank: 4, alpha: 8.0}",
               "--trainer.callbacks", callback)
    exported = AutoModelForCausalLM.from_pretrained(tmp_path / "hf")
    tokenizer = AutoTokenizer.from_pretrained(tmp_path / "hf")
    from_checkpoint, _ = load_policy_from_checkpoint(str(ckpt))  # merged the same way
    assert torch.equal(logits(exported, tokenizer), logits(from_checkpoint, tokenizer))
