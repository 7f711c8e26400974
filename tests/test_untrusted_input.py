"""Nothing runs code it was handed: remote model code stays off, dataset text stays text."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from stare_lit.data.datamodule import PromptDataModule
from stare_lit.train.policy import Policy
from stare_lit.rewards.base import ExactMatchReward, MathAnswerReward
from stare_lit.data.tasks.arithmetic import ArithmeticReward


def test_trust_remote_code_is_off_unless_set(tiny_model_dir, monkeypatch):
    import stare_lit.train.policy as policy_file

    seen = []
    for loader in (policy_file.AutoTokenizer, policy_file.AutoModelForCausalLM):
        real = loader.from_pretrained.__func__

        def spy(cls, *args, _real=real, **kwargs):
            seen.append(kwargs.get("trust_remote_code"))
            return _real(cls, *args, **kwargs)

        monkeypatch.setattr(loader, "from_pretrained", classmethod(spy))
    assert Policy.__dataclass_fields__["trust_remote_code"].default is False
    policy = Policy(name_or_path=tiny_model_dir)
    policy.load_tokenizer(), policy.build_model()
    Policy(name_or_path=tiny_model_dir, trust_remote_code=True).load_tokenizer()
    assert seen == [False, False, True]


INJECTIONS = ["{__import__('os').system('touch PWNED')}", "{answer}", "__import__('pathlib').Path('PWNED').touch()",
              "\\boxed{__import__('os').system('touch PWNED')}", "${{7*7}}$"]


def test_dataset_text_is_formatted_as_text_never_run(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    rows = [{"prompt": text, "answer": text} for text in INJECTIONS] * 4
    path = tmp_path / "data.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    dm = PromptDataModule(str(path), prompt_template="Q: {prompt}", val_size=2, batch_size=2)
    dm.setup()
    prompts = set(dm.train_dataset["prompt"]) | set(dm.val_dataset["prompt"])
    assert prompts <= {f"Q: {text}" for text in INJECTIONS}  # values are inserted verbatim, not formatted again
    assert not (tmp_path / "PWNED").exists()


@pytest.mark.parametrize("reward", [MathAnswerReward(), ExactMatchReward(), ArithmeticReward()],
                         ids=lambda r: type(r).__name__)
def test_rewards_do_not_evaluate_completions_or_golds(reward, tmp_path, monkeypatch):
    """math-verify hands sympy's parse_expr (which evals) only strings of digits and operators; the
    rest is parsed by a LaTeX grammar. Completions and golds that are code stay unevaluated."""
    monkeypatch.chdir(tmp_path)
    scores = reward(INJECTIONS, INJECTIONS, answer=list(reversed(INJECTIONS)))
    assert all(s is None or s in (0.0, 1.0) for s in scores)
    assert not Path(tmp_path / "PWNED").exists()
