"""PromptDataModule on small local files: formats, column mapping, splits, shuffling, errors."""

from __future__ import annotations

import json

import lightning as L
import pytest
import torch
from datasets import Dataset

import stare_lit.data.datamodule as data_mod
from stare_lit.data.datamodule import PromptDataModule, collate_prompts
from stare_lit.errors import ConfigError


def _rows(n: int) -> list[dict]:
    return [
        {"id": i, "question": f"What is {i} + {i}?", "solution": f"{i} plus {i} is {2 * i}.\n#### {2 * i}"}
        for i in range(n)
    ]


def _write_jsonl(path, rows) -> str:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return str(path)


def _dm(path, **kw) -> PromptDataModule:
    kw.setdefault("prompt_column", "question")
    kw.setdefault("answer_column", "solution")
    kw.setdefault("batch_size", 2)
    dm = PromptDataModule(str(path), **kw)
    dm.setup("fit")
    return dm


def _ids(ds) -> list[int]:
    return list(ds["id"])


# ----------------------------------------------------------------------------------- collate


def test_collate_prompts_makes_aligned_column_lists():
    rows = [{"prompt": "1+1=", "answer": "2", "id": 0}, {"prompt": "2+3=", "answer": "5", "id": 1}]
    assert collate_prompts(rows) == {"prompt": ["1+1=", "2+3="], "answer": ["2", "5"], "id": [0, 1]}
    with pytest.raises(ValueError, match="got no rows"):
        collate_prompts([])
    with pytest.raises(ValueError, match="different keys"):
        collate_prompts([{"prompt": "a"}, {"prompt": "b", "answer": "c"}])


# ---------------------------------------------------------------------------- file formats


def test_jsonl_round_trip_with_column_mapping_and_template(tmp_path):
    path = _write_jsonl(tmp_path / "train.jsonl", _rows(20))
    dm = _dm(path, prompt_template="Q: {question} (#{id})\nAnswer in \\boxed{{}}.", val_size=4)
    assert len(dm.train_dataset) == 16 and len(dm.val_dataset) == 4
    row = next(r for r in dm.train_dataset if r["id"] == 3)
    assert row["prompt"] == "Q: What is 3 + 3? (#3)\nAnswer in \\boxed{}."
    assert row["answer"] == "3 plus 3 is 6.\n#### 6"  # no regex: the whole column, as text
    # every original column is kept next to prompt/answer
    assert row["question"] == "What is 3 + 3?" and row["solution"] == row["answer"]
    batch = next(iter(dm.train_dataloader()))
    assert set(batch) == {"prompt", "answer", "id", "question", "solution"}
    assert all(isinstance(p, str) for p in batch["prompt"]) and len(batch["prompt"]) == 2
    for p, a, i in zip(batch["prompt"], batch["answer"], batch["id"]):  # aligned per prompt
        assert p.startswith(f"Q: What is {i} + {i}?") and a.endswith(f"#### {2 * i}")


def test_parquet_round_trip_numeric_answers_become_text(tmp_path):
    path = tmp_path / "data.parquet"
    Dataset.from_list([{"prompt": f"{i}*2=", "answer": 2 * i, "level": i % 3} for i in range(10)]).to_parquet(path)
    dm = PromptDataModule(str(path), batch_size=2, val_size=2)  # default prompt/answer columns and template
    dm.setup("fit")
    by_prompt = {r["prompt"]: r for r in list(dm.train_dataset) + list(dm.val_dataset)}
    assert set(by_prompt) == {f"{i}*2=" for i in range(10)}
    assert by_prompt["7*2="]["answer"] == "14" and isinstance(by_prompt["7*2="]["answer"], str)
    assert by_prompt["7*2="]["level"] == 1


def test_json_list_and_default_prompt_alias(tmp_path):
    path = tmp_path / "data.json"
    path.write_text(json.dumps(_rows(6)), encoding="utf-8")
    # {prompt} is the prompt_column's value even when the dataset has no 'prompt' column
    dm = _dm(path, prompt_template="<q>{prompt}</q>", answer_column=None, val_size=2)
    row = dm.val_dataset[0]
    assert row["prompt"] == f"<q>{row['question']}</q>"
    assert "answer" not in row  # answer_column null: no gold key is invented


