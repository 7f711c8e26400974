"""FastRollout: a rollout engine for Hugging Face Llama and Qwen2 causal LMs, in plain PyTorch.

What it does differently from ``generate`` (stare_lit.rollout.HFGenerate, the reference):

- **Static KV cache**: one preallocated (rows, kv heads, P+T, head dim) key and value buffer per
  layer, written in place; attention is SDPA over the filled part (GQA without repeating K/V).
- **Prefill once per prompt**: the B prompts are forwarded once, not B × G times; their keys and
  values are copied into the cache rows of the prompt's G samples.
- **Finished rows leave the batch**: a row that sampled EOS or completed a stop string stops being
  forwarded; the batch is compacted (cache rows included) whenever the live rows fall to
  ``compact_below`` of it, so the copy is paid a few times per rollout, not at every token.
- **CUDA graphs** (CUDA only, ``cuda_graphs``): the one-token decode step of each batch size it
  meets is captured once with ``torch.cuda.graphs`` and replayed, so a step costs one launch instead
  of a few hundred. Graphs and buffers are kept across rollouts while the shapes and the parameters'
  storage stay the same (an optimizer step updates weights in place, so they do) — which also
  means the KV cache stays allocated during the update; without graphs it is freed after each
  rollout. On CPU this path is never taken.

It runs the model's own modules (embedding, RMSNorm, rotary embedding, q/k/v/o projections with
their biases, MLP, final norm, LM head) on the model's own parameters; only the per-token loop,
the cache and the attention call are its own. On 2 CPU cores (benchmarks/README.md, section 6) the
gain came from rows that have ended no longer being decoded, the sampler, one prefill per prompt
and less Python per token (cache objects, masks, logits processors); most of what is left is the
matmuls themselves.

Sampling is the reference's distribution: logits in float32, then Hugging Face's own temperature,
top-k and top-p warpers in generate's order, softmax, and a draw from it on the global RNG (which the
module seeds per rollout: resumable streams) — by the inverse CDF rather than ``torch.multinomial``,
which was slower (see ``_choose``); greedy is argmax. Stop strings use Hugging Face's
``StopStringCriteria`` on the whole sequence, as generate does. The output has the reference's layout
(prompt-major rows, pad after the end, as long as the longest completion), so everything downstream
is shared (stare_lit.rollout.base.to_rollout).

Other architectures (or Qwen2 with sliding-window layers) fall back to the reference engine with
one warning.
"""

from __future__ import annotations

import warnings

import torch
import torch.nn.functional as F
from torch import Tensor

from stare_lit.errors import check
from stare_lit.rollout.hf import HFGenerate
from stare_lit.rollout.base import (
    Rollout,
    RolloutEngine,
    Sampling,
    encode_prompts,
    full_parameters,
    to_rollout,
)

SUPPORTED = ("llama", "qwen2")


def unsupported_reason(model) -> str | None:
    """Why FastRollout cannot run ``model`` (None: it can)."""
    config = getattr(model, "config", None)
    kind = getattr(config, "model_type", None)
    if kind not in SUPPORTED:
        return f"model type {kind!r} is not one of {', '.join(SUPPORTED)}"
    if "sliding_attention" in (getattr(config, "layer_types", None) or []):
        return "its config has sliding-window attention layers"
    inner = getattr(model, "model", None)
    if not all(hasattr(inner, name) for name in ("embed_tokens", "layers", "norm", "rotary_emb")):
        return "it does not have the usual model.embed_tokens/layers/norm/rotary_emb structure"
    return None


