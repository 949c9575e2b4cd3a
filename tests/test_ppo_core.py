"""PPO's tensor math on hand-computed numbers: masks, KL estimators, rewards, GAE, whitening, losses."""

from __future__ import annotations

import math

import pytest
import torch
from easyrlhf_plugins.methods.ppo import core

from easyrlhf_core.kit import causal_lm as lm
from easyrlhf_core.kit import rl_math


def test_response_mask_stops_at_first_stop_token_even_when_pad_equals_eos():
    eos = 2  # pad == eos, as in SmolLM2 and the tiny fixture: generate pads finished rows with eos
    responses = torch.tensor(
        [
            [5, 2, 2, 2],  # stops at 1; the trailing 2s are padding
            [5, 6, 7, 8],  # never stops
            [2, 2, 2, 2],  # stops at once
            [5, 6, 2, 9],
        ]
    )  # tokens after the stop are ignored
    mask, has_stop = core.response_mask(responses, [eos])
    assert mask.tolist() == [[1, 1, 0, 0], [1, 1, 1, 1], [1, 0, 0, 0], [1, 1, 1, 0]]
    assert has_stop.tolist() == [True, False, True, True]
    assert core.last_index(mask).tolist() == [1, 3, 0, 2]


def test_logprobs_use_temperature_scaled_logits():
    logits = torch.tensor([[[2.0, 0.0, -1.0], [0.5, 0.5, 3.0]]])
    tokens = torch.tensor([[0, 2]])
    got = lm.logprobs_from_logits(logits, tokens, temperature=0.5)
    expected = torch.log_softmax(logits / 0.5, dim=-1).gather(-1, tokens.unsqueeze(-1)).squeeze(-1)
    assert torch.allclose(got, expected)
    assert not torch.allclose(got, lm.logprobs_from_logits(logits, tokens, temperature=1.0))
    entropy = core.entropy_from_logits(torch.zeros(1, 1, 4))
    assert entropy.item() == pytest.approx(math.log(4))


def test_kl_estimators_on_fixed_numbers_and_in_expectation():
    logp, logq = torch.tensor([math.log(0.5)]), torch.tensor([math.log(0.25)])
    assert core.kl_per_token(logp, logq, "k1").item() == pytest.approx(math.log(2))
    assert core.kl_per_token(logp, logq, "k3").item() == pytest.approx(0.5 - 1 + math.log(2))
    # Both are unbiased: their expectation under p is exactly KL(p || q).
    p = torch.tensor([0.5, 0.3, 0.2])
    q = torch.tensor([0.2, 0.3, 0.5])
    true_kl = (p * (p / q).log()).sum()
    for estimator in ("k1", "k3"):
        expectation = (p * core.kl_per_token(p.log(), q.log(), estimator)).sum()
        assert expectation.item() == pytest.approx(true_kl.item(), rel=1e-5)
    # k3 is never negative; k1 can be.
    assert (core.kl_per_token(p.log(), q.log(), "k3") >= 0).all()
    assert (core.kl_per_token(p.log(), q.log(), "k1") < 0).any()
    with pytest.raises(ValueError):
        core.kl_per_token(logp, logq, "k2")


def test_score_lands_on_the_last_real_token_and_kl_penalty_only_on_real_tokens():
    mask = torch.tensor([[1, 1, 1, 0, 0], [1, 0, 0, 0, 0]])
    kl = torch.tensor([[0.1, 0.2, 0.3, 9.0, 9.0], [0.5, 9.0, 9.0, 9.0, 9.0]])
    rewards, non_score = core.per_token_rewards(torch.tensor([1.0, -2.0]), kl, mask, beta=0.5)
    assert torch.allclose(non_score, torch.tensor([[-0.05, -0.1, -0.15, 0, 0], [-0.25, 0, 0, 0, 0]]))
    assert torch.allclose(rewards, torch.tensor([[-0.05, -0.1, 0.85, 0, 0], [-2.25, 0, 0, 0, 0]]))


def test_missing_eos_penalty_and_clipping():
    scores = torch.tensor([1.0, 1.0, 5.0])
    has_stop = torch.tensor([True, False, True])
    assert core.postprocess_scores(scores, has_stop, 1.0, None).tolist() == [1.0, 0.0, 5.0]
    assert core.postprocess_scores(scores, has_stop, None, None).tolist() == [1.0, 1.0, 5.0]
    assert core.postprocess_scores(scores, has_stop, 1.0, 2.0).tolist() == [1.0, 0.0, 2.0]


def test_gae_matches_a_hand_computed_example():
    rewards = torch.tensor([[1.0, 0.0, 2.0]])
    values = torch.tensor([[0.5, 0.2, 0.1]])
    mask = torch.ones(1, 3)
    advantages, returns = rl_math.gae_advantages(rewards, values, mask, gamma=1.0, lam=0.5)
    # t=2: 2 + 0 - 0.1 = 1.9;  t=1: (0 + 0.1 - 0.2) + 0.5 * 1.9 = 0.85;  t=0: (1 + 0.2 - 0.5) + 0.5 * 0.85 = 1.125
    assert torch.allclose(advantages, torch.tensor([[1.125, 0.85, 1.9]]))
    assert torch.allclose(returns, torch.tensor([[1.625, 1.05, 2.0]]))
    # lambda = 1: returns are the discounted reward-to-go, whatever the values
    advantages, returns = rl_math.gae_advantages(rewards[:, 1:], values[:, 1:], mask[:, 1:], gamma=0.9, lam=1.0)
    assert torch.allclose(returns, torch.tensor([[0.9 * 2.0, 2.0]]))


