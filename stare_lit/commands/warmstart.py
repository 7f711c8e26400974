"""Supervised warm start of a tiny policy on a built-in task (the offline default).

RL needs a policy that is sometimes right: with accuracy 0 or 1 every group's rewards are equal
and GRPO has nothing to push on. We train a small Llama from scratch on solutions of the task and
stop as soon as its *sampled* accuracy (temperature 1) on held-out prompts reaches
``target_accuracy`` — a partly-right policy with entropy left to lose. Run::

    stare-lit warmstart                           # addition; writes artifacts/arith-warmstart
    stare-lit warmstart --task partial_sums       # running sums; writes artifacts/sums-warmstart
    stare-lit warmstart --task countdown          # Countdown; writes artifacts/countdown-warmstart
    stare-lit warmstart --help                    # every setting below

On ``partial_sums`` each training example's order is drawn uniformly from the 24 valid ones, so
the warm start spreads its probability over all the solutions (its forks start near log 4, log 3,
log 2 nats). On ``countdown`` each example is a uniformly drawn correct solution of its problem (there are
few), and at the end the share of held-out problems whose G = 8 samples are all wrong is measured: those
groups give GRPO no gradient, so RL starts with some to learn. The result loads like any Hugging Face checkpoint (``AutoModelForCausalLM.from_pretrained``).
"""

from __future__ import annotations

import inspect
import json
import random
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Literal

import torch
from transformers import LlamaConfig, LlamaForCausalLM

from stare_lit.commands.inputs import check_count, check_output_dir, check_positive, check_seed
from stare_lit.errors import check
from stare_lit.rewards.base import Reward
from stare_lit.rollout.base import Sampling
from stare_lit.rollout.hf import generate
from stare_lit.data.tasks import arithmetic, countdown, partial_sums
from stare_lit.ops.metrics import all_wrong_share


@dataclass
class SupervisedTask:
    """What the warm start needs of a task."""

    tokenizer: object
    examples: Callable[[int, random.Random], list[tuple[str, str]]]  # n training (prompt, completion) pairs
    eval_rows: list[dict]  # held-out rows ({"prompt": ..., other reward columns}) for sampled accuracy
    reward: Reward
    max_new_tokens: int


def arithmetic_task(min_digits: int, max_digits: int, eval_prompts: int, seed: int, data_seed: int) -> SupervisedTask:
    """Worked additions; the RL validation problems and the accuracy problems are never trained on."""
    rl_data = arithmetic.ArithmeticDataModule(min_digits, max_digits, seed=data_seed)
    rl_data.setup()
    held_out = {tuple(map(int, r["prompt"][:-1].split("+"))) for r in rl_data.val_rows}
    eval_pairs = arithmetic.sample_problems(eval_prompts, min_digits, max_digits, seed + 7, held_out)
    held_out |= set(eval_pairs)

    def examples(n: int, rng: random.Random) -> list[tuple[str, str]]:
        pairs = arithmetic.sample_problems(n, min_digits, max_digits, rng.randrange(2**31), held_out)
        return [(f"{a}+{b}=", arithmetic.worked_solution(a, b)) for a, b in pairs]

    return SupervisedTask(arithmetic.char_tokenizer(), examples, [arithmetic.as_row(a, b) for a, b in eval_pairs],
                          arithmetic.ArithmeticReward(), 4 * max_digits + 3 + (max_digits + 1) * 9)


