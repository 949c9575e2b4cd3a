"""The PPO loop (InstructGPT-style RLHF), on transformers + accelerate.

One iteration: sample responses to a batch of prompts -> score them -> per-token rewards (KL penalty plus
the score on the last token) -> GAE advantages -> ``ppo_epochs`` passes of clipped policy and value
updates over shuffled minibatches. accelerate places models, wraps policy + value in DDP (or DeepSpeed)
and keeps gradients in sync; every process samples different prompts; only the main one writes.
Under ZeRO-3 policy and value train partitioned, the reference is a partitioned inference engine, the
policy is gathered whole for each ``generate`` and released after (:mod:`easyrlhf_core.kit.zero`).
"""

from __future__ import annotations

import contextlib
import math
import time
from typing import TYPE_CHECKING, Any

import torch

from easyrlhf_core.kit import causal_lm as lm
from easyrlhf_core.kit import rl_math
from easyrlhf_core.kit.checkpoints import remove_checkpoints_after, remove_incomplete_checkpoints
from easyrlhf_core.kit.metrics import drop_rows_after
from easyrlhf_core.kit.model_loading import unwrap
from easyrlhf_core.kit.online import SAMPLES_FILE, SampleLog, prompts_that_fit, return_freed_memory
from easyrlhf_core.kit.rewards import record_columns, score_with_columns
from easyrlhf_core.kit.stopping import RunInterrupted, StopSignals
from easyrlhf_core.kit.trainer_run import (
    NonFinite,
    check_ranks_agree,
    checks_gradient_norm,
    continue_schedule,
    diverged_error,
)
from easyrlhf_core.kit.rollout import EngineSync, Sampling, build_engine, logprob_agreement
from easyrlhf_core.kit.zero import fill_size_autos, gathered, gathered_for_generation, inference_engine, is_partitioned

from . import core
from .checkpoint import resume_from_latest, save_checkpoint
from .forward import Layout, lean_forward_unsupported
from .models import PolicyAndValue, load_models, response_stop_ids
from .rollout import Rollout, record_rollout

if TYPE_CHECKING:
    from easyrlhf_core.kit.bases import RewardFunction
    from easyrlhf_core.kit.shapes import Record
    from easyrlhf_core.kit.context import RunContext

    from .config import PPOConfig

VALUE_MODEL_DIR = "value_model"
#: what the update reports per iteration (means over its optimizer steps)
UPDATE_STATS = ("policy_loss", "value_loss", "clipfrac", "value_clipfrac", "approx_kl", "ratio_mean")


def build_accelerator(config: PPOConfig) -> Any:
    """An ``Accelerator``: CPU when there is no GPU (gloo under torchrun), mixed precision, DeepSpeed (on
    CPU too)."""
    from accelerate import Accelerator
    from accelerate.utils import DeepSpeedPlugin

    from easyrlhf_core.kit.model_loading import resolve_precision

    mixed = {"fp32": "no", "bf16": "bf16", "fp16": "fp16"}[resolve_precision(config.precision)]
    plugin = None
    if config.deepspeed:
        plugin = DeepSpeedPlugin(
            hf_ds_config=config.deepspeed,
            gradient_clipping=config.max_grad_norm,
            gradient_accumulation_steps=config.gradient_accumulation_steps,
        )
        if plugin.is_auto("train_micro_batch_size_per_gpu"):  # no dataloader to infer it from
            plugin.deepspeed_config["train_micro_batch_size_per_gpu"] = config.per_device_train_batch_size
    cpu = not torch.cuda.is_available()
    if plugin is not None:  # a pipeline's earlier stage (a Trainer) left its DeepSpeed state: the Trainer's way
        from accelerate.state import AcceleratorState

        AcceleratorState._reset_state(reset_partial_state=True)
    if cpu and plugin is not None:
        # Accelerator(cpu=True) would drop the DeepSpeed plugin without a word (plain DDP), and cpu=False
        # alone counts one process on a machine without GPUs. The Trainer's way: the process state first, for
        # CPU (gloo), then the accelerator on it, which takes DeepSpeed (its CPU accelerator).
        from accelerate import PartialState

        from easyrlhf_core.kit.distributed import world_size

        PartialState(cpu=True, backend="gloo" if world_size() > 1 else None)
        cpu = False
    return Accelerator(
        cpu=cpu,
        mixed_precision=mixed,
        deepspeed_plugin=plugin,
        gradient_accumulation_steps=config.gradient_accumulation_steps,
    )


