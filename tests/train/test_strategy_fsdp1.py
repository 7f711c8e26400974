"""trainer.strategy: fsdp (Lightning's FSDPStrategy, FSDP1) is refused with one line before anything runs."""

from __future__ import annotations

import pytest
from lightning.pytorch.strategies import FSDPStrategy, ModelParallelStrategy

from stare_lit.errors import ConfigError
from stare_lit.train.strategy import AtomicModelParallelStrategy, refuse_fsdp1
from tests.cli import fit_args, run_main


@pytest.mark.parametrize("strategy", ["fsdp", "FSDP_cpu_offload", {"class_path": "lightning.pytorch.strategies.FSDPStrategy"},
                                      FSDPStrategy()])
def test_fsdp1_is_refused_naming_the_fsdp2_strategy(strategy):
    with pytest.raises(ConfigError, match=r"stare_lit\.train\.AtomicModelParallelStrategy") as err:
        refuse_fsdp1(strategy)
    assert "\n" not in str(err.value)


@pytest.mark.parametrize("strategy", ["auto", "ddp", None, {"class_path": "stare_lit.train.AtomicModelParallelStrategy"},
                                      AtomicModelParallelStrategy(), ModelParallelStrategy()])
def test_other_strategies_pass(strategy):
    refuse_fsdp1(strategy)


def test_cli_refuses_fsdp_before_anything_runs(tiny_model_dir, tmp_path, capsys):
    out = run_main(fit_args(tiny_model_dir, tmp_path, "--trainer.strategy", "fsdp"), capsys)
    line = out.strip().splitlines()
    assert len(line) == 1 and "stare_lit.train.AtomicModelParallelStrategy" in line[0], out
    assert not list(tmp_path.rglob("*.ckpt")) and not list(tmp_path.rglob("metrics.csv"))
