"""Every overlay in configs/schemes/ changes what it claims, on a live step, against plain GRPO.

Each overlay is built from its YAML (on its base config, the task reward swapped for MixedReward so the
random tiny policy's groups are mixed) and takes one real training step on the same seeded rollout as
the base config's GRPO (tests/live.py). An overlay that names a scheme must hand the loss other
advantages, mask, weights or an extra loss than GRPO does; dapo and dr_grpo must change exactly what
their comments say.

A few settings are moved so that the effect can show on a small batch from a near-uniform random
policy, and only these (each would leave the scheme a no-op on this batch, not in a real run):
- STARE's target: the overlays' targets (0.15 nats, or relative to the first 10 steps) keep the gate
  closed (ω ≡ 1) on a random policy (~2.7 nats); the target is raised to 100 so the gate is open. The
  gate itself is tested in tests/schemes/test_stare.py and tests/schemes/test_stare_target.py.
- Clip-Cov: ratio 2e-4 of ~100 tokens is int(0.02) = 0 clipped tokens, and a near-uniform policy has
  no token with covariance in (1, 5); ratio 0.05 and cov_low 0 clip a few.
- ERPO: its progress term β·(log π_θ − log π_ref) is 0 until π_θ has moved; compared at step 2
  (step 1 is plain GRPO's, so both runs reach step 2 with the same weights and the same rollout).
- DAPO: the random policy ends most completions early (EOS or <pad>, ~1 in 9 tokens), so 16 rows
  rarely reach the overlong band (32 to 40 tokens); the step samples 8 prompts (32 rows) instead.
"""

from __future__ import annotations

from pathlib import Path

import lightning as L
import pytest
import torch
import yaml

from stare_lit.commands.cli import StareLitCLI
from stare_lit.module import GRPOModule
from stare_lit.ops.advantages import equal_groups, group_advantages
from tests.live import G, PROMPTS, assert_live, step_once

pytestmark = pytest.mark.slow  # each overlay is built from its YAML and takes real training steps

ROOT = Path(__file__).parents[1]
OVERLAYS = sorted((ROOT / "configs" / "schemes").rglob("*.yaml"))
TASK_REWARDS = ("stare_lit.data.ArithmeticReward", "stare_lit.data.PartialSumsReward")
MIXED = {"class_path": "tests.helpers.MixedReward"}


def base_of(overlay: Path) -> Path:
    return ROOT / "configs" / ("partial_sums_grpo.yaml" if overlay.parent.name == "partial_sums" else "arithmetic_grpo.yaml")


def mixed_rewards(path: Path, tmp_path: Path) -> Path:
    """The YAML at ``path`` with the task reward swapped for MixedReward (other rewards kept), and the
    two test-batch settings of the module docstring."""
    config = yaml.safe_load(path.read_text())
    model = config.setdefault("model", {})
    if "rewards" in model:
        model["rewards"] = [MIXED if r["class_path"] in TASK_REWARDS else r for r in model["rewards"]]
    scheme = model.get("scheme", {})
    args = scheme.setdefault("init_args", {}) if scheme else {}
    if scheme.get("class_path") == "stare_lit.schemes.STARE":
        args |= {"target_entropy": 100.0, "relative_target": None}
    if scheme.get("class_path") == "stare_lit.schemes.ClipCov":
        args |= {"ratio": 0.05, "cov_low": 0.0}
    out = tmp_path / f"{path.parent.name}_{path.name}"
    out.write_text(yaml.safe_dump(config))
    return out


def build(configs: list[Path], model_dir: str, tmp_path: Path, extra: tuple[str, ...] = ()) -> GRPOModule:
    args = [a for c in configs for a in ("--config", str(mixed_rewards(c, tmp_path)))] + list(extra)
    args += ["--model.policy.name_or_path", model_dir, "--model.group_size", str(G),
             "--trainer.default_root_dir", str(tmp_path), "--trainer.logger.init_args.save_dir", str(tmp_path)]
    return StareLitCLI(GRPOModule, L.LightningDataModule, subclass_mode_data=True, args=args, run=False).model


PROMPTS_8 = PROMPTS + ["4+4=", "6+2=", "7+1=", "5+3="]


def setting(overlay: Path) -> dict:
    """How the overlay's step is taken (see the module docstring): extra CLI args, steps, prompts."""
    if "dapo" in overlay.stem:
        return {"extra": (), "steps": 1, "prompts": PROMPTS_8}
    return {"extra": (), "steps": 2 if overlay.stem == "erpo" else 1, "prompts": PROMPTS}


