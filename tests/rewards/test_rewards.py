import math
from concurrent.futures import ThreadPoolExecutor

import pytest
import torch

from stare_lit.errors import ConfigError
from stare_lit.rewards.base import ExactMatchReward, FormatReward, MathAnswerReward, Reward, RewardError
from stare_lit.rewards.runner import none_fraction, score_completions


class Fixed(Reward):
    """Returns preset values, whatever the batch."""

    def __init__(self, values, name=None):
        super().__init__(name)
        self.values = values

    def __call__(self, prompts, completions, **columns):
        return self.values


class FailsOn(Reward):
    """Raises on completions equal to ``bad``, but only when called one at a time (batch always raises)."""

    def __init__(self, bad):
        super().__init__()
        self.bad = bad

    def __call__(self, prompts, completions, **columns):
        if len(completions) > 1 or completions[0] == self.bad:
            raise ZeroDivisionError("boom")
        return [1.0]


def math_reward(completions, golds, **kwargs):
    return MathAnswerReward(**kwargs)([""] * len(completions), completions, answer=golds)


def test_names_default_to_snake_case_and_can_be_overridden():
    assert MathAnswerReward().name == "math_answer_reward"
    assert ExactMatchReward(name="em").name == "em"
    with pytest.raises(ConfigError, match="name"):
        FormatReward("x", name=" ")


def test_math_answer_boxed_fractions_and_decimals():
    completions = [
        r"So the result is \boxed{\frac{1}{2}}.",
        r"So the result is \boxed{\frac{1}{3}}.",
        "The answer is 0.5",
        r"Hence \boxed{2x}",
        r"Hence \boxed{2}",
    ]
    golds = ["0.5", "0.5", r"$\frac{1}{2}$", "2x", "2x"]
    assert math_reward(completions, golds) == [1.0, 0.0, 1.0, 1.0, 0.0]


def test_math_answer_no_answer_scores_zero_and_bad_gold_is_none():
    completions = ["I don't know.", r"\boxed{3}", r"\boxed{3}", r"\boxed{3}"]
    scores = math_reward(completions, ["7", None, "", "not parsable ###"])
    assert scores == [0.0, None, None, None]


def test_math_answer_pathological_completion_is_wrong_not_a_crash(monkeypatch):
    import stare_lit.rewards.base as rewards

    real_parse = rewards.parse

    def broken_parse(text, **kwargs):
        if "boom" in text:
            raise RecursionError("too deep")
        return real_parse(text, **kwargs)

    monkeypatch.setattr(rewards, "parse", broken_parse)
    assert math_reward(["boom", r"\boxed{3}"], ["3", "3"]) == [0.0, 1.0]


def test_math_answer_works_off_the_main_thread():
    with ThreadPoolExecutor(1) as pool:
        scores = pool.submit(math_reward, [r"\boxed{\frac{1}{2}}", r"\boxed{5}"], ["0.5", "4"]).result()
    assert scores == [1.0, 0.0]


def test_math_answer_checks_its_settings():
    with pytest.raises(ConfigError, match="answer_column='solution'"):
        MathAnswerReward(answer_column="solution")(["p"], ["c"], answer=["1"])
    with pytest.raises(ConfigError, match="timeout_seconds"):
        MathAnswerReward(timeout_seconds=0)


def test_exact_match_with_and_without_pattern():
    completions = ["<answer> Paris </answer>", "<answer>paris</answer>", "no tags: Paris", "<answer>x</answer>"]
    golds = ["Paris", "Paris", "Paris", None]
    tagged = ExactMatchReward(pattern=r"<answer>(.*?)</answer>")
    assert tagged([""] * 4, completions, answer=golds) == [1.0, 0.0, 0.0, None]
    caseless = ExactMatchReward(pattern=r"<answer>(.*?)</answer>", case_sensitive=False)
    assert caseless([""] * 2, completions[:2], answer=golds[:2]) == [1.0, 1.0]
    unstripped = ExactMatchReward(pattern=r"<answer>(.*?)</answer>", strip=False)
    assert unstripped([""], completions[:1], answer=["Paris"]) == [0.0]
    # Without a pattern: the last non-empty line; an empty gold does not apply.
    last_line = ExactMatchReward()
    assert last_line([""] * 3, ["work\n 42 \n\n", "42\nwork", "42"], answer=[42, "42", " "]) == [1.0, 0.0, None]


