"""stare-lit vs TRL's GRPOTrainer on the same work, measured alternately, in one run.

    python benchmarks/vs_trl.py                      # ~2 minutes on 2 CPU cores
    python benchmarks/vs_trl.py --model artifacts/arith-warmstart   # the warm-started policy instead

TRL is a benchmark-only extra (``pip install -e ".[bench]"``), never a runtime dependency.

Two parts:

1. Loss equality. One batch of completions is sampled once; stare-lit scores it with
   ``group_advantages`` + ``UpdateEngine.token_logprobs`` + ``policy_loss``, TRL with its own
   ``_generate_and_score_completions`` (generation replaced by the same completions) and
   ``_compute_loss``. Advantages, loss and every parameter's gradient are compared for each pair of
   matching settings (``LOSS_PAIRS``), off-policy (π_old = π_θ + noise) so that clipping is active.
2. Throughput. The same initial weights (a saved tiny Llama from a config, or ``--model``), the same
   prompts in the same order, G, max completion length, AdamW (lr, betas, eps, no weight decay),
   grad-norm clip 1.0, fp32, no gradient checkpointing, one optimizer step per generation. Each
   run starts one stare-lit process and one TRL process; once both are at their first step they
   take turns, one step at a time, S T T S S T ... (``common.alternate``), so a change in the
   machine's load hits both alike. We time every step (callbacks at step start/end), the time
   inside ``model.generate`` (wrapped the same way in both), count completion tokens the same way
   in both (up to and including the first EOS), and read each process's peak RSS. Completions
   differ between the two (different random streams), so tokens/s is reported next to s/step.
"""

from __future__ import annotations

import argparse
import copy
import sys
import tempfile
import time
from dataclasses import replace
from functools import partial
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from benchmarks.common import (Baton, alternate, emit, fmt, header, load, median, peak_rss_mib, rss_mib,  # noqa: E402
                               save_tiny_policy, spread, table, write_result)

# TRL setting ↔ stare-lit setting that give the same loss (beyond: beta=0, num_iterations=1,
# importance_sampling_level="token", advantage eps 1e-4, no log-ratio beyond ±20).
LOSS_PAIRS = [
    # name, TRL GRPOConfig kwargs, stare-lit kwargs (advantage scale + policy_loss)
    ("dapo / token-mean", dict(loss_type="dapo", scale_rewards="group", epsilon=0.2, epsilon_high=0.28),
     dict(scale="group", agg="token-mean", clip_low=0.2, clip_high=0.28)),
    ("bnpo / token-mean", dict(loss_type="bnpo", scale_rewards="group", epsilon=0.2, epsilon_high=0.28),
     dict(scale="group", agg="token-mean", clip_low=0.2, clip_high=0.28)),
    ("grpo / seq-mean-token-mean", dict(loss_type="grpo", scale_rewards="group", epsilon=0.2, epsilon_high=0.2),
     dict(scale="group", agg="seq-mean-token-mean", clip_low=0.2, clip_high=0.2)),
    ("dr_grpo / seq-mean-token-sum-norm, no std", dict(loss_type="dr_grpo", scale_rewards="none", epsilon=0.2,
                                                       epsilon_high=0.28),
     dict(scale="none", agg="seq-mean-token-sum-norm", clip_low=0.2, clip_high=0.28)),
    ("dapo, batch std, delta=3 / dual_clip=3", dict(loss_type="dapo", scale_rewards="batch", epsilon=0.2,
                                                    epsilon_high=0.28, delta=3.0),
     dict(scale="batch", agg="token-mean", clip_low=0.2, clip_high=0.28, dual_clip=3.0)),
]
ADVANTAGE_EPS = 1e-4  # TRL hard-codes (std + 1e-4); stare-lit's advantages.eps defaults to 1e-6


# ---------------------------------------------------------------- shared setup
def prompt_rows(n: int, seed: int, min_digits: int = 3, max_digits: int = 3, task: str = "arithmetic") -> list[dict]:
    if task == "partial_sums":  # the forking task's training prompts, as its data module draws them
        from stare_lit.data.tasks.partial_sums import PartialSumsDataModule

        data = PartialSumsDataModule(batch_size=1, num_train_prompts=max(n, 1))
        data.setup("fit")
        return data.train_rows[:n]
    from stare_lit.data.tasks.arithmetic import as_row, sample_problems

    return [as_row(a, b) for a, b in sample_problems(n, min_digits, max_digits, seed)]


