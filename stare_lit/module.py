"""The GRPO LightningModule: rollout → rewards → advantages → token weights → clipped loss.

One training step (one batch of prompts from the DataModule)::

    generate G completions per prompt (no_grad, eval mode, KV cache)
    score them with the verifiable rewards              -> r (N,)
    group-relative advantages                           -> Â (N,), broadcast to (N, T)
    [old pass: log π_old and entropy, no_grad]          only when μ > 1 or micro-batching
    scheme.update(token-mean entropy of π_old)          STARE's gate, once per step
    μ times: for each micro-batch: log π_θ, entropy -> ω = scheme.weights -> loss -> backward
             then clip gradients, optimizer step, LR scheduler step

Manual optimisation, because one batch of prompts yields μ optimizer steps: Lightning's
``global_step`` (and so ``trainer.max_steps``) counts optimizer steps, i.e. rollout batches × μ. A batch
whose groups are all dropped (dynamic sampling) makes no optimizer step and does not count.

With μ = 1 and one micro-batch, π_old is π_θ itself: the training forward pass doubles as the
"old" pass (its detached log-probs are log π_old and ρ ≡ 1 in value), saving a forward.

``training_step`` returns detached per-token tensors (entropy, surprisal, advantages, weights,
mask) and the rewards; callbacks read them in ``on_train_batch_end``.

A NaN or ±inf anywhere in a step (logits, log-probs, advantages, loss, gradients) skips the step on
every rank, with no optimizer step; ``max_nonfinite_steps`` in a row save the last good state and stop.
Checkpoints carry what exact resume needs beyond Lightning's own state (``on_save_checkpoint``).
"""

from __future__ import annotations

import math
import time
from contextlib import nullcontext
from functools import partial
from dataclasses import dataclass, replace

import lightning as L
import torch
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from lightning.pytorch.utilities import rank_zero_warn
from torch import Tensor
from torchmetrics import MeanMetric

from stare_lit.data.rows import check_prompts
from stare_lit.errors import check
from stare_lit.ops.advantages import AdvantageScale, equal_groups, group_advantages
from stare_lit.ops.distributed import all_reduce_sum, masked_mean
from stare_lit.ops.logprobs import chunk_for_vocab, model_logprobs_and_entropy
from stare_lit.ops.loss import LossSettings, policy_loss
from stare_lit.ops.metrics import sample_accuracy
from stare_lit.rewards.base import Reward
from stare_lit.rewards.runner import RewardRunner, ScoredBatch, Scoring
from stare_lit.rollout.base import Rollout, RolloutEngine, Sampling, format_prompts
from stare_lit.rollout.fast import FastRollout
from stare_lit.rollout.streams import TRAIN, VALIDATION, rng_states, seeded, set_rng_states, stream_seed
from stare_lit.schemes.base import GRPO, TokenBatch, TokenWeighting
from stare_lit.train import preemption
from stare_lit.train.checkpoint import check_same_model
from stare_lit.train.checks import check_finite_floats, check_module_settings, check_optimizer
from stare_lit.train.faults import (
    NonFiniteStep,
    require_finite,
    sampler_fault,
    save_last_good_and_stop,
    skipped_step_outputs,
)
from stare_lit.train.lora import reference_model
from stare_lit.train.policy import Policy
from stare_lit.train.step_log import StepKeys, step_metrics
from stare_lit.train.strategy import refuse_fsdp1
from stare_lit.train.update_rows import (
    inert_rows,
    length_sorted_chunks,
    micro_logprobs,
    pad_columns,
    row_inputs,
    skipped_rows_old,
)


@dataclass
class Tokens:
    """Per-token tensors of one rollout batch, all (N, T) unless noted."""

    old_logprobs: Tensor
    entropy: Tensor  # of π_old
    advantages: Tensor
    mask: Tensor  # bool
    ref_logprobs: Tensor | None = None
    weights: Tensor | None = None  # ω of the first update


