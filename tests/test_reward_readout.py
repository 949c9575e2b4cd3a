"""One readout rule for reward models: the score TRL's RewardTrainer trains on is the score PPO, RRHF
(``candidates: generate``) and ``easyrlhf eval`` read, also for chat templates that end with the pad/eos
token (where reading the last attention-mask token would read a position the head never learned)."""

from __future__ import annotations

from pathlib import Path

import pytest

from easyrlhf_core.kit.model_loading import DEFAULT_CHAT_TEMPLATE
from tests.helpers import PAD_TERMINATED_TEMPLATE

PROMPTS = [
    [{"role": "user", "content": "What is the capital of France?"}],
    [
        {"role": "user", "content": "Tell me a joke."},
        {"role": "assistant", "content": "Why?"},
        {"role": "user", "content": "Go on."},
    ],
    [{"role": "user", "content": "Help me bake bread."}],
]
CHOSEN = [
    "The capital of France is Paris.",
    "Why did the chicken cross the road? To get to the other side!",
    "Mix flour, water, yeast and salt.",
]
REJECTED = ["London.", "No.", "Sure"]


def _reward_model_dir(root: Path, template: str) -> Path:
    import torch

    from easyrlhf_core.kit.model_loading import load_sequence_classifier
    from tests.helpers import build_tiny_causal_lm, build_tiny_tokenizer

    tokenizer = build_tiny_tokenizer(template)
    base = root / "base"
    build_tiny_causal_lm(tokenizer).save_pretrained(base)
    tokenizer.save_pretrained(base)
    torch.manual_seed(3)
    model = load_sequence_classifier(str(base), pad_token_id=tokenizer.pad_token_id)
    torch.nn.init.normal_(model.score.weight, std=1.0)  # a head whose reading position matters
    out = root / "rm"
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


def _trainer_scores(path: Path) -> tuple[list[float], list[float]]:
    """Chosen and rejected scores exactly as TRL's RewardTrainer computes them in its loss."""
    import torch
    from trl import RewardConfig, RewardTrainer

    from easyrlhf_core.kit.dataset_cache import as_hf_dataset
    from easyrlhf_core.kit.model_loading import load_sequence_classifier, load_tokenizer

    tokenizer = load_tokenizer(str(path))
    model = load_sequence_classifier(str(path), pad_token_id=tokenizer.pad_token_id).eval()
    records = [
        {
            "prompt": p,
            "chosen": [{"role": "assistant", "content": c}],
            "rejected": [{"role": "assistant", "content": r}],
        }
        for p, c, r in zip(PROMPTS, CHOSEN, REJECTED)
    ]
    args = RewardConfig(
        output_dir=str(path.parent / "trainer"),
        report_to="none",
        use_cpu=True,
        per_device_train_batch_size=len(records),
        max_length=512,
    )
    trainer = RewardTrainer(model=model, args=args, train_dataset=as_hf_dataset(records), processing_class=tokenizer)
    batch = trainer.data_collator([trainer.train_dataset[i] for i in range(len(records))])  # in order
    with torch.no_grad():
        _, outputs = trainer.compute_loss(model, dict(batch), return_outputs=True)
    scores = outputs.logits.squeeze(-1).tolist()
    return scores[: len(records)], scores[len(records) :]


@pytest.mark.parametrize("template", [PAD_TERMINATED_TEMPLATE, DEFAULT_CHAT_TEMPLATE], ids=["pad-terminated", "chatml"])
def test_every_scoring_path_reads_the_trained_position(tmp_path: Path, template: str):
    from easyrlhf_plugins.rewards import RewardModelReward

    from easyrlhf_core.kit.model_dirs import inspect_model
    from easyrlhf_core.kit.rewards import reward_model_judge
    from easyrlhf_core.runtime.registry import get_registry
    from tests.helpers import build_tiny_tokenizer

    rendered = build_tiny_tokenizer(template).apply_chat_template(
        PROMPTS[0] + [{"role": "assistant", "content": CHOSEN[0]}], tokenize=False
    )
    assert rendered.endswith("<|im_end|>") == (template == PAD_TERMINATED_TEMPLATE)  # eos == pad ends the text

    path = _reward_model_dir(tmp_path, template)
    trained_chosen, trained_rejected = _trainer_scores(path)

    # PPO and RRHF score through the reward-model plugin, batched and right-padded
    plugin = RewardModelReward(path=str(path), batch_size=2)
    assert plugin.score(PROMPTS, CHOSEN) == pytest.approx(trained_chosen, abs=1e-5)
    assert plugin.score(PROMPTS, REJECTED) == pytest.approx(trained_rejected, abs=1e-5)

    # easyrlhf eval scores through its judge
    judge = reward_model_judge(get_registry(), inspect_model(str(path), "--model"), batch_size=3, max_length=512)
    judged = judge.score(PROMPTS, [[{"role": "assistant", "content": c}] for c in CHOSEN])
    assert judged == pytest.approx(trained_chosen, abs=1e-5)


def test_reward_scores_needs_the_pad_token_in_the_config(tmp_path: Path):
    import torch

    from easyrlhf_core.kit.errors import EasyRLHFError
    from easyrlhf_core.kit.model_loading import load_sequence_classifier, reward_scores

    path = _reward_model_dir(tmp_path, DEFAULT_CHAT_TEMPLATE)
    model = load_sequence_classifier(str(path))
    model.config.pad_token_id = None
    with pytest.raises(EasyRLHFError, match="pad_token_id"):
        reward_scores(model, torch.tensor([[1, 2, 3]]), torch.tensor([[1, 1, 1]]))
