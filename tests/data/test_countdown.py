"""The Countdown task: its verifier (hand-written right, wrong and malformed completions), TinyZero's answer
format and data layout, the generator (every prompt solvable, validation held out), and a short fit."""

from __future__ import annotations

import random

import pytest

from stare_lit.commands.warmstart import countdown_task
from stare_lit.data import PromptDataModule
from stare_lit.data.tasks.countdown import (
    MAX_CHARS,
    CountdownAnswerReward,
    CountdownDataModule,
    CountdownReward,
    all_solutions,
    answer_of,
    expression_reaches,
    is_valid,
    max_completion_chars,
    problem_key,
    problem_of,
    prompt_of,
)
from stare_lit.errors import ConfigError

NUMBERS, TARGET = [7, 3, 5, 11], 28


@pytest.mark.parametrize("text", [
    "11+3=14;7-5=2;14*2=28;28",     # two sub-results, then combined
    "7-5=2;11+3=14;14*2=28;28",     # the same tree, the other step first
    "5*3=15;15-11=4;7*4=28;28",     # a chain
    "3*5=15;15-11=4;4*7=28;28",     # smaller operand first: arithmetic is arithmetic
    "3+11=14;7-5=2;2*14=28;28",
])
def test_verifier_accepts(text):
    assert is_valid(NUMBERS, TARGET, text, "+-*")


@pytest.mark.parametrize("text", [
    "",                                  # empty
    "28",                                # the answer alone
    "11+3=14;7-5=2;14*2=28",             # no final value
    "11+3=14;7-5=2;14*2=28;27",          # final value not the last result
    "11+3=14;7-5=2;14*2=29;29",          # last step wrong and the target missed
    "11+3=15;7-5=2;15*2=30;30",          # a wrong intermediate step
    "11+3=14;7-5=2;14*2=28;28;",         # a trailing field
    "11+3=14; 7-5=2;14*2=28;28",         # a space
    " 11+3=14;7-5=2;14*2=28;28",         # (the reward strips around; the verifier does not)
    "11+3=14;14*2=28;28",                # 7 and 5 unused, a 2 from nowhere
    "11+3=14;7*2=14;14+14=28;28",        # 5 unused, 2 not given
    "11+11=22;7-5=2;22+2=24;24",         # 11 twice, 3 unused
    "11+3=14;14+14=28;28+0=28;28",       # a result used twice, numbers unused
    "14*2=28;11+3=14;7-5=2;28",          # results used before they exist
    "011+3=14;7-5=2;14*2=28;28",         # a leading zero
    "11+3=14;7-5=2;14*2=28;028",
    "11+3=14;5-7=-2;14*-2=-28;28",       # a negative value
    "11+3+5=19;19*2=38;28",              # three operands in a step
    "11+3=14;7-5=2;14x2=28;28",          # an unknown operator
    "11+3=14;7-5=2;14/2=7;7*4=28;28",    # a step too many (and ÷ not allowed)
    "7+3+5+11",                          # an expression, not steps
    "11+3=14;7-5=2;14*2=28;28<eos>",
])
def test_verifier_rejects(text):
    assert not is_valid(NUMBERS, TARGET, text, "+-*")


def test_division_rules():
    # 12,4,3 -> 9: 12/4=3;3*3=9 is exact; 7/2 is not an integer; x/0 is refused.
    assert is_valid([12, 4, 3], 9, "12/4=3;3*3=9;9", "+-*/")
    assert not is_valid([12, 4, 3], 9, "12/4=3;3*3=9;9", "+-*")  # ÷ not allowed on this prompt
    assert not is_valid([7, 2, 3], 2, "7/2=3;3-3=0;2", "+-*/")    # 7/2 is 3.5, not 3
    assert not is_valid([7, 2, 4], 14, "7/2=3;3*4=14;14", "+-*/")
    assert not is_valid([5, 5, 4], 0, "5-5=0;4/0=0;0", "+-*/")    # division by zero
    assert is_valid([5, 5, 4], 0, "5-5=0;0/4=0;0", "+-*/")        # zero divided is fine
    assert is_valid([2, 2, 3], 7, "2*2=4;4+3=7;7", "+-*")         # a repeated number, each copy once