class FastRollout(RolloutEngine):
    """Static KV cache, one prefill per prompt, finished rows dropped, CUDA graphs on CUDA (Llama, Qwen2).

    Args:
        cuda_graphs: on CUDA, replay the one-token decode step from a CUDA graph per batch size.
        compact_below: drop finished rows from the batch once the live rows are at most this share of
            it (1.0: at every token that ends a row).
    """

    def __init__(self, cuda_graphs: bool = True, compact_below: float = 0.75) -> None:
        check(0 < compact_below <= 1, f"model.rollout.init_args.compact_below must be in (0, 1], got {compact_below}")
        self.cuda_graphs = cuda_graphs
        self.compact_below = compact_below
        self._reference = HFGenerate()
        self._warned: set[type] = set()
        self._decoder: _Decoder | None = None  # with CUDA graphs, kept between rollouts (buffers + graphs)

    def __call__(self, model, tokenizer, prompts: list[str], group_size: int, sampling: Sampling,
                 greedy: bool = False) -> Rollout:
        if hasattr(model, "get_base_model"):  # a PEFT model: its LoRA layers sit inside the base model's
            model = model.get_base_model()    # modules and stay active there (model.policy.lora)
        reason = unsupported_reason(model)
        if reason is not None:
            if type(model) not in self._warned:
                self._warned.add(type(model))
                warnings.warn(f"model.rollout: FastRollout cannot run {type(model).__name__} ({reason}); using the "
                              "reference engine stare_lit.rollout.HFGenerate instead", stacklevel=2)
            return self._reference(model, tokenizer, prompts, group_size, sampling, greedy)
        was_training = model.training
        model.eval()
        try:
            with torch.no_grad(), full_parameters(model) as sharded:
                if sharded:  # all-gather every layer now; full_parameters reshards them on exit
                    from torch.distributed.fsdp import FSDPModule

                    for module in model.modules():
                        if isinstance(module, FSDPModule):
                            module.unshard()
                return self._sample(model, tokenizer, prompts, group_size, sampling, greedy)
        finally:
            model.train(was_training)

    def _sample(self, model, tokenizer, prompts, G, sampling: Sampling, greedy: bool) -> Rollout:
        device = model.model.embed_tokens.weight.device
        enc = encode_prompts(tokenizer, prompts, sampling, device)
        ids, attn = enc["input_ids"], enc["attention_mask"]  # (B, P)
        B, P = ids.shape
        N, T = B * G, sampling.max_new_tokens
        graphs = self.cuda_graphs and device.type == "cuda"
        decoder = self._decoder_for(model, N, P + T, graphs)
        warpers = _warpers(sampling) if not greedy else None
        stop = _stop_criteria(tokenizer, sampling.stop)
        eos = torch.as_tensor([tokenizer.eos_token_id], device=device)

        seq = torch.full((N, P + T), tokenizer.pad_token_id, dtype=torch.long, device=device)  # (N, P+T)
        seq[:, :P] = ids.repeat_interleave(G, 0)
        logits = decoder.prefill(ids, attn, G)  # (N, V) float32
        rows = torch.arange(N, device=device)  # seq row of each batch row
        live = torch.ones(N, dtype=torch.bool, device=device)  # (batch,) still generating
        next_pos = attn.sum(-1).repeat_interleave(G)  # (N,) position of the next token: real tokens so far
        steps = 0
        for t in range(T):
            tokens = _choose(logits, warpers, greedy)  # (batch,)
            tokens = torch.where(live, tokens, tokenizer.pad_token_id)
            seq[rows, P + t] = tokens
            steps = t + 1
            ended = torch.isin(tokens, eos)
            if stop is not None:
                ended |= stop(seq[rows, :P + t + 1], None)
            live &= ~ended
            n_live = int(live.sum())
            if n_live == 0 or t == T - 1:
                break
            if n_live <= self.compact_below * len(rows):
                keep = decoder.compact(live.nonzero().squeeze(1), graphs)
                rows, live, next_pos, tokens = rows[keep], live[keep], next_pos[keep], tokens[keep]
            logits = decoder.decode(tokens, next_pos, P + t, graphs)
            next_pos = next_pos + 1
        if not graphs:  # nothing to replay: give the KV cache's memory back to the update
            self._decoder = None
        return to_rollout(tokenizer, enc, seq[:, :P + steps], G)

    def _decoder_for(self, model, rows: int, length: int, graphs: bool) -> _Decoder:
        if graphs:  # a few fixed lengths, so the graphs of one rollout serve the next ones
            length = -(-length // 64) * 64
        key = _Decoder.key_of(model, rows, length)
        if self._decoder is None or self._decoder.key != key:
            self._decoder = None  # free the old buffers first
            self._decoder = _Decoder(model, rows, length, key)
        return self._decoder


class _Decoder:
    """The model's forward over a static KV cache of ``rows`` rows × ``length`` positions.

    The live batch is always the first ``self.batch`` rows of the buffers (views), so a compacted
    batch keeps static addresses for the CUDA graphs.
    """

    def __init__(self, model, rows: int, length: int, key: tuple) -> None:
        inner = model.model
        self.key = key
        self.embed, self.layers, self.norm, self.rotary = inner.embed_tokens, inner.layers, inner.norm, inner.rotary_emb
        self.head = model.lm_head
        attn = self.layers[0].self_attn
        self.head_dim, self.scaling = attn.head_dim, attn.scaling
        self.n_heads, self.n_kv = model.config.num_attention_heads, model.config.num_key_value_heads
        w = self.embed.weight
        shape = (rows, self.n_kv, length, self.head_dim)
        self.k = [torch.zeros(shape, dtype=w.dtype, device=w.device) for _ in self.layers]
        self.v = [torch.zeros(shape, dtype=w.dtype, device=w.device) for _ in self.layers]
        self.valid = torch.zeros(rows, length, dtype=torch.bool, device=w.device)  # key positions to attend to
        self.batch = rows
        # Static inputs of the captured decode steps: tokens, positions, cache index.
        self.tok = torch.zeros(rows, 1, dtype=torch.long, device=w.device)
        self.pos = torch.zeros(rows, 1, dtype=torch.long, device=w.device)
        self.index = torch.zeros(1, dtype=torch.long, device=w.device)
        self.graphs: dict[int, tuple] = {}  # batch size -> (graph, its output logits)

    @staticmethod
    def key_of(model, rows: int, length: int) -> tuple:
        """Buffers and graphs are reusable while this is unchanged: shapes, dtype and parameter storage."""
        return (rows, length, model.model.embed_tokens.weight.dtype,
                tuple(p.data_ptr() for p in model.parameters()))

    # ---------------------------------------------------------------- the two forwards
    def prefill(self, ids: Tensor, attn: Tensor, group_size: int) -> Tensor:
        """Forward the B prompts (B, P) once; cache their keys/values in their G rows each. Returns
        the next-token logits of all B × G rows, (N, V) float32."""
        B, P = ids.shape
        self.batch = B * group_size
        self.valid.zero_()
        self.valid[:, :P] = attn.bool().repeat_interleave(group_size, 0)
        positions = (attn.cumsum(-1) - 1).clamp_min(0)  # (B, P) as generate counts them
        key = torch.arange(P, device=ids.device)
        # Causal over real tokens; a padding query also sees itself, so no row is all -inf (NaN).
        mask = (key[None, :] <= key[:, None]) & (attn.bool()[:, None, :] | (key[None, :] == key[:, None]))
        x = self.embed(ids)  # (B, P, H)
        cos, sin = self.rotary(x, positions)
        for i, layer in enumerate(self.layers):
            q, k, v = self._qkv(layer, x, cos, sin)  # (B, heads, P, D)
            self.k[i][:self.batch, :, :P] = k.repeat_interleave(group_size, 0)
            self.v[i][:self.batch, :, :P] = v.repeat_interleave(group_size, 0)
            x = self._finish(layer, x, q, k, v, mask[:, None])
        h = self.norm(x[:, -1])  # (B, H): prompts are left-padded, the last position is real
        return self.head(h).float().repeat_interleave(group_size, 0)  # (N, V)

    def decode(self, tokens: Tensor, positions: Tensor, index: int, graphs: bool) -> Tensor:
        """One token per live row at cache position ``index``: tokens, positions (batch,) → logits (batch, V)."""
        b = self.batch
        self.valid[:b, index] = True
        if not graphs:
            return self._step(tokens[:, None], positions[:, None], torch.tensor([index], device=tokens.device),
                              upto=index + 1)
        self.tok[:b, 0] = tokens
        self.pos[:b, 0] = positions
        self.index.fill_(index)
        graph, out = self.graphs.get(b) or self._capture(b)
        graph.replay()
        return out.clone()

    def _step(self, tokens: Tensor, positions: Tensor, index: Tensor, upto: int | None) -> Tensor:
        """tokens, positions (b, 1) → logits (b, V) float32; writes the cache at ``index`` (1,).
        ``upto``: attend to the first ``upto`` positions only (eager); None: to all, masked (graphs)."""
        b = tokens.shape[0]
        mask = self.valid[:b, None, None, :upto]  # (b, 1, 1, S)
        x = self.embed(tokens)  # (b, 1, H)
        cos, sin = self.rotary(x, positions)
        for i, layer in enumerate(self.layers):
            q, k, v = self._qkv(layer, x, cos, sin)  # (b, heads, 1, D)
            kc, vc = self.k[i][:b], self.v[i][:b]
            if upto is None:  # graphs: the position is a tensor the replay reads
                kc.index_copy_(2, index, k.to(kc.dtype))  # autocast (bf16-mixed) computes k, v in bf16
                vc.index_copy_(2, index, v.to(vc.dtype))
            else:  # eager: a slice copy, the same values; index_copy_ took ~15x longer on CPU (a strided view)
                kc[:, :, upto - 1:upto].copy_(k)
                vc[:, :, upto - 1:upto].copy_(v)
            x = self._finish(layer, x, q, kc[:, :, :upto], vc[:, :, :upto], mask)
        return self.head(self.norm(x[:, -1])).float()

    def _qkv(self, layer, x: Tensor, cos: Tensor, sin: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        attn = layer.self_attn
        h = layer.input_layernorm(x)  # (b, S, H)
        b, S, _ = h.shape
        q = attn.q_proj(h).view(b, S, self.n_heads, self.head_dim).transpose(1, 2)  # (b, Hq, S, D)
        k = attn.k_proj(h).view(b, S, self.n_kv, self.head_dim).transpose(1, 2)  # (b, Hkv, S, D)
        v = attn.v_proj(h).view(b, S, self.n_kv, self.head_dim).transpose(1, 2)
        cos, sin = cos[:, None], sin[:, None]  # (b, 1, S, D)
        return q * cos + _rotate_half(q) * sin, k * cos + _rotate_half(k) * sin, v

    def _finish(self, layer, x: Tensor, q: Tensor, k: Tensor, v: Tensor, mask: Tensor) -> Tensor:
        """Attention output, o_proj and the MLP with their residuals."""
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=self.scaling,
                                             enable_gqa=self.n_heads != self.n_kv)  # (b, Hq, S, D)
        b, _, S, _ = out.shape
        x = x + layer.self_attn.o_proj(out.transpose(1, 2).reshape(b, S, -1))
        return x + layer.mlp(layer.post_attention_layernorm(x))

    # ---------------------------------------------------------------- dropping rows, graphs
    def compact(self, keep: Tensor, graphs: bool) -> Tensor:
        """Move batch rows ``keep`` (ascending) to the front of the buffers; returns the rows kept
        (with graphs, padded with finished rows to a power of two: a few batch sizes, a few graphs)."""
        b = self.batch
        if graphs:
            size = 1 << (len(keep) - 1).bit_length()
            if size >= b:
                return torch.arange(b, device=keep.device)
            dropped = torch.ones(b, dtype=torch.bool, device=keep.device)
            dropped[keep] = False
            keep = torch.cat([keep, dropped.nonzero().squeeze(1)[:size - len(keep)]])
        for buf in (*self.k, *self.v, self.valid):
            buf[:len(keep)] = buf[:b][keep]
        self.batch = len(keep)
        return keep

    def _capture(self, b: int) -> tuple:
        """Capture the decode step at batch size ``b`` (its inputs: the first b rows of tok, pos, index)."""
        args = (self.tok[:b], self.pos[:b], self.index, None)
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream):  # warm-up writes the same cache entries the replay will
            for _ in range(2):
                self._step(*args)
        torch.cuda.current_stream().wait_stream(stream)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):  # its own memory pool: one decode step's activations at batch b
            out = self._step(*args)
        self.graphs[b] = (graph, out)
        return graph, out


