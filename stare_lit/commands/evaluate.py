"""``stare-lit evaluate``: n samples per prompt from a policy, scored by a run's rewards, one table.

    stare-lit evaluate --model artifacts/arith-warmstart --n 16                      # the warm start
    stare-lit evaluate --ckpt_path runs/arithmetic_stare/version_0/checkpoints/last.ckpt --n 16 # a trained policy
    stare-lit evaluate --run_config my_run.yaml --model Qwen/Qwen2.5-Math-1.5B --n 8  # another task and model
    stare-lit evaluate --help                                                         # every setting

The run's config (``--run_config``, a ``stare-lit fit`` YAML) says how prompts are formatted, sampled
and scored: ``model.policy``, ``model.rewards``, ``model.reward_weights``, ``model.scoring``,
``model.sampling``, ``model.rollout``, ``model.prompt_format``, ``model.validation.accuracy_reward`` and
``data`` (any DataModule by class_path). Sampling and scoring go through the training code itself — a
``stare_lit.experience.Experience``, which GRPOModule samples and scores with — so an evaluation scores
exactly what training would, and "correct" is validation's (``stare_lit.experience.judge``). Sampling
draws from the evaluation stream of ``stare_lit.rollout.streams``: batch b samples from
``stream_seed(seed, EVALUATION, b)``, so two runs with the same seed, data and batch size write
identical files.

Writes, under ``out_dir``: ``results.jsonl`` (one line per prompt: prompt, completions, scores per
reward and total, correct, lengths, truncated, the data's other columns), ``summary.md`` and
``summary.csv`` (mean@n, unbiased pass@k for k = 1, 2, 4, …, n, the share of prompts never solved in n,
distinct correct completions, mean length, truncation). pass@k to k = 64 of a run against its warm start:
``--n 64`` with ``--ckpt_path`` and with ``--model`` (docs/tasks.md, Countdown).
"""

from __future__ import annotations

import csv
import json
import math
import time
from pathlib import Path
from typing import Literal

import lightning as L
import torch
from jsonargparse import ArgumentParser
from lightning.pytorch.utilities.exceptions import MisconfigurationException

from stare_lit.commands.export import read_policy_state
from stare_lit.commands.inputs import (check_count, check_device, check_file, check_output_dir, check_seed,
                                      read_yaml_mapping)
from stare_lit.errors import check
from stare_lit.experience import Experience, judge
from stare_lit.module import GRPOModule
from stare_lit.ops.metrics import pass_at_k_levels, sample_accuracy
from stare_lit.rewards.runner import RewardRunner
from stare_lit.train.checkpoint import check_checkpoint_file, check_same_model
from stare_lit.train.checks import check_module_settings
from stare_lit.train.policy import Policy, check_model_source

Split = Literal["validation", "test", "train"]


