"""FSDP2 through Lightning's ModelParallelStrategy on 2 CPU processes (gloo), against 1 process.

The 2-process run is a subprocess of tests/train/fsdp_script.py: a ``Trainer(devices=2)`` inside pytest
would make Lightning re-launch pytest itself as rank 1. Both runs see the same 4 prompts per step
(2 ranks × 2 or 1 × 4) and the same completions (each prompt sampled on its own, seeded from its
text), so the world-level loss, the gradient norm and the weights after two steps must agree up to
float rounding. The 2-process run then saves a sharded checkpoint and resumes it for a third step.
"""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch.distributed as dist

from tests.train.fsdp_script import run

SCRIPT = Path(__file__).with_name("fsdp_script.py")

pytestmark = [pytest.mark.slow, pytest.mark.skipif(not (dist.is_available() and dist.is_gloo_available()),
                                                  reason="needs torch.distributed with the gloo backend")]


def launch(model_dir: str, out: Path, *args: str, timeout: float = 240) -> dict:
    """Run fsdp_script.py on 2 ranks; on a hang, kill its whole process group (rank 1 is rank 0's child)."""
    env = {**os.environ, "TOKENIZERS_PARALLELISM": "false"}
    env.pop("MASTER_PORT", None)  # let Lightning pick a free port
    proc = subprocess.Popen([sys.executable, str(SCRIPT), "--model", model_dir, "--out", str(out), "--devices", "2",
                             *args], cwd=SCRIPT.parents[2], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        output, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        output, _ = proc.communicate()
        pytest.fail(f"2-rank run did not finish in {timeout} s:\n{output[-4000:]}")
    assert proc.returncode == 0, output[-4000:]
    return json.loads(out.read_text())


@pytest.fixture(scope="module")
def two_ranks(tiny_model_dir, tmp_path_factory) -> dict:
    tmp = tmp_path_factory.mktemp("fsdp")
    return launch(tiny_model_dir, tmp / "two.json", "--ckpt", str(tmp / "ckpt")) | {"ckpt": str(tmp / "ckpt")}


@pytest.fixture(scope="module")
def one_process(tiny_model_dir, tmp_path_factory) -> dict:
    """The fp32 one-process run; its rollouts are saved for the bf16 run to replay."""
    rollouts = str(tmp_path_factory.mktemp("fp32") / "rollouts.pt")
    return run(tiny_model_dir, None, devices=1, save_rollouts_to=rollouts) | {"rollouts": rollouts}


def test_parameters_are_sharded(two_ranks):
    assert two_ranks["param_type"] == "DTensor"
    assert two_ranks["local_numel"] < two_ranks["full_numel"]  # each rank holds about half
    assert two_ranks["local_numel"] >= two_ranks["full_numel"] // 2


def test_two_ranks_match_one_process(two_ranks, one_process):
    assert len(two_ranks["steps"]) == len(one_process["steps"]) == 2
    assert two_ranks["start_checksums"][0] == pytest.approx(one_process["start_checksums"][0], rel=1e-12)
    for sharded, single in zip(two_ranks["steps"], one_process["steps"]):
        assert sharded["tokens"] == single["tokens"]  # the same completions
        assert sharded["reward"] == pytest.approx(single["reward"], abs=1e-6)
        assert sharded["world_loss"] == pytest.approx(single["world_loss"], abs=1e-5)
        assert sharded["grad_norm"] == pytest.approx(single["grad_norm"], rel=1e-4)
        assert sharded["world_loss"] != 0.0 and sharded["grad_norm"] > 0  # a real update, not a flat batch
    # Weights after two AdamW steps on sharded parameters = after two steps on full ones.
    assert two_ranks["end_checksums"][0] == pytest.approx(one_process["end_checksums"][0], rel=1e-6)


def test_sharded_checkpoint_saves_and_resumes(two_ranks):
    assert two_ranks["checkpoint_is_dir"]
    files = two_ranks["checkpoint_files"]
    assert "meta.pt" in files and sum(f.endswith(".distcp") for f in files) == 2
    assert two_ranks["checkpoint_dir"] == ["last.ckpt"]  # step 2's save swapped in whole over step 1's
    assert two_ranks["start_global_step"] == [0, 2]
    assert two_ranks["start_adam_steps"] == [0.0, 2.0]  # optimizer state came back
    assert two_ranks["start_checksums"][1] == pytest.approx(two_ranks["end_checksums"][0], rel=1e-12)
    assert two_ranks["resumed_global_step"] == 3 and len(two_ranks["resumed_steps"]) == 1


def test_sharded_checkpoint_exports(two_ranks, tiny_model_dir, tmp_path):
    """`stare-lit export` reads the 2-rank sharded checkpoint in one process: the weights and logits of step 2."""
    import torch
    from transformers import AutoModelForCausalLM

    from stare_lit.commands.cli import main
    from tests.train.fsdp_script import PROBE_IDS

    fit_config = tmp_path / "fit.yaml"  # the script trains without LightningCLI: no config.yaml to find
    fit_config.write_text(f"model:\n  policy:\n    name_or_path: {tiny_model_dir}\n")
    main(["export", "--ckpt_path", str(Path(two_ranks["ckpt"]) / "last.ckpt"), "--out", str(tmp_path / "hf"),
          "--fit_config", str(fit_config)])
    exported = AutoModelForCausalLM.from_pretrained(tmp_path / "hf").eval()
    with torch.no_grad():
        logits = exported(input_ids=torch.tensor([PROBE_IDS])).logits.double()
    assert torch.allclose(logits, torch.tensor(two_ranks["end_logits"][0], dtype=torch.float64), rtol=0, atol=1e-5)
    checksum = sum(float((p.detach().double().flatten() * torch.linspace(0.5, 1.5, p.numel(), dtype=torch.float64)).sum())
                   for p in exported.parameters())  # as fsdp_script.checksum, over the same parameters
    assert checksum == pytest.approx(two_ranks["end_checksums"][0], rel=1e-12)
    assert checksum != pytest.approx(two_ranks["start_checksums"][0], rel=1e-9)  # trained weights, not the start


def test_bf16_mixed_precision_runs_sharded(tiny_model_dir, tmp_path, one_process):
    """policy.fsdp_mixed_precision: fp32 shards, bf16 all-gather and compute; close to the fp32 run.

    The bf16 run replays the fp32 run's rollout (--replay), so both train on identical tokens by
    construction. On-policy (ρ = 1) with π_θ = π_ref at step 1, the loss is −Σ Â / tokens whatever the
    precision: equal to float rounding. The gradient norm goes through bf16 matmuls (8-bit mantissa,
    ~0.4% per rounding): within 2%."""
    result = launch(tiny_model_dir, tmp_path / "bf16.json", "--steps", "1", "--mixed-precision",
                    "--replay", one_process["rollouts"])
    assert result["param_dtype"] == "torch.float32" and result["fsdp_compute_dtype"] == "torch.bfloat16"
    step, fp32 = result["steps"][0], one_process["steps"][0]
    assert step["tokens"] == fp32["tokens"] and step["reward"] == fp32["reward"]  # the same completions
    assert fp32["world_loss"] != 0.0 and fp32["grad_norm"] > 0  # DigitShare: a live step
    assert step["world_loss"] == pytest.approx(fp32["world_loss"], abs=1e-6)
    assert step["grad_norm"] == pytest.approx(fp32["grad_norm"], rel=2e-2)
    assert step["grad_norm"] != fp32["grad_norm"]  # bf16 compute really ran
