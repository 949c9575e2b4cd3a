"""The shared LM helpers: generation settings are complete, so a model's own generation_config never applies."""

from __future__ import annotations

from easyrlhf_core.kit.causal_lm import generation_config


def test_greedy_and_sampling_configs_pin_every_output_changing_setting():
    greedy = generation_config(8, [2], 0)
    assert (greedy.do_sample, greedy.num_beams, greedy.repetition_penalty, greedy.min_new_tokens) == (False, 1, 1.0, 0)
    sampled = generation_config(8, [2], 0, {})
    assert (sampled.do_sample, sampled.temperature, sampled.top_k, sampled.top_p) == (True, 1.0, 0, 1.0)
    chosen = generation_config(8, [2], 0, {"temperature": 0.7, "top_k": 5}, num_return_sequences=3)
    assert (chosen.temperature, chosen.top_k, chosen.top_p, chosen.num_return_sequences) == (0.7, 5, 1.0, 3)
