"""``stare-lit warmstart --task countdown``: a few steps end to end, the saved policy and its summary."""

from __future__ import annotations

import json

import pytest
from transformers import AutoModelForCausalLM, AutoTokenizer

from stare_lit.commands.warmstart import warmstart

pytestmark = pytest.mark.slow


def test_countdown_warm_start_saves_a_policy_and_its_all_wrong_share(tmp_path):
    out = warmstart(task="countdown", out_dir=str(tmp_path / "ws"), hidden_size=16, num_layers=1, num_heads=2,
                    max_steps=2, batch_size=4, eval_every=1, eval_prompts=6, target_accuracy=0.99)
    summary = json.loads((out / "warmstart.json").read_text())
    assert summary["task"] == "countdown" and summary["steps"] == 2
    # an untrained policy solves nothing: every group of 8 samples on the held-out problems is all wrong
    assert summary["sampled_accuracy"] == 0.0 and summary["all_wrong_groups"] == 1.0
    tokenizer = AutoTokenizer.from_pretrained(out)
    assert tokenizer.decode(tokenizer("7*3=21;21+5=26;26").input_ids) == "7*3=21;21+5=26;26"
    assert AutoModelForCausalLM.from_pretrained(out).config.vocab_size == len(tokenizer)
