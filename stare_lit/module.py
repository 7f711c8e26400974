"""The GRPO LightningModule: the training step as a story, the Lightning hooks, and what a checkpoint adds.

One training step (one batch of prompts from the DataModule), read top to bottom in ``train_on``::

    experience: G completions per prompt (no_grad, on its own random stream), scored   -> rollout, r (N,)
    group-relative advantages                                                        -> Â (N,)
    unscorable completions (and, with dynamic sampling, flat groups) leave the loss
    learn: [old pass] → scheme.update (STARE's gate) → μ × micro-batches:
           log π_θ, entropy → the scheme's Â, mask, ω → clipped loss → backward → clip, step
    log the step; return what the callbacks read (StepOutput)

Each stage is a part of its own: ``stare_lit.experience`` (prompts → a scored batch, the rollout streams),
``stare_lit.ops.advantages``, ``stare_lit.train.update`` (the update engine), ``stare_lit.train.step_log``
(what a step logs and returns) and ``stare_lit.train.faults`` (a step that meets NaN/±inf).

Manual optimisation, because one batch of prompts yields μ optimizer steps: Lightning's
``global_step`` (and so ``trainer.max_steps``) counts optimizer steps, i.e. rollout batches × μ. A batch
whose groups are all dropped (dynamic sampling) makes no optimizer step and does not count.

``training_step`` returns ``{"step": StepOutput}``: detached per-token tensors (entropy, surprisal,
advantages, weights, mask) and the rewards; callbacks read them in ``on_train_batch_end``.

A NaN or ±inf anywhere in a step (logits, log-probs, advantages, loss, gradients) skips the step on
every rank, with no optimizer step; ``model.update.max_nonfinite_steps`` in a row save the last good
state and stop. Checkpoints carry what exact resume needs beyond Lightning's own state
(``on_save_checkpoint``).
"""

from __future__ import annotations

import time
from dataclasses import replace

import lightning as L
import torch
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from lightning.pytorch.utilities import rank_zero_warn
from torch import Tensor
from torchmetrics import MeanMetric

