"""Every YAML in configs/ parses and instantiates (litgpt's config-hub test, for our configs).

The policy path is pointed at a tiny saved model so that nothing downloads; everything else is
the file as shipped — except that a GPU config gets the CPU accelerator on a machine without one.
"""

from __future__ import annotations

from pathlib import Path

import lightning as L
import pytest
import torch
import yaml

from stare_lit.commands.cli import StareLitCLI
from stare_lit.module import GRPOModule

CONFIGS = sorted((Path(__file__).parents[1] / "configs").glob("*.yaml"))


@pytest.mark.parametrize("config", CONFIGS, ids=lambda p: p.name)
def test_config_parses_and_instantiates(config, tiny_model_dir, tmp_path):
    wants_gpu = yaml.safe_load(config.read_text()).get("trainer", {}).get("accelerator") in ("gpu", "cuda")
    cpu = ["--trainer.accelerator", "cpu"] if wants_gpu and not torch.cuda.is_available() else []
    # A policy built from a config downloads nothing: only its tokenizer path is made absolute.
    policy = yaml.safe_load(config.read_text()).get("model", {}).get("policy", {})
    source = (["--model.policy.tokenizer", str(Path(__file__).parents[1] / policy["tokenizer"])] if "config" in policy
              else ["--model.policy.name_or_path", tiny_model_dir, "--model.policy.tokenizer", tiny_model_dir])
    # The tiny stand-in tokenizer has no chat template, which a config's chat_template: true is refused for.
    prompt_format = yaml.safe_load(config.read_text()).get("model", {}).get("prompt_format") or {}
    cpu += ["--model.prompt_format.chat_template", "false"] if prompt_format.get("chat_template") else []
    cli = StareLitCLI(GRPOModule, L.LightningDataModule, subclass_mode_data=True, run=False,
                      args=["--config", str(config), *source, "--trainer.default_root_dir", str(tmp_path), *cpu])
    assert isinstance(cli.model, GRPOModule)
    assert isinstance(cli.datamodule, L.LightningDataModule)
    assert cli.model.tokenizer.pad_token_id is not None


def test_there_are_configs():
    names = {p.name for p in CONFIGS}
    assert {"arithmetic_grpo.yaml", "arithmetic_stare.yaml"} <= names
