"""``stare-lit export``: a training checkpoint → a Hugging Face model directory.

    stare-lit export --ckpt_path runs/arithmetic_stare/version_0/checkpoints/last.ckpt --out exported/
    stare-lit export --ckpt_path .../last.ckpt --out adapter/ --adapter_only true   # LoRA: the PEFT adapter

The checkpoint is a single ``.ckpt`` file or a sharded checkpoint's directory (FSDP2,
``ModelParallelStrategy``); both are read in one process, without a process group, with
``weights_only`` loading. Checkpoints hold weights, not the model's architecture: the policy is
rebuilt from the run's ``model.policy`` settings, read from the ``config.yaml`` that ``stare-lit fit``
(LightningCLI) saves in the run's folder — ``<run>/config.yaml`` for ``<run>/checkpoints/last.ckpt`` —
or from the YAML given as ``--fit_config``. The result loads with ``AutoModelForCausalLM.from_pretrained``
and ``AutoTokenizer.from_pretrained`` (or, with ``--adapter_only``, ``PeftModel.from_pretrained`` on the
base model).
"""

from __future__ import annotations

import warnings
from pathlib import Path

import torch
from jsonargparse import ArgumentParser

from stare_lit.commands.inputs import check_output_dir, read_yaml_mapping
from stare_lit.train.checkpoint import AtomicCheckpointIO, check_checkpoint_file
from stare_lit.errors import ConfigError, check
from stare_lit.train.lora import has_adapters
from stare_lit.train.policy import Policy

PREFIX = "model."  # GRPOModule.model: the policy's keys in the module's state dict


def export(*, ckpt_path: str, out: str, adapter_only: bool = False, fit_config: str | None = None) -> None:
    """Write the policy of a training checkpoint as a Hugging Face model directory (weights + tokenizer).

    LoRA adapters are merged into the weights, unless ``adapter_only``.

    Args:
        ckpt_path: a checkpoint of ``stare-lit fit``: a .ckpt file or a sharded checkpoint's directory.
        out: the directory to write (created; files of the same name are replaced).
        adapter_only: save only the LoRA adapter, as a PEFT adapter directory (the run must use
            model.policy.lora).
        fit_config: the YAML whose model.policy built the run; default: the config.yaml that
            ``stare-lit fit`` saved in the run's folder, next to checkpoints/.
    """
    check_checkpoint_file(ckpt_path)
    check_output_dir(out, "export --out")
    policy = policy_of_run(ckpt_path, fit_config)
    check(not adapter_only or policy.lora is not None,
          "export --adapter_only: this run's model.policy has no LoRA adapters (model.policy.lora); export the whole "
          "model without --adapter_only")
    model, tokenizer = load_policy(ckpt_path, policy, merge=not adapter_only)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    what = "LoRA adapter (PEFT)" if adapter_only else "model"
    print(f"exported the {what} of {ckpt_path} to {out}")


def load_policy_from_checkpoint(ckpt_path: str, fit_config: str | None = None, merge: bool = True):
    """The policy of a ``stare-lit fit`` checkpoint, on the CPU in eval mode, and its tokenizer.

    Args:
        ckpt_path: a .ckpt file or a sharded checkpoint's directory.
        fit_config: the YAML with the run's model.policy (default: the run's saved config.yaml).
        merge: merge LoRA adapters into the weights (a plain transformers model); False keeps the
            PEFT model.

    Returns:
        (model, tokenizer).
    """
    check_checkpoint_file(ckpt_path)
    return load_policy(ckpt_path, policy_of_run(ckpt_path, fit_config), merge)


def load_policy(ckpt_path: str, policy: Policy, merge: bool = True):
    """``policy`` built, with the weights of the checkpoint ``ckpt_path``; see load_policy_from_checkpoint."""
    model = policy.build_model()
    mine = model.state_dict()
    saved = read_policy_state(Path(ckpt_path), mine)
    missing, unexpected = sorted(set(mine) - set(saved)), sorted(set(saved) - set(mine))
    if missing or unexpected:
        detail = f"{missing[0]} is not in it" if missing else f"it holds {unexpected[0]}, which this model lacks"
        raise ConfigError(f"ckpt_path: the checkpoint holds another model than the run's model.policy builds "
                          f"({detail}); give the run's YAML with --fit_config")
    model.load_state_dict(saved)
    if merge and has_adapters(model):
        model = model.merge_and_unload()
    return model.eval(), policy.load_tokenizer()


def policy_of_run(ckpt_path: str, fit_config: str | None = None) -> Policy:
    """``model.policy`` of the run that wrote ``ckpt_path``, from ``fit_config`` or the run's config.yaml."""
    ckpt = Path(ckpt_path)
    if fit_config is None:
        found = [d / "config.yaml" for d in (ckpt.parent.parent, ckpt.parent) if (d / "config.yaml").is_file()]
        check(bool(found), f"export --fit_config: no config.yaml in the run folder of '{ckpt_path}' (stare-lit fit "
                           "saves one next to checkpoints/); give the YAML the run was started with")
        fit_config = str(found[0])
    settings = read_yaml_mapping(fit_config, "export --fit_config", "stare-lit fit YAML config")
    model = settings.get("model")
    policy = model.get("policy") if isinstance(model, dict) else None
    check(isinstance(policy, dict), f"export --fit_config: '{fit_config}' has no model.policy section")
    parser = ArgumentParser(exit_on_error=False)
    parser.add_argument("--policy", type=Policy)
    return parser.instantiate_classes(parser.parse_object({"policy": policy})).policy


def read_policy_state(path: Path, template: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The policy's weights in a checkpoint, keyed as in ``template`` (the built policy's state dict)."""
    if path.is_dir():  # sharded (torch.distributed.checkpoint): read every shard into full tensors
        from torch.distributed.checkpoint import load

        wanted = {PREFIX + k: v.detach().clone() for k, v in template.items()}
        with warnings.catch_warnings():  # "torch.distributed is ... uninitialized, assuming ... a single process": yes
            warnings.filterwarnings("ignore", message=".*assuming the intent is to load in a single process")
            load({"state_dict": wanted}, checkpoint_id=path, no_dist=True)
        return {k[len(PREFIX):]: v for k, v in wanted.items()}
    state = AtomicCheckpointIO(weights_only=True).load_checkpoint(path)["state_dict"]
    return {k[len(PREFIX):]: v for k, v in state.items() if k.startswith(PREFIX)}