def _rotate_half(x: Tensor) -> Tensor:
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


def _warpers(sampling: Sampling):
    """Hugging Face's temperature, top-k and top-p warpers, in generate's order."""
    from transformers.generation.logits_process import (LogitsProcessorList, TemperatureLogitsWarper,
                                                        TopKLogitsWarper, TopPLogitsWarper)

    warpers = LogitsProcessorList()
    if sampling.temperature != 1.0:
        warpers.append(TemperatureLogitsWarper(sampling.temperature))
    if sampling.top_k:
        warpers.append(TopKLogitsWarper(top_k=sampling.top_k))
    if sampling.top_p < 1.0:
        warpers.append(TopPLogitsWarper(top_p=sampling.top_p))
    return warpers


def _stop_criteria(tokenizer, stop: list[str]):
    if not stop:
        return None
    from transformers.generation.stopping_criteria import StopStringCriteria

    return StopStringCriteria(tokenizer=tokenizer, stop_strings=stop)


def _choose(logits: Tensor, warpers, greedy: bool) -> Tensor:
    """Next token per row from float32 logits (b, V): argmax, or a sample from generate's distribution.

    Sampled by inverting the CDF with one uniform draw per row (on the global RNG): the same
    distribution as ``torch.multinomial``, which on CPU took a quarter of a rollout at an 8k
    vocabulary (benchmarks/rollout.py), but other draws for a given seed.
    """
    if greedy:
        return logits.argmax(-1)
    probs = F.softmax(warpers(None, logits), dim=-1)  # (b, V); these warpers read no token ids
    cdf = probs.cumsum(-1, dtype=torch.float64)  # (b, V); float64 so a 150k-entry sum stays exact enough
    if not torch.isfinite(cdf[:, -1]).all():  # NaN/±inf logits: fail as multinomial does (the module skips the step)
        raise RuntimeError("probability tensor contains either inf, nan or element < 0")
    u = torch.rand(len(cdf), 1, dtype=torch.float64, device=cdf.device) * cdf[:, -1:]  # (b, 1) in [0, total)
    # The first index whose CDF exceeds u: token i with probability cdf[i] - cdf[i-1]; never a zero-probability one.
    return torch.searchsorted(cdf, u, right=True).squeeze(1).clamp_max(cdf.shape[1] - 1)
