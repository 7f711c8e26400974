"""Rows whose prompt is empty or not text are dropped, counted and reported once; none reaches generate."""

from __future__ import annotations

import json
import warnings

import pytest

from stare_lit.data.datamodule import PromptDataModule, train_loader, val_loader
from stare_lit.errors import ConfigError
from stare_lit.module import GRPOModule
from stare_lit.data.rows import DroppedRowsWarning, usable_rows
from stare_lit.data.tasks.arithmetic import ArithmeticReward


def test_prompt_data_module_drops_empty_and_null_prompts_with_one_warning(tmp_path):
    rows = [{"question": f"{i}+{i}=", "solution": str(2 * i)} for i in range(10)]
    rows[2]["question"], rows[5]["question"], rows[7]["question"] = "", None, "  \n"
    path = tmp_path / "train.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    dm = PromptDataModule(str(path), prompt_column="question", answer_column="solution", batch_size=1,
                          val_size=1, prompt_template="Q: {question}")
    # In setup, which Lightning runs before it loads the model: data that cannot train is refused before that.
    with pytest.warns(DroppedRowsWarning, match=r"dropped 3 of 9 training rows whose prompt is empty or not text"):
        dm.setup("fit")  # 9 rows after the hold-out of 1 (a good one, with this seed), 3 of them bad
    with warnings.catch_warnings():
        warnings.simplefilter("error", DroppedRowsWarning)  # one warning: the loader has nothing left to drop
        loader = dm.train_dataloader()
    prompts = [p for batch in loader for p in batch["prompt"]]
    assert len(prompts) == len(dm.train_dataset) == 6 and all(p.startswith("Q: ") and len(p) > 3 for p in prompts)


def test_lists_of_rows_are_cleaned_too_and_a_dataset_of_nothing_usable_is_refused():
    rows = [{"prompt": "1+1=", "answer": "2"}, {"prompt": 3, "answer": "2"}, {"prompt": "", "answer": "2"}]
    with pytest.warns(DroppedRowsWarning, match=r"dropped 2 of 3 validation rows .*first: row 1, 3"):
        assert usable_rows(rows, "validation") == rows[:1]
    with pytest.raises(ConfigError, match="all 2 training rows have an empty or non-text prompt"):
        usable_rows(rows[1:], "training")
    with pytest.warns(DroppedRowsWarning):
        loader = val_loader(rows, batch_size=8)
    assert [batch["prompt"] for batch in loader] == [["1+1="]]


def test_too_few_usable_rows_for_a_batch_is_one_error():
    class Data:
        trainer = None

    rows = [{"prompt": "1+1="}] + [{"prompt": ""}] * 3
    with pytest.warns(DroppedRowsWarning), pytest.raises(ConfigError, match="1 usable training prompts"):
        train_loader(Data(), rows, batch_size=2, seed=0)


def test_the_module_refuses_an_empty_prompt_before_generate(tiny_policy):
    module = GRPOModule(policy=tiny_policy, rewards=[ArithmeticReward()], group_size=2)
    module.configure_model()
    with pytest.raises(ConfigError, match=r"data: prompt 1 of a batch is empty or not text"):
        module.experience.sample(module.model, ["1+1=", ""], 2)
    with pytest.raises(ConfigError, match=r"prompt 0 of a batch"):
        module.experience.sample(module.model, [None], 2)


def test_python_callers_get_the_same_checks(tiny_policy):
    """Settings the CLI's parser cannot produce (inf, a lambda optimizer) are still checked."""
    import torch

    from stare_lit.schemes.stare import STARE

    with pytest.raises(ConfigError, match=r"model.scheme.init_args.target_entropy must be a finite number"):
        GRPOModule(policy=tiny_policy, rewards=[ArithmeticReward()], scheme=STARE(target_entropy=float("inf")))
    with pytest.raises(ConfigError, match=r"model.optimizer: .* refuses its settings \(Invalid learning rate"):
        GRPOModule(policy=tiny_policy, rewards=[ArithmeticReward()],
                   optimizer=lambda params: torch.optim.SGD(params, lr=-0.1))
    from stare_lit.train.update import UpdateSettings

    with pytest.raises(ConfigError, match=r"model.update.grad_clip must be > 0"):
        GRPOModule(policy=tiny_policy, rewards=[ArithmeticReward()], update=UpdateSettings(grad_clip=-1.0))