@pytest.mark.parametrize("garbage", [
    "1" * 100_000,
    ";" * 100_000,
    "1+1=2;" * 20_000,
    "".join(random.Random(0).choice("0123456789+-*/=;,:x ") for _ in range(5000)),
    "\x00\ud800é٣+٣=٦;٦",                  # odd characters, Arabic-Indic digits
    "9" * 300 + "*" + "9" * 300 + "=" + "1" * 10 + ";1;1;1",
])
def test_garbage_scores_zero_without_raising(garbage):
    assert not is_valid(NUMBERS, TARGET, garbage, "+-*/")
    assert CountdownReward()([prompt_of(NUMBERS, TARGET)], [garbage], operators=["+-*/"]) == [0.0]


def test_random_strings_never_raise():
    rng = random.Random(1)
    for _ in range(3000):
        text = "".join(rng.choice("0123456789+-*/=;") for _ in range(rng.randint(0, 40)))
        assert is_valid(NUMBERS, TARGET, text, "+-*/") in (True, False)
        assert expression_reaches(NUMBERS, TARGET, text.replace(";", "(").replace("=", ")")) in (True, False)


def test_reward_reads_prompt_and_operators():
    prompt = prompt_of(NUMBERS, TARGET)
    assert prompt == "7,3,5,11:28=" and problem_of(prompt) == (NUMBERS, TARGET)
    reward = CountdownReward()
    got = reward([prompt] * 3, ["5*3=15;15-11=4;7*4=28;28\n", "5*3=15;15-11=4;7*4=28;29", "garbage"],
                 operators=["+-*"] * 3)
    assert got == [1.0, 0.0, 0.0]
    with pytest.raises(ConfigError, match="operators"):
        reward([prompt], ["x"])


def test_all_solutions_are_valid_and_few():
    solutions = all_solutions(NUMBERS, TARGET, "+-*")
    assert solutions == ("11+3=14;7-5=2;14*2=28;28", "5*3=15;15-11=4;7*4=28;28", "7-5=2;11+3=14;14*2=28;28")
    assert len(all_solutions(NUMBERS, 26, "+-*")) == 18  # 7+3+5+11 in every order and tree
    assert all_solutions(NUMBERS, 10_000, "+-*") == ()
    for target in (7, 24, 94):
        assert all(is_valid(NUMBERS, target, s, "+-*") for s in all_solutions(NUMBERS, target, "+-*"))


# ------------------------------------------------------------------------ TinyZero's answer format

@pytest.mark.parametrize(("numbers", "target", "completion", "score"), [
    ([93, 43, 1], 51, "<think>...</think> <answer>(93-43)+1</answer>", 1.0),
    ([93, 43, 1], 51, "<answer> ( 93 - 43 ) + 1 </answer>", 1.0),                 # spaces are fine
    ([93, 43, 1], 51, "<answer>1+93-43</answer>", 1.0),
    ([6, 4, 3], 8, "<answer>6/3*4</answer>", 1.0),                                # left to right: (6/3)*4
    ([6, 4, 3], 8, "<answer>6/(3*4)</answer>", 0.0),                              # 1/2, exactly
    ([1, 2, 3], 9, "<answer>(1+2)*3</answer>", 1.0),
    ([1, 2, 3], 9, "<answer>1+2*3</answer>", 0.0),                                # precedence: 7
    ([7, 2, 4], 14, "<answer>7/2*4</answer>", 1.0),                               # fractions mid-way are fine
    ([93, 43, 1], 51, "<answer>(93-43)+1</answer> <answer>93-43</answer>", 0.0),  # the last answer counts
    ([93, 43, 1], 51, "<answer>93-43</answer> <answer>(93-43)+1</answer>", 1.0),
    ([93, 43, 1], 51, "<answer>(93-43)+1+0</answer>", 0.0),                       # a number not given
    ([93, 43, 1], 50, "<answer>93-43</answer>", 0.0),                             # 1 unused
    ([5, 5, 4], 5, "<answer>5+5/4</answer>", 0.0),                                # 6.25
    ([5, 5, 4], 1, "<answer>5/(5-5)+4</answer>", 0.0),                            # ÷ 0, and 5 thrice
    ([3, 4, 5], 7, "<answer>-3+4+5+1</answer>", 0.0),                             # unary minus: not a binary op
    ([3, 4, 5], 12, "<answer>3+4+5)</answer>", 0.0),                              # unbalanced
    ([3, 4, 5], 12, "<answer>((3+4+5)</answer>", 0.0),
    ([3, 4, 5], 12, "<answer>3+4+5", 0.0),                                        # no closing tag
    ([3, 4, 5], 12, "3+4+5", 0.0),
    ([3, 4, 5], 12, "<answer>eval('3+4+5')</answer>", 0.0),
    ([3, 4, 5], 12, "<answer>3.0+4+5</answer>", 0.0),
    ([3, 4, 5], 12, "<answer>" + "(" * 5000 + "3+4+5" + ")" * 5000 + "</answer>", 0.0),  # too long / too deep
    ([3, 4, 5], 12, "<answer>" * 50_000 + "</answer>", 0.0),
])
def test_answer_format(numbers, target, completion, score):
    assert CountdownAnswerReward()(["q"], [completion], nums=[numbers], target=[target]) == [score]