def make_reward_function(run: RunContext, config: PPOConfig) -> RewardFunction:
    """The run's one reward (``--reward-model PATH`` or ``--reward NAME``), as validation built it."""
    run.log(f"reward: {config.describe_reward()}")
    return config.build_reward(run.registry)


class PPOTrainer:
    """Builds models, optimizer and data order from a run; ``train()`` runs the iterations."""

    def __init__(self, run: RunContext) -> None:
        from accelerate.utils import set_seed
        from transformers import get_scheduler

        from easyrlhf_core.kit.trainer_method import check_precision, describe_trainable, run_model_path

        self.run = run
        self.config: PPOConfig = run.config  # type: ignore[assignment]
        config = self.config
        check_precision(config)
        return_freed_memory()  # each iteration's activations go back to the system, not to a growing heap
        self.accelerator = build_accelerator(config)
        # bad reward options fail before any model loads; with an environment the reward plugin is optional
        self.reward_fn = make_reward_function(run, config) if config.env is None or config.reward_specs() else None
        # the key of the score in samples.jsonl's rewards: the reward's label, or the environment's name
        self.reward_label = config.env or config.build_rewards(run.registry)[0].label
        # resume() cuts samples.jsonl back with metrics.jsonl, before the first iteration writes
        self.samples = SampleLog(
            run.output_dir / SAMPLES_FILE,
            [self.reward_label],
            config.num_sample_completions,
            enabled=run.is_main_process,
            resume=False,
        )
        policy_path = run_model_path(run)
        set_seed(config.seed)  # the same fresh value head on every process
        models = load_models(run, config, policy_path)
        self.tokenizer = models.tokenizer
        self.reference = models.reference
        self.stop_ids = response_stop_ids(config, self.tokenizer, models.policy)

        self.prompts, self.prompt_ids = self._encode(run.data.train, "training")
        self.eval_prompts, self.eval_ids = self._encode(run.data.eval, "eval") if run.data.eval else ([], [])
        self.world = self.accelerator.num_processes
        self.rank = self.accelerator.process_index
        self.global_batch = config.rollout_batch_size * self.world
        self.total_iterations = self._count_iterations()
        self._orders: dict[int, list[int]] = {}

        optimizer = torch.optim.AdamW(
            self._param_groups(models), lr=config.learning_rate, weight_decay=config.weight_decay
        )
        updates_per_iteration = config.ppo_epochs * (config.rollout_batch_size // config.mini_batch_size)
        total_updates = self.total_iterations * updates_per_iteration
        self.scheduler = get_scheduler(
            config.lr_scheduler_type,
            optimizer,
            num_warmup_steps=math.ceil(config.warmup_ratio * total_updates),
            num_training_steps=total_updates,
        )
        if self.accelerator.state.deepspeed_plugin is not None:
            fill_size_autos(
                self.accelerator.state.deepspeed_plugin.deepspeed_config, unwrap(models.policy).config.hidden_size
            )
        self.model, self.optimizer = self.accelerator.prepare(
            PolicyAndValue(models.policy, models.value_model), optimizer
        )
        self.reference_engine = None  # ZeRO-3: the reference, partitioned like the policy (no optimizer)
        if models.reference_model is not None and is_partitioned(models.reference_model):
            self.reference_engine = inference_engine(
                models.reference_model,
                self.accelerator.state.deepspeed_plugin.deepspeed_config,
                config.forward_batch_size or config.rollout_batch_size,
            )
        elif models.reference_model is not None:
            models.reference_model.to(self.accelerator.device)
        self.pack = self._lean_forwards(models)
        self.kl_ctl = core.kl_controller(config.beta, config.adaptive_kl, config.target_kl, config.kl_horizon)
        self.moments = core.RunningMoments()
        self.nonfinite = NonFinite()  # a NaN / inf loss or gradient norm stops the run (step)
        # before the per-process seed: vLLM seeds the process's generators when it starts
        self.engine = build_engine(
            config,
            self.unwrapped.policy,
            self.tokenizer,
            model_dir=policy_path,
            precision=config.precision,
            seed=config.seed,
            max_model_len=config.max_length,
            log=run.log,
            bos_token_id=self.tokenizer.bos_token_id,
        )
        self.engine_sync = EngineSync(self.engine, config.seed, self.rank)  # pushes the weights before sampling
        set_seed(config.seed, device_specific=True)  # each process samples differently
        describe_trainable(run, self.unwrapped)
        run.log(
            f"ppo: {self.total_iterations} iterations x {self.global_batch} prompts (global; "
            f"{config.rollout_batch_size} per process), {config.ppo_epochs} epochs x "
            f"{config.rollout_batch_size // config.mini_batch_size} minibatches of {config.mini_batch_size} "
            f"per iteration = {total_updates} optimizer steps"
        )

    # -- setup -------------------------------------------------------------------------------------
    @property
    def unwrapped(self) -> PolicyAndValue:
        return self.accelerator.unwrap_model(self.model)

    def _lean_forwards(self, models: Any) -> bool:
        """Whether the forwards pack rows and read the LM head at response positions only (``lean_forward``,
        when every model reads a packed probe batch as its own forward does); logged either way."""
        if not self.config.lean_forward:
            self.run.log("forwards: plain (lean_forward: false): padded rows, the model's own forward")
            return False
        unwrapped = self.unwrapped
        with torch.no_grad(), self.accelerator.autocast():
            reason = lean_forward_unsupported(
                [m for m in (unwrapped.policy, models.reference_model) if m is not None] + [unwrapped.value_model]
            )
        if reason is not None:
            self.run.log(f"forwards: plain ({reason}): padded rows, the model's own forward")
            return False
        self.run.log(
            "forwards: lean (rows packed without padding; the LM head only at response positions, in chunks; "
            "lean_forward: false turns it off)"
        )
        return True

    def _encode(self, records: list[Record], split: str) -> tuple[list[Record], list[list[int]]]:
        limit = self.config.max_length - self.config.max_new_tokens
        return prompts_that_fit(self.run, self.tokenizer, records, limit, split, "max_length - max_new_tokens")

    def _count_iterations(self) -> int:
        if self.config.max_steps > 0:
            return self.config.max_steps
        return max(1, math.ceil(self.config.num_train_epochs * len(self.prompt_ids) / self.global_batch))

    def _param_groups(self, models: Any) -> list[dict[str, Any]]:
        value_lr = self.config.value_learning_rate or self.config.learning_rate
        return [
            {"params": [p for p in models.policy.parameters() if p.requires_grad]},
            {"params": [p for p in models.value_model.parameters() if p.requires_grad], "lr": value_lr},
        ]

    def _order(self, epoch: int) -> list[int]:
        """The shuffled prompt order of one pass over the data (the same on every process)."""
        if epoch not in self._orders:
            generator = torch.Generator().manual_seed(self.config.seed + epoch)
            self._orders[epoch] = torch.randperm(len(self.prompt_ids), generator=generator).tolist()
        return self._orders[epoch]

    def batch_indices(self, iteration: int) -> list[int]:
        """This process's prompts for ``iteration`` (1-based): its slice of the global batch."""
        n = len(self.prompt_ids)
        start = (iteration - 1) * self.global_batch + self.rank * self.config.rollout_batch_size
        return [self._order(pos // n)[pos % n] for pos in range(start, start + self.config.rollout_batch_size)]

    # -- rollout -----------------------------------------------------------------------------------
    def _texts(self, responses: torch.Tensor, mask: torch.Tensor) -> list[str]:
        lengths = mask.sum(dim=1).tolist()
        return [lm.decode_response(self.tokenizer, row[:n]) for row, n in zip(responses.cpu(), lengths)]

    def generating(self) -> Any:
        """The block in which :meth:`sample` may run: under ZeRO-3 the policy's parameters are gathered
        whole on every rank (and released after), so ``generate`` runs locally. Collective: enter it the
        same number of times on every rank. The vllm engine samples from its own copy: nothing to gather."""
        if self.engine.name != "transformers":
            return contextlib.nullcontext()
        return gathered_for_generation(self.model, self.unwrapped.policy)

    def sampling(self, updates: int) -> Sampling:
        """Sampling settings for a rollout call by the policy after ``updates`` updates; the vllm engine is given
        the policy's weights first when they changed (:class:`~easyrlhf_core.kit.rollout.EngineSync`: its rows
        seeded from the run's seed, the rank and ``updates``; the transformers engine draws from the process's
        seeded generator)."""
        config = self.config
        seed = self.engine_sync.before_rollout(self.unwrapped.policy, updates)
        return Sampling.from_config(config, config.max_new_tokens, self.stop_ids, self.tokenizer.pad_token_id, seed)

    def sample(
        self, prompt_ids: list[list[int]], updates: int
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """``(queries, query_mask, responses, engine log-probs or None)`` for ``prompt_ids`` in one rollout call
        (inside :meth:`generating`); the vllm engine gets the policy's weights first when they changed."""
        with self.accelerator.autocast():
            out = self.engine.generate(prompt_ids, self.sampling(updates), logprobs=self.engine.name != "transformers")
        device = self.accelerator.device
        engine_logprobs = out.logprobs.to(device) if out.logprobs is not None else None
        return out.prompt_ids.to(device), out.prompt_mask.to(device), out.response_ids.to(device), engine_logprobs

    def rollout(self, iteration: int) -> tuple[Rollout, list[Record], list[str], dict[str, float]]:
        """Sample and score this process's prompts; ``(rollout, prompts, completions, timings)``. With an
        environment, each prompt is an episode (:mod:`.episodes`)."""
        if self.config.env is not None:
            from .episodes import episode_rollout

            return episode_rollout(self, iteration)
        indices = self.batch_indices(iteration)
        prompts = [self.prompts[i] for i in indices]
        self.unwrapped.eval()
        start = time.perf_counter()
        with self.generating():
            queries, query_mask, responses, engine_logprobs = self.sample(
                [self.prompt_ids[i] for i in indices], iteration - 1
            )
        generated = time.perf_counter()
        texts: list[str] = []
        score_time = [0.0]

        def score(responses: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
            began = time.perf_counter()
            texts.extend(self._texts(responses, mask))
            values = score_with_columns(self.reward_fn, [p["prompt"] for p in prompts], texts, record_columns(prompts))
            score_time[0] = time.perf_counter() - began
            return torch.tensor(values, dtype=torch.float32, device=responses.device)

        with self.accelerator.autocast():
            result = record_rollout(
                self.unwrapped.policy,
                self.reference,
                self.unwrapped.value_model,
                queries,
                query_mask,
                responses,
                self.stop_ids,
                self.config.temperature,
                self.config.forward_batch_size,
                score,
                pack=self.pack,
                pad_token_id=self.tokenizer.pad_token_id,
            )
        return_freed_memory()  # the forwards' activations go back to the system, not to a growing heap
        finished = time.perf_counter()
        timings = {
            "time/generate": generated - start,
            "time/score": score_time[0],
            "time/forward": finished - generated - score_time[0],
        }
        if engine_logprobs is not None:  # the engine's view of the sampled tokens next to the trainer's
            timings.update(logprob_agreement(engine_logprobs, result.logprobs, result.mask))
        return result, prompts, texts, timings

    # -- advantages ----------------------------------------------------------------------------------
    def advantages(self, ro: Rollout) -> dict[str, torch.Tensor]:
        """Processed scores, KL, per-token rewards, whitened advantages and returns of a rollout."""
        config = self.config
        scores = core.postprocess_scores(ro.scores, ro.has_stop, config.missing_eos_penalty, config.reward_clip)
        if config.normalize_reward:
            self.moments.update(self.accelerator.gather(scores).cpu())
            scores = self.moments.normalize(scores)
        kl = core.kl_per_token(ro.logprobs, ro.ref_logprobs, config.kl_estimator) * ro.mask
        rewards, non_score = core.per_token_rewards(scores, kl, ro.mask, self.kl_ctl.value)
        advantages, returns = rl_math.gae_advantages(rewards, ro.values, ro.mask, config.gamma, config.lam)
        advantages = rl_math.masked_whiten(advantages, ro.mask)
        return {
            "scores": scores,
            "kl": kl,
            "rewards": rewards,
            "non_score": non_score,
            "advantages": advantages,
            "returns": returns,
        }

    # -- update --------------------------------------------------------------------------------------
    def update(self, ro: Rollout, adv: dict[str, torch.Tensor], iteration: int) -> dict[str, torch.Tensor]:
        """``ppo_epochs`` passes of shuffled minibatches; each minibatch is one optimizer step made of
        ``gradient_accumulation_steps`` micro-batches."""
        config = self.config
        rows = Layout(ro.input_ids, ro.attention_mask, ro.queries.shape[1])
        generator = torch.Generator().manual_seed(config.seed * 100_003 + iteration)
        stats: dict[str, list[torch.Tensor]] = {key: [] for key in UPDATE_STATS}
        self.model.train()
        for _ in range(config.ppo_epochs):
            order = torch.randperm(len(ro.responses), generator=generator).to(ro.responses.device)
            for start in range(0, len(order), config.mini_batch_size):
                step = self.optimizer_step(rows, ro, adv, order[start : start + config.mini_batch_size])
                for key, value in step.items():
                    stats[key].append(value)
        self.model.eval()
        return_freed_memory()  # the update's activations and gradients too
        return {key: torch.stack(values).mean() for key, values in stats.items()}

    def optimizer_step(
        self, rows: Layout, ro: Rollout, adv: dict[str, torch.Tensor], minibatch: torch.Tensor
    ) -> dict[str, torch.Tensor]:
        """One optimizer step over ``minibatch``, ``per_device_train_batch_size`` rows per forward/backward.
        Each micro-batch's losses are its token sums over the whole minibatch's token count, so the gradient
        (and every statistic returned) is the minibatch's own, however it is split."""
        config, accelerator = self.config, self.accelerator
        tokens = ro.mask[minibatch].sum().clamp(min=1).float()
        scale = float(config.gradient_accumulation_steps)  # accelerator.backward divides by it
        totals = {key: torch.zeros((), device=tokens.device) for key in UPDATE_STATS}
        for micro in minibatch.split(config.per_device_train_batch_size):
            batch = rows.select(micro, self.pack, self.tokenizer.pad_token_id)
            with accelerator.accumulate(self.model):
                losses = self.micro_step(batch, ro, adv, micro, tokens, scale)
                if accelerator.sync_gradients:
                    norm = accelerator.clip_grad_norm_(self.model.parameters(), config.max_grad_norm)
                    if checks_gradient_norm(accelerator):  # fp16: an overflow step is the scaler's to skip
                        self.nonfinite.note("gradient norm", norm)
                self.optimizer.step()
                if accelerator.sync_gradients:
                    self.scheduler.step()
                self.optimizer.zero_grad()
            for key, value in losses.items():
                totals[key] += value.detach().float()
        return totals

    def micro_step(
        self,
        batch: Layout,
        ro: Rollout,
        adv: dict[str, torch.Tensor],
        idx: torch.Tensor,
        tokens: torch.Tensor,
        scale: float,
    ) -> dict[str, torch.Tensor]:
        """Forward and backward of one micro-batch (``tokens``: the minibatch's). With one process and no
        DeepSpeed the policy's backward runs before the value model's forward, so only one model's activations
        are alive at a time; a DDP or DeepSpeed engine gets one forward and one backward over both."""
        config, accelerator = self.config, self.accelerator
        mask = ro.mask[idx]
        separate = self.model is self.unwrapped

        def policy_loss(logprobs: torch.Tensor) -> rl_math.PolicyLoss:
            return rl_math.clipped_policy_loss(
                logprobs, ro.logprobs[idx], adv["advantages"][idx], mask, config.cliprange, total=tokens
            )

        def value_loss(values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            return rl_math.clipped_value_loss(
                values, ro.values[idx], adv["returns"][idx], mask, config.cliprange_value, total=tokens
            )

        if separate:
            logprobs, _ = self.model(batch, config.temperature, ("policy",))
            policy = policy_loss(logprobs)
            accelerator.backward(policy.loss * scale)
            del logprobs
            _, values = self.model(batch, config.temperature, ("value",))
            value, value_clipfrac = value_loss(values)
            accelerator.backward(config.vf_coef * value * scale)
        else:
            logprobs, values = self.model(batch, config.temperature)
            policy = policy_loss(logprobs)
            value, value_clipfrac = value_loss(values)
            accelerator.backward((policy.loss + config.vf_coef * value) * scale)
        self.nonfinite.note("loss", policy.loss.detach() + config.vf_coef * value.detach())
        return {
            "policy_loss": policy.loss,
            "value_loss": value,
            "clipfrac": policy.clipfrac,
            "value_clipfrac": value_clipfrac,
            "approx_kl": policy.approx_kl,
            "ratio_mean": policy.ratio_mean,
        }

    # -- reporting -----------------------------------------------------------------------------------
    def _mean(self, value: torch.Tensor) -> float:
        """Mean over processes (every process holds the same number of samples)."""
        value = value.detach().float().reshape(1).to(self.accelerator.device)
        return float(self.accelerator.reduce(value, reduction="mean").item())

    def _sum(self, value: torch.Tensor) -> float:
        """Sum over processes."""
        value = value.detach().float().reshape(1).to(self.accelerator.device)
        return float(self.accelerator.reduce(value, reduction="sum").item())

    def metrics(
        self,
        iteration: int,
        ro: Rollout,
        adv: dict[str, torch.Tensor],
        update: dict[str, torch.Tensor],
        beta: float,
        timings: dict[str, float],
    ) -> dict[str, float]:
        mask = ro.mask.float()
        per_sample = {
            "score": ro.scores,
            "kl": adv["kl"].sum(1),
            "non_score_reward": adv["non_score"].sum(1),
            "reward": adv["rewards"].sum(1),
            "response_length": mask.sum(1),
            "eos_fraction": ro.has_stop.float(),
        }
        metrics = {key: self._mean(value.mean()) for key, value in per_sample.items()}
        metrics["entropy"] = self._mean(rl_math.masked_mean(ro.entropy, mask))
        metrics["value_mean"] = self._mean(rl_math.masked_mean(ro.values, mask))
        metrics["return_mean"] = self._mean(rl_math.masked_mean(adv["returns"], mask))
        metrics.update({key: self._mean(value) for key, value in update.items()})
        metrics["tokens"] = self.config.ppo_epochs * self._sum(ro.attention_mask.sum())
        metrics["beta"] = beta
        metrics["learning_rate"] = self.scheduler.get_last_lr()[0]
        metrics["epoch"] = iteration * self.global_batch / len(self.prompt_ids)
        metrics.update({key: self._mean(torch.tensor(value)) for key, value in timings.items()})
        return metrics

    def write_samples(self, iteration: int, prompts: list[Record], texts: list[str], scores: torch.Tensor) -> None:
        """The iteration's first ``num_sample_completions`` completions, with the reward's raw score, to
        ``samples.jsonl`` (the online kit's one schema)."""
        self.samples.write(iteration, [p["prompt"] for p in prompts], texts, {self.reward_label: scores.tolist()})

    def evaluate(self, iteration: int) -> None:
        """Mean score, length and EOS fraction of sampled responses to the eval prompts (an environment run: its
        held-out episodes)."""
        if self.config.env is not None:
            from .episodes import episode_evaluate

            return episode_evaluate(self, iteration)
        if not self.eval_ids:
            return
        mine = list(range(self.rank, len(self.eval_ids), self.world))
        totals = torch.zeros(4, device=self.accelerator.device)  # score, length, eos, count
        size = self.config.per_device_eval_batch_size
        with self.generating():  # once: ranks may have different numbers of eval chunks
            self.engine_sync.before_rollout(self.unwrapped.policy, iteration)  # every rank pushes (ZeRO-3: together)
            for start in range(0, len(mine), size):
                chunk = mine[start : start + size]
                _, _, responses, _ = self.sample([self.eval_ids[i] for i in chunk], iteration)
                mask, has_stop = core.response_mask(responses, self.stop_ids)
                records = [self.eval_prompts[i] for i in chunk]
                scores = score_with_columns(
                    self.reward_fn,
                    [r["prompt"] for r in records],
                    self._texts(responses, mask),
                    record_columns(records),
                )
                totals += torch.tensor(
                    [sum(scores), float(mask.sum()), float(has_stop.sum()), len(chunk)], device=totals.device
                )
        totals = self.accelerator.reduce(totals, reduction="sum")
        count = max(float(totals[3]), 1.0)
        self.run.log_metrics(
            iteration,
            {
                "eval/score": float(totals[0]) / count,
                "eval/response_length": float(totals[1]) / count,
                "eval/eos_fraction": float(totals[2]) / count,
            },
        )

    # -- checkpoints ---------------------------------------------------------------------------------
    def state(self, iteration: int) -> dict[str, Any]:
        return {
            "data_position": iteration * self.global_batch,
            "num_processes": self.world,
            "total_iterations": self.total_iterations,
            "kl_controller": self.kl_ctl.state_dict(),
            "reward_moments": self.moments.state_dict(),
        }

    def resume(self) -> int:
        """Restore the newest loadable checkpoint; the iteration to continue after (0: from scratch)."""
        run = self.run
        if run.is_main_process:
            remove_incomplete_checkpoints(run.checkpoints_dir)
        self.accelerator.wait_for_everyone()
        if not run.resume:
            return 0
        peaks = list(self.scheduler.base_lrs)  # this run's learning rates (the checkpoint holds the first run's)
        state = resume_from_latest(self.accelerator, run.checkpoints_dir, self.scheduler, run.log)
        if state is None:
            run.log("--resume: no checkpoint found; starting from the beginning")
            iteration = 0
        else:
            iteration = int(state["iteration"])
            self.kl_ctl.load_state_dict(state["kl_controller"])
            self.moments.load_state_dict(state["reward_moments"])
            continue_schedule(
                run,
                self.scheduler,
                iteration,
                self.total_iterations,
                state.get("total_iterations"),
                peaks=peaks,
                unit="iteration",
            )
            if state.get("num_processes", self.world) != self.world:
                run.log(
                    f"warning: the checkpoint was written by {state['num_processes']} processes, this run has "
                    f"{self.world}: prompts and sampling will differ from an uninterrupted run"
                )
        if run.is_main_process:  # as the Trainer-based methods do: newer broken checkpoints go, rows are cut back
            remove_checkpoints_after(run.checkpoints_dir, iteration, log=run.log)
            drop_rows_after(run.metrics_path, iteration)
            drop_rows_after(run.output_dir / SAMPLES_FILE, iteration)
        return iteration

    def checkpoint(self, iteration: int) -> None:
        path = save_checkpoint(
            self.accelerator,
            self.run.checkpoints_dir,
            iteration,
            self.state(iteration),
            self.scheduler,
            self.config.save_total_limit,
        )
        self.run.log(f"checkpoint: {path}")

    # -- the loop ------------------------------------------------------------------------------------
    def train(self) -> None:
        config, run = self.config, self.run
        first = self.resume() + 1
        run.progress.start(self.total_iterations, description="ppo")
        run.progress.advance_to(first - 1)
        with StopSignals(run.log, run.checkpoints_dir) as stop:
            for iteration in range(first, self.total_iterations + 1):
                self.step(iteration)
                saved = bool(config.save_steps) and iteration % config.save_steps == 0
                if saved:
                    self.checkpoint(iteration)
                signum = stop.requested(device=self.accelerator.device)  # agreed by every process
                if signum:
                    if not saved:
                        self.checkpoint(iteration)
                    saved_to = run.checkpoints_dir / f"checkpoint-{iteration}"
                    run.log(f"stopped at iteration {iteration}; checkpoint saved to {saved_to}")
                    raise RunInterrupted(signum, saved_to)
        check_ranks_agree(run, self.unwrapped)
        self.save_models()

    def step(self, iteration: int) -> None:
        """One PPO iteration: rollout, advantages, update, metrics (and eval when due)."""
        config = self.config
        began = time.perf_counter()
        ro, prompts, texts, timings = self.rollout(iteration)
        beta = self.kl_ctl.value
        adv = self.advantages(ro)
        update_start = time.perf_counter()
        update = self.update(ro, adv, iteration)
        diverged = self.nonfinite.check(self.accelerator.device)  # every rank, every iteration: agreed
        timings["time/update"] = time.perf_counter() - update_start
        timings["time/iteration"] = time.perf_counter() - began
        mean_kl = self._mean(adv["kl"].sum(1).mean())
        self.kl_ctl.update(mean_kl, self.global_batch)
        if diverged or iteration % config.logging_steps == 0 or iteration == self.total_iterations:
            self.run.log_metrics(iteration, self.metrics(iteration, ro, adv, update, beta, timings))
            self.write_samples(iteration, prompts, texts, ro.scores)
        if diverged:  # before any checkpoint or model of this iteration: the newest checkpoint stays the last good
            raise diverged_error(self.run, iteration, diverged, unit="iteration")
        last = iteration == self.total_iterations and config.final_eval
        if config.eval_steps and (iteration % config.eval_steps == 0 or last):
            self.evaluate(iteration)
        self.run.progress.advance_to(iteration)

    def save_models(self) -> None:
        """The policy to ``model/`` (merged LoRA unless save_adapter_only) and the value model beside it."""
        from easyrlhf_core.kit.model_loading import save_model

        self.accelerator.wait_for_everyone()
        unwrapped = self.unwrapped
        self.run.save_model(unwrapped.policy, self.tokenizer)
        with gathered(unwrapped.value_model):  # ZeRO-3: whole on every rank while rank 0 writes it
            if self.run.is_main_process:
                save_model(
                    unwrapped.value_model,
                    self.tokenizer,
                    self.run.output_dir / VALUE_MODEL_DIR,
                    merge_lora=not self.config.save_adapter_only,
                )
                self.run.log(f"saved value model to {self.run.output_dir / VALUE_MODEL_DIR}")
        self.accelerator.wait_for_everyone()