class GRPOModule(L.LightningModule):
    """GRPO with pluggable token weighting (STARE, ...) for RL with verifiable rewards.

    Args:
        policy: where the model and tokenizer come from.
        rewards: verifiable reward functions; their weighted sum is the reward.
        reward_weights: one weight per reward (default: all 1).
        scoring: how the rewards run: what a reward error does (fail fast, or score None) and a
            time limit per completion (rewards then run in a worker process); see
            stare_lit.rewards.runner.Scoring.
        scheme: token-weighting scheme (default GRPO, ω ≡ 1); e.g. stare_lit.schemes.stare.STARE.
        group_size: G, completions sampled per prompt (>= 2).
        sampling: how completions are sampled.
        rollout: the engine that samples them (default stare_lit.rollout.FastRollout; the reference
            engine, Hugging Face generate: stare_lit.rollout.HFGenerate).
        loss: the clipped surrogate's settings.
        advantage_scale: "group" (GRPO), "none" (Dr. GRPO) or "batch" std scaling.
        advantage_eps: added to the std.
        dynamic_sampling: drop groups whose rewards are all equal from the loss (DAPO); they carry
            no policy gradient but would otherwise dilute token-mean.
        updates_per_batch: μ, optimizer steps per rollout batch (1 = on-policy).
        micro_batch_size: completions per forward/backward (gradient accumulation); None = all.
        grad_clip: max global gradient norm (> 0), or None for no clipping.
        optimizer: any torch optimizer (class_path + init_args in YAML).
        lr_scheduler: any torch LR scheduler, stepped once per optimizer step.
        logprob_chunk_size: token positions of the log-prob/entropy pass computed at once; None: follow the
            vocabulary (stare_lit.ops.logprobs.chunk_for_vocab: 1024 up to an 8k vocabulary, 55 at 151,936).
        chat_template: wrap prompts with the tokenizer's chat template.
        system_prompt: system message when chat_template is on.
        val_samples: k, samples per held-out prompt in validation: logs mean@k, unbiased pass@j for
            every j = 1 … k, and distinct correct completions per prompt.
        val_temperature: sampling temperature in validation (0 = greedy, needs val_samples 1).
        accuracy_reward: index of the reward that defines "correct" (value >= 1) in validation.
        peak_flops: the device's peak FLOP/s (e.g. 989e12 for an H100 in bf16); when set, the
            update's model FLOPs utilisation (6·params·trained tokens / update time) is logged.
        max_nonfinite_steps: a step whose log-probs, entropy, advantages, loss or gradients hold a NaN
            or ±inf is skipped (no optimizer step; counted in train/nonfinite_steps, with a warning);
            after this many in a row the run saves the last good state and stops with an error.
        skip_inert_rows: with β = 0 and a scheme that declares zero-advantage rows inert
            (``TokenWeighting.zero_advantage_inert``), the update does not forward or backward the rows
            whose gradient is zero (Â = 0, or no loss token); the loss and gradient are unchanged.
    """

    def __init__(
        self,
        policy: Policy,
        rewards: list[Reward],
        reward_weights: list[float] | None = None,
        scoring: Scoring | None = None,
        scheme: TokenWeighting | None = None,
        group_size: int = 8,
        sampling: Sampling | None = None,
        rollout: RolloutEngine | None = None,
        loss: LossSettings | None = None,
        advantage_scale: AdvantageScale = "group",
        advantage_eps: float = 1e-6,
        dynamic_sampling: bool = False,
        updates_per_batch: int = 1,
        micro_batch_size: int | None = None,
        grad_clip: float | None = 1.0,
        optimizer: OptimizerCallable = torch.optim.AdamW,
        lr_scheduler: LRSchedulerCallable | None = None,
        logprob_chunk_size: int | None = None,
        chat_template: bool = False,
        system_prompt: str | None = None,
        val_samples: int = 4,
        val_temperature: float = 1.0,
        accuracy_reward: int = 0,
        peak_flops: float | None = None,
        max_nonfinite_steps: int = 3,
        skip_inert_rows: bool = True,
    ) -> None:
        super().__init__()
        check(group_size >= 2, f"model.group_size must be >= 2 (GRPO compares samples of a prompt), got {group_size}")
        self.reward_runner = RewardRunner(rewards, reward_weights, scoring or Scoring())  # checks both
        check_module_settings(rewards=len(rewards), updates_per_batch=updates_per_batch,
                              micro_batch_size=micro_batch_size, accuracy_reward=accuracy_reward,
                              val_samples=val_samples, val_temperature=val_temperature,
                              max_nonfinite_steps=max_nonfinite_steps, grad_clip=grad_clip,
                              advantage_eps=advantage_eps, logprob_chunk_size=logprob_chunk_size,
                              peak_flops=peak_flops, system_prompt=system_prompt, chat_template=chat_template)
        check_optimizer(optimizer, lr_scheduler)
        self.automatic_optimization = False
        self.policy = policy
        self.scheme = scheme if scheme is not None else GRPO()
        check_finite_floats(self.scheme, "model.scheme.init_args")
        check(not self.scheme.needs_whole_groups or micro_batch_size is None or micro_batch_size % group_size == 0,
              f"model.micro_batch_size must be a multiple of model.group_size ({group_size}) for "
              f"{type(self.scheme).__name__}, whose statistics are per group")
        self.group_size = group_size
        self.sampling = sampling or Sampling()
        self.rollout_engine = rollout if rollout is not None else FastRollout()
        self.loss_settings = loss or LossSettings()
        self.advantage_scale = advantage_scale
        self.advantage_eps = advantage_eps
        self.dynamic_sampling = dynamic_sampling
        self.updates_per_batch = updates_per_batch
        self.micro_batch_size = micro_batch_size
        self.grad_clip = grad_clip
        self.optimizer_factory = optimizer
        self.scheduler_factory = lr_scheduler
        self.logprob_chunk_size = logprob_chunk_size
        self.chat_template = chat_template
        self.system_prompt = system_prompt
        self.val_samples = val_samples
        self.val_temperature = val_temperature
        self.accuracy_reward = accuracy_reward
        self.peak_flops = peak_flops
        self.max_nonfinite_steps = max_nonfinite_steps
        self.skip_inert_rows = skip_inert_rows
        self.tokenizer = policy.load_tokenizer()  # early: a bad path fails before anything is written
        check(not chat_template or getattr(self.tokenizer, "chat_template", None) is not None,
              "model.chat_template is true but the tokenizer has no chat template; set it to false")
        self.model = None
        self._ref_model = [None]  # in a list: frozen, not a submodule, not in checkpoints
        # One world-level mean per validation metric (mean@k, pass@1..k, distinct_correct), over prompts.
        self.val_metrics = torch.nn.ModuleDict({key.replace("@", "_at_"): MeanMetric() for key in
                                                sample_accuracy([[False] * val_samples], [[""] * val_samples])})
        # Run state that is not a tensor, saved in checkpoints (on_save_checkpoint) for exact resume.
        self._rollout_seed: int | None = None  # base seed of the rollouts (Sampling.seed)
        self.rollouts = 0  # training rollouts so far: the counter of the sampling stream
        self.nonfinite_steps = 0  # skipped for non-finite numbers, in all
        self.nonfinite_in_a_row = 0
        self._rng_to_restore: dict | None = None  # global RNG states from a checkpoint, set at the next batch
        self.step_keys = StepKeys()  # NaN for a metric a step does not log (stare_lit.train.step_log)

    # ---------------------------------------------------------------- model
    def configure_model(self) -> None:
        """Build the policy (and the frozen reference); under ModelParallelStrategy, shard them.

        With a device mesh (Lightning's ModelParallelStrategy) both models are FSDP2-sharded over
        its "data_parallel" dimension (``Policy.shard``: each decoder layer, then the root). Every
        rank builds the full model in host memory first, then ``fully_shard`` keeps its dim-0 shard
        of every parameter and moves it to the rank's device. Tensor parallelism is not supported:
        the loss's world-level normalisers count every rank as holding different data.
        """
        if self.model is not None:
            return  # idempotent: Lightning may call it again (e.g. under FSDP)
        model = self.policy.build_model().train()  # from_pretrained hands it back in eval mode
        ref = None
        if self.needs_reference and self.policy.lora is None:  # with LoRA the frozen base is the reference
            ref = self.policy.build_model().eval().requires_grad_(False)
        if self.device_mesh is not None:
            check(self.policy.lora is None, "model.policy.lora: LoRA adapters are not supported under "
                                            "ModelParallelStrategy (FSDP2) yet; train them in one process")
            check(self.device_mesh["tensor_parallel"].size() == 1,
                  "trainer.strategy: ModelParallelStrategy needs tensor_parallel_size: 1 and data_parallel_size: "
                  "the number of processes (stare-lit shards with FSDP only)")
            for m in (model, ref):
                if m is not None:
                    self.policy.shard(m, self.device_mesh["data_parallel"])
        self.model = model
        self._ref_model[0] = ref

    @property
    def needs_reference(self) -> bool:
        return self.loss_settings.beta > 0 or self.scheme.needs_reference

    def configure_optimizers(self):
        optimizer = self.optimizer_factory([p for p in self.model.parameters() if p.requires_grad])  # LoRA: adapters only
        if self.scheduler_factory is None:
            return optimizer
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": self.scheduler_factory(optimizer),
                                                         "interval": "step"}}

    def teardown(self, stage: str) -> None:
        self.reward_runner.close()  # its worker process, if scoring.timeout started one

    def setup(self, stage: str) -> None:
        refuse_fsdp1(self.trainer.strategy)  # the Python API's way in; the CLI refuses it while parsing

    def on_fit_start(self) -> None:
        if self._ref_model[0] is not None:
            self._ref_model[0].to(self.device)

    def on_train_start(self) -> None:
        preemption.watch(self.trainer)  # after Lightning installed its signal handlers (stare_lit.train.preemption)

    def on_train_batch_end(self, outputs, batch, batch_idx: int) -> None:
        # The step is complete: where a scheduled checkpoint is saved, a signal's last.ckpt is too.
        preemption.stop_if_signalled(self.trainer)

    # ---------------------------------------------------------------- pieces of a step
    @property
    def rollout_seed(self) -> int:
        """Base seed of the sampling: ``sampling.seed``, else the run's seed (from a checkpoint once saved)."""
        if self._rollout_seed is None:
            self._rollout_seed = self.sampling.seed if self.sampling.seed is not None else torch.initial_seed()
        return self._rollout_seed

    def rollout(self, prompts: list[str], group_size: int, greedy: bool = False, seed: int | None = None) -> Rollout:
        """Sample ``group_size`` completions per prompt; from the stream ``seed`` if given (see stare_lit.rollout.streams)."""
        check_prompts(prompts)
        texts = format_prompts(self.tokenizer, prompts, self.chat_template, self.system_prompt)
        if seed is None:
            return self.rollout_engine(self.model, self.tokenizer, texts, group_size, self.sampling, greedy=greedy)
        with seeded(seed, self.device):
            return self.rollout_engine(self.model, self.tokenizer, texts, group_size, self.sampling, greedy=greedy)

    def score(self, batch: dict[str, list], rollout: Rollout, group_size: int) -> ScoredBatch:
        """Rewards of the rollout (``total`` (N,) on the module's device); the batch's columns are
        repeated G times to align with the completions."""
        repeat = lambda values: [v for v in values for _ in range(group_size)]  # noqa: E731
        columns = {k: repeat(v) for k, v in batch.items() if k != "prompt"}
        columns["completion_length"] = rollout.completion_mask.sum(-1).tolist()  # in tokens, EOS included
        scored = self.reward_runner(repeat(batch["prompt"]), rollout.completions, columns, group_size)
        return replace(scored, total=scored.total.to(self.device))

    def token_logprobs(self, model, rollout: Rollout, rows: slice | Tensor) -> tuple[Tensor, Tensor]:
        """log π(completion tokens) and entropy for the selected rows: (n, T) each, float32 (0 past the
        longest of their completions). The LM head runs inside the chunked pass: no (n, T, V) logits."""
        inputs, ids = row_inputs(rollout, rows)  # padding the selected rows all share is cut
        chunk = self.logprob_chunk_size or chunk_for_vocab(model.config.vocab_size)
        lp, ent = model_logprobs_and_entropy(model, ids, self.sampling.temperature, chunk,
                                             use_cache=False, **inputs)
        T = rollout.completion_ids.shape[1]
        return pad_columns(lp.float(), T), pad_columns(ent.float(), T)

    def rows_pass(self, model, rollout: Rollout) -> tuple[Tensor, Tensor]:
        """log π and entropy (N, T) of every row without grad, in micro-batches of rows sorted by length."""
        N, T = rollout.completion_ids.shape
        lp = torch.zeros(N, T, dtype=torch.float32, device=rollout.input_ids.device)  # not the default dtype: bf16 under bf16-true
        ent = torch.zeros_like(lp)
        for idx in length_sorted_chunks(rollout.attention_mask.sum(-1), self.micro_batch_size):
            lp[idx], ent[idx] = self.token_logprobs(model, rollout, idx)
        return lp, ent

    def micro_batches(self, n: int) -> list[slice]:
        size = self.micro_batch_size or n
        return [slice(i, min(i + size, n)) for i in range(0, n, size)]

    @torch.no_grad()
    def old_pass(self, rollout: Rollout, advantages: Tensor) -> Tokens:
        """log π_old, entropy of π_old and (β > 0) log π_ref for every completion, without grad."""
        logps, ents = self.rows_pass(self.model, rollout)  # (N, T) each
        mask = rollout.completion_mask
        self.require_finite("log-probs or entropy of π_old", logps, ents, mask=mask)
        return Tokens(old_logprobs=logps, entropy=ents,
                      advantages=advantages[:, None].expand_as(mask).float(), mask=mask,
                      ref_logprobs=self.reference_pass(rollout))

    @torch.no_grad()
    def reference_pass(self, rollout: Rollout) -> Tensor | None:
        """log π_ref of every completion token (N, T), or None without a reference model."""
        if not self.needs_reference:
            return None
        ref_model = self._ref_model[0]  # None with LoRA: the policy with its adapters switched off
        with reference_model(self.model) if ref_model is None else nullcontext(ref_model) as model:
            ref = self.rows_pass(model, rollout)[0]
        self.require_finite("log-probs of the reference model", ref, mask=rollout.completion_mask)
        return ref

    def require_finite(self, what: str, *values: Tensor, mask: Tensor | None = None) -> None:
        """NonFiniteStep on every rank if any rank has a NaN/±inf in ``values`` (stare_lit.train.faults)."""
        require_finite(what, *values, mask=mask, device=self.device)

    def update(self, rollout: Rollout, tokens: Tokens | None, advantages: Tensor) -> tuple[Tokens, dict]:
        """μ optimizer steps on one rollout batch.

        Returns the batch's tokens — with the advantages, mask and weights the first update's loss
        used, so callbacks see what the scheme did — and the first update's stats. Rows with a zero
        gradient (``skip_inert_rows``) are not forwarded with grad: the loss sees their π_old values.
        """
        optimizer, scheduler = self.optimizers(), self.lr_schedulers()
        mask = rollout.completion_mask
        fused_old_pass = tokens is None  # μ = 1 and one micro-batch: π_old = π_θ
        world = self.trainer.world_size if self._trainer is not None else 1
        n_tokens = all_reduce_sum(mask.sum().float()).item()  # world-level normalisers
        n_rows = all_reduce_sum(torch.tensor(float(mask.shape[0]), device=mask.device)).item()
        skip = inert_rows(advantages, mask, self.skip_inert_rows and self.loss_settings.beta == 0
                          and self.scheme.zero_advantage_inert)  # (N,)
        seen, logged = None, {}
        ref_logprobs = self.reference_pass(rollout) if fused_old_pass else None
        forward = partial(self.token_logprobs, self.model, rollout)  # rows -> (log π_θ, entropy)
        skipped_old = skipped_rows_old(forward, mask.shape, skip) if fused_old_pass else None
        for step in range(self.updates_per_batch):
            used, loss_total, backwards = [], 0.0, 0
            if not fused_old_pass:
                self.scheme.prepare(self.token_batch(tokens, slice(None), tokens.old_logprobs, tokens.entropy))
            for rows in self.micro_batches(mask.shape[0]):
                old = skipped_old if fused_old_pass else (tokens.old_logprobs, tokens.entropy)
                logprobs, entropy = micro_logprobs(forward, rows, skip, old)
                self.require_finite("log-probs or entropy", logprobs, entropy, mask=mask[rows])
                if fused_old_pass:
                    tokens = Tokens(old_logprobs=logprobs.detach(), entropy=entropy.detach(),
                                    advantages=advantages[:, None].expand_as(mask).float(), mask=mask,
                                    ref_logprobs=ref_logprobs)
                    self.scheme.update(masked_mean(tokens.entropy, mask).item())
                loss, loss_stats, batch, weights = self.micro_loss(tokens, rows, logprobs, entropy)
                self.require_finite("loss", loss)
                # Each micro-batch's loss is a mean over its own tokens (or rows); rescale so the sum
                # over micro-batches and the gradient average over ranks give the world-level mean.
                share = (mask[rows].sum().item() / n_tokens if self.loss_settings.agg == "token-mean"
                         else batch.mask.shape[0] / n_rows)
                if loss.requires_grad:  # False when every row of the micro-batch was skipped, on every rank
                    self.manual_backward(loss * share * world)
                    backwards += 1
                loss_total += loss.detach().item() * share * world
                used.append((batch.advantages.detach(), batch.mask, weights))
            if backwards == 0:  # every row skipped: the zero gradient the full pass would have left
                for p in self.model.parameters():
                    if p.requires_grad:
                        p.grad = torch.zeros_like(p)
            grad_norm = self.clip_and_step(optimizer)
            if scheduler is not None:
                scheduler.step()
            if step == 0:
                seen = [torch.cat(parts) for parts in zip(*used)]
                logged = {**{k: v.item() for k, v in loss_stats.items()}, "grad_norm": grad_norm,
                          "loss": all_reduce_sum(torch.tensor(loss_total)).item() / world,  # the world's loss
                          "rows_skipped": skip.float().mean().item(),
                          # forwarded and backwarded with grad (prompt + completion, no padding), × μ
                          "trained_tokens": float(rollout.attention_mask[~skip].sum().item() * self.updates_per_batch)}
        return replace(tokens, advantages=seen[0], mask=seen[1], weights=seen[2]), logged

    def token_batch(self, tokens: Tokens, rows: slice, logprobs: Tensor, entropy: Tensor) -> TokenBatch:
        """The scheme's view of rows ``rows`` of the step batch, with π_θ's log-probs and entropy."""
        return TokenBatch(logprobs=logprobs, old_logprobs=tokens.old_logprobs[rows],
                          advantages=tokens.advantages[rows], mask=tokens.mask[rows], entropy=entropy,
                          old_entropy=tokens.entropy[rows], group_size=self.group_size, rows=rows,
                          ref_logprobs=None if tokens.ref_logprobs is None else tokens.ref_logprobs[rows])

    def micro_loss(self, tokens: Tokens, rows: slice, logprobs: Tensor, entropy: Tensor):
        """The scheme's view of one micro-batch, then the clipped loss. Returns (loss, stats, batch, ω)."""
        s = self.loss_settings
        batch = self.token_batch(tokens, rows, logprobs, entropy)
        ref = batch.ref_logprobs
        batch = replace(batch, advantages=self.scheme.advantages(batch))
        batch = replace(batch, mask=self.scheme.mask(batch))
        weights = self.scheme.weights(batch)
        loss, stats = policy_loss(
            logprobs, batch.old_logprobs, batch.advantages, batch.mask, weights=weights, clip_low=s.clip_low,
            clip_high=s.clip_high, dual_clip=s.dual_clip, agg=s.agg, ref_logprobs=ref, beta=s.beta,
            norm=float(self.sampling.max_new_tokens), extra=self.scheme.extra_loss(batch))
        return loss, stats, batch, torch.ones_like(logprobs).detach() if weights is None else weights

    def clip_and_step(self, optimizer) -> float:
        """Clip the global gradient norm, then step — unless a gradient is NaN/±inf (then NonFiniteStep)."""
        params = [p for p in self.model.parameters() if p.grad is not None]
        norm = torch.nn.utils.clip_grad_norm_(params, self.grad_clip if self.grad_clip else math.inf)
        norm = norm.full_tensor() if hasattr(norm, "full_tensor") else norm  # the same on every rank
        if not torch.isfinite(norm):
            raise NonFiniteStep("gradients")
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return float(norm)

    # ---------------------------------------------------------------- the step
    def training_step(self, batch: dict[str, list], batch_idx: int):
        try:
            return self.train_on(batch)
        except NonFiniteStep as fault:
            return self.skip_step(fault, rows=len(batch["prompt"]) * self.group_size)

    def train_on(self, batch: dict[str, list]) -> dict[str, Tensor]:
        """One GRPO step on a batch of prompts; returns the per-token tensors the callbacks read."""
        G = self.group_size
        t0 = time.perf_counter()
        seed = stream_seed(self.rollout_seed, TRAIN, self.rollouts, self.global_rank)
        self.rollouts += 1
        rollout = self.sampled_rollout(batch["prompt"], G, seed)
        t1 = time.perf_counter()
        scored = self.score(batch, rollout, G)
        rewards = scored.total  # (N,)
        advantages = group_advantages(rewards, G, self.advantage_scale, self.advantage_eps)  # (N,)
        flat = equal_groups(rewards, G)  # (P,)
        unscored = torch.isnan(rewards)
        keep = ~unscored
        if self.dynamic_sampling:
            keep &= ~flat.repeat_interleave(G)
        # Unscorable completions, and dropped groups, leave the loss entirely.
        rollout_kept = replace(rollout, completion_mask=rollout.completion_mask & keep[:, None])
        t2 = time.perf_counter()
        tokens, stats = self.learn(rollout_kept, advantages)
        self.nonfinite_in_a_row = 0
        t3 = time.perf_counter()
        self.log_step(rollout, rollout_kept, scored, flat, tokens, stats, times=(t1 - t0, t2 - t1, t3 - t2))
        return {"loss": torch.tensor(stats.get("loss", 0.0)), "entropy": tokens.entropy,
                "surprisal": -tokens.old_logprobs, "advantages": tokens.advantages, "weights": tokens.weights,
                "mask": tokens.mask, "rewards": rewards.detach()}

    def learn(self, rollout: Rollout, advantages: Tensor) -> tuple[Tokens, dict]:
        """Old pass (when needed), the scheme's once-per-step update, then μ optimizer steps."""
        mask = rollout.completion_mask
        self.require_finite("advantages", advantages, mask=mask.any(-1))
        # μ = 1 and one micro-batch: the update's forward doubles as the old pass (a reference model
        # only adds its own forward, in update()).
        need_old_pass = self.updates_per_batch > 1 or len(self.micro_batches(len(advantages))) > 1
        tokens = None
        if need_old_pass:
            tokens = self.old_pass(rollout, advantages)
            self.scheme.update(masked_mean(tokens.entropy, mask).item())
        if all_reduce_sum(mask.sum().float()).item() > 0:  # world-level: every rank runs the same collectives
            return self.update(rollout, tokens, advantages)
        tokens = tokens or self.old_pass(rollout, advantages)  # every group dropped: nothing to learn from
        return replace(tokens, weights=torch.ones_like(tokens.old_logprobs)), {"skipped_update": 1.0}

    def sampled_rollout(self, prompts: list[str], group_size: int, seed: int) -> Rollout:
        """The training rollout. A sampler that met NaN/±inf probabilities (non-finite logits) is a
        NonFiniteStep on every rank, like any other non-finite number of the step."""
        try:
            rollout, bad = self.rollout(prompts, group_size, seed=seed), torch.zeros((), device=self.device)
        except RuntimeError as e:
            if not sampler_fault(e):
                raise
            rollout, bad = None, torch.tensor(math.nan, device=self.device)
        self.require_finite("logits while sampling the rollout", bad)  # every rank takes part
        return rollout

    def skip_step(self, fault: NonFiniteStep, rows: int) -> dict[str, Tensor]:
        """A step that met a NaN/±inf: drop its gradients, count it, warn; stop after too many in a row.

        Nothing of the step reaches the weights or the optimizer, so the state after the last good step
        is the current one. The callbacks get a batch of ``rows`` rows with no valid token (they skip it).
        """
        self.optimizers().zero_grad(set_to_none=True)
        self.nonfinite_steps += 1
        self.nonfinite_in_a_row += 1
        rank_zero_warn(f"step {self.global_step}: non-finite {fault.what}; skipped this batch without an "
                       f"optimizer step ({self.nonfinite_in_a_row} in a row; the run stops at "
                       f"model.max_nonfinite_steps={self.max_nonfinite_steps})")
        counts = {"train/nonfinite_skipped": 1.0, "train/nonfinite_steps": float(self.nonfinite_steps)}
        if self.nonfinite_in_a_row >= self.max_nonfinite_steps:
            for logger in self.trainer.loggers:  # the step never ends, so Lightning would not write them
                logger.log_metrics(counts, step=self.trainer.fit_loop.epoch_loop._batches_that_stepped)
            save_last_good_and_stop(self.trainer, fault, self.nonfinite_in_a_row, self.global_step)
        self.log_dict(self.step_keys.fill(counts), on_step=True, on_epoch=False, batch_size=rows)
        return skipped_step_outputs(rows, self.device)

    def log_step(self, generated: Rollout, kept: Rollout, scored: ScoredBatch, flat: Tensor, tokens: Tokens,
                 stats: dict, times: tuple[float, float, float]) -> None:
        """Log the step (stare_lit.train.step_log.step_metrics), the scheme's metrics and the progress bar."""
        metrics = step_metrics(generated, kept.completion_mask, scored, flat, tokens.entropy, tokens.old_logprobs,
                               stats, times)
        metrics |= {"train/nonfinite_skipped": 0.0, "train/nonfinite_steps": float(self.nonfinite_steps),
                    "train/lr": self.optimizers().param_groups[0]["lr"]}
        if self.peak_flops:  # 6·N·D: forward + backward of every trained token, per optimizer step
            n_params = sum(p.numel() for p in self.model.parameters())
            metrics["train/mfu"] = 6 * n_params * stats.get("trained_tokens", 0.0) / max(times[2], 1e-9) / self.peak_flops
        metrics |= {f"scheme/{k}": v for k, v in self.scheme.metrics().items()}
        n = len(scored.total)
        self.log_dict(self.step_keys.fill(metrics), on_step=True, on_epoch=False, batch_size=n, sync_dist=False)
        self.log("reward", metrics["train/reward"], prog_bar=True, logger=False, batch_size=n)
        self.log("entropy", metrics["train/entropy"], prog_bar=True, logger=False, batch_size=n)
        if hasattr(self.scheme, "gate_on"):  # a closed-loop scheme (STARE): show whether its gate is open
            self.log("gate", float(self.scheme.gate_on), prog_bar=True, logger=False, batch_size=n)

    # ---------------------------------------------------------------- validation
    def validation_step(self, batch: dict[str, list], batch_idx: int) -> None:
        k = self.val_samples
        greedy = self.val_temperature == 0
        sampling, self.sampling = self.sampling, Sampling(**{**vars(self.sampling),
                                                             "temperature": self.val_temperature or 1.0})
        seed = stream_seed(self.rollout_seed, VALIDATION, self.global_step, batch_idx, self.global_rank)
        try:  # its own sampling stream: validation leaves the training rollouts' randomness untouched
            rollout = self.rollout(batch["prompt"], k, greedy=greedy, seed=seed)
        finally:
            self.sampling = sampling
        per_reward = self.score(batch, rollout, k).per_reward
        values = list(per_reward.values())[self.accuracy_reward].to(self.device)  # (P*k,)
        scorable = ~torch.isnan(values)
        correct = (values >= 1.0).view(-1, k).tolist()  # (P, k)
        rows = scorable.view(-1, k).all(-1).tolist()  # prompts every sample of which could be scored
        texts = [c.strip() for c in rollout.completions]
        for i, ok in enumerate(rows):
            if ok:  # per prompt, so that MeanMetric averages over the prompts of every rank
                for key, value in sample_accuracy([correct[i]], [texts[i * k:(i + 1) * k]]).items():
                    self.val_metrics[key.replace("@", "_at_")].update(value)

    def on_validation_epoch_end(self) -> None:
        """val/mean@k, val/pass@j (unbiased, every j = 1 … k; stare_lit.ops.metrics) and
        val/distinct_correct (distinct correct completions per prompt), means over the held-out prompts."""
        k = self.val_samples
        for name, metric in self.val_metrics.items():
            key = name.replace("_at_", "@")
            self.log(f"val/{key}", metric.compute(), prog_bar=key == f"mean@{k}")
            metric.reset()

    # ---------------------------------------------------------------- checkpoints
    # Lightning saves the model, optimizer, LR scheduler, loop progress, the training loader's position
    # (stare_lit.data.PromptLoader) and the callbacks' states; the module adds what only it knows.
    def on_save_checkpoint(self, checkpoint: dict) -> None:
        checkpoint["weighting_scheme"] = self.scheme.state_dict()
        checkpoint["run_state"] = {"rollout_seed": self.rollout_seed, "rollouts": self.rollouts,
                                   "nonfinite_steps": self.nonfinite_steps, "nonfinite_in_a_row": self.nonfinite_in_a_row,
                                   "rng": rng_states()}

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        self.configure_model()  # the model exists before its weights are loaded
        check_same_model(self.state_dict(), checkpoint.get("state_dict"))
        if "weighting_scheme" in checkpoint:
            self.scheme.load_state_dict(checkpoint["weighting_scheme"])
        if "run_state" in checkpoint:
            state = checkpoint["run_state"]
            self._rollout_seed, self.rollouts = int(state["rollout_seed"]), int(state["rollouts"])
            self.nonfinite_steps, self.nonfinite_in_a_row = int(state["nonfinite_steps"]), int(state["nonfinite_in_a_row"])
            self._rng_to_restore = state["rng"]

    def on_train_batch_start(self, batch, batch_idx: int) -> None:
        # The global RNGs as they were when the checkpoint was written, right before the next batch:
        # whatever Lightning draws while it restores (sanity checks, loaders) does not shift them.
        if self._rng_to_restore is not None:
            set_rng_states(self._rng_to_restore)
            self._rng_to_restore = None