def test_answer_format_score_and_missing_columns():
    reward = CountdownAnswerReward(format_score=0.1)  # TinyZero's
    got = reward(["q"] * 3, ["<answer>93-43</answer>", "no answer", "<answer>(93-43)+1</answer>"],
                 nums=[[93, 43, 1]] * 3, target=[51] * 3)
    assert got == [0.1, 0.0, 1.0]
    assert reward(["q"], ["<answer>1</answer>"], nums=[None], target=[1]) == [None]
    assert answer_of("a <answer>x</answer> b <answer>y</answer>") == "y" and answer_of("<answer>y") is None
    assert expression_reaches([1, 2], 3, "1+2") and not expression_reaches([1, 2], 3, "(" * MAX_CHARS + "1+2")
    with pytest.raises(ConfigError, match="'nums'"):
        reward(["q"], ["<answer>1</answer>"], target=[1])
    with pytest.raises(ConfigError, match="format_score"):
        CountdownAnswerReward(format_score=1.0)


def test_tinyzero_layout_loads_through_prompt_datamodule(tmp_path):
    pd = pytest.importorskip("pandas")
    path = tmp_path / "countdown.parquet"
    pd.DataFrame({"target": [51, 8, 9, 12], "nums": [[93, 43, 1], [6, 4, 3], [1, 2, 3], [3, 4, 5]]}).to_parquet(path)
    data = PromptDataModule(str(path), prompt_column=None, answer_column=None, val_size=1, batch_size=2,
                            prompt_template="Using the numbers {nums}, make {target}. Answer in <answer> </answer>.")
    data.setup()
    rows = list(data.train_dataset) + list(data.val_dataset)
    assert len(data.train_dataset) == 3 and len(data.val_dataset) == 1
    row = next(r for r in rows if r["target"] == 51)
    assert row["prompt"] == "Using the numbers [93, 43, 1], make 51. Answer in <answer> </answer>."
    batch = next(iter(data.val_dataloader()))
    scores = CountdownAnswerReward()(batch["prompt"], ["<answer>0</answer>"], nums=batch["nums"], target=batch["target"])
    assert scores == [0.0]
    right = {51: "(93-43)+1", 8: "6/3*4", 9: "(1+2)*3", 12: "3+4+5"}
    batch = next(iter(data.train_dataloader()))
    answers = [f"<answer>{right[t]}</answer>" for t in batch["target"]]
    assert CountdownAnswerReward()(batch["prompt"], answers, nums=batch["nums"], target=batch["target"]) == [1.0, 1.0]


def test_template_without_a_prompt_column_must_name_columns(tmp_path):
    pd = pytest.importorskip("pandas")
    path = tmp_path / "countdown.parquet"
    pd.DataFrame({"target": [51, 8], "nums": [[93, 43, 1], [6, 4, 3]]}).to_parquet(path)
    data = PromptDataModule(str(path), prompt_column=None, answer_column=None, val_size=1, batch_size=1,
                            prompt_template="Make {goal} from {nums}.")
    with pytest.raises(ConfigError, match="goal"):
        data.setup()


# ------------------------------------------------------------------------------------ the generator

def test_every_prompt_is_solvable_and_validation_is_held_out():
    data = CountdownDataModule(num_train_prompts=500, num_val_prompts=64)
    data.setup()
    assert len(data.train_rows) == 500 and len(data.val_rows) == 64
    assert {r["operators"] for r in data.train_rows + data.val_rows} == {"+-*"}
    keys = lambda rows: [problem_key(*problem_of(r["prompt"])) for r in rows]  # noqa: E731
    val, train = keys(data.val_rows), keys(data.train_rows)
    assert len(set(val)) == 64 and not set(val) & set(train)
    for numbers, target in set(val) | set(train[:100]):
        assert len(numbers) == 4 and len(set(numbers)) == 4 and all(1 <= x <= 12 for x in numbers)
        assert 1 <= target <= 100 and all_solutions(numbers, target, "+-*")
    longest = max(len(s) for numbers, target in set(val) for s in all_solutions(numbers, target, "+-*"))
    assert longest <= max_completion_chars(4, 12, 100)
    again = CountdownDataModule(num_train_prompts=500, num_val_prompts=64)
    again.setup()
    assert again.val_rows == data.val_rows and again.train_rows == data.train_rows  # the seed fixes the problems


