"""RLOO on an environment (``env``): TRL 1.16's RLOOTrainer takes no ``rollout_func`` and no ``env_mask``, so
:class:`RLOOEpisodeRollouts` brings them in with three overrides, on top of the episodes GRPO plays
(:class:`easyrlhf_core.kit.online_trl.EpisodeRollouts`):

- ``_generate``: the completions are the episodes (prompt ids, every token after them, the model's and the
  environment's), lengths counted on the model's tokens as GRPO counts them;
- ``_calculate_rewards``: each row carries its episode's ``env_reward`` and ``episode_text`` (what
  :class:`~easyrlhf_core.kit.online_trl.EnvRewardFunc` and the reward plugins read);
- ``_get_per_token_logps_and_entropies``: RLOOTrainer uses one ``completion_mask`` as the attention and as the
  loss mask. Here every completion token is attended to (the environment's are context), and the log-probs are
  zero where the mask is (padding, and the environment's tokens): the sequence log-probs of the ratio and the
  KL to the reference sum the model's tokens only.

``_generate_and_score_completions`` then returns ``completion_mask x env_mask`` (as GRPO's path does), the mask
TRL's loss reads; while it scores, the same product masks the old and reference log-probs.
"""

from __future__ import annotations

from typing import Any

from easyrlhf_core.kit.online_trl import EpisodeRollouts

__all__ = ["RLOOEpisodeRollouts", "padded_masks"]


def padded_masks(masks: list[list[int]], width: int, device: Any) -> Any:
    """The episodes' ``env_mask`` rows as one ``(rows, width)`` tensor, right-padded with 1 (TRL's
    ``completion_mask`` already zeroes the padding)."""
    import torch

    out = torch.ones(len(masks), width, dtype=torch.long, device=device)
    for row, mask in enumerate(masks):
        out[row, : len(mask)] = torch.tensor(mask[:width], dtype=torch.long)
    return out


class RLOOEpisodeRollouts(EpisodeRollouts):
    """Mixed into TRL's RLOOTrainer when ``env`` is set: one episode per prompt row, the environment's tokens
    attended to but out of the loss and the KL (and out of the logged ``kl``'s token count)."""

    through_rollout_func = False
    episode_masks: list[list[int]] | None = None  # the batch being scored: its episodes' env_mask
    episode_fields: dict[str, list[Any]] = {}

    def _generate_and_score_completions(self, inputs: list[dict[str, Any]]) -> Any:
        import torch

        try:
            output = super()._generate_and_score_completions(inputs)
            masks = self.episode_masks
        finally:
            self.episode_masks = None
        assert masks is not None, "RLOOEpisodeRollouts: _generate did not run"
        mask = output["completion_mask"]
        output["completion_mask"] = loss_mask = mask * padded_masks(masks, mask.size(1), mask.device)
        trainer: Any = self
        if trainer.beta != 0.0:  # TRL averaged the logged KL over every completion token; the model's are the count
            counts = trainer.accelerator.reduce(torch.stack([mask.sum(), loss_mask.sum()]).float(), reduction="sum")
            kl = trainer._metrics["train" if trainer.model.training else "eval"]["kl"]
            kl[-1] *= (counts[0].clamp(min=1.0) / counts[1].clamp(min=1.0)).item()
        return output

    def _generate(self, prompts: list[Any]) -> tuple[list[list[int]], list[list[int]], list[Any]]:
        trainer: Any = self
        out = self.rollout_episodes(prompts)
        self.episode_masks = out["env_mask"]
        self.episode_fields = {"env_reward": out["env_reward"], "episode_text": out["episode_text"]}
        log_lengths(trainer, out["prompt_ids"], out["completion_ids"], out["env_mask"])
        texts = trainer.processing_class.batch_decode(out["completion_ids"], skip_special_tokens=True)
        conversational = isinstance(prompts[0], list)
        completions = [[{"role": "assistant", "content": t}] for t in texts] if conversational else texts
        return out["prompt_ids"], out["completion_ids"], completions

    def _calculate_rewards(self, inputs: list[dict[str, Any]], *args: Any) -> Any:
        fields = self.episode_fields
        rows = [{**row, **{k: v[i] for k, v in fields.items()}} for i, row in enumerate(inputs)]
        return super()._calculate_rewards(rows, *args)  # type: ignore[misc]

    def _get_per_token_logps_and_entropies(
        self, model: Any, input_ids: Any, attention_mask: Any, logits_to_keep: int, *args: Any, **kwargs: Any
    ) -> Any:
        keep = attention_mask[:, -logits_to_keep:]
        if self.episode_masks is not None:  # scoring a fresh batch: TRL's completion_mask has no env_mask yet
            keep = keep * padded_masks(self.episode_masks, logits_to_keep, keep.device)
        attention = attention_mask.clone()
        attention[:, -logits_to_keep:] = 1  # causal: the padding after a completion changes none of its logits
        base = super()._get_per_token_logps_and_entropies  # type: ignore[misc]
        logps, entropies, aux = base(model, input_ids, attention, logits_to_keep, *args, **kwargs)
        return logps * keep, entropies, aux


def log_lengths(trainer: Any, prompt_ids: list[list[int]], completion_ids: list[list[int]], masks: Any) -> None:
    """TRL's token count and completion-length metrics, on the model's tokens (``env_mask`` 1), as GRPO logs
    them under ``env_mask``."""
    import torch

    device = trainer.accelerator.device
    mode = "train" if trainer.model.training else "eval"
    gather = trainer.accelerator.gather
    model_tokens = gather(torch.tensor([sum(m) for m in masks], device=device))
    prompt_tokens = gather(torch.tensor([len(p) for p in prompt_ids], device=device))
    if mode == "train":
        trainer.state.num_input_tokens_seen += (prompt_tokens.sum() + model_tokens.sum()).item()
    lengths = model_tokens.float()
    metrics = trainer._metrics[mode]
    metrics["num_tokens"] = [trainer.state.num_input_tokens_seen]
    metrics["completions/mean_length"].append(lengths.mean().item())
    metrics["completions/min_length"].append(lengths.min().item())
    metrics["completions/max_length"].append(lengths.max().item())
    ends = [*trainer.eos_token_ids, trainer._tokenizer.pad_token_id]
    clipped = gather(torch.tensor([not ids or ids[-1] not in ends for ids in completion_ids], device=device))
    metrics["completions/clipped_ratio"].append(clipped.float().mean().item())
