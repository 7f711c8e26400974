"""The forking-path task: its verifier, its data split, and a few training steps from its config."""

from __future__ import annotations

import math
import random
from pathlib import Path

import lightning as L
import pandas as pd
import pytest
import torch
from transformers import AutoModelForCausalLM

from stare_lit.commands.cli import StareLitCLI
from stare_lit.errors import ConfigError
from stare_lit.module import GRPOModule
from stare_lit.data.tasks.partial_sums import (
    PartialSumsDataModule,
    PartialSumsReward,
    SYMBOLS,
    all_solutions,
    is_valid,
    numbers_of,
    written_sum,
)
from stare_lit.commands.warmstart import partial_sums_task
from stare_lit.data.tasks.arithmetic import char_tokenizer
from tests.conftest import tiny_config

ROOT = Path(__file__).parents[2]
NUMBERS = [5, 12, 3, 8]


def test_every_order_is_a_solution_and_there_are_24():
    solutions = all_solutions(NUMBERS)
    assert len(solutions) == 24
    assert "5+12=17;17+3=20;20+8=28;28" in solutions and "3+8=11;11+12=23;23+5=28;28" in solutions
    assert all(is_valid(NUMBERS, s) for s in solutions)
    assert all(len(s) >= 20 for s in solutions)  # ~26 character tokens
    assert len(all_solutions([2, 2, 3])) == 3  # repeated numbers: one text per distinct order


@pytest.mark.parametrize("text", [
    "",                                   # empty
    "28",                                 # the answer alone
    "5+12=17;17+3=20;20+8=28",            # no total
    "5+12=17;17+3=20;20+8=28;29",         # wrong total
    "5+12=17;17+3=20;20+8=27;27",         # wrong partial sum
    "5+12=17;17+3=20;20+3=23;23",         # 3 twice, 8 never
    "5+12=17;17+3=20;20+9=29;29",         # a number not in the prompt
    "5+12=17;18+3=21;21+7=28;28",         # left operand is not the running sum
    "05+12=17;17+3=20;20+8=28;28",        # leading zero
    "5+12=17;17+3=20;20+8=28;28;",        # trailing field
    "5+12=17; 17+3=20;20+8=28;28",        # a space
    "5+12=17;17+3=20;28",                 # a step missing
    "5+12+3=20;20+8=28;28",               # three operands in a step
    "5+12=17;17+3=20;20+8=28;20+8=28;28", # a step too many
])
def test_verifier_rejects(text):
    assert not is_valid(NUMBERS, text)


def test_reward_scores_valid_one_and_the_rest_zero():
    prompt = "5,12,3,8="
    assert numbers_of(prompt) == NUMBERS
    got = PartialSumsReward()([prompt] * 3, ["12+8=20;20+5=25;25+3=28;28", "garbage", " 3+5=8;8+8=16;16+12=28;28\n"])
    assert got == [1.0, 0.0, 1.0]  # surrounding whitespace is stripped


def test_written_sum():
    assert written_sum([3, 5, 8, 12]) == "3+5=8;8+8=16;16+12=28;28"


def test_validation_sets_never_appear_in_training_in_any_order():
    data = PartialSumsDataModule(num_train_prompts=2000, num_val_prompts=64)
    data.setup()
    val = {frozenset(numbers_of(r["prompt"])) for r in data.val_rows}
    train = {frozenset(numbers_of(r["prompt"])) for r in data.train_rows}
    assert len(val) == 64 and not val & train
    # the warm start trains on neither the validation sets nor its own accuracy-check sets
    job = partial_sums_task(eval_prompts=50, seed=0, data_seed=1234)
    warm = {frozenset(numbers_of(p)) for p, _ in job.examples(500, random.Random(0))}
    check = {frozenset(numbers_of(r["prompt"])) for r in job.eval_rows}
    assert not warm & val and not warm & check and not check & val


@pytest.mark.parametrize(("kwargs", "setting"), [(dict(count=1), "count"), (dict(num_val_prompts=0), "num_val_prompts"),
                                                 (dict(low=5, high=7), "low")])
def test_bad_settings(kwargs, setting):
    with pytest.raises(ConfigError, match=setting):
        PartialSumsDataModule(**kwargs)


@pytest.fixture(scope="module")
def sums_model_dir(tmp_path_factory) -> str:
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("tiny-sums-policy")
    tokenizer = char_tokenizer(SYMBOLS)
    AutoModelForCausalLM.from_config(tiny_config(vocab_size=len(tokenizer))).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return str(path)


@pytest.mark.slow
@pytest.mark.parametrize("configs", [["partial_sums_grpo.yaml"], ["partial_sums_stare.yaml"],
                                     ["partial_sums_grpo.yaml", "schemes/partial_sums/stare_c2.yaml"],
                                     ["partial_sums_grpo.yaml", "schemes/partial_sums/stare_adaptive.yaml"],
                                     ["partial_sums_grpo.yaml", "schemes/partial_sums/stare_tuned.yaml"]],
                         ids=lambda c: c[-1].split("/")[-1])
def test_trains_from_its_config_and_validates_with_pass_at_k(configs, sums_model_dir, tmp_path):
    files = [arg for c in configs for arg in ("--config", str(ROOT / "configs" / c))]
    args = ["fit", *files, "--model.policy.name_or_path", sums_model_dir,
            "--trainer.max_steps", "3", "--trainer.default_root_dir", str(tmp_path),
            "--trainer.logger.init_args.save_dir", str(tmp_path), "--trainer.enable_progress_bar", "false",
            "--trainer.val_check_interval", "3", "--model.sampling.max_new_tokens", "8", "--model.group_size", "4",
            "--model.validation.samples", "4", "--data.init_args.batch_size", "4",
            "--data.init_args.num_val_prompts", "6", "--data.init_args.num_train_prompts", "40"]
    cli = StareLitCLI(GRPOModule, L.LightningDataModule, subclass_mode_data=True, args=args)
    assert cli.trainer.global_step == 3
    metrics = pd.read_csv(next(tmp_path.rglob("metrics.csv")))
    assert len(metrics["train/loss"].dropna()) == 3 and all(map(math.isfinite, metrics["train/loss"].dropna()))
    val = metrics.dropna(subset=["val/mean@4"]).iloc[-1]
    for key in ("val/pass@1", "val/pass@2", "val/pass@4", "val/distinct_correct"):
        assert 0 <= val[key] <= 4
    assert val["val/pass@1"] == pytest.approx(val["val/mean@4"])  # unbiased pass@1 is mean@n
    assert val["val/pass@1"] <= val["val/pass@2"] <= val["val/pass@4"]
    fork = metrics["entropy_monitor/forking_entropy_mean"].dropna()
    assert len(fork) and (fork > 0.3).all()  # a random tiny policy: every fork it has is above the threshold