def partial_sums_task(eval_prompts: int, seed: int, data_seed: int) -> SupervisedTask:
    """Running sums in a uniformly drawn order. Trains on the RL *training* sets only, less a few kept
    for the accuracy check, so neither the RL validation sets nor the check's sets are seen."""
    defaults = partial_sums.PartialSumsDataModule(seed=data_seed).hparams
    train_sets, _ = partial_sums.split_sets(defaults.count, defaults.low, defaults.high, defaults.num_val_prompts,
                                            data_seed)
    rng = random.Random(seed + 7)
    eval_sets, train_sets = train_sets[:48], train_sets[48:]
    eval_rows = [{"prompt": partial_sums.prompt_of(partial_sums.shuffled(rng.choice(eval_sets), rng))}
                 for _ in range(eval_prompts)]

    def examples(n: int, rng: random.Random) -> list[tuple[str, str]]:
        out = []
        for _ in range(n):
            numbers = rng.choice(train_sets)
            out.append((partial_sums.prompt_of(partial_sums.shuffled(numbers, rng)),
                        partial_sums.written_sum(partial_sums.shuffled(numbers, rng))))
        return out

    longest = len(partial_sums.written_sum(list(range(defaults.high - defaults.count + 1, defaults.high + 1))))
    return SupervisedTask(arithmetic.char_tokenizer(partial_sums.SYMBOLS), examples, eval_rows,
                          partial_sums.PartialSumsReward(), longest + 8)


def countdown_task(eval_prompts: int, seed: int, data_seed: int) -> SupervisedTask:
    """Uniformly drawn correct solutions of the RL task's training problems (its default settings); neither the
    RL validation problems nor the accuracy check's are trained on."""
    h = countdown.CountdownDataModule(seed=data_seed).hparams
    settings = (h.count, h.low, h.high, h.operators, h.max_target)
    _, held_out = countdown.split_problems(*settings, h.num_val_prompts, data_seed)
    rng = random.Random(seed + 7)
    eval_rows = []
    while len(eval_rows) < eval_prompts:
        numbers, target = countdown.random_problem(*settings, rng)
        if countdown.problem_key(numbers, target) not in held_out:
            held_out.add(countdown.problem_key(numbers, target))
            eval_rows.append({"prompt": countdown.prompt_of(numbers, target), "operators": h.operators})

    def examples(n: int, rng: random.Random) -> list[tuple[str, str]]:
        out = []
        while len(out) < n:
            numbers, target = countdown.random_problem(*settings, rng)
            if countdown.problem_key(numbers, target) not in held_out:
                out.append((countdown.prompt_of(numbers, target),
                            rng.choice(countdown.all_solutions(numbers, target, h.operators))))
        return out

    return SupervisedTask(arithmetic.char_tokenizer(countdown.SYMBOLS), examples, eval_rows,
                          countdown.CountdownReward(), countdown.max_completion_chars(h.count, h.high, h.max_target) + 8)


def supervised_batch(tokenizer, pairs: list[tuple[str, str]]) -> dict[str, torch.Tensor]:
    """Right-padded prompt+completion+EOS with labels only on the completion and EOS."""
    ids, labels = [], []
    for prompt_text, completion in pairs:
        prompt = tokenizer(prompt_text, add_special_tokens=False).input_ids
        answer = tokenizer(completion, add_special_tokens=False).input_ids + [tokenizer.eos_token_id]
        ids.append(prompt + answer)
        labels.append([-100] * len(prompt) + answer)
    width = max(map(len, ids))
    pad = lambda rows, v: torch.tensor([r + [v] * (width - len(r)) for r in rows])  # noqa: E731
    input_ids = pad(ids, tokenizer.pad_token_id)
    return {"input_ids": input_ids, "attention_mask": pad([[1] * len(r) for r in ids], 0), "labels": pad(labels, -100)}


def sampled_correct(model, task: SupervisedTask, temperature: float, samples: int = 1) -> torch.Tensor:
    """(prompts, samples) bool: whether each sample on the held-out prompts is correct."""
    sampling = Sampling(temperature=temperature or 1.0, max_new_tokens=task.max_new_tokens)
    prompts = [r["prompt"] for r in task.eval_rows]
    rollout = generate(model, task.tokenizer, prompts, samples, sampling, greedy=temperature == 0)
    columns = {k: [r[k] for r in task.eval_rows for _ in range(samples)] for k in task.eval_rows[0] if k != "prompt"}
    scores = task.reward([p for p in prompts for _ in range(samples)], rollout.completions, **columns)
    return (torch.tensor(scores) >= 1.0).view(len(prompts), samples)


