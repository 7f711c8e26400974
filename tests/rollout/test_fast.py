"""FastRollout (stare_lit.rollout.fast) against the reference engine, Hugging Face generate (HFGenerate).

Greedy decoding must give identical tokens; sampling must draw from the same distribution (both
engines' frequencies against hand-computed probabilities, within binomial error); the prompt cut, the module default, the YAML choice and
the fallback for other architectures are checked too.
"""

from __future__ import annotations

import warnings

import pytest
import torch
from transformers import AutoModelForCausalLM, GPT2Config, LlamaConfig, Qwen2Config

from stare_lit.rollout.fast import FastRollout
from stare_lit.rollout.hf import HFGenerate
from stare_lit.rollout.base import Sampling
from stare_lit.data.tasks.arithmetic import char_tokenizer

PROMPTS = ["12+34=", "1+2=", "999+1=", "7="]  # different lengths: left padding


def make(kind: str):
    common = dict(vocab_size=16, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                  max_position_embeddings=64, pad_token_id=0, eos_token_id=1, bos_token_id=1,
                  initializer_range=0.3)  # large weights: completions vary from token to token
    config = {"llama": lambda: LlamaConfig(num_attention_heads=2, num_key_value_heads=2, tie_word_embeddings=True,
                                           **common),
              "qwen2": lambda: Qwen2Config(num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=False,
                                           **common)}[kind]()  # Qwen2: GQA and q/k/v biases
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config)
    if kind == "qwen2":
        for layer in model.model.layers:  # nonzero biases, so a missing one would show
            for proj in (layer.self_attn.q_proj, layer.self_attn.k_proj, layer.self_attn.v_proj):
                torch.nn.init.normal_(proj.bias, std=0.3)
    return model


@pytest.fixture(scope="module")
def tokenizer():
    tok = char_tokenizer()
    tok.padding_side = "left"
    return tok


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["llama", "qwen2"])
@pytest.mark.parametrize("compact_below", [0.75, 1.0])
def test_greedy_tokens_identical(kind, compact_below, tokenizer):
    model = make(kind)
    sampling = Sampling(max_new_tokens=24)
    ref = HFGenerate()(model, tokenizer, PROMPTS, 1, sampling, greedy=True)
    fast = FastRollout(compact_below=compact_below)(model, tokenizer, PROMPTS, 1, sampling, greedy=True)
    assert torch.equal(fast.input_ids, ref.input_ids)
    assert torch.equal(fast.attention_mask, ref.attention_mask)
    assert torch.equal(fast.completion_mask, ref.completion_mask)
    assert fast.completions == ref.completions
    assert len(set(ref.completions)) > 1 and ref.completion_mask.sum(-1).unique().numel() > 1  # not degenerate
    assert model.training  # the engine restores train mode


def test_lora_policy_runs_on_the_fast_path_with_its_adapters(tokenizer):
    """A PEFT model (model.policy.lora) is decoded by FastRollout itself, adapters on, as generate decodes it."""
    from stare_lit.train.lora import LoRA

    model = LoRA(rank=4).apply(make("llama"))
    for module in model.modules():  # nonzero adapters, so decoding without them would show
        if hasattr(module, "lora_B"):
            for linear in module.lora_B.values():
                torch.nn.init.normal_(linear.weight, std=0.5)
    sampling = Sampling(max_new_tokens=16)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no fallback warning
        fast = FastRollout()(model, tokenizer, PROMPTS, 1, sampling, greedy=True)
    ref = HFGenerate()(model, tokenizer, PROMPTS, 1, sampling, greedy=True)
    with model.disable_adapter():
        base = HFGenerate()(model, tokenizer, PROMPTS, 1, sampling, greedy=True)
    assert torch.equal(fast.input_ids, ref.input_ids)
    assert not torch.equal(fast.input_ids, base.input_ids)


def test_max_prompt_length_cuts_like_the_reference(tokenizer):
    model = make("llama")
    sampling = Sampling(max_new_tokens=12, max_prompt_length=3)
    ref = HFGenerate()(model, tokenizer, PROMPTS, 1, sampling, greedy=True)
    fast = FastRollout()(model, tokenizer, PROMPTS, 1, sampling, greedy=True)
    assert ref.prompt_length == fast.prompt_length == 3
    assert torch.equal(fast.input_ids, ref.input_ids)