from stare_lit.errors import check
from stare_lit.experience import Experience, PromptFormat, ValidationSettings, judge
from stare_lit.ops.advantages import AdvantageSettings, equal_groups, group_advantages
from stare_lit.ops.loss import LossSettings
from stare_lit.ops.metrics import sample_accuracy
from stare_lit.rewards.base import Reward
from stare_lit.rewards.runner import RewardRunner, ScoredBatch, Scoring
from stare_lit.rollout.base import Rollout, RolloutEngine, Sampling
from stare_lit.rollout.streams import rng_states, set_rng_states
from stare_lit.schemes.base import GRPO, TokenWeighting
from stare_lit.train import preemption
from stare_lit.train.checkpoint import check_same_model
from stare_lit.train.checks import check_finite_floats, check_module_settings, check_optimizer
from stare_lit.train.faults import NonFiniteStep, finite_sampling, save_last_good_and_stop, skipped_step_outputs
from stare_lit.train.policy import Policy
from stare_lit.train.step_log import STEP, StepKeys, StepOutput, step_metrics
from stare_lit.train.strategy import refuse_fsdp1
from stare_lit.train.update import Optimisation, Tokens, UpdateEngine, UpdateSettings


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
        prompt_format: the tokenizer's chat template and a system prompt, or the prompt as it is.
        advantages: how rewards become advantages: std scaling, its eps, dynamic sampling.
        loss: the clipped surrogate's settings.
        update: μ updates per batch, micro-batches, gradient clipping, the log-prob chunk, row
            skipping, non-finite steps in a row before the run stops.
        optimizer: any torch optimizer (class_path + init_args in YAML).
        lr_scheduler: any torch LR scheduler, stepped once per optimizer step.
        validation: samples per held-out prompt, their temperature, the reward that says "correct".
        peak_flops: the device's peak FLOP/s (e.g. 989e12 for an H100 in bf16); when set, the
            update's model FLOPs utilisation (6·params·trained tokens / update time) is logged.
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
        prompt_format: PromptFormat = PromptFormat(),
        advantages: AdvantageSettings = AdvantageSettings(),
        loss: LossSettings | None = None,
        update: UpdateSettings = UpdateSettings(),
        optimizer: OptimizerCallable = torch.optim.AdamW,
        lr_scheduler: LRSchedulerCallable | None = None,
        validation: ValidationSettings = ValidationSettings(),
        peak_flops: float | None = None,
    ) -> None:
        super().__init__()
        reward_runner = RewardRunner(rewards, reward_weights, scoring or Scoring())  # checks both
        self.validation = validation
        check_module_settings(rewards=len(rewards), group_size=group_size,
                              accuracy_reward=self.validation.accuracy_reward, peak_flops=peak_flops)
        check_optimizer(optimizer, lr_scheduler)
        self.automatic_optimization = False
        self.policy = policy
        self.scheme = scheme if scheme is not None else GRPO()
        check_finite_floats(self.scheme, "model.scheme.init_args")
        check(not self.scheme.needs_whole_groups or update.micro_batch_size is None
              or update.micro_batch_size % group_size == 0,
              f"model.update.micro_batch_size must be a multiple of model.group_size ({group_size}) for "
              f"{type(self.scheme).__name__}, whose statistics are per group")
        self.group_size = group_size
        self.advantage_settings = advantages
        self.optimizer_factory = optimizer
        self.scheduler_factory = lr_scheduler
        self.peak_flops = peak_flops
        self.tokenizer = policy.load_tokenizer()  # early: a bad path fails before anything is written
        self.experience = Experience(self.tokenizer, reward_runner, sampling, rollout, prompt_format)
        self.updater = UpdateEngine(update, self.scheme, loss or LossSettings(), self.experience.sampling, group_size)
        self.model = None
        self._ref_model = [None]  # in a list: frozen, not a submodule, not in checkpoints
        # One world-level mean per validation metric (mean@k, pass@1..k, distinct_correct), over prompts.
        k = self.validation.samples
        self.val_metrics = torch.nn.ModuleDict({key.replace("@", "_at_"): MeanMetric() for key in
                                                sample_accuracy([[False] * k], [[""] * k])})
        # Run state that is not a tensor, saved in checkpoints (on_save_checkpoint) for exact resume,
        # with the experience's rollout seed and counter.
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
        if self.updater.needs_reference and self.policy.lora is None:  # with LoRA the frozen base is the reference
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

    def configure_optimizers(self):
        optimizer = self.optimizer_factory([p for p in self.model.parameters() if p.requires_grad])  # LoRA: adapters only
        if self.scheduler_factory is None:
            return optimizer
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": self.scheduler_factory(optimizer),
                                                         "interval": "step"}}

    def teardown(self, stage: str) -> None:
        self.experience.close()  # the reward runner's worker process, if scoring.timeout started one

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

    # ---------------------------------------------------------------- the step
    def training_step(self, batch: dict[str, list], batch_idx: int) -> dict[str, StepOutput]:
        # A dict, because manual optimisation passes on only a Tensor or a Mapping (StepOutput says why).
        try:
            return {STEP: self.train_on(batch)}
        except NonFiniteStep as fault:
            return {STEP: self.skip_step(fault, rows=len(batch["prompt"]) * self.group_size)}

    def train_on(self, batch: dict[str, list]) -> StepOutput:
        """One GRPO step on a batch of prompts; returns the per-token tensors the callbacks read."""
        G = self.group_size
        t0 = time.perf_counter()
        seed = self.experience.training_seed(self.global_rank)
        rollout = finite_sampling(lambda: self.experience.sample(self.model, batch["prompt"], G, seed), self.device)
        t1 = time.perf_counter()
        scored = self.experience.score(batch, rollout, G)
        rewards = scored.total  # (N,)
        a = self.advantage_settings
        advantages = group_advantages(rewards, G, a.scale, a.eps)  # (N,)
        flat = equal_groups(rewards, G)  # (P,)
        correct = judge(scored, self.validation.accuracy_reward)[0].view(-1, G)  # (P, G), as validation counts
        keep = ~torch.isnan(rewards)  # (N,)
        if a.dynamic_sampling:
            keep &= ~flat.repeat_interleave(G)
        # Unscorable completions, and dropped groups, leave the loss entirely.
        rollout_kept = replace(rollout, completion_mask=rollout.completion_mask & keep[:, None])
        t2 = time.perf_counter()
        tokens, stats = self.learn(rollout_kept, advantages)
        self.nonfinite_in_a_row = 0
        t3 = time.perf_counter()
        self.log_step(rollout, rollout_kept, scored, flat, correct, tokens, stats, times=(t1 - t0, t2 - t1, t3 - t2))
        return StepOutput(loss=torch.tensor(stats.get("loss", 0.0)), entropy=tokens.entropy,
                          surprisal=-tokens.old_logprobs, advantages=tokens.advantages, weights=tokens.weights,
                          mask=tokens.mask, rewards=rewards.detach())

    def learn(self, rollout: Rollout, advantages: Tensor) -> tuple[Tokens, dict]:
        """The update engine (stare_lit.train.update) on the kept rollout, with Lightning's optimizer,
        LR scheduler and backward; returns the batch's tokens and the first update's stats."""
        steps = Optimisation(self.optimizers(), self.lr_schedulers(), self.manual_backward)
        return self.updater.learn(self.model, self._ref_model[0], rollout, advantages, steps)

    def skip_step(self, fault: NonFiniteStep, rows: int) -> StepOutput:
        """A step that met a NaN/±inf: drop its gradients, count it, warn; stop after too many in a row.

        Nothing of the step reaches the weights or the optimizer, so the state after the last good step
        is the current one. The callbacks get a batch of ``rows`` rows with no valid token (they skip it).
        """
        self.optimizers().zero_grad(set_to_none=True)
        self.nonfinite_steps += 1
        self.nonfinite_in_a_row += 1
        limit = self.updater.settings.max_nonfinite_steps
        rank_zero_warn(f"step {self.global_step}: non-finite {fault.what}; skipped this batch without an "
                       f"optimizer step ({self.nonfinite_in_a_row} in a row; the run stops at "
                       f"model.update.max_nonfinite_steps={limit})")
        counts = {"train/nonfinite_skipped": 1.0, "train/nonfinite_steps": float(self.nonfinite_steps)}
        if self.nonfinite_in_a_row >= limit:
            # The step never ends, so Lightning would not write them; written at the step Lightning's loggers
            # give this batch: the batches finished before it, over all epochs and resumes (total_batch_idx).
            for logger in self.trainer.loggers:
                logger.log_metrics(counts, step=self.trainer.fit_loop.epoch_loop.total_batch_idx)
            save_last_good_and_stop(self.trainer, fault, self.nonfinite_in_a_row, self.global_step)
        self.log_dict(self.step_keys.fill(counts), on_step=True, on_epoch=False, batch_size=rows)
        return skipped_step_outputs(rows, self.device)

    def log_step(self, generated: Rollout, kept: Rollout, scored: ScoredBatch, flat: Tensor, correct: Tensor,
                 tokens: Tokens, stats: dict, times: tuple[float, float, float]) -> None:
        """Log the step (stare_lit.train.step_log.step_metrics), the scheme's metrics and the progress bar."""
        metrics = step_metrics(generated, kept.completion_mask, scored, flat, correct, tokens.entropy,
                               tokens.old_logprobs, stats, times)
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
        for name, value in self.scheme.progress().items():  # e.g. STARE's gate: whether it reweights
            self.log(name, value, prog_bar=True, logger=False, batch_size=n)

    # ---------------------------------------------------------------- validation
    def validation_step(self, batch: dict[str, list], batch_idx: int) -> None:
        v, k = self.validation, self.validation.samples
        sampling = replace(self.experience.sampling, temperature=v.temperature or 1.0)  # greedy ignores it
        # Its own sampling stream: validation leaves the training rollouts' randomness untouched.
        seed = self.experience.validation_seed(self.global_step, batch_idx, self.global_rank)
        rollout = self.experience.sample(self.model, batch["prompt"], k, seed, greedy=v.temperature == 0,
                                         sampling=sampling)
        correct, judged = judge(self.experience.score(batch, rollout, k), v.accuracy_reward)  # (P*k,) each
        correct = correct.view(-1, k).tolist()  # (P, k)
        rows = judged.view(-1, k).all(-1).tolist()  # prompts every sample of which could be scored
        texts = [c.strip() for c in rollout.completions]
        for i, ok in enumerate(rows):
            if ok:  # per prompt, so that MeanMetric averages over the prompts of every rank
                for key, value in sample_accuracy([correct[i]], [texts[i * k:(i + 1) * k]]).items():
                    self.val_metrics[key.replace("@", "_at_")].update(value)

    def on_validation_epoch_end(self) -> None:
        """val/mean@k, val/pass@j (unbiased, every j = 1 … k; stare_lit.ops.metrics), val/never_solved (no
        correct sample in k) and val/distinct_correct (distinct correct completions per prompt), means over
        the held-out prompts."""
        k = self.validation.samples
        for name, metric in self.val_metrics.items():
            key = name.replace("_at_", "@")
            self.log(f"val/{key}", metric.compute(), prog_bar=key == f"mean@{k}")
            metric.reset()

    # ---------------------------------------------------------------- checkpoints
    # Lightning saves the model, optimizer, LR scheduler, loop progress, the training loader's position
    # (stare_lit.data.PromptLoader) and the callbacks' states; the module adds what only it knows.
    def on_save_checkpoint(self, checkpoint: dict) -> None:
        checkpoint["weighting_scheme"] = self.scheme.state_dict()
        checkpoint["run_state"] = {"rollout_seed": self.experience.seed, "rollouts": self.experience.rollouts,
                                   "nonfinite_steps": self.nonfinite_steps, "nonfinite_in_a_row": self.nonfinite_in_a_row,
                                   "rng": rng_states()}

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        self.configure_model()  # the model exists before its weights are loaded
        check_same_model(self.state_dict(), checkpoint.get("state_dict"))
        if "weighting_scheme" in checkpoint:
            self.scheme.load_state_dict(checkpoint["weighting_scheme"])
        if "run_state" in checkpoint:
            state = checkpoint["run_state"]
            self.experience.seed, self.experience.rollouts = int(state["rollout_seed"]), int(state["rollouts"])
            self.nonfinite_steps, self.nonfinite_in_a_row = int(state["nonfinite_steps"]), int(state["nonfinite_in_a_row"])
            self._rng_to_restore = state["rng"]

    def on_train_batch_start(self, batch, batch_idx: int) -> None:
        # The global RNGs as they were when the checkpoint was written, right before the next batch:
        # whatever Lightning draws while it restores (sanity checks, loaders) does not shift them.
        if self._rng_to_restore is not None:
            set_rng_states(self._rng_to_restore)
            self._rng_to_restore = None