def evaluate(
    run_config: str = "configs/arithmetic_stare.yaml",
    model: str | None = None,
    ckpt_path: str | None = None,
    data: str | None = None,
    split: Split = "validation",
    n: int = 8,
    seed: int = 0,
    temperature: float | None = None,
    top_p: float | None = None,
    top_k: int | None = None,
    max_new_tokens: int | None = None,
    max_prompts: int | None = None,
    device: str | None = None,
    out_dir: str = "runs/evaluate",
) -> Path:
    """Sample n completions per prompt, score them with the run's rewards, write results and a summary.

    Args:
        run_config: the run's ``stare-lit fit`` YAML (for a checkpoint, the ``config.yaml`` its run saved):
            its model.policy, rewards, scoring, sampling, rollout, prompt format, accuracy reward and data
            are used.
        model: a Hugging Face model name or directory (e.g. artifacts/arith-warmstart, or what
            ``stare-lit export`` writes) instead of the config's model.policy.name_or_path.
        ckpt_path: a Lightning checkpoint (a file, or a sharded checkpoint's directory) of a run of
            ``run_config``; its weights replace the policy's.
        data: a YAML file whose ``data:`` (a DataModule by class_path and init_args) replaces the config's.
        split: which of the DataModule's loaders gives the prompts: validation (val_dataloader, the
            default), test (test_dataloader) or train (one epoch of train_dataloader, in its order).
        n: samples per prompt; pass@k is reported for k = 1, 2, 4, ..., n.
        seed: seed of the sampling (the evaluation stream of stare_lit.rollout.streams) and of a policy built from a config.
        temperature: sampling temperature; default the config's model.sampling. 0 is greedy (needs n 1).
        top_p: nucleus mass; default the config's.
        top_k: top-k cut (0 = off); default the config's.
        max_new_tokens: completion length cap; default the config's.
        max_prompts: evaluate at most this many prompts (all of the split by default).
        device: e.g. cpu, cuda, cuda:1; default cuda when available, else cpu.
        out_dir: where results.jsonl, summary.md and summary.csv are written.

    Returns:
        The output directory.
    """
    check_settings(**locals())  # every argument, by name, before a model is loaded
    start = time.perf_counter()
    # temperature 0 is greedy decoding, which ignores the temperature (Sampling requires one > 0)
    sampling = {"temperature": temperature or None, "top_p": top_p, "top_k": top_k, "max_new_tokens": max_new_tokens}
    sampling = {k: v for k, v in sampling.items() if v is not None}
    policy, experience, accuracy_reward, datamodule = build_from_config(run_config, model, data, sampling, seed)
    try:
        loader = prompt_loader(datamodule, split)  # a split without a loader is refused before the model loads
        torch.manual_seed(seed)  # a policy built from a config gets the same random weights every time
        policy_model = policy.build_model()
        if ckpt_path is not None:
            load_policy_weights(policy_model, ckpt_path)
        policy_model.to(torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu")))
        rows = [row for batch in prompt_batches(loader, max_prompts)
                for row in evaluate_batch(experience, policy_model, batch, n, greedy=temperature == 0,
                                          accuracy_reward=accuracy_reward)]
    finally:
        experience.close()
    check(len(rows) > 0, f"evaluate: the {split} split of the data gave no prompts")
    summary = summarise(rows, n)
    settings = {"run_config": run_config, "model": model or policy.name_or_path, "ckpt_path": ckpt_path,
                "split": split, "seed": seed, **{k: v for k, v in vars(experience.sampling).items() if k != "seed"}}
    out = write_results(Path(out_dir), rows, summary, settings)
    print(f"evaluated {len(rows)} prompts x {n} samples in {time.perf_counter() - start:.0f}s: "
          + ", ".join(f"{k} {v:.4f}" for k, v in summary.items() if k.startswith(("mean@", "pass@", "never_solved"))))
    print(f"  results: {out / 'results.jsonl'}\n  summary: {out / 'summary.md'}, {out / 'summary.csv'}")
    return out


def check_settings(*, run_config, model, ckpt_path, data, split, n, seed, temperature, top_p, top_k, max_new_tokens,
                   max_prompts, device, out_dir) -> None:
    """The arguments that need no model: one line naming the flag and the fix (the YAML files are read and
    checked by ``build_from_config``)."""
    check_count(n, "evaluate --n", meaning="samples per prompt")
    check(temperature is None or (math.isfinite(temperature) and temperature >= 0),
          f"evaluate --temperature must be >= 0 (0 = greedy), got {temperature}")
    check(temperature != 0 or n == 1, "evaluate --temperature 0 (greedy) gives n identical samples; use --n 1")
    check(top_p is None or 0 < top_p <= 1, f"evaluate --top_p must be in (0, 1], got {top_p}")
    check(top_k is None or top_k >= 0, f"evaluate --top_k must be >= 0 (0 = off), got {top_k}")
    if max_new_tokens is not None:
        check_count(max_new_tokens, "evaluate --max_new_tokens", meaning="the completion length cap in tokens")
    if max_prompts is not None:
        check_count(max_prompts, "evaluate --max_prompts", meaning="prompts to evaluate; leave it unset for all")
    check_seed(seed, "evaluate --seed")
    check_device(device, "evaluate --device")
    check_file(run_config, "evaluate --run_config", "stare-lit fit YAML config")
    if data is not None:
        check_file(data, "evaluate --data", "YAML file with a data: section")
    if model is not None:
        check_model_source(model, "evaluate --model")
    if ckpt_path is not None:
        check_checkpoint_file(ckpt_path)
    check_output_dir(out_dir, "evaluate --out_dir")


# ---------------------------------------------------------------- building from the run's config
def build_from_config(run_config: str, model: str | None, data: str | None, sampling: dict,
                      seed: int) -> tuple[Policy, Experience, int, L.LightningDataModule]:
    """Parsed as ``stare-lit fit`` parses the run's config, and built without a model: the run's policy
    settings, its experience (tokenizer, rewards, sampling, engine, prompt format; the evaluation stream
    seeded with ``seed``), the index of its accuracy reward and its DataModule."""
    settings = _read_yaml(run_config, "run_config")
    check("model" in settings and "data" in settings,
          f"evaluate --run_config: {run_config} needs model: and data: sections (a stare-lit fit config)")
    if data is not None:
        extra = _read_yaml(data, "data")
        check("data" in extra, f"evaluate --data: {data} needs a data: section (class_path, init_args)")
        settings["data"] = extra["data"]
    model_cfg = settings["model"]
    if model is not None:  # a model name or directory brings its own tokenizer; dtype etc. stay the config's
        policy = {k: v for k, v in (model_cfg.get("policy") or {}).items() if k not in ("config", "tokenizer")}
        model_cfg["policy"] = {**policy, "name_or_path": model}
    model_cfg["sampling"] = {**(model_cfg.get("sampling") or {}), **sampling}
    parser = ArgumentParser(exit_on_error=False)
    # GRPOModule's settings, each part built (rewards, sampling, ...) but not the module: no model is built.
    parser.add_class_arguments(GRPOModule, "model", sub_configs=True, fail_untyped=False, instantiate=False)
    parser.add_subclass_arguments(L.LightningDataModule, "data", fail_untyped=False, required=True)
    parsed = parser.parse_object({"model": model_cfg, "data": settings["data"]})
    init = parser.instantiate_classes(parsed)
    run = init.model
    rewards = RewardRunner(run.rewards, run.reward_weights, run.scoring)  # checks both
    check_module_settings(rewards=len(run.rewards), group_size=run.group_size,
                          accuracy_reward=run.validation.accuracy_reward, peak_flops=run.peak_flops)
    experience = Experience(run.policy.load_tokenizer(), rewards, run.sampling, run.rollout, run.prompt_format,
                            seed=seed)
    return run.policy, experience, run.validation.accuracy_reward, init.data


def _read_yaml(path: str, setting: str) -> dict:
    return read_yaml_mapping(path, f"evaluate --{setting}", "stare-lit YAML config")


# ---------------------------------------------------------------- a checkpoint's weights
def load_policy_weights(model, ckpt_path: str) -> None:
    """Load the policy weights of a Lightning checkpoint (a file, or a sharded directory) into ``model``.

    Read as ``stare-lit export`` reads them (``stare_lit.commands.export.read_policy_state``: weights_only, no code
    runs), after ``check_same_model`` has given a checkpoint of another model one clear line.
    """
    check_checkpoint_file(ckpt_path)
    mine = model.state_dict()
    state = read_policy_state(Path(ckpt_path), mine)
    check(len(state) > 0, f"evaluate --ckpt_path: {ckpt_path} holds no policy weights (no model.* in its state_dict)")
    check_same_model({f"model.{k}": v for k, v in mine.items()}, {f"model.{k}": v for k, v in state.items()})
    model.load_state_dict(state)


# ---------------------------------------------------------------- sampling and scoring
def prompt_loader(datamodule: L.LightningDataModule, split: Split):
    """The DataModule's loader of ``split``, set up; one line if it has none."""
    stage = {"validation": "validate", "test": "test", "train": "fit"}[split]
    datamodule.setup(stage)
    loader_name = {"validation": "val_dataloader", "test": "test_dataloader", "train": "train_dataloader"}[split]
    try:
        loader = getattr(datamodule, loader_name)()
    except MisconfigurationException:  # what LightningDataModule's default hooks raise: not implemented
        loader = None
    check(loader is not None, f"evaluate --split {split}: {type(datamodule).__name__} has no {loader_name}")
    return loader


def prompt_batches(loader, max_prompts: int | None):
    """The loader's batches (dicts of columns), each with its index under ``_index``, cut at max_prompts."""
    given = 0
    for index, batch in enumerate(loader):
        if max_prompts is not None:
            batch = {k: v[:max_prompts - given] for k, v in batch.items()}
        given += len(batch["prompt"])
        yield {**batch, "_index": index}
        if max_prompts is not None and given >= max_prompts:
            return


def evaluate_batch(experience: Experience, model, batch: dict, n: int, greedy: bool,
                   accuracy_reward: int) -> list[dict]:
    """One batch: n samples per prompt from the batch's evaluation stream, scored; one row per prompt."""
    columns = {k: v for k, v in batch.items() if k != "_index"}
    seed = experience.evaluation_seed(batch["_index"])
    rollout = experience.sample(model, columns["prompt"], n, seed, greedy=greedy)
    scored = experience.score(columns, rollout, n)
    correct = judge(scored, accuracy_reward)[0].tolist()  # (P*n,) as validation: the reward's value >= 1
    lengths = rollout.completion_mask.sum(-1).tolist()  # tokens, EOS included
    scores = {name: values.tolist() for name, values in scored.per_reward.items()} | {"total": scored.total.tolist()}
    rows = []
    for p, prompt in enumerate(columns["prompt"]):
        part = slice(p * n, (p + 1) * n)
        rows.append({
            "prompt": prompt,
            "completions": rollout.completions[part],
            "scores": {name: [_number(v) for v in values[part]] for name, values in scores.items()},
            "correct": correct[part],
            "lengths": lengths[part],
            "truncated": rollout.truncated[part].tolist(),
            "columns": {k: v[p] for k, v in columns.items() if k != "prompt"},
        })
    return rows


def _number(value: float) -> float | None:
    return None if math.isnan(value) else value  # JSON has no NaN: an unscorable completion is null


# ---------------------------------------------------------------- the summary
def summarise(rows: list[dict], n: int) -> dict[str, float]:
    """mean@n, pass@k (unbiased), distinct correct, mean length, truncated and unscored fractions."""
    correct = [row["correct"] for row in rows]
    solutions = [[text.strip() for text in row["completions"]] for row in rows]
    samples = [(length, cut) for row in rows for length, cut in zip(row["lengths"], row["truncated"])]
    totals = [v for row in rows for v in row["scores"]["total"]]
    scored = [v for v in totals if v is not None]
    return {"prompts": float(len(rows)), "n": float(n), **sample_accuracy(correct, solutions, pass_at_k_levels(n)),
            "mean_reward": sum(scored) / len(scored) if scored else math.nan,
            "mean_length": sum(length for length, _ in samples) / len(samples),
            "frac_truncated": sum(cut for _, cut in samples) / len(samples),
            "frac_unscored": 1 - len(scored) / len(totals)}


def write_results(out: Path, rows: list[dict], summary: dict[str, float], settings: dict) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    with open(out / "results.jsonl", "w") as f:
        for row in rows:
            f.write(json.dumps(row, default=str) + "\n")
    with open(out / "summary.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["metric", "value"])
        writer.writerows((k, _cell(v)) for k, v in summary.items())
    lines = ["# stare-lit evaluate", "", *(f"- {k}: {v}" for k, v in settings.items()), "",
             "| metric | value |", "|---|---|", *(f"| {k} | {_cell(v)} |" for k, v in summary.items()), "",
             "mean@n: mean fraction correct; pass@k: unbiased estimator (Chen et al. 2021) from the n samples; "
             "never_solved: prompts with no correct sample in n (1 − pass@n); "
             "distinct_correct: distinct correct completions (whitespace-stripped) per prompt; mean_length: "
             "completion tokens, EOS included; frac_truncated: cut at max_new_tokens; frac_unscored: no reward "
             "applied (counted as not correct).", ""]
    (out / "summary.md").write_text("\n".join(lines))
    return out


def _cell(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else f"{value:.6f}"
