"""LoRA adapters (model.policy.lora): only the adapters train and are optimised, and the frozen base,
adapters off, is the reference model. Exact resume of a LoRA run: tests/test_resume.py."""

from __future__ import annotations

import lightning as L
import pytest
import torch
from transformers import AutoModelForCausalLM

from stare_lit.errors import ConfigError
from stare_lit.train.lora import LoRA
from stare_lit.module import GRPOModule, LossSettings
from stare_lit.train.policy import Policy
from stare_lit.rollout.base import Sampling
from stare_lit.data.tasks.arithmetic import ArithmeticDataModule
from tests.helpers import DigitShare


def lora_module(model_dir: str, beta: float = 0.0, **lora) -> GRPOModule:
    policy = Policy(name_or_path=model_dir, lora=LoRA(rank=4, alpha=8.0, **lora))
    return GRPOModule(policy=policy, rewards=[DigitShare()], group_size=4, sampling=Sampling(max_new_tokens=8),
                      loss=LossSettings(beta=beta), optimizer=lambda params: torch.optim.AdamW(params, lr=1e-2))


@pytest.mark.slow
def test_only_the_adapters_train_and_are_optimised(tiny_model_dir, tmp_path):
    L.seed_everything(0)
    module = lora_module(tiny_model_dir, beta=0.05)
    trainer = L.Trainer(accelerator="cpu", devices=1, max_steps=2, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, limit_val_batches=0,
                        default_root_dir=tmp_path)
    module.configure_model()
    before = {k: v.clone() for k, v in module.model.state_dict().items()}
    trainer.fit(module, ArithmeticDataModule(batch_size=2, num_train_prompts=8, num_val_prompts=2))

    assert module._ref_model[0] is None  # β > 0, yet no second model
    named = dict(module.model.named_parameters())
    trainable = {n for n, p in named.items() if p.requires_grad}
    assert trainable and all(".lora_A." in n or ".lora_B." in n for n in trainable)
    in_optimizer = {id(p) for group in trainer.optimizers[0].param_groups for p in group["params"]}
    assert in_optimizer == {id(named[n]) for n in trainable}
    after = module.model.state_dict()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed and all(".lora_" in k for k in changed)  # the base did not move; adapters did
    assert any(".lora_B." in k for k in changed)  # B starts at 0: a B that moved is a real update


def test_the_frozen_base_is_the_reference(tiny_model_dir):
    torch.manual_seed(0)
    module = lora_module(tiny_model_dir, beta=0.1, dropout=0.5)
    module.configure_model()
    with torch.no_grad():
        for name, p in module.model.named_parameters():
            if ".lora_B." in name:
                p.normal_()  # adapters that change the output
    rollout = module.experience.sample(module.model, ["12+34=", "5+6="], 4, seed=1)
    ref = module.updater.reference_pass(module.model, module._ref_model[0], rollout)
    assert module.model.training  # back in train mode after the reference pass

    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval()
    expected, _ = module.updater.token_logprobs(base, rollout, slice(None))
    mask = rollout.completion_mask
    assert torch.allclose(ref[mask], expected[mask], atol=1e-6)
    module.model.eval()
    policy, _ = module.updater.token_logprobs(module.model, rollout, slice(None))
    assert not torch.allclose(policy[mask], expected[mask], atol=1e-3)


def test_lora_is_refused_under_fsdp(tiny_model_dir):
    module = lora_module(tiny_model_dir)
    module._device_mesh = object()  # what ModelParallelStrategy sets; the check comes before it is used
    with pytest.raises(ConfigError, match="model.policy.lora: .*not supported under ModelParallelStrategy"):
        module.configure_model()


@pytest.mark.parametrize("settings, message", [({"rank": 0}, "rank must be >= 1"), ({"alpha": 0}, "alpha must be > 0"),
                                               ({"dropout": 1.0}, "dropout must be in"),
                                               ({"target_modules": []}, "target_modules")])
def test_bad_lora_settings_name_the_setting(settings, message):
    with pytest.raises(ConfigError, match=message):
        LoRA(**settings)


@pytest.mark.slow
def test_adapters_get_gradients_under_gradient_checkpointing(tiny_model_dir):
    """Frozen embeddings give the checkpointed blocks an input without grad; the adapters must still learn."""
    model = Policy(name_or_path=tiny_model_dir, gradient_checkpointing=True, lora=LoRA(rank=4)).build_model().train()
    ids = torch.tensor([[4, 5, 13, 6, 7, 14]])
    model(input_ids=ids, labels=ids).loss.backward()
    grads = {n: p.grad for n, p in model.named_parameters() if p.requires_grad}
    assert grads and all(g is not None for g in grads.values())
    assert all(g.abs().sum() > 0 for n, g in grads.items() if ".lora_B." in n)  # (A starts with 0 grad: B = 0)


LAYERS = "down_proj, embed_tokens, gate_proj, k_proj, lm_head, o_proj, q_proj, up_proj, v_proj"  # the tiny Llama's


def test_target_modules_are_matched_as_peft_matches_them(tiny_model_dir):
    """A list entry is a module name or its last dotted parts (so 'proj' is not 'q_proj'); a string is a regex
    over the whole name. peft would skip 'qproj' in [q_proj, qproj] silently: it is refused, naming the layers."""
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    LoRA(target_modules=["self_attn.q_proj", "lm_head"]).check_targets(model)
    LoRA(target_modules=r"model\.layers\.0\.mlp\.(up|down)_proj").check_targets(model)
    for targets, bad in ((["q_proj", "qproj"], "qproj"), (["proj"], "proj"), ("q_proj", "q_proj")):  # a regex: whole name
        with pytest.raises(ConfigError, match=rf"target_modules: '{bad}' matches no module of LlamaForCausalLM; the "
                                              rf"layers LoRA can adapt here are {LAYERS} \(or target_modules: all-linear\)"):
            LoRA(target_modules=targets).check_targets(model)
    with pytest.raises(ConfigError, match="'self_attn' matches model.layers.0.self_attn, a LlamaAttention, which LoRA "
                                          "cannot adapt"):
        LoRA(target_modules=["self_attn"]).check_targets(model)


def test_unknown_targets_are_refused_when_the_policy_is_made_and_again_when_it_is_built(tiny_model_dir, monkeypatch):
    with pytest.raises(ConfigError, match="'qproj' matches no module"):
        Policy(name_or_path=tiny_model_dir, lora=LoRA(target_modules=["qproj"]))  # on a meta-device skeleton
    # Where no skeleton can be made first (a hub model not downloaded yet), building the model refuses it.
    monkeypatch.setattr(Policy, "skeleton", lambda self: None)
    policy = Policy(name_or_path=tiny_model_dir, lora=LoRA(target_modules=["qproj"]))
    with pytest.raises(ConfigError, match="'qproj' matches no module"):
        policy.build_model()


def test_the_skeleton_holds_no_weights(tiny_model_dir):
    skeleton = Policy(name_or_path=tiny_model_dir).skeleton()
    assert {p.device.type for p in skeleton.parameters()} == {"meta"}
    assert Policy(name_or_path=tiny_model_dir, trust_remote_code=True).skeleton() is None  # no remote code runs for a check