def test_csv_and_directory_with_named_val_split(tmp_path):
    d = tmp_path / "ds"
    d.mkdir()
    _write_jsonl(d / "train.jsonl", _rows(8))
    _write_jsonl(d / "test.jsonl", [{**r, "id": 100 + r["id"]} for r in _rows(3)])
    dm = _dm(d, val_split="test")
    assert sorted(_ids(dm.train_dataset)) == list(range(8))
    assert _ids(dm.val_dataset) == [100, 101, 102]

    csv = tmp_path / "data.csv"
    csv.write_text("question,solution\n" + "".join(f"q{i},{i}\n" for i in range(5)), encoding="utf-8")
    dm = _dm(csv, val_size=1)
    assert sorted(r["prompt"] for r in list(dm.train_dataset) + list(dm.val_dataset)) == [f"q{i}" for i in range(5)]
    assert dm.val_dataset[0]["answer"] == dm.val_dataset[0]["prompt"][1:]


def test_gsm8k_style_answer_regex(tmp_path):
    rows = [
        {"question": "Natalia sold 48 clips...", "answer": "She sold 48/2 = <<48/2=24>>24.\n#### 72"},
        {"question": "Big numbers?", "answer": "Lots.\n####  1,234 "},
        {"question": "Negative?", "answer": "Below zero.\n#### -5"},
    ]
    path = _write_jsonl(tmp_path / "gsm.jsonl", rows * 2)
    dm = _dm(path, answer_column="answer", answer_regex=r"#### (.*)", val_size=1, batch_size=1)
    golds = {r["question"]: r["answer"] for r in list(dm.train_dataset) + list(dm.val_dataset)}
    assert golds == {"Natalia sold 48 clips...": "72", "Big numbers?": "1,234", "Negative?": "-5"}


def test_yaml_config_keeps_regex_and_template_text():
    """The GSM8K settings survive jsonargparse (an optional str would turn '#### (.*)' into null)."""
    from jsonargparse import ArgumentParser

    parser = ArgumentParser()
    parser.add_class_arguments(PromptDataModule, "data")
    cfg = parser.parse_string(
        "data:\n"
        "  path: openai/gsm8k\n"
        "  val_size: 10\n"
        '  answer_regex: "#### (.*)"\n'
        '  prompt_template: "# Problem\\n{question}\\nGive \\\\boxed{{answer}}."\n'
    )
    dm = parser.instantiate_classes(cfg).data
    assert dm.answer_regex == "#### (.*)"
    assert dm.prompt_template == "# Problem\n{question}\nGive \\boxed{{answer}}."
    assert dm.val_size == 10 and isinstance(dm.val_size, int)


def test_answer_regex_that_does_not_match_is_an_error(tmp_path):
    path = _write_jsonl(tmp_path / "gsm.jsonl", [{"question": "q", "answer": "no marker"}] * 4)
    with pytest.raises(ConfigError, match=r"data\.init_args\.answer_regex.*does not match"):
        _dm(path, answer_column="answer", answer_regex=r"#### (.*)", val_size=1, batch_size=1)


# ------------------------------------------------------------------------- splits and order


def test_held_out_split_sizes_disjoint_and_seeded(tmp_path):
    path = _write_jsonl(tmp_path / "train.jsonl", _rows(40))
    dm = _dm(path, val_size=0.25)
    train, val = _ids(dm.train_dataset), _ids(dm.val_dataset)
    assert (len(train), len(val)) == (30, 10)
    assert not set(train) & set(val) and set(train) | set(val) == set(range(40))
    assert sorted(val) != val or val != list(range(30, 40))  # a random hold-out, not the tail

    assert _ids(_dm(path, val_size=0.25).val_dataset) == val  # same seed, same split
    assert _ids(_dm(path, val_size=0.25, seed=1).val_dataset) != val
    assert len(_dm(path, val_size=7).val_dataset) == 7
    assert len(_dm(path, val_size=7.0).val_dataset) == 7  # YAML '7' may arrive as a float
    assert len(_dm(path, val_size=0.01).val_dataset) == 1  # a fraction rounds up to >= 1 row


def test_caps_on_train_and_val_prompts(tmp_path):
    path = _write_jsonl(tmp_path / "train.jsonl", _rows(40))
    full = _dm(path, val_size=10)
    dm = _dm(path, val_size=10, max_train_prompts=5, max_val_prompts=3)
    assert len(dm.train_dataset) == 5 and set(_ids(dm.train_dataset)) <= set(_ids(full.train_dataset))
    assert _ids(dm.val_dataset) == _ids(full.val_dataset)[:3]


