"""``easyrlhf eval``: batched, no-grad evaluation of reward models and policies.

One job per module: :mod:`.data` (records from a dataset plugin), :mod:`.models` (what a model
directory holds, loading), :mod:`.logprobs` (summed completion log-probs), :mod:`.generation` (greedy and
sampled answers), :mod:`.stats` (accuracy, ties, Wilson and bootstrap intervals, the
length baseline), :mod:`.report` (JSON and table), :mod:`.runner` (what runs for a reward model and for a
policy).

Chat formatting into token ids is :mod:`easyrlhf_core.kit.chat_template`, the LM helpers
:mod:`easyrlhf_core.kit.causal_lm`, reward
scoring (judges) :mod:`easyrlhf_core.kit.rewards`.
Nothing heavy is imported here; torch and transformers load when an evaluation runs.
"""

from __future__ import annotations

from easyrlhf_core.commands.eval.runner import EvalRequest, evaluate

__all__ = ["EvalRequest", "evaluate"]
