"""Does ``torch.compile`` of FastRollout's one-token decode step pay on CPU? (issue 19, item 2)

    python benchmarks/compile_decode.py --model artifacts/arith-warmstart
    python benchmarks/compile_decode.py --model artifacts/sums-warmstart --task partial_sums

Nothing in stare_lit is changed: the script compiles ``stare_lit.rollout.fast._Decoder._step`` (the
engine's own code: embedding, layers over the static cache, norm, head; not HF's forward) with
``torch.compile(dynamic=True)`` in one arm and leaves it eager in the other, and times whole rollouts of
a training step's batch (16 prompts × G = 8, the configs' lengths), alternating E C C E ... in one
process after one warm-up each. The compiled arm's first rollout (its compile time) is reported
apart; the figure that decides is the end-to-end one of a 300-step run:
300 × rollout time (+ the compile time once) for each arm, with the rest of the step unchanged.
It also reports whether greedy tokens and a seeded sampled rollout are identical in both arms
(a fused kernel may round differently, which would change the run's results).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import fmt, header, load, median, spread, table, write_result  # noqa: E402


def batch(task: str, n: int) -> list[str]:
    from benchmarks.vs_trl import prompt_rows

    return [r["prompt"] for r in prompt_rows(n, 0, task=task)]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True, help="a saved policy directory (a warm start)")
    p.add_argument("--task", choices=["arithmetic", "partial_sums"], default="arithmetic")
    p.add_argument("--prompts", type=int, default=16)
    p.add_argument("--group-size", type=int, default=8)
    p.add_argument("--max-new-tokens", type=int, default=None, help="40 (arithmetic), 36 (partial_sums)")
    p.add_argument("--repeats", type=int, default=6, help="timed rollouts per arm")
    p.add_argument("--steps", type=int, default=300, help="run length for the end-to-end figure")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--name", default=None)
    a = p.parse_args()
    a.max_new_tokens = a.max_new_tokens or (36 if a.task == "partial_sums" else 40)
    torch.set_num_threads(a.threads)

    from transformers import AutoModelForCausalLM, AutoTokenizer

    from stare_lit.rollout import fast
    from stare_lit.rollout.base import Sampling

    model = AutoModelForCausalLM.from_pretrained(a.model, dtype=torch.float32).eval()
    tok = AutoTokenizer.from_pretrained(a.model)
    tok.padding_side = "left"
    prompts = batch(a.task, a.prompts)
    sampling = Sampling(temperature=1.0, max_new_tokens=a.max_new_tokens)
    eager_step = fast._Decoder._step
    compiled_step = torch.compile(eager_step, dynamic=True)
    engine = fast.FastRollout()

    def rollout(arm: str, seed: int, greedy: bool = False):
        fast._Decoder._step = compiled_step if arm == "compiled" else eager_step
        torch.manual_seed(seed)
        t0 = time.perf_counter()
        out = engine(model, tok, prompts, a.group_size, sampling, greedy=greedy)
        return time.perf_counter() - t0, out

    load0 = load()
    first = {arm: rollout(arm, 0)[0] for arm in ("eager", "compiled")}  # warm-up; the compiled one compiles
    times = {"eager": [], "compiled": []}
    tokens = {"eager": [], "compiled": []}
    for r in range(a.repeats):
        for arm in (("eager", "compiled") if r % 2 == 0 else ("compiled", "eager")):
            s, out = rollout(arm, 100 + r)
            times[arm].append(s)
            tokens[arm].append(int(out.completion_mask.sum()))
    same_greedy = torch.equal(rollout("eager", 0, True)[1].completion_ids, rollout("compiled", 0, True)[1].completion_ids)
    same_sampled = torch.equal(rollout("eager", 7)[1].completion_ids, rollout("compiled", 7)[1].completion_ids)
    fast._Decoder._step = eager_step
    extra_compile = first["compiled"] - median(times["compiled"])
    run = {arm: a.steps * median(times[arm]) for arm in times}
    run["compiled"] += extra_compile
    ratios = [e / c for e, c in zip(times["eager"], times["compiled"])]
    rows = [[arm, spread(times[arm]), fmt(first[arm]), spread(tokens[arm]), fmt(run[arm])] for arm in times]
    md = [header("torch.compile of FastRollout's decode step, CPU"),
          f"- model: {a.model}; task {a.task}; {a.prompts} prompts × G={a.group_size}, ≤ {a.max_new_tokens} new "
          f"tokens, temperature 1; {a.repeats} rollouts per arm alternating E C C E (+1 warm-up each); torch threads "
          f"{a.threads}; load average before/after: {load0} / {load()}\n",
          table(["decode step", "s per rollout, median (min–max)", "first rollout (s; compiled: + compile)",
                 "completion tokens", f"{a.steps} rollouts + compile (s)"], rows), "",
          f"Rollout speed-up, eager / compiled (medians): **{median(times['eager']) / median(times['compiled']):.2f}×** "
          f"(pairs: {', '.join(f'{x:.2f}' for x in ratios)}); compile time ≈ {extra_compile:.1f} s; over {a.steps} "
          f"rollouts the compiled arm {'saves' if run['compiled'] < run['eager'] else 'loses'} "
          f"{abs(run['eager'] - run['compiled']):.0f} s. Greedy tokens identical: {same_greedy}; seeded sampled "
          f"tokens identical: {same_sampled}.", ""]
    text = "\n".join(md)
    print(text)
    print("wrote", write_result(a.name or f"compile_decode_{a.task}", text))


if __name__ == "__main__":
    main()
