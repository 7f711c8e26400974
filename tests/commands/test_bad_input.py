"""The bad-input tables: malformed settings, data files, models, tokenizers, checkpoints and paths, for
every command (fit, validate, evaluate, export, warmstart, compare).

Every row runs a command next to earlier good runs and checks that
- it exits with one line, ``stare-lit: error: ...``, that names the setting or input at fault;
- no traceback is printed;
- the earlier runs' files (checkpoints, metrics, results, exported and warm-started models, a
  comparison) are byte-for-byte what they were;
- for the rows that say so, nothing was started first: no model loaded or built with its weights, no
  optimizer step, no subprocess (``work_started`` records each).
``benchmarks/bad_inputs.py`` runs a larger battery of the same kind and counts what it finds.
"""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

import pytest
import torch
import transformers
import yaml
from torch.optim.optimizer import register_optimizer_step_pre_hook

from stare_lit.commands.cli import main
from tests.cli import ROOT, fit_args

pytestmark = pytest.mark.slow  # every row runs a command next to earlier good runs

DATA = ["--data", "stare_lit.data.PromptDataModule", "--data.init_args.batch_size", "2"]

# (name, extra arguments — {placeholders} are files made by the fixture —, words the error must contain)
CASES = [
    # settings: unknown keys, wrong types, out-of-range values
    ("unknown key", ["--model.no_such_key", "1"], "unrecognized arguments: --model.no_such_key"),
    ("wrong type", ["--model.group_size", "eight"], '"model.group_size"'),
    ("missing config file", ["--config", "{folder}/no_such.yaml"], "no_such.yaml"),
    ("G < 2", ["--model.group_size", "1"], "model.group_size must be >= 2"),
    ("micro-batch splits groups", ["--model.scheme", "stare_lit.schemes.ERPO", "--model.update.micro_batch_size", "3"],
     "model.update.micro_batch_size must be a multiple of model.group_size"),
    ("reward weights do not match rewards", ["--model.reward_weights", "[1.0, 2.0]"], "model.reward_weights"),
    ("unknown scheme", ["--model.scheme", "stare_lit.schemes.NoSuchScheme"], "NoSuchScheme"),
    ("STARE top_ratio > 1", ["--model.scheme.init_args.top_ratio", "1.5"], "top_ratio"),
    ("STARE w = 0", ["--model.scheme.init_args.w", "0"], "model.scheme.init_args.w"),
    ("STARE m < 0", ["--model.scheme.init_args.m", "-1"], "model.scheme.init_args.m"),
    ("dual clip <= 1", ["--model.loss.dual_clip", "0.5"], "model.loss.dual_clip"),
    ("temperature 0", ["--model.sampling.temperature", "0"], "model.sampling.temperature"),
    ("top_p 0", ["--model.sampling.top_p", "0"], "model.sampling.top_p"),
    ("greedy validation with k > 1", ["--model.validation.temperature", "0"], "model.validation.temperature"),
    ("max_nonfinite_steps 0", ["--model.update.max_nonfinite_steps", "0"], "model.update.max_nonfinite_steps"),
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
    ("negative grad_clip (trains backwards)", ["--model.update.grad_clip", "-1"], "model.update.grad_clip must be > 0"),
    ("grad_clip 0", ["--model.update.grad_clip", "0"], "model.update.grad_clip must be > 0"),
    ("max_prompt_length 0", ["--model.sampling.max_prompt_length", "0"], "model.sampling.max_prompt_length"),
    ("max_new_tokens 0", ["--model.sampling.max_new_tokens", "0"], "model.sampling.max_new_tokens"),
    ("empty stop string", ["--model.sampling.stop", '[""]'], "model.sampling.stop"),
    ("logprob_chunk_size 0", ["--model.update.logprob_chunk_size", "0"], "model.update.logprob_chunk_size"),
    ("negative validation.temperature", ["--model.validation.temperature", "-1"],
     "model.validation.temperature must be >= 0"),
    ("validation.samples 0", ["--model.validation.samples", "0"], "model.validation.samples"),
    ("negative advantages.eps", ["--model.advantages.eps", "-1"], "model.advantages.eps"),
    ("peak_flops 0", ["--model.peak_flops", "0"], "model.peak_flops"),
    ("system prompt without a chat template", ["--model.prompt_format.system_prompt", "Be brief."],
     "model.prompt_format.system_prompt"),
    ("chat template the tokenizer lacks", ["--model.prompt_format.chat_template", "true"],
     "model.prompt_format.chat_template"),
    ("unknown attention implementation", ["--model.policy.attn_implementation", "fast"],
     "model.policy.attn_implementation"),
    ("infinite STARE target entropy", ["--model.scheme.init_args.target_entropy", "inf"],
     '"target_entropy"'),  # jsonargparse takes no inf or nan for a float; stare_lit.train.checks does for Python callers
    ("ERPO with no buckets", ["--model.scheme", "stare_lit.schemes.ERPO", "--model.scheme.init_args.num_buckets", "0"],
     "model.scheme.init_args.num_buckets"),
    ("clip_low 1", ["--model.loss.clip_low", "1"], "model.loss"),
    ("negative KL beta", ["--model.loss.beta", "-1"], "model.loss.beta"),
    ("updates_per_batch 0", ["--model.update.updates_per_batch", "0"], "model.update.updates_per_batch"),
    ("accuracy_reward out of range", ["--model.validation.accuracy_reward", "5"], "model.validation.accuracy_reward"),
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
    # Lightning's own settings: before the tokenizer, the data or the model load (stare_lit.commands.trainer_settings)
    ("trainer.max_steps -5", ["--trainer.max_steps", "-5"], "trainer.max_steps must be >= 1"),
    ("trainer.max_steps 0 (an untrained model)", ["--trainer.max_steps", "0"], "would train nothing"),
    ("trainer.max_epochs -5", ["--trainer.max_epochs", "-5"], "trainer.max_epochs must be >= 1 or -1"),
    ("trainer.min_steps -3", ["--trainer.min_steps", "-3"], "trainer.min_steps must be >= 0"),
    ("trainer.val_check_interval 0", ["--trainer.val_check_interval", "0"], "trainer.val_check_interval must be"),
    ("trainer.val_check_interval 1.5", ["--trainer.val_check_interval", "1.5"], "fraction in (0, 1]"),
    ("trainer.check_val_every_n_epoch 0", ["--trainer.check_val_every_n_epoch", "0"],
     "trainer.check_val_every_n_epoch must be >= 1"),
    ("trainer.devices 0", ["--trainer.devices", "0"], "trainer.devices must be >= 1"),
    ("trainer.num_nodes 0", ["--trainer.num_nodes", "0"], "trainer.num_nodes must be >= 1"),
    ("trainer.accumulate_grad_batches 2 (manual optimisation)", ["--trainer.accumulate_grad_batches", "2"],
     "set model.update.micro_batch_size"),
    ("trainer.gradient_clip_val (manual optimisation)", ["--trainer.gradient_clip_val", "1.0"],
     "set model.update.grad_clip"),
    ("trainer.num_sanity_val_steps -5", ["--trainer.num_sanity_val_steps", "-5"], "trainer.num_sanity_val_steps"),
    ("trainer.limit_val_batches -1", ["--trainer.limit_val_batches", "-1"], "trainer.limit_val_batches must be"),
    ("trainer.limit_train_batches 0", ["--trainer.limit_train_batches", "0"], "trainer.limit_train_batches 0"),
    ("trainer.log_every_n_steps -1", ["--trainer.log_every_n_steps", "-1"], "trainer.log_every_n_steps must be >= 0"),
    ("unknown accelerator (Lightning's refusal, one line)", ["--trainer.accelerator", "foo"],
     "trainer.accelerator: Lightning refuses it"),
    ("max_time not a duration (Lightning's refusal, one line)", ["--trainer.max_time", "x"], "trainer.max_time"),
    ("seed_everything -1", ["--seed_everything", "-1"], "seed_everything must be an integer in [0, 2**32)"),
    ("default_root_dir is a file", ["--trainer.default_root_dir", "{folder}/a_file"],
     "trainer.default_root_dir: '"),
    ("logger save_dir under a file", ["--trainer.logger.init_args.save_dir", "{folder}/a_file/logs"],
     "trainer.logger.init_args.save_dir: '"),
    ("checkpoint dirpath is a file", ["--trainer.callbacks+={class_path: lightning.pytorch.callbacks.ModelCheckpoint,"
                                      " init_args: {dirpath: {folder}/a_file}}"], ".init_args.dirpath: '"),
    ("checkpoint a plain directory", ["--ckpt_path", "{folder}/a_dir"], "ckpt_path"),
    # LoRA targets: checked on the model's modules (a skeleton on the meta device) before it loads
    ("LoRA target module that does not exist", ["--model.policy.lora", "{rank: 2, target_modules: [q_proj, qproj]}"],
     "'qproj' matches no module of LlamaForCausalLM; the layers LoRA can adapt here are down_proj, embed_tokens"),
    ("LoRA target that LoRA cannot adapt", ["--model.policy.lora", "{rank: 2, target_modules: [mlp]}"],
     "a LlamaMLP, which LoRA cannot adapt"),
    ("LoRA target regex that matches nothing", ["--model.policy.lora", "{rank: 2, target_modules: '.*qv.*'}"],
     "model.policy.lora.target_modules: '.*qv.*' matches no module"),
    ("LoRA target not a regex", ["--model.policy.lora", "{rank: 2, target_modules: '(q'}"], "not a regular expression"),
    # model and tokenizer paths
    ("model path is a file", ["--model.policy.name_or_path", "{folder}/a_file"], "model.policy.name_or_path: '"),
    ("model path an empty directory", ["--model.policy.name_or_path", "{folder}/a_dir"],
     "holds no config.json and no tokenizer file"),
    ("tokenizer path an empty directory", ["--model.policy.tokenizer", "{folder}/a_dir"],
     "model.policy.tokenizer: '"),
]
# Rows whose error needs the model itself; every other row must fire before any model loads.
LATE_BY_NATURE = {"checkpoint of another model"}


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
    (folder / "a_file").write_text("not a directory\n")
    (folder / "a_dir").mkdir()
    last = next(p for p in written if p.name == "last.ckpt")
    (folder / "truncated.ckpt").write_bytes(last.read_bytes()[: last.stat().st_size // 2])
    state = torch.load(last, weights_only=True)
    name = next(k for k in state["state_dict"] if k.endswith("embed_tokens.weight"))
    state["state_dict"][name] = torch.zeros(7, 3)
    torch.save(state, folder / "other_model.ckpt")
    return tiny_model_dir, folder, written


@pytest.fixture
def work_started(monkeypatch):
    """What a command started, in order: a model loaded (from_pretrained) or built with weights (off the meta
    device, where a skeleton for checks costs nothing), an optimizer step, a subprocess."""
    events: list[str] = []
    load, init, popen = transformers.PreTrainedModel.from_pretrained.__func__, transformers.PreTrainedModel.__init__, \
        subprocess.Popen.__init__

    def loading(cls, *args, **kwargs):
        events.append("model loaded")
        return load(cls, *args, **kwargs)

    def building(self, *args, **kwargs):
        if torch.get_default_device().type != "meta":
            events.append("model built")
        init(self, *args, **kwargs)

    def spawning(self, *args, **kwargs):
        events.append("subprocess")
        popen(self, *args, **kwargs)

    monkeypatch.setattr(transformers.PreTrainedModel, "from_pretrained", classmethod(loading))
    monkeypatch.setattr(transformers.PreTrainedModel, "__init__", building)
    monkeypatch.setattr(subprocess.Popen, "__init__", spawning)
    hook = register_optimizer_step_pre_hook(lambda *args: events.append("optimizer step"))
    yield events
    hook.remove()


def refused_in_one_line(args: list[str], expected: str, capsys) -> None:
    """``stare-lit ARGS`` exits with one line ``stare-lit: error: ...`` holding ``expected``, and no traceback."""
    with pytest.raises(SystemExit, match=re.escape(expected)) as exit_info:
        main(args)
    message = exit_info.value.code
    captured = capsys.readouterr()
    assert isinstance(message, str), f"exit code {message!r}, output: {captured.err[-2000:]}"
    assert message.startswith("stare-lit: error: ") and "\n" not in message, message
    assert expected in message, message
    assert "Traceback" not in captured.err + captured.out


def unchanged(written: dict[Path, bytes]) -> None:
    for path, content in written.items():
        assert path.read_bytes() == content, f"{path} changed"


@pytest.mark.parametrize("name,extra,expected", CASES, ids=[c[0] for c in CASES])
def test_bad_input_fails_with_one_line_and_loses_nothing(earlier_run, name, extra, expected, capsys, work_started):
    tiny_model_dir, folder, written = earlier_run
    refused_in_one_line(fit_args(tiny_model_dir, folder, *(a.replace("{folder}", str(folder)) for a in extra)),
                        expected, capsys)
    unchanged(written)
    if name not in LATE_BY_NATURE:
        assert work_started == [], f"refused only after: {work_started}"


VALIDATE_CASES = [
    ("checkpoint missing", ["--ckpt_path", "{folder}/no_such.ckpt"], "ckpt_path: '"),
    ("ckpt_path best before any fit", ["--ckpt_path", "best"], "validate --ckpt_path best: there is no best checkpoint"),
    ("trainer.max_steps -5", ["--trainer.max_steps", "-5"], "trainer.max_steps must be >= 0 (optimizer steps) or -1"),
    ("trainer.limit_val_batches -1", ["--trainer.limit_val_batches", "-1"], "trainer.limit_val_batches must be"),
    ("LoRA target module that does not exist", ["--model.policy.lora", "{rank: 2, target_modules: [qproj]}"],
     "'qproj' matches no module"),
]


@pytest.mark.parametrize("extra,expected", [c[1:] for c in VALIDATE_CASES], ids=[c[0] for c in VALIDATE_CASES])
def test_validate_refuses_bad_input_before_loading_the_model(earlier_run, extra, expected, capsys, work_started):
    tiny_model_dir, folder, written = earlier_run
    args = fit_args(tiny_model_dir, folder, *(a.replace("{folder}", str(folder)) for a in extra))
    refused_in_one_line(["validate", *args[1:]], expected, capsys)
    unchanged(written)
    assert work_started == []


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


# ---------------------------------------------------------------- evaluate, export, warmstart, compare
# {out} holds an earlier good output of each command (the fixture below), {ckpt} the fit run's checkpoint,
# {model} the tiny policy, {root} this repository. Every row must fire before any model loads or any process
# starts, and leave every earlier file as it was.
EVAL = ["evaluate", "--run_config", "{out}/eval.yaml", "--n", "2", "--out_dir", "{out}/ev2"]
EXPORT = ["export", "--ckpt_path", "{ckpt}", "--out", "{out}/ex2"]
WARM = ["warmstart", "--out_dir", "{out}/ws2", "--min_digits", "2", "--max_digits", "2", "--hidden_size", "16",
        "--num_layers", "1", "--num_heads", "2", "--max_steps", "2", "--batch_size", "4", "--eval_every", "1",
        "--eval_prompts", "4"]
CMP = ["compare", "--base", "{root}/configs/arithmetic_grpo.yaml", "--schemes", "[{root}/configs/schemes/grpo.yaml]",
       "--seeds", "[0]", "--max_steps", "1", "--out_dir", "{out}/cmp",
       "--extra_args", "[--model.policy.name_or_path, {model}, --data.init_args.num_val_prompts, '4']"]
UNWRITABLE = "/proc/stare-lit-test"  # nobody can create this, root included (procfs takes no new entries)

COMMAND_CASES = [
    # evaluate
    ("evaluate: run_config missing", [*EVAL, "--run_config", "{out}/no_such.yaml"], "evaluate --run_config: '"),
    ("evaluate: run_config not YAML", [*EVAL, "--run_config", "{out}/bad.yaml"], "is not valid YAML"),
    ("evaluate: run_config a YAML list", [*EVAL, "--run_config", "{out}/list.yaml"], "is not a YAML mapping"),
    ("evaluate: run_config with a bad setting", [*EVAL, "--run_config", "{out}/eval_bad.yaml"], "model.group_size"),
    ("evaluate: model an empty directory", [*EVAL, "--model", "{out}/a_dir"], "evaluate --model: '"),
    ("evaluate: model is a file", [*EVAL, "--model", "{out}/a_file"], "evaluate --model: '"),
    ("evaluate: ckpt_path missing", [*EVAL, "--ckpt_path", "{out}/no_such.ckpt"], "ckpt_path: '"),
    ("evaluate: data not YAML", [*EVAL, "--data", "{out}/bad.yaml"], "evaluate --data: '"),
    ("evaluate: split with no loader", [*EVAL, "--split", "test"], "has no test_dataloader"),
    ("evaluate: n 0", [*EVAL, "--n", "0"], "evaluate --n must be >= 1"),
    ("evaluate: n not a number", [*EVAL, "--n", "four"], 'Parser key "n"'),
    ("evaluate: top_p 0", [*EVAL, "--top_p", "0"], "evaluate --top_p must be in (0, 1]"),
    ("evaluate: top_k -1", [*EVAL, "--top_k", "-1"], "evaluate --top_k must be >= 0"),
    ("evaluate: max_new_tokens 0", [*EVAL, "--max_new_tokens", "0"], "evaluate --max_new_tokens must be >= 1"),
    ("evaluate: max_prompts 0", [*EVAL, "--max_prompts", "0"], "evaluate --max_prompts must be >= 1"),
    ("evaluate: seed -1", [*EVAL, "--seed", "-1"], "evaluate --seed must be an integer in [0, 2**32)"),
    ("evaluate: device not a device", [*EVAL, "--device", "gpu0"], "evaluate --device: 'gpu0' is not a device"),
    ("evaluate: out_dir is a file", [*EVAL, "--out_dir", "{out}/a_file"], "evaluate --out_dir: '"),
    ("evaluate: out_dir under a file", [*EVAL, "--out_dir", "{out}/a_file/sub"], "is a file, not a directory"),
    ("evaluate: out_dir unwritable", [*EVAL, "--out_dir", UNWRITABLE], "cannot be written"),
    # export
    ("export: ckpt_path missing", [*EXPORT, "--ckpt_path", "{out}/no_such.ckpt"], "ckpt_path: '"),
    ("export: ckpt_path not given", ["export", "--out", "{out}/ex2"], "required: ckpt_path"),
    ("export: out is a file", [*EXPORT, "--out", "{out}/a_file"], "export --out: '"),
    ("export: out under a file", [*EXPORT, "--out", "{out}/a_file/sub"], "export --out: '"),
    ("export: out unwritable", [*EXPORT, "--out", UNWRITABLE], "export --out: '"),
    ("export: out empty", [*EXPORT, "--out", ""], "export --out is empty"),
    ("export: fit_config missing", [*EXPORT, "--fit_config", "{out}/no_such.yaml"], "export --fit_config: '"),
    ("export: fit_config a directory", [*EXPORT, "--fit_config", "{out}/a_dir"], "is a directory"),
    ("export: fit_config a YAML list", [*EXPORT, "--fit_config", "{out}/list.yaml"], "is not a YAML mapping"),
    ("export: adapter_only without LoRA", [*EXPORT, "--adapter_only", "true"], "export --adapter_only"),
    # warmstart
    ("warmstart: task unknown", [*WARM, "--task", "multiplication"], 'Parser key "task"'),
    ("warmstart: max_steps 0", [*WARM, "--max_steps", "0"], "warmstart --max_steps must be >= 1"),
    ("warmstart: max_steps -5", [*WARM, "--max_steps", "-5"], "warmstart --max_steps must be >= 1"),
    ("warmstart: batch_size 0", [*WARM, "--batch_size", "0"], "warmstart --batch_size must be >= 1"),
    ("warmstart: lr 0", [*WARM, "--lr", "0"], "warmstart --lr must be > 0"),
    ("warmstart: lr -1", [*WARM, "--lr", "-1"], "warmstart --lr must be > 0"),
    ("warmstart: eval_every 0", [*WARM, "--eval_every", "0"], "warmstart --eval_every must be >= 1"),
    ("warmstart: hidden_size 0", [*WARM, "--hidden_size", "0"], "warmstart --hidden_size must be >= 1"),
    ("warmstart: num_layers 0", [*WARM, "--num_layers", "0"], "warmstart --num_layers must be >= 1"),
    ("warmstart: num_heads not dividing hidden_size", [*WARM, "--num_heads", "3"], "warmstart --num_heads 3"),
    ("warmstart: odd dimensions per head", [*WARM, "--hidden_size", "12", "--num_heads", "4"], "even number"),
    ("warmstart: max_digits < min_digits", [*WARM, "--max_digits", "1"], "warmstart --min_digits and --max_digits"),
    ("warmstart: more held-out prompts than problems", [*WARM, "--min_digits", "1", "--max_digits", "1",
                                                        "--eval_prompts", "100"], "warmstart --eval_prompts 100"),
    ("warmstart: seed -1", [*WARM, "--seed", "-1"], "warmstart --seed must be"),
    ("warmstart: out_dir is a file", [*WARM, "--out_dir", "{out}/a_file"], "warmstart --out_dir: '"),
    ("warmstart: out_dir unwritable", [*WARM, "--out_dir", UNWRITABLE], "warmstart --out_dir: '"),
    # compare
    ("compare: base missing", [*CMP, "--base", "{out}/no_such.yaml"], "compare --base: '"),
    ("compare: base not YAML", [*CMP, "--base", "{out}/bad.yaml"], "compare: the run of --schemes"),
    ("compare: scheme file missing", [*CMP, "--schemes", "[{out}/no_such.yaml]"], "compare --schemes: '"),
    ("compare: scheme a directory", [*CMP, "--schemes", "[{out}/a_dir]"], "compare --schemes: '"),
    ("compare: scheme with a bad setting", [*CMP, "--schemes", "[{out}/bad_scheme.yaml]"],
     "model.scheme.init_args.top_ratio"),
    ("compare: two schemes with one file name", [*CMP, "--schemes", "[{root}/configs/schemes/grpo.yaml, {out}/grpo.yaml]"],
     "two files are named grpo"),
    ("compare: schemes empty", [*CMP, "--schemes", "[]"], "compare --schemes is empty"),
    ("compare: seeds empty", [*CMP, "--seeds", "[]"], "compare --seeds is empty"),
    ("compare: seed twice", [*CMP, "--seeds", "[0, 0]"], "compare --seeds lists seed 0 twice"),
    ("compare: seed -1", [*CMP, "--seeds", "[-1]"], "compare --seeds must be"),
    ("compare: out_dir is a file", [*CMP, "--out_dir", "{out}/a_file"], "compare --out_dir: '"),
    ("compare: out_dir unwritable", [*CMP, "--out_dir", UNWRITABLE], "compare --out_dir: '"),
    ("compare: jobs 0", [*CMP, "--jobs", "0"], "compare --jobs must be >= 1"),
    ("compare: jobs -1", [*CMP, "--jobs", "-1"], "compare --jobs must be >= 1"),
    ("compare: jobs not a number", [*CMP, "--jobs", "x"], 'Parser key "jobs"'),
    ("compare: max_steps 0", [*CMP, "--max_steps", "0"], "compare --max_steps must be >= 1"),
    ("compare: max_steps -5", [*CMP, "--max_steps", "-5"], "compare --max_steps must be >= 1"),
    ("compare: extra_args with an unknown key", [*CMP, "--extra_args", "[--model.no_such_key, '1']"],
     "--model.no_such_key"),
    ("compare: extra_args with a bad value", [*CMP, "--extra_args", "[--model.policy.name_or_path, {model}, "
                                                                 "--model.group_size, '1']"], "model.group_size"),
]


@pytest.fixture(scope="module")
def earlier_outputs(earlier_run, tmp_path_factory):
    """An earlier good output of evaluate, export and warmstart, a finished comparison, and bad files."""
    tiny_model_dir, folder, _ = earlier_run
    out = tmp_path_factory.mktemp("outputs")
    ckpt = next(folder.rglob("last.ckpt"))
    config = {"model": {"policy": {"name_or_path": tiny_model_dir},
                        "rewards": [{"class_path": "stare_lit.data.ArithmeticReward"}],
                        "sampling": {"max_new_tokens": 6}},
              "data": {"class_path": "stare_lit.data.ArithmeticDataModule",
                       "init_args": {"num_val_prompts": 4, "batch_size": 4}}}
    (out / "eval.yaml").write_text(yaml.safe_dump(config))
    main(["evaluate", "--run_config", str(out / "eval.yaml"), "--n", "2", "--out_dir", str(out / "ev")])
    main(["export", "--ckpt_path", str(ckpt), "--out", str(out / "ex")])
    main(["warmstart", *[a.replace("{out}/ws2", str(out / "ws")) for a in WARM[1:]]])
    # A finished comparison, as compare leaves it (a run with wall_time_s.txt is never repeated)
    run = out / "cmp" / "grpo" / "seed0"
    (run / "run").mkdir(parents=True)
    (run / "wall_time_s.txt").write_text("12.5")
    (run / "run" / "metrics.csv").write_text("step,train/entropy,train/reward,train/completion_length\n0,1.0,0.5,6\n")
    (out / "cmp" / "summary.md").write_text("1 seeds x 1 steps\n")
    assert {"results.jsonl", "model.safetensors", "warmstart.json"} <= {p.name for p in out.rglob("*")}

    config["model"]["group_size"] = 1
    (out / "eval_bad.yaml").write_text(yaml.safe_dump(config))
    (out / "a_file").write_text("not a directory\n")
    (out / "a_dir").mkdir()
    (out / "bad.yaml").write_text("model: [unclosed\n")
    (out / "list.yaml").write_text("- 1\n- 2\n")
    (out / "bad_scheme.yaml").write_text("model:\n  scheme:\n    class_path: stare_lit.schemes.STARE\n"
                                         "    init_args: {top_ratio: 1.5}\n")
    (out / "grpo.yaml").write_text("model:\n  group_size: 4\n")
    written = {p: p.read_bytes() for root in (out, folder) for p in root.rglob("*") if p.is_file()}
    fill = {"{out}": str(out), "{ckpt}": str(ckpt), "{model}": tiny_model_dir, "{root}": str(ROOT)}
    return fill, written


@pytest.mark.parametrize("args,expected", [c[1:] for c in COMMAND_CASES], ids=[c[0] for c in COMMAND_CASES])
def test_every_command_refuses_bad_input_before_any_work(earlier_outputs, args, expected, capsys, work_started):
    fill, written = earlier_outputs
    filled = []
    for arg in args:
        for key, value in fill.items():
            arg = arg.replace(key, value)
        filled.append(arg)
    refused_in_one_line(filled, expected, capsys)
    unchanged(written)
    assert work_started == [], f"refused only after: {work_started}"
    assert not any(Path(fill["{out}"], name).exists() for name in ("ev2", "ex2", "ws2")), "an output was started"


def test_every_command_has_bad_input_rows():
    commands = {args[0] for _, args, _ in COMMAND_CASES} | {"fit", "validate"}
    assert commands == {"fit", "validate", "evaluate", "export", "warmstart", "compare"}
    assert len(COMMAND_CASES) >= 60 and len({c[0] for c in COMMAND_CASES}) == len(COMMAND_CASES)


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes through permission bits; the /proc rows cover root")
def test_a_read_only_folder_is_refused_for_every_output(tmp_path, capsys):
    """As a user without write permission (the common case off containers), not only on procfs."""
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o555)
    try:
        for args, key in [(["warmstart", "--out_dir", str(locked / "ws")], "warmstart --out_dir"),
                          (["evaluate", "--out_dir", str(locked / "ev")], "evaluate --out_dir"),
                          (["compare", "--out_dir", str(locked / "cmp")], "compare --out_dir")]:
            refused_in_one_line(args, key, capsys)
    finally:
        locked.chmod(0o755)
