"""Supervised warm start of a tiny policy on the built-in addition task (the offline default).

RL needs a policy that is sometimes right: with accuracy 0 or 1 every group's rewards are equal
and GRPO has nothing to push on. We train a small Llama from scratch on worked solutions and stop
as soon as its *sampled* accuracy (temperature 1) on held-out prompts reaches ``target_accuracy``
— a partly-right policy with entropy left to lose. Run::

    stare-lit warmstart                      # writes artifacts/arith-warmstart (model + tokenizer)
    stare-lit warmstart --help               # every setting below

The result loads like any Hugging Face checkpoint (``AutoModelForCausalLM.from_pretrained``).
"""

from __future__ import annotations

import json
import random
import time
from pathlib import Path

import torch
from transformers import LlamaConfig, LlamaForCausalLM

from stare_lit.errors import check
from stare_lit.rollout import Sampling, generate
from stare_lit.tasks.arithmetic import (ArithmeticDataModule, ArithmeticReward, as_row, char_tokenizer,
                                        sample_problems, worked_solution)


def supervised_batch(tokenizer, pairs: list[tuple[int, int]]) -> dict[str, torch.Tensor]:
    """Right-padded prompt+solution+EOS with labels only on the solution and EOS."""
    ids, labels = [], []
    for a, b in pairs:
        prompt = tokenizer(f"{a}+{b}=", add_special_tokens=False).input_ids
        answer = tokenizer(worked_solution(a, b), add_special_tokens=False).input_ids + [tokenizer.eos_token_id]
        ids.append(prompt + answer)
        labels.append([-100] * len(prompt) + answer)
    width = max(map(len, ids))
    pad = lambda rows, v: torch.tensor([r + [v] * (width - len(r)) for r in rows])  # noqa: E731
    input_ids = pad(ids, tokenizer.pad_token_id)
    return {"input_ids": input_ids, "attention_mask": pad([[1] * len(r) for r in ids], 0), "labels": pad(labels, -100)}


def sampled_accuracy(model, tokenizer, rows: list[dict], temperature: float, max_new_tokens: int) -> float:
    sampling = Sampling(temperature=temperature or 1.0, max_new_tokens=max_new_tokens)
    rollout = generate(model, tokenizer, [r["prompt"] for r in rows], 1, sampling, greedy=temperature == 0)
    scores = ArithmeticReward()([r["prompt"] for r in rows], rollout.completions, answer=[r["answer"] for r in rows])
    return sum(scores) / len(scores)


def warmstart(
    out_dir: str = "artifacts/arith-warmstart",
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
    """Train a small policy on worked additions until its sampled accuracy reaches a target.

    Args:
        out_dir: where the model and tokenizer are saved (Hugging Face format).
        min_digits: fewest digits of an operand.
        max_digits: most digits of an operand.
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
    check(0 < target_accuracy < 1, f"warmstart --target_accuracy must be in (0, 1), got {target_accuracy}")
    torch.manual_seed(seed)
    rng = random.Random(seed)
    tokenizer = char_tokenizer()
    max_len = 4 * max_digits + 3 + (max_digits + 1) * 9  # prompt + worked steps + answer, generous
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=hidden_size, intermediate_size=4 * hidden_size,
                         num_hidden_layers=num_layers, num_attention_heads=num_heads, num_key_value_heads=num_heads,
                         max_position_embeddings=2 * max_len, tie_word_embeddings=True,
                         pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id,
                         bos_token_id=tokenizer.eos_token_id)
    model = LlamaForCausalLM(config)
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)

    rl_data = ArithmeticDataModule(min_digits, max_digits, seed=data_seed)
    rl_data.setup()
    held_out = {tuple(map(int, r["prompt"][:-1].split("+"))) for r in rl_data.val_rows}
    eval_rows = [as_row(a, b) for a, b in sample_problems(eval_prompts, min_digits, max_digits, seed + 7, held_out)]
    held_out |= {tuple(map(int, r["prompt"][:-1].split("+"))) for r in eval_rows}

    print(f"warm start: {sum(p.numel() for p in model.parameters()) / 1e6:.2f}M parameters, "
          f"target sampled accuracy {target_accuracy}")
    start, acc, step = time.time(), 0.0, 0
    for step in range(1, max_steps + 1):
        pairs = sample_problems(batch_size, min_digits, max_digits, rng.randrange(2**31), held_out)
        loss = model(**supervised_batch(tokenizer, pairs)).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if step % eval_every == 0:
            acc = sampled_accuracy(model, tokenizer, eval_rows, 1.0, max_len)
            print(f"step {step:5d}  loss {loss.item():.3f}  sampled accuracy {acc:.3f}  ({time.time() - start:.0f}s)")
            if acc >= target_accuracy:
                break
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    greedy = sampled_accuracy(model, tokenizer, eval_rows, 0.0, max_len)
    summary = {"steps": step, "sampled_accuracy": acc, "greedy_accuracy": greedy, "seconds": time.time() - start,
               "min_digits": min_digits, "max_digits": max_digits, "max_new_tokens": max_len}
    (out / "warmstart.json").write_text(json.dumps(summary, indent=2))
    print(f"warm start saved to {out} after {step} steps: sampled accuracy {acc:.3f}, greedy {greedy:.3f}")
    return out