def sampled_accuracy(model, task: SupervisedTask, temperature: float) -> float:
    return sampled_correct(model, task, temperature).float().mean().item()


DEFAULT_OUT = {"arithmetic": "artifacts/arith-warmstart", "partial_sums": "artifacts/sums-warmstart",
               "countdown": "artifacts/countdown-warmstart"}
GROUP_SIZE = 8  # the RL configs' G, at which the warm start's all-wrong groups are counted


def check_settings(*, task, out_dir, min_digits, max_digits, hidden_size, num_layers, num_heads, max_steps, batch_size,
                   lr, target_accuracy, eval_every, eval_prompts, seed, data_seed) -> None:
    """Every setting of ``warmstart``, checked before minutes of training: one line naming the flag and the fix."""
    check(task in DEFAULT_OUT, f"warmstart --task must be arithmetic, partial_sums or countdown, got {task!r}")
    check_count(max_steps, "warmstart --max_steps", meaning="training steps; 0 would save an untrained model")
    check_count(batch_size, "warmstart --batch_size", meaning="problems per step")
    check_positive(lr, "warmstart --lr", "the AdamW learning rate, e.g. 1e-3")
    check(0 < target_accuracy < 1, f"warmstart --target_accuracy must be in (0, 1), got {target_accuracy}")
    check_count(eval_every, "warmstart --eval_every", meaning="steps between accuracy checks")
    check_count(eval_prompts, "warmstart --eval_prompts", meaning="held-out prompts per accuracy check")
    check_count(hidden_size, "warmstart --hidden_size", meaning="the model width")
    check_count(num_layers, "warmstart --num_layers", meaning="decoder layers")
    check_count(num_heads, "warmstart --num_heads", meaning="attention heads")
    # Each head gets hidden_size / num_heads dimensions, and rotary embeddings turn them in pairs.
    check(hidden_size % num_heads == 0 and (hidden_size // num_heads) % 2 == 0,
          f"warmstart --num_heads {num_heads} must divide --hidden_size {hidden_size} into an even number of "
          "dimensions per head; pick e.g. --num_heads 4 with --hidden_size 128")
    if task == "arithmetic":
        check(1 <= min_digits <= max_digits <= 12,
              f"warmstart --min_digits and --max_digits need 1 <= min_digits <= max_digits <= 12, got {min_digits}, "
              f"{max_digits}")
        # The RL validation problems and the accuracy check's are never trained on: some pairs must be left.
        held_out = inspect.signature(arithmetic.ArithmeticDataModule).parameters["num_val_prompts"].default + eval_prompts
        pairs = sum(9 * 10 ** (d - 1) for d in range(min_digits, max_digits + 1)) ** 2
        check(held_out < pairs, f"warmstart --eval_prompts {eval_prompts}: with the RL task's validation problems, "
                                f"{held_out} held-out problems would use up all {pairs} pairs of {min_digits}.."
                                f"{max_digits}-digit operands; lower --eval_prompts or raise --max_digits")
    check_seed(seed, "warmstart --seed")
    check_seed(data_seed, "warmstart --data_seed")
    check_output_dir(out_dir, "warmstart --out_dir")


def warmstart(
    task: Literal["arithmetic", "partial_sums", "countdown"] = "arithmetic",
    out_dir: str | None = None,
    min_digits: int = 3,
    max_digits: int = 3,
    hidden_size: int = 128,
    num_layers: int = 3,
    num_heads: int = 4,
    max_steps: int = 3000,
    batch_size: int = 128,
    lr: float = 1e-3,
    target_accuracy: float = 0.3,
    eval_every: int = 10,
    eval_prompts: int = 200,
    seed: int = 0,
    data_seed: int = 1234,
) -> Path:
    """Train a small policy on a built-in task's solutions until its sampled accuracy reaches a target.

    Args:
        task: "arithmetic" (worked additions, stare_lit.data.tasks.arithmetic) or "partial_sums" (running
            sums in any order, stare_lit.data.tasks.partial_sums; trained on uniformly drawn orders) or
            "countdown" (stare_lit.data.tasks.countdown; trained on uniformly drawn correct solutions).
        out_dir: where the model and tokenizer are saved (Hugging Face format); default
            artifacts/arith-warmstart, artifacts/sums-warmstart or artifacts/countdown-warmstart.
        min_digits: fewest digits of an operand (arithmetic only).
        max_digits: most digits of an operand (arithmetic only).
        hidden_size: model width.
        num_layers: decoder layers.
        num_heads: attention heads.
        max_steps: stop here even if the target was not reached.
        batch_size: problems per step.
        lr: AdamW learning rate.
        target_accuracy: stop once sampled (temperature 1) accuracy on held-out prompts reaches it.
        eval_every: steps between accuracy checks.
        eval_prompts: held-out prompts per check (disjoint from the RL validation prompts).
        seed: seed of initialisation and training problems.
        data_seed: seed of the RL task's DataModule, whose validation prompts are excluded here.

    Returns:
        The output directory.
    """
    out_dir = out_dir if out_dir is not None else DEFAULT_OUT.get(task, "")
    check_settings(**locals())  # every argument, by name, before anything is built
    torch.manual_seed(seed)
    rng = random.Random(seed)
    if task == "arithmetic":
        job = arithmetic_task(min_digits, max_digits, eval_prompts, seed, data_seed)
    elif task == "partial_sums":
        job = partial_sums_task(eval_prompts, seed, data_seed)
    else:
        job = countdown_task(eval_prompts, seed, data_seed)
    tokenizer = job.tokenizer
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=hidden_size, intermediate_size=4 * hidden_size,
                         num_hidden_layers=num_layers, num_attention_heads=num_heads, num_key_value_heads=num_heads,
                         max_position_embeddings=2 * job.max_new_tokens, tie_word_embeddings=True,
                         pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id,
                         bos_token_id=tokenizer.eos_token_id)
    model = LlamaForCausalLM(config)
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)

    print(f"warm start ({task}): {sum(p.numel() for p in model.parameters()) / 1e6:.2f}M parameters, "
          f"target sampled accuracy {target_accuracy}")
    start, acc, step = time.time(), 0.0, 0
    for step in range(1, max_steps + 1):
        loss = model(**supervised_batch(tokenizer, job.examples(batch_size, rng))).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if step % eval_every == 0:
            acc = sampled_accuracy(model, job, 1.0)
            print(f"step {step:5d}  loss {loss.item():.3f}  sampled accuracy {acc:.3f}  ({time.time() - start:.0f}s)")
            if acc >= target_accuracy:
                break
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    greedy = sampled_accuracy(model, job, 0.0)
    summary = {"task": task, "steps": step, "sampled_accuracy": acc, "greedy_accuracy": greedy,
               "seconds": time.time() - start, "max_new_tokens": job.max_new_tokens}
    if task == "arithmetic":
        summary |= {"min_digits": min_digits, "max_digits": max_digits}
    if task == "countdown":  # how many problems RL starts with no gradient on
        summary["all_wrong_groups"] = all_wrong_share(sampled_correct(model, job, 1.0, GROUP_SIZE)).item()
        print(f"held-out problems whose {GROUP_SIZE} samples are all wrong: {summary['all_wrong_groups']:.3f}")
    (out / "warmstart.json").write_text(json.dumps(summary, indent=2))
    print(f"warm start saved to {out} after {step} steps: sampled accuracy {acc:.3f}, greedy {greedy:.3f}")
    return out
