"""The reference rollout engine: Hugging Face ``generate`` (dynamic KV cache), any causal LM."""

from __future__ import annotations


import torch


from stare_lit.rollout.base import Rollout, RolloutEngine, Sampling, encode_prompts, full_parameters, to_rollout

class HFGenerate(RolloutEngine):
    """The reference engine: Hugging Face ``generate`` (dynamic KV cache), any causal LM."""

    def __call__(self, model, tokenizer, prompts, group_size, sampling, greedy=False) -> Rollout:
        return generate(model, tokenizer, prompts, group_size, sampling, greedy=greedy)


@torch.no_grad()
def generate(model, tokenizer, prompts: list[str], group_size: int, sampling: Sampling, greedy: bool = False) -> Rollout:
    """Sample ``group_size`` completions for every prompt (already formatted text) with ``model.generate``."""
    device = next(model.parameters()).device
    enc = encode_prompts(tokenizer, prompts, sampling, device)
    was_training = model.training
    model.eval()
    gen_kwargs = dict(max_new_tokens=sampling.max_new_tokens, num_return_sequences=group_size,
                      pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id, use_cache=True)
    if greedy:
        gen_kwargs.update(do_sample=False, temperature=None, top_p=None, top_k=None)
    else:  # top_k 0 passed as 0: None would let generate fill in its default of 50
        gen_kwargs.update(do_sample=True, temperature=sampling.temperature, top_p=sampling.top_p,
                          top_k=sampling.top_k)
    if sampling.stop:
        gen_kwargs.update(stop_strings=sampling.stop, tokenizer=tokenizer)
    try:
        with full_parameters(model) as sharded:
            if sharded:  # gathered: no collective after the first token, so ranks may stop at different lengths
                gen_kwargs["synced_gpus"] = False
            out = model.generate(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"], **gen_kwargs)
    finally:
        model.train(was_training)
    return to_rollout(tokenizer, enc, out, group_size)