def test_exact_match_takes_the_last_match():
    reward = ExactMatchReward(pattern=r"answer: (\d+)")
    assert reward([""], ["answer: 1, no wait, answer: 2"], answer=["2"]) == [1.0]


def test_format_reward():
    pattern = r"<think>.*</think>\s*<answer>.*</answer>"
    completions = [
        "<think>a\nb</think>\n<answer>3</answer>",
        "<answer>3</answer>",
        "x <think></think><answer></answer>",
    ]
    assert FormatReward(pattern)([""] * 3, completions) == [1.0, 0.0, 1.0]
    assert FormatReward(pattern, full_match=True)([""] * 3, completions) == [1.0, 0.0, 0.0]
    with pytest.raises(ConfigError, match="pattern"):
        FormatReward("<answer>(")


def test_score_completions_weights_by_hand():
    a = Fixed([1.0, None, 0.0, None], name="a")
    b = Fixed([1, 0.0, True, None], name="b")
    total, per_reward = score_completions([a, b], [1.0, 0.5], [""] * 4, ["c"] * 4, {})
    assert total.dtype == torch.float32 and total.shape == (4,)
    assert total[:3].tolist() == [1.5, 0.0, 0.5]
    assert math.isnan(total[3])  # no reward applies
    assert per_reward["a"][:1].tolist() == [1.0] and per_reward["a"][[1, 3]].isnan().all()
    assert per_reward["b"][:3].tolist() == [1.0, 0.0, 1.0]
    assert none_fraction(per_reward) == {"a": 0.5, "b": 0.25}


def test_score_completions_default_weights_and_unique_names():
    rewards = [Fixed([1.0, 2.0]), Fixed([3.0, None]), Fixed([0.0, 0.0])]
    total, per_reward = score_completions(rewards, None, ["", ""], ["", ""], {})
    assert total.tolist() == [4.0, 2.0]
    assert list(per_reward) == ["fixed", "fixed_1", "fixed_2"]


def test_score_completions_weight_count_must_match():
    with pytest.raises(ConfigError, match=r"model\.reward_weights"):
        score_completions([Fixed([1.0])], [1.0, 2.0], [""], [""], {})


def test_score_completions_passes_columns():
    completions = [r"\boxed{4}", r"\boxed{5}"]
    total, _ = score_completions([MathAnswerReward()], None, ["p", "p"], completions, {"answer": ["4", "4"]})
    assert total.tolist() == [1.0, 0.0]


def test_raising_reward_is_named_with_the_failing_index():
    expected = r"reward 'fails_on' raised ZeroDivisionError: boom on completion 2 \(prompt 2 of the batch: ''\)"
    with pytest.raises(RewardError, match=expected):
        score_completions([FailsOn("bad")], None, [""] * 4, ["ok", "ok", "bad", "bad"], {})


def test_wrong_length_is_an_error():
    with pytest.raises(RewardError, match="'short' returned 1 values; expected 2"):
        score_completions([Fixed([1.0], name="short")], None, ["", ""], ["", ""], {})


@pytest.mark.parametrize("bad", ["1.0", float("nan"), float("inf"), torch.tensor([1.0])])
def test_non_number_is_an_error(bad):
    with pytest.raises(RewardError, match="'odd' returned .*, not a finite number or None, on completion 1"):
        score_completions([Fixed([0.0, bad], name="odd")], None, ["", ""], ["", ""], {})
