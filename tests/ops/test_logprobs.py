"""token_logprobs_and_entropy against hand-computed softmax values on a 3-token vocabulary."""

import math

import pytest
import torch

from stare_lit.ops.logprobs import token_logprobs_and_entropy

LN2, LN7 = math.log(2.0), math.log(7.0)


def _three_token_logits():
    # logits [0, ln 2, ln 4] -> exp = [1, 2, 4], sum 7 -> p = [1/7, 2/7, 4/7]
    return torch.tensor([0.0, LN2, 2 * LN2]).expand(1, 3, 3).contiguous()  # (B=1, T=3, V=3)


def test_logprobs_and_entropy_by_hand():
    logits = _three_token_logits()
    ids = torch.tensor([[0, 1, 2]])  # position t samples token t
    lp, ent = token_logprobs_and_entropy(logits, ids)
    # log p = [ln(1/7), ln(2/7), ln(4/7)] = [-ln7, ln2 - ln7, 2 ln2 - ln7]
    torch.testing.assert_close(lp, torch.tensor([[-LN7, LN2 - LN7, 2 * LN2 - LN7]]))
    # H = -Σ p ln p = ln7 - (2/7 ln2 + 4/7 · 2 ln2) = ln7 - 10/7 ln2 = 1.9459101 - 0.9902103 = 0.9556998
    h = LN7 - 10 / 7 * LN2
    torch.testing.assert_close(ent, torch.full((1, 3), h))
    assert abs(h - 0.9556998) < 1e-6
    # E_{a~p}[surprisal] = H (methods.md): Σ_a p_a · (−log p_a)
    p = torch.tensor([1 / 7, 2 / 7, 4 / 7])
    torch.testing.assert_close((p * -lp[0]).sum(), ent[0, 0])


def test_temperature_scales_logits():
    # τ = 2: z/τ = [0, ln2/2, ln2] -> exp = [1, √2, 2], Z = 3 + √2 = 4.41421356
    logits = _three_token_logits()
    ids = torch.tensor([[0, 1, 2]])
    lp, ent = token_logprobs_and_entropy(logits, ids, temperature=2.0)
    z = 3 + math.sqrt(2)
    torch.testing.assert_close(lp, torch.tensor([[-math.log(z), 0.5 * LN2 - math.log(z), LN2 - math.log(z)]]))
    # H = ln Z - Σ p z = ln Z - (√2 · ln2/2 + 2 · ln2) / Z
    h = math.log(z) - (math.sqrt(2) * LN2 / 2 + 2 * LN2) / z
    torch.testing.assert_close(ent, torch.full((1, 3), h))
    # τ = 0.5: z/τ = [0, 2 ln2, 4 ln2] -> exp = [1, 4, 16], Z = 21
    lp, ent = token_logprobs_and_entropy(logits, ids, temperature=0.5)
    torch.testing.assert_close(lp, torch.tensor([[-math.log(21), math.log(4 / 21), math.log(16 / 21)]]))
    h = -(1 / 21 * math.log(1 / 21) + 4 / 21 * math.log(4 / 21) + 16 / 21 * math.log(16 / 21))
    torch.testing.assert_close(ent, torch.full((1, 3), h))


def test_gradients_by_hand():
    # d log p_a / d z = onehot(a) - p;  d H / d z_k = -p_k (log p_k + H)   (methods.md)
    logits = _three_token_logits()[:, :1].clone().requires_grad_(True)  # (1, 1, 3)
    lp, ent = token_logprobs_and_entropy(logits, torch.tensor([[2]]))
    (g_lp,) = torch.autograd.grad(lp.sum(), logits, retain_graph=True)
    # token 2: [0 - 1/7, 0 - 2/7, 1 - 4/7] = [-1/7, -2/7, 3/7]
    torch.testing.assert_close(g_lp[0, 0], torch.tensor([-1 / 7, -2 / 7, 3 / 7]))
    (g_h,) = torch.autograd.grad(ent.sum(), logits)
    h = LN7 - 10 / 7 * LN2
    p = [1 / 7, 2 / 7, 4 / 7]
    torch.testing.assert_close(g_h[0, 0], torch.tensor([-pk * (math.log(pk) + h) for pk in p]))


