"""Rollout engines: stare_lit.rollout.FastRollout vs Hugging Face generate (stare_lit.rollout.HFGenerate).

    python benchmarks/rollout.py                  # tiny (h128, 3 layers, vocab 16) and 12M (h320, 6 layers, vocab 8000)
    python benchmarks/rollout.py --models tiny --repeats 3

Both engines sample the same batch (16 three-digit additions × G = 8 = 128 rows, ≤ 64 new tokens,
temperature 1) from the same random-weight Llama built from a config, in one process, alternating
A B B A ... round by round; every round also times fp32 matmuls (1024³) on the same threads, so
each engine's rate can be read as a fraction of what this machine does in matmuls right then.
tokens/s counts completion tokens (up to and including EOS), the tokens a user gets; "useful
GFLOP/s" is 2 × (matmul parameters) + attention per completion token × tokens/s.
"""

from __future__ import annotations

import argparse
import os
import random
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import char_tokenizer_with_vocab, fmt, header, load, median, spread, table, tiny_llama_config, write_result  # noqa: E402,E501

MODELS = {  # name: (config kwargs, vocab)
    "tiny": dict(vocab_size=16, hidden_size=128, num_layers=3, num_heads=4),
    "12M": dict(vocab_size=8000, hidden_size=320, num_layers=6, num_heads=4),
}


def matmul_flops(n: int = 1024, reps: int = 5) -> float:
    """fp32 FLOP/s of an n×n by n×n matmul on the current threads (median of ``reps``)."""
    a, b = torch.randn(n, n), torch.randn(n, n)
    a @ b
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        a @ b
        times.append(time.perf_counter() - t0)
    return 2 * n**3 / median(times)


def flops_per_token(model, context: float) -> float:
    """Matmul FLOPs of one decoded token: 2 × weights of every Linear (LM head included) + attention
    scores and values over ``context`` cached positions."""
    linear = sum(m.weight.numel() for m in model.modules() if isinstance(m, torch.nn.Linear))
    cfg = model.config
    attn = 4 * cfg.num_hidden_layers * context * cfg.num_attention_heads * (cfg.hidden_size // cfg.num_attention_heads)
    return 2 * linear + attn


def prompts(n: int, seed: int) -> list[str]:
    rng = random.Random(seed)
    return [f"{rng.randint(100, 999)}+{rng.randint(100, 999)}=" for _ in range(n)]


def bench_model(name: str, a) -> dict:
    from transformers import AutoModelForCausalLM

    from stare_lit.rollout.fast import FastRollout
    from stare_lit.rollout.hf import HFGenerate
    from stare_lit.rollout.base import Sampling

    kw = MODELS[name]
    torch.manual_seed(0)
    config = tiny_llama_config(max_positions=256, **kw)
    model = AutoModelForCausalLM.from_config(config).eval()
    model.generation_config.pad_token_id = 0
    tokenizer = char_tokenizer_with_vocab(kw["vocab_size"]) if kw["vocab_size"] > 16 else None
    if tokenizer is None:
        from stare_lit.data.tasks.arithmetic import char_tokenizer

        tokenizer = char_tokenizer()
        tokenizer.padding_side = "left"
    engines = {"HF generate": HFGenerate(), "FastRollout": FastRollout()}
    sampling = Sampling(max_new_tokens=a.max_new_tokens)
    batch = prompts(a.prompts, seed=0)
    params = sum(p.numel() for p in model.parameters())
    fpt = flops_per_token(model, context=len(batch[0]) + a.max_new_tokens / 2)
    runs = {k: [] for k in engines}
    matmul = []
    for engine in engines.values():  # warm-up (allocations, first-call costs)
        engine(model, tokenizer, batch, a.group_size, sampling)
    order = list(engines)
    for r in range(a.repeats):
        matmul.append(matmul_flops())
        for key in (order if r % 2 == 0 else order[::-1]):  # A B, B A, ...
            torch.manual_seed(1000 + r)
            t0 = time.perf_counter()
            out = engines[key](model, tokenizer, batch, a.group_size, sampling)
            dt = time.perf_counter() - t0
            tokens = int(out.completion_mask.sum())
            runs[key].append({"s": dt, "tokens": tokens, "tok_s": tokens / dt})
        print(f"{name} round {r}: " + ", ".join(f"{k} {runs[k][-1]['tok_s']:.0f} tok/s" for k in order)
              + f", matmul {matmul[-1] / 1e9:.1f} GFLOP/s, load {load()}", flush=True)
    return {"name": name, "params": params, "fpt": fpt, "runs": runs, "matmul": matmul, "kw": kw}


def markdown(results: list[dict], a) -> str:
    out = [header("Rollout engines: FastRollout vs HF generate"),
           f"- batch: {a.prompts} prompts × G={a.group_size} = {a.prompts * a.group_size} rows, ≤ {a.max_new_tokens} new "
           f"tokens, temperature 1, random-weight Llama from a config; {a.repeats} rounds alternating A B / B A "
           f"(+1 warm-up each); torch threads: {torch.get_num_threads()}\n"]
    rows = []
    for res in results:
        mm = median(res["matmul"])
        hf, fast = res["runs"]["HF generate"], res["runs"]["FastRollout"]
        for key, runs in res["runs"].items():
            tok_s = [r["tok_s"] for r in runs]
            util = [t * res["fpt"] / m for t, m in zip(tok_s, res["matmul"])]
            rows.append([f"{res['name']} ({res['params'] / 1e6:.2f}M, vocab {res['kw']['vocab_size']})", key,
                         spread(tok_s), spread([r["s"] for r in runs]), spread([r["tokens"] for r in runs]),
                         spread([t * res["fpt"] / 1e9 for t in tok_s]), spread([100 * u for u in util])])
        ratio = median([r["tok_s"] for r in fast]) / median([r["tok_s"] for r in hf])
        per_round = ", ".join(f"{f['tok_s'] / h['tok_s']:.2f}" for f, h in zip(fast, hf))
        rows.append(["", "**ratio Fast / HF (medians)**", f"**{ratio:.2f}×**", f"rounds: {per_round}", "", "",
                     f"matmul: {fmt(mm / 1e9)} GFLOP/s"])
    out.append(table(["model", "engine", "tokens/s", "s per rollout", "completion tokens", "useful GFLOP/s",
                      "% of fp32 matmul FLOP/s"], rows))
    out.append(f"\nLoad average at the end: {load()}.\n")
    return "\n".join(out)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    p.add_argument("--prompts", type=int, default=16)
    p.add_argument("--group-size", type=int, default=8)
    p.add_argument("--max-new-tokens", type=int, default=64)
    p.add_argument("--repeats", type=int, default=6)
    p.add_argument("--threads", type=int, default=1, help="torch threads (0: torch's default)")
    a = p.parse_args()
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    if a.threads:
        torch.set_num_threads(a.threads)
    results = [bench_model(name, a) for name in a.models]
    text = markdown(results, a)
    print(text)
    path = write_result("rollout" if a.models == list(MODELS) else "rollout_" + "_".join(a.models), text)
    print(f"written to {path}")


if __name__ == "__main__":
    main()