@pytest.fixture(scope="module")
def bpe_tokenizer():
    """A byte-level BPE tokenizer (as GPT-2's, Llama 3's, Qwen2's), trained here on a few strings:
    Hugging Face's stop-string matcher needs one (it cannot read the character tokenizer's vocabulary)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    core = Tokenizer(models.BPE())
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    core.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=300, special_tokens=["<pad>", "</s>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    core.train_from_iterator(["12+34=46", "the cat sat on the mat", "1+2=3", "answer: 42. done"] * 20, trainer)
    return PreTrainedTokenizerFast(tokenizer_object=core, pad_token="<pad>", eos_token="</s>", padding_side="left")


def test_stop_strings_end_completions_like_the_reference(bpe_tokenizer):
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(LlamaConfig(
        vocab_size=len(bpe_tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
        max_position_embeddings=64, pad_token_id=0, eos_token_id=1, initializer_range=0.3))
    prompts = ["12+34=", "the cat", "1+2=", "answer:"]
    free = HFGenerate()(model, bpe_tokenizer, prompts, 1, Sampling(max_new_tokens=16), greedy=True)
    stop = [bpe_tokenizer.decode(free.completion_ids[0, 3]), bpe_tokenizer.decode(free.completion_ids[2, 5])]
    sampling = Sampling(max_new_tokens=16, stop=stop)
    ref = HFGenerate()(model, bpe_tokenizer, prompts, 1, sampling, greedy=True)
    fast = FastRollout()(model, bpe_tokenizer, prompts, 1, sampling, greedy=True)
    assert torch.equal(fast.input_ids, ref.input_ids) and fast.completions == ref.completions
    assert ref.completion_mask[0].sum() <= 4 and ref.completion_mask[2].sum() <= 6  # the stop strings fired
    assert not ref.truncated[0] and ref.truncated.any()  # one row ended by its stop string, one not at all


def exact_first_token_probs(model, tokenizer, prompt: str, s: Sampling) -> torch.Tensor:
    """softmax(logits / T); keep the top k, renormalised; then keep the most likely tokens while the
    mass before them is < top_p (generate's order and rule); by hand."""
    ids = torch.tensor([tokenizer(prompt, add_special_tokens=False)["input_ids"]])
    with torch.no_grad():
        probs = torch.softmax(model(ids).logits[0, -1].double() / s.temperature, -1)  # (V,)
    order = probs.argsort(descending=True).tolist()
    top_k = torch.zeros_like(probs)
    top_k[order[:s.top_k]] = probs[order[:s.top_k]]
    top_k /= top_k.sum()
    kept, mass = torch.zeros_like(probs), 0.0
    for i in order[:s.top_k]:
        if mass >= s.top_p:
            break
        kept[i] = top_k[i]
        mass += top_k[i].item()
    return kept / kept.sum()


@pytest.mark.parametrize("engine", [HFGenerate(), FastRollout()], ids=["reference", "fast"])
def test_sampled_frequencies_match_the_distribution(engine, tokenizer):
    model = make("llama")
    s = Sampling(max_new_tokens=1, temperature=0.7, top_k=5, top_p=0.9)
    p = exact_first_token_probs(model, tokenizer, "12+34=", s)  # (V,)
    assert 2 <= (p > 0).sum() < 5  # top-k keeps 5, top-p cuts further
    n = 4000
    torch.manual_seed(0)
    out = engine(model, tokenizer, ["12+34="], n, s)
    counts = torch.bincount(out.completion_ids[:, 0], minlength=len(p)).double()
    assert counts[p == 0].sum() == 0  # nothing outside the kept set
    sigma = (n * p * (1 - p)).sqrt()
    assert ((counts - n * p).abs() <= 4.5 * sigma + 1e-9).all(), (counts / n, p)


def test_module_default_and_yaml_choice(tiny_policy):
    from jsonargparse import ArgumentParser

    from stare_lit.module import GRPOModule
    from tests.helpers import ScriptedReward

    module = GRPOModule(policy=tiny_policy, rewards=[ScriptedReward()], sampling=Sampling(max_new_tokens=4))
    assert isinstance(module.experience.engine, FastRollout)
    parser = ArgumentParser()
    parser.add_class_arguments(GRPOModule, "model", sub_configs=True)
    cfg = parser.parse_object({"model": {
        "policy": {"config": {"class_path": "transformers.LlamaConfig"}, "tokenizer": "x"},
        "rewards": [{"class_path": "tests.helpers.ScriptedReward"}],
        "rollout": {"class_path": "stare_lit.rollout.HFGenerate"}}})
    assert cfg.model.rollout.class_path == "stare_lit.rollout.HFGenerate"


def test_other_architectures_fall_back_with_one_warning(tokenizer):
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(GPT2Config(vocab_size=16, n_embd=32, n_layer=1, n_head=2, n_positions=64,
                                                        pad_token_id=0, eos_token_id=1, bos_token_id=1))
    engine, sampling = FastRollout(), Sampling(max_new_tokens=6)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        first = engine(model, tokenizer, PROMPTS, 1, sampling, greedy=True)
        engine(model, tokenizer, PROMPTS, 1, sampling, greedy=True)
    mine = [w for w in caught if "FastRollout cannot run" in str(w.message)]
    assert len(mine) == 1 and "HFGenerate" in str(mine[0].message)
    assert torch.equal(first.input_ids, HFGenerate()(model, tokenizer, PROMPTS, 1, sampling, greedy=True).input_ids)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graphs need a GPU")
def test_cuda_graphs_give_the_eager_tokens(tokenizer):
    model = make("qwen2").cuda()
    sampling = Sampling(max_new_tokens=24)
    eager = FastRollout(cuda_graphs=False)(model, tokenizer, PROMPTS, 1, sampling, greedy=True)
    engine = FastRollout(cuda_graphs=True)
    for _ in range(2):  # the second rollout replays the graphs captured in the first
        graphed = engine(model, tokenizer, PROMPTS, 1, sampling, greedy=True)
        assert torch.equal(graphed.input_ids, eager.input_ids)
    assert engine._decoder.graphs


def test_bad_compact_below_is_one_clear_error():
    from stare_lit.errors import ConfigError

    with pytest.raises(ConfigError, match="compact_below"):
        FastRollout(compact_below=0)