def completion_lengths(completion: torch.Tensor, eos_id: int) -> torch.Tensor:
    """Tokens up to and including the first EOS (all of them when there is none): (N,)."""
    is_eos = completion == eos_id
    first = torch.where(is_eos.any(-1), is_eos.int().argmax(-1) + 1, completion.shape[1])
    return first


class GenerateTimer:
    """Wraps ``model.generate`` (instance attribute): time inside it and completion tokens out of it."""

    def __init__(self, model, eos_id: int) -> None:
        self.seconds, self.tokens, self.eos_id = 0.0, 0, eos_id
        inner = model.generate

        def timed(*args, **kwargs):
            t0 = time.perf_counter()
            out = inner(*args, **kwargs)
            self.seconds += time.perf_counter() - t0
            prompt = kwargs["input_ids"] if "input_ids" in kwargs else args[0]
            self.tokens += int(completion_lengths(out[:, prompt.shape[1]:], self.eos_id).sum())
            return out

        model.generate = timed

    def take(self) -> tuple[float, int]:
        out = (self.seconds, self.tokens)
        self.seconds, self.tokens = 0.0, 0
        return out


class RolloutTimer(GenerateTimer):
    """Wraps ``module.experience.sample`` (stare-lit's engine: FastRollout by default, which never calls ``generate``):
    time inside it and completion tokens out of it (EOS included, as ``completion_lengths`` counts)."""

    def __init__(self, module) -> None:  # noqa: D107 - no generate to wrap
        self.seconds, self.tokens = 0.0, 0
        inner = module.experience.sample

        def timed(*args, **kwargs):
            t0 = time.perf_counter()
            out = inner(*args, **kwargs)
            self.seconds += time.perf_counter() - t0
            self.tokens += int(out.completion_mask.sum())
            return out

        module.experience.sample = timed


def partial_sums_reward_fn(prompts, completions, **_):
    """TRL-style reward function around stare-lit's PartialSumsReward (same scores)."""
    from stare_lit.data.tasks.partial_sums import PartialSumsReward

    return PartialSumsReward()(prompts, completions)


def task_reward(task: str):
    """(stare-lit reward, TRL reward function) of a task."""
    if task == "partial_sums":
        from stare_lit.data.tasks.partial_sums import PartialSumsReward

        return PartialSumsReward(), partial_sums_reward_fn
    from stare_lit.data.tasks.arithmetic import ArithmeticReward

    return ArithmeticReward(), arithmetic_reward_fn


def arithmetic_reward_fn(prompts, completions, answer, **_):
    """TRL-style reward function around stare-lit's ArithmeticReward (same scores)."""
    from stare_lit.data.tasks.arithmetic import ArithmeticReward

    return ArithmeticReward()(prompts, completions, answer=answer)


def trl_config(out_dir: str, a, max_steps: int, **overrides):
    from trl import GRPOConfig

    kwargs = dict(
        output_dir=out_dir, per_device_train_batch_size=a.prompts * a.group_size, gradient_accumulation_steps=1,
        num_generations=a.group_size, max_completion_length=a.max_new_tokens, temperature=1.0, top_p=1.0, top_k=0,
        learning_rate=a.lr, optim="adamw_torch", weight_decay=0.0, adam_beta1=0.9, adam_beta2=0.999,
        adam_epsilon=1e-8, max_grad_norm=1.0, lr_scheduler_type="constant", warmup_steps=0, max_steps=max_steps,
        beta=0.0, num_iterations=1, loss_type="dapo", scale_rewards="group", epsilon=0.2, epsilon_high=0.28,
        use_cpu=True, bf16=False, fp16=False, gradient_checkpointing=False, report_to="none", save_strategy="no",
        logging_steps=1, disable_tqdm=True, shuffle_dataset=False, seed=a.seed, dataloader_num_workers=0,
        log_completions=False)
    return GRPOConfig(**(kwargs | overrides))


