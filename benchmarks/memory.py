"""Peak memory and time of the log-prob + entropy pass: chunked (stare-lit) vs naive, at 32k and 150k vocab.

    python benchmarks/memory.py                       # ~5 minutes on 2 CPU cores, ~7.4 GiB peak
    python benchmarks/memory.py --rows 8x256 --vocab 32000 151936 --repeats 2

The pass turns logits (B, T, V) and the sampled ids (B, T) into log π(id) and the entropy H of
every position. Variants:

- naive: ``log_softmax`` over the whole (B, T, V) in fp32, gather, H = −Σ p log p — every fp32
  intermediate of the full batch lives at once (and, under autograd, is kept for backward).
- chunked: ``stare_lit.ops.token_logprobs_and_entropy`` — ``--chunk`` positions at a time,
  with a hand-written backward that keeps two floats per position (logsumexp, H) and recomputes
  one chunk's softmax at a time.
- chunked-checkpoint: stare-lit's pass before that backward was written (kept here to measure
  the change): the same chunks under activation checkpointing, so backward re-runs each chunk's
  forward and then autograd's backward through it.
- head (stare-lit's pass since issue 12; ``stare_lit.ops.head_logprobs_and_entropy``): from the
  hidden states (B, T, 1024) and the LM head W (V, 1024); each chunk's logits are computed, used and
  dropped, forward and backward (which recomputes them), so no (B, T, V) tensor exists. Its time
  includes the LM-head matmuls (forward, and three in backward: recompute, ∂hidden, ∂W); its memory
  includes ∂W, as big as W.
- naive-head: ``hidden @ Wᵀ`` then naive — the naive pass with the head matmul, to compare times
  with ``head`` on equal work.
- fused (reference, not stare-lit code; ``--variants ... fused``): what TRL's fused LM head does —
  start from the hidden states and run ``hidden @ W_lm_headᵀ`` inside each checkpointed chunk, so
  the full (B, T, V) logits never exist. Its inputs are hidden (B, T, 1024) and W (V, 1024)
  instead of the logits, and its time includes the LM-head matmul the others do not have.

Forward is under ``no_grad``; forward+backward makes the inputs leaves that require grad and
backpropagates ``logp.sum() + H.sum()`` (so the input gradient, as big as the input, is allocated
in every variant). Each (variant, vocab, mode) runs in a fresh process, alternating variants,
``--repeats`` times; memory is the process's peak RSS (``ru_maxrss``) above its RSS once the
inputs exist, time is the median of ``--iters`` passes in that process (after one warm-up pass).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from benchmarks.common import (emit, fmt, header, median, spread, peak_rss_mib, rss_mib, run_worker,  # noqa: E402
                               table, write_result)

HIDDEN = 1024  # of the fused reference's hidden states


def naive(logits, ids, temperature: float = 1.0):
    z = logits.float() / temperature  # (B, T, V)
    logp = torch.log_softmax(z, dim=-1)  # (B, T, V)
    lp = logp.gather(-1, ids.unsqueeze(-1)).squeeze(-1)  # (B, T)
    entropy = -(logp.exp() * logp).sum(-1)  # (B, T)
    return lp, entropy


def head(hidden, weight, ids, temperature: float = 1.0, chunk: int = 1024):
    from stare_lit.ops.logprobs import head_logprobs_and_entropy

    return head_logprobs_and_entropy(hidden, weight, ids, temperature=temperature, chunk_size=chunk)


def naive_head(hidden, weight, ids, temperature: float = 1.0, chunk: int = 1024):
    return naive(hidden @ weight.T, ids, temperature)


def chunked(logits, ids, temperature: float = 1.0, chunk: int = 1024):
    from stare_lit.ops.logprobs import token_logprobs_and_entropy

    return token_logprobs_and_entropy(logits, ids, temperature, chunk)


def _rows(logits, ids, temperature: float):
    z = logits.float() / temperature  # (n, V)
    lse = torch.logsumexp(z, dim=-1)
    lp = z.gather(-1, ids.unsqueeze(-1)).squeeze(-1) - lse
    return lp, lse - (torch.softmax(z, dim=-1) * z).sum(-1)


def chunked_checkpoint(logits, ids, temperature: float = 1.0, chunk: int = 1024):
    """stare-lit's pass before the hand-written backward: flat chunks under activation checkpointing."""
    from torch.utils.checkpoint import checkpoint

    B, T, V = logits.shape
    flat, flat_ids = logits.reshape(B * T, V), ids.reshape(B * T)
    need_grad = torch.is_grad_enabled() and logits.requires_grad
    lps, ents = [], []
    for s in range(0, B * T, chunk):
        if need_grad:
            lp, ent = checkpoint(_rows, flat[s:s + chunk], flat_ids[s:s + chunk], temperature, use_reentrant=False)
        else:
            lp, ent = _rows(flat[s:s + chunk], flat_ids[s:s + chunk], temperature)
        lps.append(lp)
        ents.append(ent)
    return torch.cat(lps).view(B, T), torch.cat(ents).view(B, T)