def test_gae_ends_the_episode_at_the_last_real_token():
    rewards = torch.tensor([[0.0, 1.0, 7.0, 7.0]])
    values = torch.tensor([[0.3, 0.4, 5.0, 5.0]])  # garbage after the mask must not leak in
    mask = torch.tensor([[1, 1, 0, 0]])
    advantages, returns = rl_math.gae_advantages(rewards, values, mask, gamma=1.0, lam=1.0)
    assert torch.allclose(advantages, torch.tensor([[0.7, 0.6, 0.0, 0.0]]))
    assert torch.allclose(returns, torch.tensor([[1.0, 1.0, 0.0, 0.0]]))


def test_whitening_ignores_padding():
    values = torch.tensor([[1.0, 2.0, 3.0, 1000.0], [4.0, -1000.0, -1000.0, -1000.0]])
    mask = torch.tensor([[1, 1, 1, 0], [1, 0, 0, 0]])
    whitened = rl_math.masked_whiten(values, mask)
    valid = torch.tensor([1.0, 2.0, 3.0, 4.0])
    expected = (valid - valid.mean()) / valid.std()
    assert torch.allclose(whitened[mask.bool()], expected, atol=1e-5)
    assert whitened[~mask.bool()].abs().sum() == 0
    assert rl_math.masked_mean(values, mask).item() == pytest.approx(2.5)
    assert rl_math.masked_var(values, mask).item() == pytest.approx(valid.var().item())
    assert rl_math.masked_mean(values, mask, dim=1).tolist() == [2.0, 4.0]
    unshifted = rl_math.masked_whiten(values, mask, shift_mean=False)
    assert rl_math.masked_mean(unshifted, mask).item() == pytest.approx(2.5)


def test_clipped_policy_loss_on_fixed_numbers():
    ratios = torch.tensor([[1.5, 1.5, 0.5, 0.5, 3.0]])
    advantages = torch.tensor([[1.0, -1.0, 1.0, -1.0, 100.0]])
    mask = torch.tensor([[1, 1, 1, 1, 0]])  # the last token is padding
    old = torch.zeros(1, 5)
    out = rl_math.clipped_policy_loss(ratios.log(), old, advantages, mask, cliprange=0.2)
    # per token max(-A r, -A clip(r)): max(-1.5,-1.2)=-1.2, max(1.5,1.2)=1.5, max(-.5,-.8)=-.5, max(.5,.8)=.8
    assert out.loss.item() == pytest.approx((-1.2 + 1.5 - 0.5 + 0.8) / 4)
    assert out.clipfrac.item() == pytest.approx(0.5)
    assert out.ratio_mean.item() == pytest.approx(1.0)
    assert out.approx_kl.item() == pytest.approx(0.5 * (2 * math.log(1.5) ** 2 + 2 * math.log(0.5) ** 2) / 4)
    # the clipped side carries no gradient
    logprobs = ratios.log().clone().requires_grad_(True)
    rl_math.clipped_policy_loss(logprobs, old, advantages, mask, cliprange=0.2).loss.backward()
    assert logprobs.grad[0, 0] == 0 and logprobs.grad[0, 3] == 0 and logprobs.grad[0, 4] == 0
    assert logprobs.grad[0, 1] != 0 and logprobs.grad[0, 2] != 0


def test_clipped_value_loss_on_fixed_numbers():
    values = torch.tensor([[1.0, 1.0, 50.0]])
    old = torch.tensor([[0.0, 0.0, 0.0]])
    returns = torch.tensor([[0.0, 1.0, 0.0]])
    mask = torch.tensor([[1, 1, 0]])
    loss, clipfrac = rl_math.clipped_value_loss(values, old, returns, mask, cliprange_value=0.2)
    # token 0: max(1, 0.2^2) = 1;  token 1: max(0, (0.2 - 1)^2 = 0.64) = 0.64
    assert loss.item() == pytest.approx(0.5 * (1.0 + 0.64) / 2)
    assert clipfrac.item() == pytest.approx(0.5)


def test_adaptive_kl_controller_moves_beta_towards_the_target():
    fixed = core.kl_controller(0.1)
    fixed.update(100.0, 64)
    assert fixed.value == 0.1
    adaptive = core.kl_controller(0.1, adaptive=True, target=6.0, horizon=1000)
    adaptive.update(12.0, 100)  # error clipped to +0.2
    assert adaptive.value == pytest.approx(0.1 * (1 + 0.2 * 100 / 1000))
    adaptive.update(5.4, 100)  # error -0.1
    assert adaptive.value == pytest.approx(0.1 * 1.02 * (1 - 0.1 * 0.1))
    restored = core.kl_controller(0.5, adaptive=True)
    restored.load_state_dict(adaptive.state_dict())
    assert restored.value == adaptive.value


def test_running_moments_match_the_full_batch_statistics():
    torch.manual_seed(0)
    parts = [torch.randn(5) * 3 + 1, torch.randn(7), torch.randn(1) + 4]
    moments = core.RunningMoments()
    for part in parts:
        moments.update(part)
    everything = torch.cat(parts).double()
    assert moments.mean == pytest.approx(everything.mean().item())
    assert moments.std == pytest.approx(everything.std(unbiased=False).item())
    normalized = moments.normalize(everything)
    assert normalized.mean().item() == pytest.approx(0.0, abs=1e-6)