def _loss_and_grad(logits, ids, chunk_size, temperature):
    x = logits.clone().requires_grad_(True)
    lp, ent = token_logprobs_and_entropy(x, ids, temperature=temperature, chunk_size=chunk_size)
    c = torch.linspace(-1.0, 1.0, lp.numel()).view_as(lp)  # fixed, distinct per-token coefficients
    (c * lp + 0.3 * c.flip(-1) * ent).sum().backward()
    return lp.detach(), ent.detach(), x.grad


@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_chunked_equals_unchunked_values_and_gradients(temperature):
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 5, 11, generator=g) * 3  # 10 rows
    ids = torch.randint(0, 11, (2, 5), generator=g)
    ref = _loss_and_grad(logits, ids, chunk_size=10_000, temperature=temperature)  # one chunk
    for chunk in (1, 3, 1000):
        out = _loss_and_grad(logits, ids, chunk, temperature)
        for a, b in zip(out, ref):
            torch.testing.assert_close(a, b, rtol=0, atol=1e-6)
    # no-grad path gives the same values as the checkpointed path
    with torch.no_grad():
        lp, ent = token_logprobs_and_entropy(logits, ids, temperature=temperature, chunk_size=3)
    torch.testing.assert_close(lp, ref[0], rtol=0, atol=1e-6)
    torch.testing.assert_close(ent, ref[1], rtol=0, atol=1e-6)


def test_entropy_nonnegative_and_uniform_is_ln_v():
    g = torch.Generator().manual_seed(1)
    V = 50
    # mild, peaked (near one-hot) and extreme logits
    logits = torch.randn(3, 8, V, generator=g) * torch.tensor([1.0, 30.0, 1000.0]).view(3, 1, 1)
    _, ent = token_logprobs_and_entropy(logits, torch.zeros(3, 8, dtype=torch.long), chunk_size=5)
    assert (ent >= 0).all(), ent.min()
    # uniform: any constant logit row -> H = ln V, log p = -ln V
    lp, ent = token_logprobs_and_entropy(torch.full((2, 3, 7), 5.0), torch.zeros(2, 3, dtype=torch.long))
    torch.testing.assert_close(ent, torch.full((2, 3), math.log(7)))
    torch.testing.assert_close(lp, torch.full((2, 3), -math.log(7)))


def test_bf16_logits_give_fp32_outputs():
    logits = _three_token_logits().to(torch.bfloat16)
    lp, ent = token_logprobs_and_entropy(logits, torch.tensor([[0, 1, 2]]))
    assert lp.dtype == torch.float32 and ent.dtype == torch.float32
    # same numbers as the fp32 computation on the bf16-rounded logits
    lp32, ent32 = token_logprobs_and_entropy(logits.float(), torch.tensor([[0, 1, 2]]))
    assert torch.equal(lp, lp32) and torch.equal(ent, ent32)
    # and close to the exact values (bf16 rounds ln2 to ~3 significant digits)
    torch.testing.assert_close(ent, torch.full((1, 3), LN7 - 10 / 7 * LN2), rtol=0, atol=1e-2)
    # gradient flows back to the bf16 leaf
    x = logits.clone().requires_grad_(True)
    lp, ent = token_logprobs_and_entropy(x, torch.tensor([[0, 1, 2]]), chunk_size=2)
    (lp.sum() + ent.sum()).backward()
    assert x.grad.dtype == torch.bfloat16 and torch.isfinite(x.grad.float()).all()


def test_non_contiguous_logits_view_gives_the_same_values_and_gradients():
    # The module passes out.logits[:, :-1], a non-contiguous view; blocks index it without a flat copy.
    g = torch.Generator().manual_seed(2)
    full = torch.randn(3, 7, 9, generator=g) * 2  # (B, T+1, V)
    ids = torch.randint(0, 9, (3, 6), generator=g)
    c = torch.linspace(-1.0, 1.0, 18).view(3, 6)
    grads = []
    for contiguous in (True, False):
        x = full.clone().requires_grad_(True)
        view = x[:, :-1].contiguous() if contiguous else x[:, :-1]
        lp, ent = token_logprobs_and_entropy(view, ids, temperature=0.8, chunk_size=4)  # blocks split B and T
        (c * lp + c.flip(0) * ent).sum().backward()
        grads.append((lp.detach(), ent.detach(), x.grad))
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-6)