def fused(hidden, weight, ids, temperature: float = 1.0, chunk: int = 1024):
    from torch.utils.checkpoint import checkpoint

    B, T, H = hidden.shape
    flat_h, flat_ids = hidden.reshape(B * T, H), ids.reshape(B * T)

    def rows(h, i):
        return _rows(h @ weight.T, i, temperature)  # (n, V) logits of this chunk only

    need_grad = torch.is_grad_enabled() and hidden.requires_grad
    lps, ents = [], []
    for s in range(0, B * T, chunk):
        if need_grad:
            lp, ent = checkpoint(rows, flat_h[s:s + chunk], flat_ids[s:s + chunk], use_reentrant=False)
        else:
            lp, ent = rows(flat_h[s:s + chunk], flat_ids[s:s + chunk])
        lps.append(lp)
        ents.append(ent)
    return torch.cat(lps).view(B, T), torch.cat(ents).view(B, T)


VARIANTS = {"naive": naive, "chunked": chunked, "chunked-checkpoint": chunked_checkpoint}
FROM_HIDDEN = {"fused": fused, "head": head, "naive-head": naive_head}  # inputs: hidden states and W


def worker(a) -> dict:
    if "@" in a.variant:  # "head@64": the variant at its own chunk size (to alternate chunk sizes in one run)
        a.variant, chunk = a.variant.split("@")
        a.chunk = int(chunk)
    torch.manual_seed(0)
    B, T = a.B, a.T
    ids = torch.randint(0, a.vocab_size, (B, T))
    grad = a.mode == "fwd+bwd"
    if a.variant in FROM_HIDDEN:
        hidden = torch.randn(B, T, HIDDEN, requires_grad=grad)
        weight = (3 * torch.randn(a.vocab_size, HIDDEN) / HIDDEN**0.5).requires_grad_(grad)  # logits ~ 3·N(0, 1)
        fn = FROM_HIDDEN[a.variant]
        run = lambda: fn(hidden, weight, ids, chunk=a.chunk)  # noqa: E731
        leaves = [hidden, weight]
    else:
        logits = (3 * torch.randn(B, T, a.vocab_size)).requires_grad_(grad)
        fn = VARIANTS[a.variant]
        run = (lambda: fn(logits, ids)) if a.variant == "naive" else (lambda: fn(logits, ids, chunk=a.chunk))
        leaves = [logits]

    def once() -> float:
        t0 = time.perf_counter()
        if grad:
            lp, ent = run()
            (lp.sum() + ent.sum()).backward()
            for x in leaves:
                x.grad = None
        else:
            with torch.no_grad():
                lp, ent = run()
        del lp, ent
        return time.perf_counter() - t0

    rss0 = rss_mib()
    times = [once() for _ in range(a.iters + 1)][1:]
    return {"time_s": median(times), "peak_above_inputs_mib": peak_rss_mib() - rss0, "peak_mib": peak_rss_mib(),
            "inputs_mib": sum(x.numel() * x.element_size() for x in leaves) / 2**20}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--rows", default="8x256", help="B x T of the batch (default 8x256: 2048 token positions)")
    p.add_argument("--vocab", type=int, nargs="+", default=[32000, 151936], help="vocabulary sizes")
    p.add_argument("--chunk", type=int, default=1024, help="rows per chunk (model.update.logprob_chunk_size default)")
    p.add_argument("--repeats", type=int, default=2, help="fresh processes per (variant, vocab, mode)")
    p.add_argument("--iters", type=int, default=2, help="timed passes per process (after one warm-up)")
    p.add_argument("--variants", nargs="+", default=["naive", "chunked", "head", "naive-head"],
                   help="naive chunked chunked-checkpoint fused head naive-head; NAME@C runs NAME at a chunk of C rows "
                        "(e.g. head@1024 head@55: chunk sizes alternating in one run)")
    p.add_argument("--modes", nargs="+", default=["fwd", "fwd+bwd"], choices=["fwd", "fwd+bwd"])
    p.add_argument("--name", default="memory", help="results/NAME.md is written")
    p.add_argument("--threads", type=int, default=1, help="torch intra-op threads (0: torch's default); see vs_trl.py")
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--variant", help=argparse.SUPPRESS)
    p.add_argument("--mode", help=argparse.SUPPRESS)
    p.add_argument("--vocab-size", type=int, help=argparse.SUPPRESS)
    a = p.parse_args()
    known = {"naive", "chunked", "chunked-checkpoint", "fused", "head", "naive-head"}
    for v in a.variants:
        if v.split("@")[0] not in known or ("@" in v and not v.split("@")[1].isdigit()):
            p.error(f"--variants: {v!r} is not one of {sorted(known)} (optionally NAME@CHUNK)")
    a.B, a.T = map(int, a.rows.lower().split("x"))
    if a.worker:
        if a.threads:
            torch.set_num_threads(a.threads)
        emit(worker(a))
        return

    results: dict[tuple, list[dict]] = {}
    for vocab in a.vocab:
        for mode in a.modes:
            for r in range(a.repeats):
                order = a.variants if r % 2 == 0 else a.variants[::-1]
                for variant in order:
                    out = run_worker(Path(__file__), ["--worker", "--variant", variant, "--mode", mode,
                                                      "--vocab-size", str(vocab), "--rows", a.rows,
                                                      "--chunk", str(a.chunk), "--iters", str(a.iters),
                                                      "--threads", str(a.threads)])
                    results.setdefault((vocab, mode, variant), []).append(out)
                    print(f"V={vocab:>6} {mode:7s} {variant:8s}: {out['time_s']:.3f} s, "
                          f"+{out['peak_above_inputs_mib']:.0f} MiB over inputs ({out['inputs_mib']:.0f} MiB)",
                          flush=True)

    rows = []
    for vocab in a.vocab:
        for mode in a.modes:
            ref = results.get((vocab, mode, "naive"))
            for variant in a.variants:
                rs = results[(vocab, mode, variant)]
                t = median([x["time_s"] for x in rs])
                m = median([x["peak_above_inputs_mib"] for x in rs])
                t_ratio = f"{t / median([x['time_s'] for x in ref]):.2f}" if ref else ""
                m_ratio = f"{m / median([x['peak_above_inputs_mib'] for x in ref]):.3f}" if ref else ""
                rows.append([f"{vocab:,}", mode, variant, fmt(median([x["inputs_mib"] for x in rs])), fmt(m),
                             m_ratio, spread([x["time_s"] for x in rs]), t_ratio, fmt(median([x["peak_mib"] for x in rs]))])
    md = [header("Log-prob + entropy pass: chunked vs naive")]
    md.append(f"- batch: B×T = {a.B}×{a.T} = {a.B * a.T} positions, fp32, chunk {a.chunk} rows; {a.repeats} fresh "
              f"processes per cell (variants alternating), {a.iters} timed passes each; torch threads: "
              f"{a.threads or 'default'}\n")
    md.append(table(["vocab", "mode", "variant", "inputs held (MiB)", "peak above inputs (MiB)", "memory / naive",
                     "time (s), median (min–max)", "time / naive", "process peak RSS (MiB)"], rows))
    text = "\n".join(md) + "\n"
    print("\n" + text)
    print(f"written to {write_result(a.name, text)}")


if __name__ == "__main__":
    main()