# ---------------------------------------------------------------- throughput workers
def worker_stare(a) -> dict:
    import lightning as L
    from torch.utils.data import DataLoader

    from stare_lit.data.datamodule import collate_prompts
    from stare_lit.module import GRPOModule, LossSettings
    from stare_lit.ops.advantages import AdvantageSettings
    from stare_lit.train.policy import Policy
    from stare_lit.train.step_log import StepOutput
    from stare_lit.train.update import UpdateSettings
    from stare_lit.rollout.base import Sampling

    class StepTimer(L.Callback):
        def __init__(self) -> None:
            self.steps: list[dict] = []

        def on_train_start(self, trainer, module) -> None:
            self.gen = RolloutTimer(module)

        def on_train_batch_start(self, trainer, module, batch, batch_idx) -> None:
            baton.wait()
            self.gen.take()
            self.t0, self.c0 = time.perf_counter(), time.process_time()

        def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx) -> None:
            step_s, cpu_s = time.perf_counter() - self.t0, time.process_time() - self.c0
            gen_s, tokens = self.gen.take()
            self.steps.append({"step_s": step_s, "cpu_s": cpu_s, "gen_s": gen_s, "tokens": tokens,
                               "reward": float(StepOutput.of(outputs).rewards.nanmean())})

    baton = Baton(a.ready_fd)
    L.seed_everything(a.seed, verbose=False)
    total = a.warmup + a.steps
    rows = prompt_rows(total * a.prompts, a.seed, task=a.task)
    module = GRPOModule(
        policy=Policy(name_or_path=a.model_dir), rewards=[task_reward(a.task)[0]], group_size=a.group_size,
        sampling=Sampling(temperature=1.0, max_new_tokens=a.max_new_tokens),
        loss=LossSettings(clip_low=0.2, clip_high=0.28, agg="token-mean"),
        advantages=AdvantageSettings(eps=ADVANTAGE_EPS), update=UpdateSettings(grad_clip=1.0),
        optimizer=partial(torch.optim.AdamW, lr=a.lr, weight_decay=0.0))
    timer = StepTimer()
    trainer = L.Trainer(accelerator="cpu", devices=1, max_steps=total, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0,
                        limit_val_batches=0, callbacks=[timer])
    loader = DataLoader(rows, batch_size=a.prompts, shuffle=False, collate_fn=collate_prompts)
    rss0 = rss_mib()
    t0 = time.perf_counter()
    trainer.fit(module, train_dataloaders=loader)
    return {"steps": timer.steps[a.warmup:], "fit_s": time.perf_counter() - t0, "rss0_mib": rss0,
            "peak_mib": peak_rss_mib()}


