"""The bad-input table: malformed settings, data files, models, tokenizers and checkpoints.

Every row runs ``stare-lit fit`` in the folder of an earlier good run and checks that
- it exits with one line, ``stare-lit: error: ...``, that names the setting or input at fault;
- no traceback is printed;
- the earlier run's checkpoints and metrics are byte-for-byte what they were.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from stare_lit.cli import main
from tests.test_cli import fit_args

DATA = ["--data", "stare_lit.data.PromptDataModule", "--data.init_args.batch_size", "2"]

# (name, extra arguments — {placeholders} are files made by the fixture —, words the error must contain)
CASES = [
    # settings: unknown keys, wrong types, out-of-range values
    ("unknown key", ["--model.no_such_key", "1"], "unrecognized arguments: --model.no_such_key"),
    ("wrong type", ["--model.group_size", "eight"], '"model.group_size"'),
    ("missing config file", ["--config", "{folder}/no_such.yaml"], "no_such.yaml"),
    ("G < 2", ["--model.group_size", "1"], "model.group_size must be >= 2"),
    ("micro-batch splits groups", ["--model.scheme", "stare_lit.erpo.ERPO", "--model.micro_batch_size", "3"],
     "model.micro_batch_size must be a multiple of model.group_size"),
    ("reward weights do not match rewards", ["--model.reward_weights", "[1.0, 2.0]"], "model.reward_weights"),
    ("unknown scheme", ["--model.scheme", "stare_lit.weighting.NoSuchScheme"], "NoSuchScheme"),
    ("STARE top_ratio > 1", ["--model.scheme.init_args.top_ratio", "1.5"], "top_ratio"),
    ("STARE w = 0", ["--model.scheme.init_args.w", "0"], "model.scheme.init_args.w"),
    ("STARE m < 0", ["--model.scheme.init_args.m", "-1"], "model.scheme.init_args.m"),
    ("dual clip <= 1", ["--model.loss.dual_clip", "0.5"], "model.loss.dual_clip"),
    ("temperature 0", ["--model.sampling.temperature", "0"], "model.sampling.temperature"),
    ("top_p 0", ["--model.sampling.top_p", "0"], "model.sampling.top_p"),
    ("greedy validation with k > 1", ["--model.val_temperature", "0"], "model.val_temperature"),
    ("max_nonfinite_steps 0", ["--model.max_nonfinite_steps", "0"], "model.max_nonfinite_steps"),
    ("negative reward timeout", ["--model.scoring.timeout", "-1"], "model.scoring.timeout"),
    ("batch_size 0", ["--data.init_args.batch_size", "0"], "batch_size"),
    # dataset files
    ("dataset file missing", [*DATA, "--data.init_args.path", "{folder}/missing.jsonl"], "does not exist"),
    ("dataset file empty", [*DATA, "--data.init_args.path", "{folder}/empty.jsonl"], "is empty"),
    ("dataset without the prompt column", [*DATA, "--data.init_args.path", "{folder}/questions.jsonl"],
     "data.init_args.prompt_column"),
    ("dataset not UTF-8", [*DATA, "--data.init_args.path", "{folder}/latin1.jsonl"], "not UTF-8"),
    ("dataset not JSON", [*DATA, "--data.init_args.path", "{folder}/broken.jsonl"], "could not read"),
    ("answer regex that never matches", [*DATA, "--data.init_args.path", "{folder}/good.jsonl",
                                         "--data.init_args.answer_regex", "ANSWER: (.*)"], "answer_regex"),
    ("batch larger than the dataset", [*DATA, "--data.init_args.path", "{folder}/good.jsonl",
                                       "--data.init_args.batch_size", "64"], "no full batch"),
    # model and tokenizer
    ("model path missing", ["--model.policy.name_or_path", "./no/such/model"], "model.policy.name_or_path"),
    ("tokenizer without pad or eos token", ["--model.policy.tokenizer", "{folder}/bare_tokenizer"],
     "neither a pad nor an eos token"),
    # resuming
    ("checkpoint missing", ["--ckpt_path", "{folder}/no_such.ckpt"], "ckpt_path"),
    ("checkpoint truncated", ["--ckpt_path", "{folder}/truncated.ckpt"], "not a readable checkpoint"),
    ("checkpoint of another model", ["--ckpt_path", "{folder}/other_model.ckpt"], "another model"),
    # a reward function with a bug, met during training
    ("reward that raises", ["--model.rewards+=tests.helpers.RaisingReward"], "raising_reward"),
]


def bad_tokenizer(path: Path) -> None:
    """A tokenizer with neither a pad nor an EOS token."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    core = Tokenizer(models.WordLevel({c: i for i, c in enumerate("0123456789+=;?")}, unk_token="?"))
    core.pre_tokenizer = pre_tokenizers.Split("", behavior="isolated")
    PreTrainedTokenizerFast(tokenizer_object=core, unk_token="?").save_pretrained(path)


@pytest.fixture(scope="module")
def earlier_run(tmp_path_factory, tiny_model_dir):
    """A good one-step run (checkpoint + metrics) in ``folder``, and the malformed inputs next to it."""
    folder = tmp_path_factory.mktemp("run")
    main(fit_args(tiny_model_dir, folder))
    written = {p: p.read_bytes() for p in folder.rglob("*") if p.is_file()}
    assert any(p.name == "last.ckpt" for p in written) and any(p.name == "metrics.csv" for p in written)

    (folder / "empty.jsonl").write_text("")
    (folder / "questions.jsonl").write_text('{"question": "1+1=", "answer": "2"}\n' * 8)
    (folder / "latin1.jsonl").write_bytes('{"prompt": "caf\u00e9 1+1=", "answer": "2"}\n'.encode("latin-1") * 8)
    (folder / "broken.jsonl").write_text('{"prompt": "1+1=", "answer": \n' * 8)
    (folder / "good.jsonl").write_text('{"prompt": "1+1=", "answer": "2"}\n' * 8)
    bad_tokenizer(folder / "bare_tokenizer")
    last = next(p for p in written if p.name == "last.ckpt")
    (folder / "truncated.ckpt").write_bytes(last.read_bytes()[: last.stat().st_size // 2])
    state = torch.load(last, weights_only=True)
    name = next(k for k in state["state_dict"] if k.endswith("embed_tokens.weight"))
    state["state_dict"][name] = torch.zeros(7, 3)
    torch.save(state, folder / "other_model.ckpt")
    return tiny_model_dir, folder, written


@pytest.mark.parametrize("extra,expected", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_input_fails_with_one_line_and_loses_nothing(earlier_run, extra, expected, capsys):
    tiny_model_dir, folder, written = earlier_run
    args = fit_args(tiny_model_dir, folder, *(a.format(folder=folder) for a in extra))
    with pytest.raises(SystemExit) as exit_info:
        main(args)
    message = exit_info.value.code
    captured = capsys.readouterr()
    assert isinstance(message, str), f"exit code {message!r}, output: {captured.err[-2000:]}"
    assert message.startswith("stare-lit: error: ") and "\n" not in message, message
    assert expected in message, message
    assert "Traceback" not in captured.err + captured.out
    for path, content in written.items():
        assert path.read_bytes() == content, f"{path} changed"


def test_the_table_is_at_least_twenty_rows():
    assert len(CASES) >= 20 and len({c[0] for c in CASES}) == len(CASES)