def test_three_numbers_with_division():
    data = CountdownDataModule(count=3, low=1, high=20, operators="+-*/", num_train_prompts=200, num_val_prompts=8)
    data.setup()
    for row in data.train_rows[:100]:
        numbers, target = problem_of(row["prompt"])
        assert len(numbers) == 3 and all_solutions(numbers, target, "+-*/")


def test_warm_start_data_is_correct_and_held_out():
    job = countdown_task(eval_prompts=50, seed=0, data_seed=1234)
    data = CountdownDataModule(num_train_prompts=16)  # the validation problems do not depend on the pool's size
    data.setup()
    val = {problem_key(*problem_of(r["prompt"])) for r in data.val_rows}
    check = {problem_key(*problem_of(r["prompt"])) for r in job.eval_rows}
    pairs = job.examples(200, random.Random(0))
    warm = {problem_key(*problem_of(p)) for p, _ in pairs}
    assert not warm & val and not warm & check and not check & val
    assert all(is_valid(*problem_of(p), c, "+-*") for p, c in pairs)
    assert job.reward([p for p, _ in pairs[:5]], [c for _, c in pairs[:5]], operators=["+-*"] * 5) == [1.0] * 5


@pytest.mark.parametrize(("kwargs", "setting"), [(dict(count=5), "count"), (dict(operators="+x"), "operators"),
                                                 (dict(operators="++"), "operators"), (dict(low=0), "low"),
                                                 (dict(low=1, high=5), "low"), (dict(max_target=5), "max_target"),
                                                 (dict(num_val_prompts=0), "num_val_prompts")])
def test_bad_settings(kwargs, setting):
    with pytest.raises(ConfigError, match=setting):
        CountdownDataModule(**kwargs)


# ------------------------------------------------------------------------------ a fit from its config

@pytest.fixture(scope="module")
def countdown_model_dir(tmp_path_factory) -> str:
    import torch
    from transformers import AutoModelForCausalLM

    from stare_lit.data.tasks.arithmetic import char_tokenizer
    from stare_lit.data.tasks.countdown import SYMBOLS
    from tests.conftest import tiny_config

    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("tiny-countdown-policy")
    tokenizer = char_tokenizer(SYMBOLS)
    AutoModelForCausalLM.from_config(tiny_config(vocab_size=len(tokenizer))).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return str(path)


@pytest.mark.slow
def test_fits_two_steps_from_its_config_and_logs_the_mechanism(countdown_model_dir, tmp_path):
    import lightning as L
    import pandas as pd

    from stare_lit.commands.cli import StareLitCLI
    from stare_lit.module import GRPOModule
    from tests.cli import ROOT

    args = ["fit", "--config", str(ROOT / "configs" / "countdown_grpo.yaml"),
            "--model.policy.name_or_path", countdown_model_dir, "--trainer.max_steps", "2",
            "--trainer.default_root_dir", str(tmp_path), "--trainer.logger.init_args.save_dir", str(tmp_path),
            "--trainer.enable_progress_bar", "false", "--trainer.val_check_interval", "2",
            "--model.sampling.max_new_tokens", "8", "--model.group_size", "4", "--model.validation.samples", "4",
            "--data.init_args.batch_size", "4", "--data.init_args.num_val_prompts", "6",
            "--data.init_args.num_train_prompts", "40"]
    cli = StareLitCLI(GRPOModule, L.LightningDataModule, subclass_mode_data=True, args=args)
    assert cli.trainer.global_step == 2
    metrics = pd.read_csv(next(tmp_path.rglob("metrics.csv")))
    # a random tiny policy writes no valid chain in 8 tokens: every group is all wrong, no prompt is solved
    assert metrics["train/all_wrong_groups"].dropna().tolist() == [1.0, 1.0]
    val = metrics.dropna(subset=["val/mean@4"]).iloc[-1]
    assert val["val/never_solved"] == 1.0 and val["val/pass@4"] == 0.0