def _epoch(dm) -> list[int]:
    return [i for batch in dm.train_dataloader() for i in batch["id"]]


def test_train_loader_shuffles_deterministically_and_drops_last(tmp_path):
    path = _write_jsonl(tmp_path / "train.jsonl", _rows(24))
    a, b, c = (_dm(path, val_size=4, batch_size=6, seed=s) for s in (0, 0, 1))
    batches = list(a.train_dataloader())
    assert len(batches) == 3 and all(len(x["prompt"]) == 6 for x in batches)  # 20 rows → 3 full batches
    order = _epoch(a)
    assert len(set(order)) == 18 and set(order) <= set(_ids(a.train_dataset))
    assert order == _epoch(b)  # same seed, same order
    assert order != _epoch(c)
    assert order != sorted(order)  # actually shuffled

    val = list(a.val_dataloader())
    assert [i for x in val for i in x["id"]] == _ids(a.val_dataset)  # in order
    small = _dm(path, val_size=5, val_batch_size=2)
    assert [len(x["id"]) for x in small.val_dataloader()] == [2, 2, 1]  # last partial batch kept


def test_batches_reach_a_lightning_module(tmp_path):
    path = _write_jsonl(tmp_path / "train.jsonl", _rows(12))
    seen = []

    class Recorder(L.LightningModule):
        def __init__(self):
            super().__init__()
            self.w = torch.nn.Parameter(torch.zeros(1))

        def training_step(self, batch, batch_idx):
            seen.append(batch)
            return (self.w * 0).sum() + self.w.sum()

        def validation_step(self, batch, batch_idx):
            pass

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.1)

    dm = PromptDataModule(path, prompt_column="question", answer_column="solution", batch_size=4, val_size=2)
    trainer = L.Trainer(max_steps=2, accelerator="cpu", logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False)
    trainer.fit(Recorder(), datamodule=dm)
    assert len(seen) == 2 and all(len(b["prompt"]) == 4 and len(b["answer"]) == 4 for b in seen)


# --------------------------------------------------------------------------------- hub path


def test_hub_name_is_loaded_by_name_without_remote_code(tmp_path, monkeypatch):
    calls = []

    def fake_load(path, name=None, **kw):
        calls.append((path, name, kw))
        return Dataset.from_list(_rows(10) if kw["split"] == "train" else _rows(3))

    monkeypatch.setattr(data_mod, "load_dataset", fake_load)
    dm = _dm("openai/gsm8k", name="main", val_split="test")
    assert [c[:2] for c in calls] == [("openai/gsm8k", "main")] * 2
    assert [c[2] for c in calls] == [{"split": "train"}, {"split": "test"}]  # no trust_remote_code
    assert len(dm.train_dataset) == 10 and len(dm.val_dataset) == 3


def test_hub_failure_names_the_setting(monkeypatch):
    def fake_load(*a, **kw):
        try:
            raise FileNotFoundError("Dataset 'nobody/nothing' doesn't exist on the Hub")
        except FileNotFoundError as e:
            raise RuntimeError("wrapper") from e

    monkeypatch.setattr(data_mod, "load_dataset", fake_load)
    with pytest.raises(ConfigError, match=r"data\.init_args\.path.*nobody/nothing.*doesn't exist") as e:
        _dm("nobody/nothing")
    assert "\n" not in str(e.value)


# ------------------------------------------------------------------------------------ errors


def test_missing_local_file(tmp_path):
    with pytest.raises(ConfigError, match=r"data\.init_args\.path: file '.*nope\.jsonl' does not exist"):
        _dm(tmp_path / "nope.jsonl")


@pytest.mark.parametrize(
    "name, content",
    [
        ("bad.jsonl", b'{"question": "a", "solution": "1"}\n{"question": oops\n'),
        ("latin1.jsonl", '{"question": "caf\u00e9", "solution": "1"}\n'.encode("latin-1")),
        ("bad.parquet", b"this is not parquet"),
    ],
)
def test_unreadable_file(tmp_path, name, content):
    (tmp_path / name).write_bytes(content)
    with pytest.raises(ConfigError, match=r"data\.init_args\.path: could not read") as e:
        _dm(tmp_path / name)
    assert "\n" not in str(e.value)
    if name.startswith("latin1"):
        assert "not UTF-8" in str(e.value)
    d = tmp_path / "dir"  # the same file inside a directory
    d.mkdir()
    (d / ("train" + name[name.index("."):])).write_bytes(content)
    with pytest.raises(ConfigError, match=r"data\.init_args\.path: could not (read|load)"):
        _dm(d)


