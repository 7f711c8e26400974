"""Before any GPU speed figure: is FastRollout's CUDA-graph decode correct? (issue 19, item 4)

    python benchmarks/gpu_correctness.py        # on a CUDA machine; exits 1 if a check fails
    python benchmarks/gpu_correctness.py --cpu  # a dry run of the same checks on CPU (eager decode)

1. Greedy tokens: FastRollout with CUDA graphs (two rollouts: the second replays the graphs captured
   in the first; compaction at 0.75 and at every ended row) against Hugging Face ``generate``
   (stare_lit.rollout.HFGenerate) on the same GPU, Llama (tied head) and Qwen2 (GQA, q/k/v biases),
   fp32: identical ids, masks and texts.
2. Sampled frequencies: 4,000 first tokens of one prompt at temperature 0.7, top-k 5, top-p 0.9, from
   FastRollout with graphs, against probabilities computed by hand from the model's logits: every
   count within 4.5 binomial standard deviations, nothing outside the kept set.

The FSDP2 fit that resumes exactly is benchmarks/gpu_check.sh (gpu_speed.sh runs both first).
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

PROMPTS = ["12+34=", "1+2=", "999+1=", "7="]  # different lengths: left padding


def make(kind: str, device: str):
    from transformers import AutoModelForCausalLM, LlamaConfig, Qwen2Config

    common = dict(vocab_size=16, hidden_size=32, intermediate_size=64, num_hidden_layers=2, max_position_embeddings=64,
                  pad_token_id=0, eos_token_id=1, bos_token_id=1, initializer_range=0.3)  # tokens vary
    config = (LlamaConfig(num_attention_heads=2, num_key_value_heads=2, tie_word_embeddings=True, **common)
              if kind == "llama" else
              Qwen2Config(num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=False, **common))
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config)
    if kind == "qwen2":  # nonzero biases, so a missing one would show
        for layer in model.model.layers:
            for proj in (layer.self_attn.q_proj, layer.self_attn.k_proj, layer.self_attn.v_proj):
                torch.nn.init.normal_(proj.bias, std=0.3)
    return model.to(device)


def greedy_equal(kind: str, compact_below: float, tokenizer, device: str) -> bool:
    from stare_lit.rollout.base import Sampling
    from stare_lit.rollout.fast import FastRollout
    from stare_lit.rollout.hf import HFGenerate

    model, sampling = make(kind, device), Sampling(max_new_tokens=24)
    ref = HFGenerate()(model, tokenizer, PROMPTS, 1, sampling, greedy=True)
    engine = FastRollout(cuda_graphs=True, compact_below=compact_below)
    ok = True
    for attempt in ("capture", "replay"):
        fast = engine(model, tokenizer, PROMPTS, 1, sampling, greedy=True)
        same = (torch.equal(fast.input_ids, ref.input_ids) and torch.equal(fast.completion_mask, ref.completion_mask)
                and fast.completions == ref.completions)
        print(f"greedy {kind:5s} compact_below={compact_below} {attempt}: "
              f"{'identical' if same else 'DIFFERENT'} ({ref.completions})")
        ok &= same
    graphs = bool(engine._decoder and engine._decoder.graphs)
    print(f"  CUDA graphs captured: {graphs}")
    return ok and (graphs or device == "cpu")


def frequencies_match(tokenizer, device: str) -> bool:
    from stare_lit.rollout.base import Sampling
    from stare_lit.rollout.fast import FastRollout

    model = make("llama", device)
    s = Sampling(max_new_tokens=1, temperature=0.7, top_k=5, top_p=0.9)
    ids = torch.tensor([tokenizer("12+34=", add_special_tokens=False)["input_ids"]], device=device)
    with torch.no_grad():
        probs = torch.softmax(model(ids).logits[0, -1].double().cpu() / s.temperature, -1)  # (V,)
    order = probs.argsort(descending=True).tolist()[:s.top_k]
    kept, mass = torch.zeros_like(probs), 0.0
    top = probs[order].sum().item()
    for i in order:  # generate's top-k then top-p, by hand
        if mass >= s.top_p:
            break
        kept[i] = probs[i] / top
        mass += kept[i].item()
    p = kept / kept.sum()
    n = 4000
    torch.manual_seed(0)
    out = FastRollout(cuda_graphs=True)(model, tokenizer, ["12+34="], n, s)
    counts = torch.bincount(out.completion_ids[:, 0].cpu(), minlength=len(p)).double()
    sigma = (n * p * (1 - p)).sqrt()
    z = ((counts - n * p).abs() / sigma.clamp_min(1e-12))[p > 0]
    ok = bool(counts[p == 0].sum() == 0 and (z <= 4.5).all())
    print(f"sampled frequencies (n={n}): {'within' if ok else 'OUTSIDE'} 4.5 sigma; max |z| = {z.max():.2f}; "
          f"counts {counts[p > 0].tolist()} expected {(n * p[p > 0]).round().tolist()}")
    return ok


def main() -> int:
    from stare_lit.data.tasks.arithmetic import char_tokenizer

    device = "cpu" if "--cpu" in sys.argv else "cuda"  # --cpu: a dry run of the script (no graphs on CPU)
    if device == "cuda" and not torch.cuda.is_available():
        print("no CUDA device: nothing checked")
        return 1
    tokenizer = char_tokenizer()
    tokenizer.padding_side = "left"
    ok = all([greedy_equal(kind, c, tokenizer, device) for kind in ("llama", "qwen2") for c in (0.75, 1.0)])
    ok &= frequencies_match(tokenizer, device)
    print("CUDA-graph decode:" if device == "cuda" else "eager decode (--cpu dry run):", "CORRECT" if ok else "FAILED")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
