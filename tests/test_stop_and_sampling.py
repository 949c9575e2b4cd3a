"""PPO samples from the distribution it scores (no top-k / top-p filtering), and ppo, rrhf and eval stop
responses on one set of end-of-turn ids."""

from __future__ import annotations

import pytest


@pytest.mark.parametrize("setting", ["top_k=5", "top_p=0.9"])
def test_ppo_refuses_filtered_sampling(cli_run, tiny_model_dir, tmp_path, setting):
    out = tmp_path / "never"
    result = cli_run(
        "run",
        "--method",
        "ppo",
        "--model",
        str(tiny_model_dir),
        "--reward",
        "length",
        "--set",
        setting,
        "--output-dir",
        str(out),
    )
    assert result.exit_code == 2
    assert result.stderr.startswith(f"Error: --set {setting.split('=')[0]}:") and "off-policy" in result.stderr
    assert not out.exists()


def test_ppo_rrhf_and_eval_stop_on_the_same_ids(tiny_model_dir):
    import torch
    from easyrlhf_plugins.methods.ppo import core
    from easyrlhf_plugins.methods.ppo.config import PPOConfig
    from easyrlhf_plugins.methods.ppo.models import response_stop_ids
    from easyrlhf_plugins.methods.rrhf.candidates import sampling_config
    from easyrlhf_plugins.methods.rrhf.config import RRHFConfig

    from easyrlhf_core.kit.causal_lm import stop_token_ids
    from easyrlhf_core.kit.model_loading import load_causal_lm, load_tokenizer

    tokenizer = load_tokenizer(str(tiny_model_dir))
    model = load_causal_lm(str(tiny_model_dir))
    endoftext = tokenizer.convert_tokens_to_ids("<|endoftext|>")
    model.generation_config.eos_token_id = [tokenizer.eos_token_id, endoftext]  # two end-of-turn ids

    expected = [tokenizer.eos_token_id, endoftext]
    assert stop_token_ids(tokenizer, model) == expected  # eval
    assert response_stop_ids(PPOConfig(), tokenizer, model) == expected  # ppo rollout
    assert sampling_config(RRHFConfig(), tokenizer, model).stop_ids == expected  # rrhf generate

    # a response ending in the second eos id has stopped: not penalised as "no EOS"
    mask, has_stop = core.response_mask(torch.tensor([[5, 6, endoftext, 7]]), expected)
    assert has_stop.tolist() == [True] and mask.tolist() == [[1, 1, 1, 0]]

    # an explicit stop_token still wins
    assert response_stop_ids(PPOConfig(stop_token="<|endoftext|>"), tokenizer, model) == [endoftext]
