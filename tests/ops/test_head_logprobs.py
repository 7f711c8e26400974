"""The log-prob + entropy pass from hidden states (no full logits) against the naive pass over the logits."""

from __future__ import annotations

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode
from transformers import AutoModelForCausalLM

from stare_lit.ops.logprobs import head_logprobs_and_entropy, model_logprobs_and_entropy
from tests.conftest import tiny_config


def naive(logits, ids, temperature):
    logp = torch.log_softmax(logits.float() / temperature, dim=-1)  # (B, T, V)
    return logp.gather(-1, ids.unsqueeze(-1)).squeeze(-1), -(logp.exp() * logp).sum(-1)


@pytest.mark.parametrize("with_bias", [False, True])
@pytest.mark.parametrize("temperature", [1.0, 0.7])
@pytest.mark.parametrize("chunk_size", [3, 1024])  # blocks that split rows and positions; one block
def test_values_and_gradients_match_the_naive_pass(with_bias, temperature, chunk_size):
    torch.manual_seed(0)
    B, T, H, V = 3, 5, 8, 11
    hidden = torch.randn(B, T + 1, H, requires_grad=True)
    weight = torch.randn(V, H, requires_grad=True)
    bias = torch.randn(V, requires_grad=True) if with_bias else None
    ids = torch.randint(0, V, (B, T))
    g_lp, g_ent = torch.randn(B, T), torch.randn(B, T)
    leaves = [x for x in (hidden, weight, bias) if x is not None]

    logits = hidden[:, :-1] @ weight.T + (bias if with_bias else 0)  # a non-contiguous slice, as in the model
    lp_ref, ent_ref = naive(logits, ids, temperature)
    ref_grads = torch.autograd.grad((lp_ref * g_lp).sum() + (ent_ref * g_ent).sum(), leaves)

    lp, ent = head_logprobs_and_entropy(hidden[:, :-1], weight, ids, bias, temperature, chunk_size)
    assert lp.dtype == ent.dtype == torch.float32
    torch.testing.assert_close(lp, lp_ref, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(ent, ent_ref, rtol=1e-5, atol=1e-5)
    grads = torch.autograd.grad((lp * g_lp).sum() + (ent * g_ent).sum(), leaves)
    for got, want in zip(grads, ref_grads):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


def test_bfloat16_head_matches_the_logits_it_computes():
    torch.manual_seed(0)
    hidden = torch.randn(2, 4, 16, dtype=torch.bfloat16)
    weight = torch.randn(50, 16, dtype=torch.bfloat16)
    ids = torch.randint(0, 50, (2, 4))
    lp, ent = head_logprobs_and_entropy(hidden, weight, ids, chunk_size=3)
    lp_ref, ent_ref = naive(hidden @ weight.T, ids, 1.0)  # bf16 logits, then fp32: what the model does
    torch.testing.assert_close(lp, lp_ref, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(ent, ent_ref, rtol=1e-5, atol=1e-5)


def _inputs(vocab):
    torch.manual_seed(1)
    ids = torch.randint(2, vocab, (3, 9))
    attention = torch.ones_like(ids)
    attention[0, :2] = 0  # left padding
    return dict(input_ids=ids, attention_mask=attention, position_ids=(attention.cumsum(-1) - 1).clamp_min(0),
                use_cache=False), ids[:, 5:]


@pytest.mark.parametrize("tied", [True, False])
def test_model_pass_matches_full_logits_and_tied_embeddings_get_their_gradient(tied):
    torch.manual_seed(0)
    config = tiny_config(vocab_size=40)
    config.tie_word_embeddings = tied
    model = AutoModelForCausalLM.from_config(config)
    assert (model.lm_head.weight is model.model.embed_tokens.weight) == tied
    inputs, completion = _inputs(40)
    T = completion.shape[1]

    logits = model(**inputs, logits_to_keep=T + 1).logits[:, :-1]
    lp_ref, ent_ref = naive(logits, completion, 0.8)
    (lp_ref.sum() + ent_ref.sum()).backward()
    want = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad()

    lp, ent = model_logprobs_and_entropy(model, completion, 0.8, 4, **inputs)
    (lp.sum() + ent.sum()).backward()
    assert "forward" not in vars(model.lm_head)  # the head is itself again
    torch.testing.assert_close(lp, lp_ref, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(ent, ent_ref, rtol=1e-5, atol=1e-5)
    for n, p in model.named_parameters():
        torch.testing.assert_close(p.grad, want[n], rtol=1e-5, atol=1e-6, msg=n)


def test_model_pass_never_holds_full_logits():
    """No op, forward or backward, makes a tensor as big as the (B, T, V) logits with V last."""
    from torch.utils._pytree import tree_flatten

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(tiny_config(vocab_size=40))  # H = 32, V = 40
    inputs, completion = _inputs(40)
    B, T = completion.shape
    big = []

    class Shapes(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            for t in tree_flatten(out)[0]:
                if isinstance(t, torch.Tensor) and t.shape[-1:] == (40,) and t.numel() >= B * T * 40 \
                        and tuple(t.shape) != (32, 40):  # (H, V): the head's weight, transposed
                    big.append((str(func), tuple(t.shape)))
            return out

    with Shapes():
        lp, ent = model_logprobs_and_entropy(model, completion, 1.0, 4, **inputs)
        (lp.sum() + ent.sum()).backward()
    assert big == []
    with Shapes():  # the check sees the full logits where they exist
        model(**inputs, logits_to_keep=T + 1)
    assert big


class _ScaledLogits(torch.nn.Module):
    """A causal LM that scales its logits after the head (like Cohere's logit_scale)."""

    def __init__(self, model):
        super().__init__()
        self.inner = model

    def get_output_embeddings(self):
        return self.inner.lm_head

    def forward(self, **kwargs):
        out = self.inner(**kwargs)
        out.logits = out.logits * 2.0
        return out


def test_a_model_that_changes_its_logits_goes_through_the_full_logits():
    torch.manual_seed(0)
    model = _ScaledLogits(AutoModelForCausalLM.from_config(tiny_config(vocab_size=40)))
    inputs, completion = _inputs(40)
    lp, ent = model_logprobs_and_entropy(model, completion, 1.0, 1024, **inputs)
    T = completion.shape[1]
    lp_ref, ent_ref = naive(model(**inputs, logits_to_keep=T + 1).logits[:, :-1], completion, 1.0)
    torch.testing.assert_close(lp, lp_ref)
    torch.testing.assert_close(ent, ent_ref)


def test_a_head_with_forward_hooks_gets_the_full_logits():
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(tiny_config(vocab_size=40))
    inputs, completion = _inputs(40)
    model.lm_head.register_forward_hook(lambda _, __, out: out.index_fill(-1, torch.tensor([3]), 50.0))
    lp, _ = model_logprobs_and_entropy(model, completion, 1.0, 1024, **inputs)
    T = completion.shape[1]
    lp_ref, _ = naive(model(**inputs, logits_to_keep=T + 1).logits[:, :-1], completion, 1.0)
    torch.testing.assert_close(lp, lp_ref)
