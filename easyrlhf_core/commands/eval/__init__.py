"""``easyrlhf eval``: batched, no-grad evaluation of reward models and policies.

One job per module: :mod:`.data` (records from a dataset plugin), :mod:`.generation` (greedy and sampled
answers), :mod:`.report` (JSON and table), :mod:`.runner` (what runs for a reward model and for a policy). The
parts it shares with training are in the kit: what a model directory holds (:mod:`easyrlhf_core.kit.model_dirs`),
summed completion log-probs (:mod:`easyrlhf_core.kit.completion_logprobs`), accuracy, ties and intervals
(:mod:`easyrlhf_core.kit.stats`), chat formatting (:mod:`easyrlhf_core.kit.chat_template`), the rollout layer
(:mod:`easyrlhf_core.kit.rollout`) and reward scoring (:mod:`easyrlhf_core.kit.rewards`).
Nothing heavy is imported here; torch and transformers load when an evaluation runs.
"""

from __future__ import annotations

from easyrlhf_core.commands.eval.request import EvalRequest
from easyrlhf_core.commands.eval.runner import evaluate

__all__ = ["EvalRequest", "evaluate"]