def worker_trl(a) -> dict:
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
    from transformers import set_seed
    from trl import GRPOTrainer

    class StepTimer(TrainerCallback):
        def __init__(self) -> None:
            self.steps: list[dict] = []
            self.trainer = None

        def on_train_begin(self, args, state, control, **kw) -> None:
            self.gen = GenerateTimer(self.trainer.model, self.trainer.processing_class.eos_token_id)

        def on_step_begin(self, args, state, control, **kw) -> None:
            baton.wait()
            self.gen.take()
            self.t0, self.c0 = time.perf_counter(), time.process_time()

        def on_step_end(self, args, state, control, **kw) -> None:
            step_s, cpu_s = time.perf_counter() - self.t0, time.process_time() - self.c0
            gen_s, tokens = self.gen.take()
            self.steps.append({"step_s": step_s, "cpu_s": cpu_s, "gen_s": gen_s, "tokens": tokens,
                               "reward": self.trainer._metrics["train"]["reward"][-1]})

    baton = Baton(a.ready_fd)
    set_seed(a.seed)
    total = a.warmup + a.steps
    rows = prompt_rows(total * a.prompts, a.seed, task=a.task)
    model = AutoModelForCausalLM.from_pretrained(a.model_dir, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(a.model_dir)
    timer = StepTimer()
    with tempfile.TemporaryDirectory() as out:
        trainer = GRPOTrainer(model=model, reward_funcs=[task_reward(a.task)[1]], args=trl_config(out, a, total),
                              train_dataset=Dataset.from_list(rows), processing_class=tokenizer, callbacks=[timer])
        timer.trainer = trainer
        rss0 = rss_mib()
        t0 = time.perf_counter()
        trainer.train()
        fit_s = time.perf_counter() - t0
    return {"steps": timer.steps[a.warmup:], "fit_s": fit_s, "rss0_mib": rss0, "peak_mib": peak_rss_mib()}


# ---------------------------------------------------------------- loss equality
def toy_reward(completions: list[str]) -> list[float]:
    """A deterministic graded reward with spread (digit count mod 5, scaled): the rewards of a
    random-weight policy on the real task are all 0, which would make every advantage 0."""
    return [(sum(ch.isdigit() for ch in text) % 5) / 4 for text in completions]


def compare_losses(model_dir: str, prompts: int = 4, group_size: int = 4, max_new_tokens: int = 16, seed: int = 0,
                   noise: float = 0.7, mixed_lengths: bool = False, pairs=None) -> list[dict]:
    """Same weights, same sampled completions: stare-lit's loss and gradients vs TRL's, per setting pair.

    Returns one dict per pair: max |Δ advantage|, |Δ loss|, relative gradient difference
    (‖g_ours − g_trl‖ / ‖g_trl‖), and max |Δ log π| of the completion tokens.
    """
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import GRPOTrainer

    from stare_lit.ops.advantages import group_advantages
    from stare_lit.ops.loss import policy_loss
    from stare_lit.module import GRPOModule
    from stare_lit.train.policy import Policy
    from stare_lit.rewards.base import Reward
    from stare_lit.rollout.base import Sampling, completion_mask
    from stare_lit.rollout.hf import generate

    class Toy(Reward):
        def __call__(self, prompts, completions, **columns):
            return toy_reward(completions)

    torch.manual_seed(seed)
    rows = prompt_rows(prompts, seed, 1 if mixed_lengths else 3, 3)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    base = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    sampling = Sampling(temperature=1.0, max_new_tokens=max_new_tokens)
    rollout = generate(base, tokenizer, [r["prompt"] for r in rows], group_size, sampling)
    # A random-weight policy sometimes samples <pad> itself: stare-lit ends the completion there, TRL
    # does not (and fails on an empty one). Make it a digit so both read the same completions.
    ids = rollout.input_ids.clone()
    comp = ids[:, rollout.prompt_length:]
    eos_seen = (comp == tokenizer.eos_token_id).int().cumsum(-1) > 0
    comp[(comp == tokenizer.pad_token_id) & ~eos_seen] = tokenizer.convert_tokens_to_ids("7")
    mask, truncated = completion_mask(comp, tokenizer.eos_token_id, tokenizer.pad_token_id)
    texts = tokenizer.batch_decode(comp.masked_fill(~mask, tokenizer.pad_token_id), skip_special_tokens=True)
    attention = torch.cat([rollout.attention_mask[:, :rollout.prompt_length], mask.long()], 1)
    rollout = replace(rollout, input_ids=ids, attention_mask=attention, completion_mask=mask, completions=texts,
                      truncated=truncated)
    N, T = mask.shape
    completion_lists = [c[m].tolist() for c, m in zip(rollout.completion_ids, mask)]
    rewards = torch.tensor(toy_reward(rollout.completions))
    g = torch.Generator().manual_seed(seed + 1)
    old_shift = noise * torch.randn(N, T, generator=g)  # π_old = π_θ·exp(−shift): ratios away from 1

    results = []
    for name, trl_kwargs, ours in pairs or LOSS_PAIRS:
        # ---- stare-lit
        module = GRPOModule(policy=Policy(name_or_path=model_dir), rewards=[Toy()], group_size=group_size,
                            sampling=sampling)
        module.model = copy.deepcopy(base).train()
        adv = group_advantages(rewards, group_size, ours["scale"], ADVANTAGE_EPS)  # (N,)
        logprobs, _ = module.updater.token_logprobs(module.model, rollout, slice(None))  # (N, T)
        old = (logprobs.detach() - old_shift)
        loss_ours, stats = policy_loss(logprobs, old, adv[:, None].expand(N, T), mask, clip_low=ours["clip_low"],
                                   clip_high=ours["clip_high"], dual_clip=ours.get("dual_clip"), agg=ours["agg"],
                                   norm=float(max_new_tokens))
        loss_ours.backward()
        grads_ours = [p.grad.detach().clone() for p in module.model.parameters()]

        # ---- TRL: its scoring path on the same completions, then its loss
        a = argparse.Namespace(prompts=prompts, group_size=group_size, max_new_tokens=max_new_tokens, lr=1e-4,
                               seed=seed)
        with tempfile.TemporaryDirectory() as out:
            trainer = GRPOTrainer(model=copy.deepcopy(base),
                                  reward_funcs=[lambda completions, **_: toy_reward(completions)],
                                  args=trl_config(out, a, 1, **trl_kwargs),
                                  train_dataset=Dataset.from_list(rows), processing_class=tokenizer)
            trainer._generate_single_turn = lambda *args, **kwargs: (completion_lists, None)
            trainer.model.train()
            inputs = trainer._generate_and_score_completions([r for r in rows for _ in range(group_size)])
            T_trl = inputs["completion_ids"].shape[1]
            with torch.no_grad():
                lp_trl, _, _ = trainer._get_per_token_logps_and_entropies(
                    trainer.model, torch.cat([inputs["prompt_ids"], inputs["completion_ids"]], 1),
                    torch.cat([inputs["prompt_mask"], inputs["completion_mask"]], 1), T_trl)
            inputs["old_per_token_logps"] = lp_trl - old_shift[:, :T_trl]
            trainer.current_gradient_accumulation_steps = 1
            loss_trl = trainer._compute_loss(trainer.model, inputs)
            loss_trl.backward()
            grads_trl = [p.grad.detach().clone() for p in trainer.model.parameters()]
        m = mask[:, :T_trl]
        num = sum(float((x - y).pow(2).sum()) for x, y in zip(grads_ours, grads_trl)) ** 0.5
        den = sum(float(y.pow(2).sum()) for y in grads_trl) ** 0.5
        results.append({
            "setting": name,
            "trl": ", ".join(f"{k}={v!r}" for k, v in trl_kwargs.items()),
            "ours": ", ".join(f"{k}={v!r}" for k, v in ours.items()),
            "mask_equal": bool(torch.equal(inputs["completion_mask"].bool(), m)),
            "adv_max_abs_diff": float((inputs["advantages"] - adv).abs().max()),
            "logp_max_abs_diff": float(((logprobs.detach()[:, :T_trl] - lp_trl).abs() * m).max()),
            "loss_ours": loss_ours.item(), "loss_trl": loss_trl.item(),
            "loss_abs_diff": abs(loss_ours.item() - loss_trl.item()),
            "clip_frac": stats["clip_frac"].item(),
            "dual_clip_frac": stats.get("dual_clip_frac", torch.zeros(())).item(),
            "grad_rel_diff": num / max(den, 1e-30),
        })
    return results


def equality_markdown(results: list[dict], mixed: list[dict]) -> str:
    rows = [[r["setting"], f"`{r['trl']}`", f"`{r['ours']}`", f"{r['adv_max_abs_diff']:.1e}",
             f"{r['logp_max_abs_diff']:.1e}", f"{r['loss_ours']:.6f}", f"{r['loss_trl']:.6f}",
             f"{r['loss_abs_diff']:.1e}", f"{r['grad_rel_diff']:.1e}",
             f"{r['clip_frac']:.2f} / {r['dual_clip_frac']:.2f}"] for r in results]
    out = table(["pair", "TRL GRPOConfig", "stare-lit", "max |Δ adv|", "max |Δ log π|", "loss stare-lit", "loss TRL",
                 "|Δ loss|", "‖Δ grad‖/‖grad‖", "clipped / dual-clipped tokens"], rows)
    if mixed:
        r = mixed[0]
        out += (f"\n\nPrompts of different lengths (left padding), first pair: max |Δ log π| = "
                f"{r['logp_max_abs_diff']:.1e}, |Δ loss| = {r['loss_abs_diff']:.1e}, ‖Δ grad‖/‖grad‖ = "
                f"{r['grad_rel_diff']:.1e}. TRL's training forward passes no position_ids (a left-padded row "
                "is scored at positions shifted by its padding) while stare-lit passes the positions `generate` "
                "used; with RoPE a constant shift does not change attention scores, so the two agree to "
                "rounding here (a model with absolute position embeddings would not).")
    return out


# ---------------------------------------------------------------- the driver
def summarize(runs: list[dict]) -> dict:
    steps = [s for r in runs for s in r["steps"]]
    step_s = [s["step_s"] for s in steps]
    return {
        "step_s": step_s,
        "cpu_s": [s["cpu_s"] for s in steps],
        "gen_s": [s["gen_s"] for s in steps],
        "train_s": [s["step_s"] - s["gen_s"] for s in steps],
        "tok_per_step": [s["tokens"] for s in steps],
        "tok_s": [s["tokens"] / s["step_s"] for s in steps],
        "gen_tok_s": [s["tokens"] / s["gen_s"] for s in steps],
        "train_tok_s": [s["tokens"] / (s["step_s"] - s["gen_s"]) for s in steps],
        "run_tok_s": [sum(s["tokens"] for s in r["steps"]) / sum(s["step_s"] for s in r["steps"]) for r in runs],
        "peak_mib": [r["peak_mib"] for r in runs],
        "peak_delta_mib": [r["peak_mib"] - r["rss0_mib"] for r in runs],
        "fit_s": [r["fit_s"] for r in runs],
        "reward": [s["reward"] for s in steps],
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--model", help="a saved policy directory (weights + tokenizer); default: a tiny Llama from a "
                                   "config with random weights, saved to a temp directory")
    p.add_argument("--vocab", type=int, default=16, help="vocabulary of the config-built model (16: the task's "
                                                         "characters; e.g. 32000 pads it with filler tokens)")
    p.add_argument("--prompts", type=int, default=16, help="prompts per step")
    p.add_argument("--group-size", type=int, default=8, help="G")
    p.add_argument("--task", choices=["arithmetic", "partial_sums"], default="arithmetic",
                   help="prompts and reward: 3-digit additions, or the forking task's (configs/partial_sums_*.yaml: "
                        "its prompts, reward, <= 36 new tokens, lr 3e-4; use --model artifacts/sums-warmstart)")
    p.add_argument("--max-new-tokens", type=int, default=None, help="max completion length (40; partial_sums: 36)")
    p.add_argument("--steps", type=int, default=8, help="timed optimizer steps per run")
    p.add_argument("--warmup", type=int, default=2, help="untimed steps at the start of each run")
    p.add_argument("--repeats", type=int, default=2, help="runs per framework (steps alternate within a run)")
    p.add_argument("--lr", type=float, default=None, help="AdamW lr (1e-4; partial_sums: 3e-4, as its configs)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1,
                   help="torch intra-op threads in both workers (0: torch's default, one per core). 1 by default: "
                        "on a shared 2-core machine two threads per process made every step several times slower "
                        "and 10× noisier for both frameworks")
    p.add_argument("--skip-equality", action="store_true")
    p.add_argument("--worker", choices=["stare", "trl"], help=argparse.SUPPRESS)
    p.add_argument("--model-dir", help=argparse.SUPPRESS)
    p.add_argument("--ready-fd", type=int, help=argparse.SUPPRESS)
    a = p.parse_args()
    forking = a.task == "partial_sums"
    a.max_new_tokens = a.max_new_tokens or (36 if forking else 40)
    a.lr = a.lr or (3e-4 if forking else 1e-4)
    if forking and not a.model and not a.worker:
        p.error("--task partial_sums needs --model (the task's warm start: stare-lit warmstart --task partial_sums, "
                "then --model artifacts/sums-warmstart)")
    if a.worker:
        if a.threads:
            torch.set_num_threads(a.threads)
        emit((worker_stare if a.worker == "stare" else worker_trl)(a) | {"threads": torch.get_num_threads()})
        return

    try:
        import trl  # noqa: F401
    except ImportError:
        sys.exit('TRL is not installed: pip install -e ".[bench]"')
    with tempfile.TemporaryDirectory() as tmp:
        model_dir = a.model or str(save_tiny_policy(Path(tmp) / "policy", seed=a.seed, vocab_size=a.vocab))
        md = [header("stare-lit vs TRL GRPOTrainer", "trl", "accelerate")]
        built = f"tiny Llama from a config (h128, 3 layers, vocab {a.vocab}, random weights)"
        md.append(f"- task: {a.task}; model: {a.model or built}; "
                  f"{a.prompts} prompts × G={a.group_size}, ≤ {a.max_new_tokens} new tokens, AdamW lr {a.lr}, "
                  f"{a.steps} timed steps (+{a.warmup} warm-up) per run, {a.repeats} runs, steps alternating "
                  "S T T S ...; "
                  f"torch threads per process: {a.threads or 'default (' + str(torch.get_num_threads()) + ')'}\n")

        if not a.skip_equality:
            t0 = time.perf_counter()
            eq = compare_losses(model_dir, seed=a.seed)
            mixed = compare_losses(model_dir, seed=a.seed, mixed_lengths=True, pairs=LOSS_PAIRS[:1])
            md.append("#### Same weights, same completions → same loss\n\n" + equality_markdown(eq, mixed) + "\n")
            print(md[-1], f"\n(equality check: {time.perf_counter() - t0:.0f} s)\n", flush=True)

        runs = {"stare": [], "trl": []}
        args = ["--model-dir", model_dir, "--prompts", str(a.prompts), "--group-size", str(a.group_size),
                "--max-new-tokens", str(a.max_new_tokens), "--steps", str(a.steps), "--warmup", str(a.warmup),
                "--lr", str(a.lr), "--seed", str(a.seed), "--task", a.task] + (["--threads", str(a.threads)] if a.threads else [])
        for i in range(a.repeats):
            # Both processes start together; steps then run one at a time: S T T S S T ...
            got = alternate(Path(__file__), {"stare": ["--worker", "stare", *args], "trl": ["--worker", "trl", *args]},
                            order_seed=i)
            for who, r in got.items():
                runs[who].append(r)
                s = summarize([r])
                print(f"[run {i + 1}/{a.repeats}] {who:5s}: {median(s['step_s']):.3f} s/step, "
                      f"{median(s['tok_s']):.0f} tok/s, peak {r['peak_mib']:.0f} MiB", flush=True)

    S, T = summarize(runs["stare"]), summarize(runs["trl"])
    metrics = [
        ("wall time per step (s) ↓", "step_s", False),
        ("CPU time per step, all threads (s) ↓", "cpu_s", False),
        ("  of which generate (s) ↓", "gen_s", False),
        ("  of which score + fwd/bwd + optimizer (s) ↓", "train_s", False),
        ("completion tokens per step", "tok_per_step", None),
        ("end-to-end tokens/s (completion tokens / step time) ↑", "tok_s", True),
        ("generated tokens/s (inside generate) ↑", "gen_tok_s", True),
        ("trained tokens/s (completion tokens / non-generate time) ↑", "train_tok_s", True),
        ("peak RSS of the process (MiB) ↓", "peak_mib", False),
        ("peak RSS above the pre-training RSS (MiB) ↓", "peak_delta_mib", False),
    ]
    rows = []
    for label, key, higher_better in metrics:
        ratio = median(S[key]) / median(T[key])
        if higher_better is None:
            verdict, best = "", ""
        else:
            pick = max if higher_better else min
            best = f"{pick(S[key]) / pick(T[key]):.3f}"
            speedup = ratio if higher_better else 1 / ratio
            verdict = f"{speedup:.2f}× {'better' if speedup >= 1 else 'worse'}"
        rows.append([label, spread(S[key]), spread(T[key]), f"{ratio:.3f}", best, verdict])
    md.append("#### Throughput (median (min–max) over all timed steps of all runs; RSS per run)\n\n"
              + table(["metric", "stare-lit", "TRL GRPOTrainer", "ratio stare-lit/TRL (medians)",
                       "ratio of the best steps", "stare-lit is (medians)"], rows))
    run_ratio = median(S["run_tok_s"]) / median(T["run_tok_s"])
    ratio_tok = median(S["tok_s"]) / median(T["tok_s"])
    md.append(f"\nPer-run end-to-end tokens/s, median of runs: stare-lit {fmt(median(S['run_tok_s']))}, "
              f"TRL {fmt(median(T['run_tok_s']))} → **{run_ratio:.2f}×**; s/step ratio TRL/stare-lit "
              f"**{median(T['step_s']) / median(S['step_s']):.2f}×**. Mean reward of the timed steps: stare-lit "
              f"{median(S['reward']):.3f}, TRL {median(T['reward']):.3f}. Whole `fit`/`train` call (incl. warm-up "
              f"steps and framework start-up): stare-lit {spread(S['fit_s'])} s, TRL {spread(T['fit_s'])} s. "
              "Load average "
              f"at the end: {load()}.\n")
    pairs = [a_ / b_ for a_, b_ in zip(S["tok_s"], T["tok_s"])]  # step i of each run: the steps alternate
    runs_r = [a_ / b_ for a_, b_ in zip(S["run_tok_s"], T["run_tok_s"])]
    md.append(f"**Headline** (end-to-end tokens/s, stare-lit / TRL): ratio of medians **{ratio_tok:.2f}×**; paired "
              f"alternated steps {min(pairs):.2f}–{max(pairs):.2f} (median {median(pairs):.2f}); per run "
              f"{', '.join(f'{x:.2f}' for x in runs_r)}.\n")
    text = "\n".join(md)
    print("\n" + "\n".join(md[-3:]))
    name = ("vs_trl" + (f"_{Path(a.model).name}" if a.model else "") + (f"_vocab{a.vocab}" if a.vocab != 16 else "")
            + (f"_threads{a.threads}" if a.threads != 1 else ""))
    print(f"\nwritten to {write_result(name, text)}")


if __name__ == "__main__":
    main()