@pytest.fixture(scope="module")
def grpo_step(tiny_model_dir, tmp_path_factory):
    """The base config's GRPO step in the overlay's setting, each computed once."""
    cache = {}

    def get(base: Path, extra: tuple, steps: int, prompts: list[str]):
        key = (base.name, extra, steps, tuple(prompts))
        if key not in cache:
            module = build([base], tiny_model_dir, tmp_path_factory.mktemp("grpo"), extra)
            cache[key] = step_once(module, prompts, steps=steps)
        return cache[key]

    return get


def names_a_scheme(overlay: Path) -> bool:
    return "scheme" in (yaml.safe_load(overlay.read_text()).get("model") or {})


def differs(a, b) -> bool:
    return a.shape != b.shape or not torch.equal(a, b)


@pytest.mark.parametrize("overlay", OVERLAYS, ids=lambda p: str(p.relative_to(ROOT / "configs" / "schemes")))
def test_overlay_changes_what_it_claims(overlay, tiny_model_dir, tmp_path, grpo_step):
    base, how = base_of(overlay), setting(overlay)
    grpo = grpo_step(base, how["extra"], how["steps"], how["prompts"])
    module = build([base, overlay], tiny_model_dir, tmp_path, how["extra"])
    step = step_once(module, how["prompts"], steps=how["steps"])
    out, ref = step.outputs, grpo.outputs
    assert_live(ref.rewards, ref.advantages, ref.mask)
    assert_live(out.rewards, out.advantages, out.mask)
    assert step.stats["grad_norm"] > 0
    if overlay.stem == "grpo":  # the base config's own scheme, named: the same step bit for bit
        assert all(torch.equal(getattr(out, k), getattr(ref, k)) for k in ("rewards", "advantages", "mask", "weights"))
        assert step.stats["loss"] == grpo.stats["loss"]
        return
    overlong = "OverlongPenalty" in overlay.read_text()
    if not overlong:
        assert torch.equal(out.rewards, ref.rewards)  # the same rollout, the same rewards
    if names_a_scheme(overlay):
        assert type(module.scheme).__name__ != "GRPO"
        changed = [k for k in ("advantages", "mask", "weights") if differs(getattr(out, k), getattr(ref, k))]
        if any(e is not None for e in step.extra):
            changed.append("extra_loss")
        assert changed, f"{overlay.name} gives the loss GRPO's advantages, mask and weights and no extra loss"
    if overlong:
        check_overlong_penalty(step, grpo)
    if "dapo" in overlay.stem:
        check_dynamic_sampling(step, grpo)
    if overlay.stem == "dr_grpo":
        check_dr_grpo(module, step, grpo)


def check_overlong_penalty(step, grpo) -> None:
    """DAPO's soft overlong penalty (L_max 40, L_c 8) is added to the reward."""
    out, ref = step.outputs, grpo.outputs
    lengths = ref.mask.sum(-1).float()  # tokens, EOS included (nothing dropped in GRPO's mask)
    penalty = torch.clamp(-(lengths - 32) / 8, max=0.0)
    assert (penalty < 0).any(), "no completion reached the overlong band: the penalty is untested"
    torch.testing.assert_close(out.rewards, ref.rewards + penalty)


def check_dynamic_sampling(step, grpo) -> None:
    """Groups with equal rewards leave the loss; the others keep their tokens."""
    out, ref = step.outputs, grpo.outputs
    flat = equal_groups(out.rewards, G).repeat_interleave(G)  # (N,)
    assert flat.any() and not flat.all(), "need a flat and a mixed group to see dynamic sampling"
    assert not out.mask[flat].any()  # dropped
    assert torch.equal(out.mask[~flat], ref.mask[~flat])  # kept as they were


def check_dr_grpo(module, step, grpo) -> None:
    """advantages.scale none: Â = r − mean of the group; seq-mean-token-sum-norm: mean over rows of
    Σ_t ℓ / L_max."""
    out = step.outputs
    plain = group_advantages(out.rewards, G, "none")  # (N,)
    torch.testing.assert_close(out.advantages, plain[:, None].expand_as(out.advantages))
    assert differs(out.advantages, grpo.outputs.advantages)  # GRPO divides by the group's std
    mask = out.mask.float()
    # On-policy, ρ = 1 and ω ≡ 1: ℓ_t = −Â_t.
    expected = (-(out.advantages * mask).sum(-1) / module.experience.sampling.max_new_tokens).mean().item()
    assert step.stats["loss"] == pytest.approx(expected, rel=1e-5)
    token_mean = -(out.advantages * mask).sum().item() / mask.sum().item()
    assert expected != pytest.approx(token_mean, rel=1e-3)
