"""The bad-input table: malformed settings, data files, models, tokenizers and checkpoints.

Every row runs ``stare-lit fit`` in the folder of an earlier good run and checks that
- it exits with one line, ``stare-lit: error: ...``, that names the setting or input at fault;
- no traceback is printed;
- the earlier run's checkpoints and metrics are byte-for-byte what they were.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch

from stare_lit.commands.cli import main
from tests.test_cli import fit_args

DATA = ["--data", "stare_lit.data.PromptDataModule", "--data.init_args.batch_size", "2"]

# (name, extra arguments — {placeholders} are files made by the fixture —, words the error must contain)
CASES = [
    # settings: unknown keys, wrong types, out-of-range values
    ("unknown key", ["--model.no_such_key", "1"], "unrecognized arguments: --model.no_such_key"),
    ("wrong type", ["--model.group_size", "eight"], '"model.group_size"'),
    ("missing config file", ["--config", "{folder}/no_such.yaml"], "no_such.yaml"),
    ("G < 2", ["--model.group_size", "1"], "model.group_size must be >= 2"),
    ("micro-batch splits groups", ["--model.scheme", "stare_lit.schemes.ERPO", "--model.micro_batch_size", "3"],
     "model.micro_batch_size must be a multiple of model.group_size"),
    ("reward weights do not match rewards", ["--model.reward_weights", "[1.0, 2.0]"], "model.reward_weights"),
    ("unknown scheme", ["--model.scheme", "stare_lit.schemes.NoSuchScheme"], "NoSuchScheme"),
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
    # settings torch or transformers would refuse only once the run has started, or never
    ("negative learning rate", ["--model.optimizer.init_args.lr", "-1"], "model.optimizer: torch.optim.adamw.AdamW"),
    ("betas outside [0, 1)", ["--model.optimizer.init_args.betas", "[1.5, 0.9]"], "fix model.optimizer.init_args"),
    ("negative weight decay", ["--model.optimizer.init_args.weight_decay", "-0.1"], "model.optimizer"),
    ("scheduler that refuses its settings", ["--model.lr_scheduler", "torch.optim.lr_scheduler.LinearLR",
                                             "--model.lr_scheduler.init_args.start_factor", "2"], "model.lr_scheduler"),
    ("top_k < 0", ["--model.sampling.top_k", "-3"], "model.sampling.top_k must be >= 0"),
    ("negative grad_clip (trains backwards)", ["--model.grad_clip", "-1"], "model.grad_clip must be > 0"),
    ("grad_clip 0", ["--model.grad_clip", "0"], "model.grad_clip must be > 0"),
    ("max_prompt_length 0", ["--model.sampling.max_prompt_length", "0"], "model.sampling.max_prompt_length"),
    ("max_new_tokens 0", ["--model.sampling.max_new_tokens", "0"], "model.sampling.max_new_tokens"),
    ("empty stop string", ["--model.sampling.stop", '[""]'], "model.sampling.stop"),
    ("logprob_chunk_size 0", ["--model.logprob_chunk_size", "0"], "model.logprob_chunk_size"),
    ("negative val_temperature", ["--model.val_temperature", "-1"], "model.val_temperature must be >= 0"),
    ("val_samples 0", ["--model.val_samples", "0"], "model.val_samples"),
    ("negative advantage_eps", ["--model.advantage_eps", "-1"], "model.advantage_eps"),
    ("peak_flops 0", ["--model.peak_flops", "0"], "model.peak_flops"),
    ("system prompt without a chat template", ["--model.system_prompt", "Be brief."], "model.system_prompt"),
    ("chat template the tokenizer lacks", ["--model.chat_template", "true"], "model.chat_template"),
    ("unknown attention implementation", ["--model.policy.attn_implementation", "fast"],
     "model.policy.attn_implementation"),
    ("infinite STARE target entropy", ["--model.scheme.init_args.target_entropy", "inf"],
     '"target_entropy"'),  # jsonargparse takes no inf or nan for a float; stare_lit.train.checks does for Python callers
    ("ERPO with no buckets", ["--model.scheme", "stare_lit.schemes.ERPO", "--model.scheme.init_args.num_buckets", "0"],
     "model.scheme.init_args.num_buckets"),
    ("clip_low 1", ["--model.loss.clip_low", "1"], "model.loss"),
    ("negative KL beta", ["--model.loss.beta", "-1"], "model.loss.beta"),
    ("updates_per_batch 0", ["--model.updates_per_batch", "0"], "model.updates_per_batch"),
    ("accuracy_reward out of range", ["--model.accuracy_reward", "5"], "model.accuracy_reward"),
    ("val_batch_size 0", ["--data.init_args.val_batch_size", "0"], "val_batch_size"),
    ("validation uses up every problem", ["--data.init_args.min_digits", "1", "--data.init_args.max_digits", "1",
                                          "--data.init_args.num_val_prompts", "81"], "num_val_prompts"),
    # data rows that cannot be generated from (stare_lit.data.rows: dropped, or refused when nothing can train)
    ("every prompt empty", [*DATA, "--data.init_args.path", "{folder}/empty_prompts.jsonl"],
     "have an empty or non-text prompt"),
    ("prompts all null", [*DATA, "--data.init_args.path", "{folder}/null_prompts.jsonl"], "not text"),
    ("prompts are numbers", [*DATA, "--data.init_args.path", "{folder}/number_prompts.jsonl"],
     "holds int64 values, not text"),
    ("too few usable prompts for a batch", [*DATA, "--data.init_args.path", "{folder}/mostly_empty.jsonl",
                                            "--data.init_args.batch_size", "4", "--data.init_args.val_size", "1"],
     "usable training prompts"),
    ("max_train_prompts 0", [*DATA, "--data.init_args.path", "{folder}/good.jsonl",
                             "--data.init_args.max_train_prompts", "0"], "max_train_prompts"),
    ("val_size not a count", [*DATA, "--data.init_args.path", "{folder}/good.jsonl", "--data.init_args.val_size",
                              "2.5"], "val_size"),
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
    (folder / "empty_prompts.jsonl").write_text('{"prompt": "", "answer": "2"}\n' * 8)
    (folder / "null_prompts.jsonl").write_text('{"prompt": null, "answer": "2"}\n' * 8)
    (folder / "number_prompts.jsonl").write_text('{"prompt": 12, "answer": "2"}\n' * 8)
    (folder / "mostly_empty.jsonl").write_text('{"prompt": "1+1=", "answer": "2"}\n' * 3
                                               + '{"prompt": " ", "answer": "2"}\n' * 6)
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
    with pytest.raises(SystemExit, match=re.escape(expected)) as exit_info:
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
    assert len(CASES) >= 45 and len({c[0] for c in CASES}) == len(CASES)


# A user's own code that raises: its traceback is kept, with one line first naming whose code it is.
USER_CODE = [
    ("reward", ["--model.rewards+=tests.helpers.RaisingReward"], "the reward tests.helpers.RaisingReward raised:",
     "bug in user reward"),
    ("scheme", ["--model.scheme", "tests.helpers.RaisingScheme"], "the scheme tests.helpers.RaisingScheme raised:",
     "bug in user scheme"),
    ("callback", ["--trainer.callbacks+=tests.user_callbacks.FailingCallback"],
     "the callback tests.user_callbacks.FailingCallback raised:", "bug in user callback"),
]


@pytest.mark.parametrize("extra,header,detail", [c[1:] for c in USER_CODE], ids=[c[0] for c in USER_CODE])
def test_user_code_that_raises_keeps_its_traceback(earlier_run, extra, header, detail, capsys):
    tiny_model_dir, folder, written = earlier_run
    with pytest.raises(BaseException, match=re.escape(detail)) as raised:
        main(fit_args(tiny_model_dir, folder, *extra))
    err = capsys.readouterr().err
    assert f"stare-lit: {header}" in err, err[-2000:]
    if isinstance(raised.value, SystemExit):  # a reward: stare-lit prints the traceback, then one line
        message = raised.value.code
        assert message.startswith("stare-lit: error: reward 'raising_reward'") and "\n" not in message, message
        assert "Traceback (most recent call last)" in err and "tests/helpers.py" in err and detail in err
        assert err.index(header) < err.index("Traceback")
    else:  # a scheme or a callback: the exception itself goes on, with its traceback, after the line
        assert detail in str(raised.value)
        frames = [str(entry.path) for entry in raised.traceback]
        assert any(name.endswith(("tests/helpers.py", "tests/user_callbacks.py")) for name in frames), frames
    for path, content in written.items():
        assert path.read_bytes() == content, f"{path} changed"