def test_unsupported_extension(tmp_path):
    (tmp_path / "data.txt").write_text("hello", encoding="utf-8")
    with pytest.raises(ConfigError, match=r"data\.init_args\.path: .*not a \.json/\.jsonl/\.parquet/\.csv"):
        _dm(tmp_path / "data.txt")


def test_empty_file(tmp_path):
    (tmp_path / "empty.jsonl").write_text("", encoding="utf-8")
    with pytest.raises(ConfigError, match=r"data\.init_args\.path: '.*empty\.jsonl' is empty"):
        _dm(tmp_path / "empty.jsonl")
    (tmp_path / "header_only.csv").write_text("question,solution\n", encoding="utf-8")
    with pytest.raises(ConfigError, match=r"data\.init_args\.path: could not read .*no data"):
        _dm(tmp_path / "header_only.csv")


def test_empty_named_val_split(tmp_path, monkeypatch):
    monkeypatch.setattr(data_mod, "load_dataset",
                        lambda p, n=None, split="": Dataset.from_list(_rows(5) if split == "train" else []))
    with pytest.raises(ConfigError, match=r"data\.init_args\.val_split: split 'test' .* has no rows"):
        _dm("org/ds", val_split="test")


def test_missing_columns_list_what_is_there(tmp_path):
    path = _write_jsonl(tmp_path / "train.jsonl", _rows(6))
    with pytest.raises(ConfigError, match=r"data\.init_args\.prompt_column: no column 'prompt'.*"
                                          r"available columns: id, question, solution"):
        _dm(path, prompt_column="prompt")
    with pytest.raises(ConfigError, match=r"data\.init_args\.answer_column: no column 'answer'.*question"):
        _dm(path, answer_column="answer")
    with pytest.raises(ConfigError, match=r"data\.init_args\.prompt_template: refers to \{topic\}"):
        _dm(path, prompt_template="{topic}: {question}")


@pytest.mark.parametrize(
    "kw, setting",
    [
        ({"batch_size": 0}, "batch_size"),
        ({"val_batch_size": 0}, "val_batch_size"),
        ({"val_size": 0}, "val_size"),
        ({"val_size": 1.5}, "val_size"),
        ({"val_size": -3}, "val_size"),
        ({"val_size": True}, "val_size"),
        ({"max_train_prompts": 0}, "max_train_prompts"),
        ({"answer_regex": "#### ("}, "answer_regex"),
        ({"answer_regex": "#### (.*)", "answer_column": None}, "answer_regex"),
        ({"prompt_template": "Q: {question"}, "prompt_template"),
        ({"prompt_template": "Q: {}"}, "prompt_template"),
        ({"val_split": "train"}, "val_split"),
    ],
)
def test_bad_settings_fail_in_init(kw, setting):
    with pytest.raises(ConfigError, match=rf"^data\.init_args\.{setting}:"):
        PromptDataModule("unused.jsonl", **kw)


def test_settings_that_need_the_data(tmp_path):
    path = _write_jsonl(tmp_path / "train.jsonl", _rows(10))
    with pytest.raises(ConfigError, match=r"data\.init_args\.val_size: .*both need rows"):
        _dm(path, val_size=10)
    with pytest.raises(ConfigError, match=r"data\.init_args\.batch_size: 16 prompts per step, but the 9 usable training prompts"):
        _dm(path, val_size=1, batch_size=16)
    with pytest.raises(ConfigError, match=r"data\.init_args\.split: a single local file has only"):
        _dm(path, split="test")
    with pytest.raises(ConfigError, match=r"data\.init_args\.name: .*null"):
        _dm(path, name="main")
    with pytest.raises(ConfigError, match=r"data\.init_args\.prompt_template: formatting"):
        _dm(path, prompt_template="{id:q}")  # an int does not take format spec 'q'
    _write_jsonl(tmp_path / "nested.jsonl", [{"question": ["a", "b"], "solution": "1"}] * 2)
    with pytest.raises(ConfigError, match=r"data\.init_args\.prompt_column: .* holds list .*not text"):
        _dm(tmp_path / "nested.jsonl", val_size=0.5, batch_size=1)
