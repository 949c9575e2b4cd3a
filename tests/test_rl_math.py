"""easyrlhf_core.kit.rl_math against plain Python loops written from the formulas, on random small tensors
with zeros in the masks (prefix masks as rollouts make them, and arbitrary holes), over several seeds."""

from __future__ import annotations

import math
import statistics
import subprocess
import sys

import pytest
import torch
from torch.testing import assert_close

from easyrlhf_core.kit import rl_math

SEEDS = [0, 1, 2, 3]
BATCH, LENGTH = 4, 7


def _tensor(rows: list[list[float]]) -> torch.Tensor:
    return torch.tensor(rows, dtype=torch.float64)


def _prefix_mask(generator: torch.Generator) -> torch.Tensor:
    """Rows of 1s then 0s; one row all padding, one row full."""
    lengths = torch.randint(1, LENGTH, (BATCH,), generator=generator).tolist()
    lengths[0], lengths[-1] = 0, LENGTH
    return torch.tensor([[1] * n + [0] * (LENGTH - n) for n in lengths])


def _holey_mask(generator: torch.Generator) -> torch.Tensor:
    """Random 0/1 with at least one 0 and one 1."""
    mask = (torch.rand(BATCH, LENGTH, generator=generator) > 0.3).long()
    mask[0, 0], mask[1, 1] = 0, 1
    return mask


def _inputs(seed: int, holes: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(a, b, mask)``: two random float64 ``(BATCH, LENGTH)`` tensors and a mask."""
    generator = torch.Generator().manual_seed(seed)
    a = torch.randn(BATCH, LENGTH, generator=generator, dtype=torch.float64)
    b = torch.randn(BATCH, LENGTH, generator=generator, dtype=torch.float64)
    mask = _holey_mask(generator) if holes else _prefix_mask(generator)
    return a, b, mask


CASES = [(seed, holes) for seed in SEEDS for holes in (False, True)]


# --------------------------------------------------------------------------------------------------
# The loops


def loop_masked_mean(values: list[list[float]], mask: list[list[int]]) -> float:
    total, count = 0.0, 0
    for row, mrow in zip(values, mask):
        for v, m in zip(row, mrow):
            if m:
                total += v
                count += 1
    return total / max(count, 1)


def loop_masked_var(values: list[list[float]], mask: list[list[int]], unbiased: bool) -> float:
    mean = loop_masked_mean(values, mask)
    picked = [v for row, mrow in zip(values, mask) for v, m in zip(row, mrow) if m]
    var = sum((v - mean) ** 2 for v in picked) / max(len(picked), 1)
    if unbiased and len(picked) > 1:
        var = var * len(picked) / (len(picked) - 1)
    return var


def loop_whiten(values: list[list[float]], mask: list[list[int]], shift_mean: bool) -> list[list[float]]:
    mean, var = loop_masked_mean(values, mask), loop_masked_var(values, mask, unbiased=True)
    out = []
    for row, mrow in zip(values, mask):
        out.append(
            [
                ((v - mean) / math.sqrt(var + 1e-8) + (0.0 if shift_mean else mean)) if m else 0.0
                for v, m in zip(row, mrow)
            ]
        )
    return out


def loop_gae(rewards, values, mask, gamma, lam) -> tuple[list[list[float]], list[list[float]]]:
    """``A_t = sum_l (gamma lam)^l delta_{t+l}`` over the positions where the mask is 1, in order (a 0 is skipped:
    an environment's tokens between two of the model's, or padding); the value after the last is 0."""
    advantages, returns = [], []
    for r, v, m in zip(rewards, values, mask):
        kept = [t for t in range(len(r)) if m[t]]  # the model's positions, in order

        def delta(i: int) -> float:
            t = kept[i]
            next_value = v[kept[i + 1]] if i + 1 < len(kept) else 0.0
            return r[t] + gamma * next_value - v[t]

        a_row = [0.0] * len(r)
        for i, t in enumerate(kept):
            a_row[t] = sum((gamma * lam) ** (j - i) * delta(j) for j in range(i, len(kept)))
        advantages.append(a_row)
        returns.append([a + v[t] if m[t] else 0.0 for t, a in enumerate(a_row)])
    return advantages, returns


def loop_returns(rewards, mask, gamma) -> list[list[float]]:
    """``G_t = sum_l gamma^l r_{t+l}`` forward until the episode's end."""
    out = []
    for r, m in zip(rewards, mask):
        row = []
        for t in range(len(r)):
            g, s = 0.0, t
            while s < len(r) and m[s]:
                g += gamma ** (s - t) * r[s]
                s += 1
            row.append(g)
        out.append(row)
    return out


def _lists(*tensors: torch.Tensor) -> list:
    return [t.tolist() for t in tensors]


# --------------------------------------------------------------------------------------------------
# Masked statistics


@pytest.mark.parametrize("seed,holes", CASES)
def test_masked_mean_and_var_match_loops(seed, holes):
    values, _, mask = _inputs(seed, holes)
    v, m = _lists(values, mask)
    assert_close(rl_math.masked_mean(values, mask), torch.tensor(loop_masked_mean(v, m), dtype=torch.float64))
    per_row = [loop_masked_mean([row], [mrow]) for row, mrow in zip(v, m)]
    assert_close(rl_math.masked_mean(values, mask, dim=1), _tensor([per_row])[0])
    for unbiased in (True, False):
        assert_close(
            rl_math.masked_var(values, mask, unbiased=unbiased),
            torch.tensor(loop_masked_var(v, m, unbiased), dtype=torch.float64),
        )


@pytest.mark.parametrize("seed,holes", CASES)
@pytest.mark.parametrize("shift_mean", [True, False])
def test_masked_whiten_matches_a_loop(seed, holes, shift_mean):
    values, _, mask = _inputs(seed, holes)
    got = rl_math.masked_whiten(values, mask, shift_mean=shift_mean)
    assert_close(got, _tensor(loop_whiten(*_lists(values, mask), shift_mean)))


# --------------------------------------------------------------------------------------------------
# Advantages and returns


@pytest.mark.parametrize("seed,holes", CASES)
@pytest.mark.parametrize("gamma,lam", [(1.0, 0.95), (0.9, 1.0), (0.8, 0.5)])
def test_gae_advantages_match_the_forward_sum(seed, holes, gamma, lam):
    rewards, values, mask = _inputs(seed, holes)
    advantages, returns = rl_math.gae_advantages(rewards, values, mask, gamma, lam)
    loop_adv, loop_ret = loop_gae(*_lists(rewards, values, mask), gamma, lam)
    assert_close(advantages, _tensor(loop_adv))
    assert_close(returns, _tensor(loop_ret))


@pytest.mark.parametrize("seed,holes", CASES)
@pytest.mark.parametrize("gamma", [1.0, 0.9])
def test_discounted_returns_match_a_loop(seed, holes, gamma):
    rewards, _, mask = _inputs(seed, holes)
    assert_close(rl_math.discounted_returns(rewards, mask, gamma), _tensor(loop_returns(*_lists(rewards, mask), gamma)))


# --------------------------------------------------------------------------------------------------
# KL estimators and controllers


@pytest.mark.parametrize("seed", SEEDS)
def test_kl_estimators_match_their_formulas(seed):
    generator = torch.Generator().manual_seed(seed)
    logp = -torch.rand(BATCH, LENGTH, generator=generator, dtype=torch.float64) * 3
    logq = -torch.rand(BATCH, LENGTH, generator=generator, dtype=torch.float64) * 3
    p, q = _lists(logp, logq)
    k1 = [[a - b for a, b in zip(ra, rb)] for ra, rb in zip(p, q)]
    k2 = [[0.5 * (a - b) ** 2 for a, b in zip(ra, rb)] for ra, rb in zip(p, q)]
    k3 = [[(math.exp(b - a) - 1) - (b - a) for a, b in zip(ra, rb)] for ra, rb in zip(p, q)]
    assert_close(rl_math.kl_k1(logp, logq), _tensor(k1))
    assert_close(rl_math.kl_k2(logp, logq), _tensor(k2))
    assert_close(rl_math.kl_k3(logp, logq), _tensor(k3))
    assert (rl_math.kl_k2(logp, logq) >= 0).all() and (rl_math.kl_k3(logp, logq) >= 0).all()


@pytest.mark.parametrize("seed", SEEDS)
def test_kl_controllers_match_a_loop(seed):
    generator = torch.Generator().manual_seed(seed)
    kls = (torch.rand(10, generator=generator) * 12).tolist()
    adaptive = rl_math.AdaptiveKLController(0.1, target=6.0, horizon=500)
    fixed = rl_math.FixedKLController(0.1)
    expected = 0.1
    for kl in kls:
        adaptive.update(kl, 64)
        fixed.update(kl, 64)
        error = kl / 6.0 - 1.0
        error = 0.2 if error > 0.2 else (-0.2 if error < -0.2 else error)
        expected = expected * (1.0 + error * 64 / 500)
        assert adaptive.value == pytest.approx(expected, rel=1e-12)
    assert fixed.value == 0.1
    restored = rl_math.AdaptiveKLController(1.0, target=6.0, horizon=500)
    restored.load_state_dict(adaptive.state_dict())
    assert restored.value == adaptive.value


# --------------------------------------------------------------------------------------------------
# Clipped losses


@pytest.mark.parametrize("seed,holes", CASES)
def test_clipped_policy_loss_matches_a_loop(seed, holes):
    advantages, old, mask = _inputs(seed, holes)
    generator = torch.Generator().manual_seed(seed + 100)
    logprobs = old + torch.randn(BATCH, LENGTH, generator=generator, dtype=torch.float64) * 0.3
    eps = 0.2
    loss = clipfrac = approx_kl = ratio_sum = 0.0
    count = 0
    for lp_row, old_row, a_row, m_row in zip(*_lists(logprobs, old, advantages, mask)):
        for lp, o, a, m in zip(lp_row, old_row, a_row, m_row):
            if not m:
                continue
            ratio = math.exp(lp - o)
            unclipped, clipped = -a * ratio, -a * min(max(ratio, 1 - eps), 1 + eps)
            loss += max(unclipped, clipped)
            clipfrac += 1.0 if clipped > unclipped else 0.0
            approx_kl += 0.5 * (lp - o) ** 2
            ratio_sum += ratio
            count += 1
    count = max(count, 1)
    out = rl_math.clipped_policy_loss(logprobs, old, advantages, mask, eps)
    assert_close(out.loss, torch.tensor(loss / count, dtype=torch.float64))
    assert_close(out.clipfrac, torch.tensor(clipfrac / count))  # a fraction: float32
    assert_close(out.approx_kl, torch.tensor(approx_kl / count, dtype=torch.float64))
    assert_close(out.ratio_mean, torch.tensor(ratio_sum / count, dtype=torch.float64))


@pytest.mark.parametrize("seed,holes", CASES)
def test_clipped_value_loss_matches_a_loop(seed, holes):
    values, returns, mask = _inputs(seed, holes)
    generator = torch.Generator().manual_seed(seed + 200)
    old = values + torch.randn(BATCH, LENGTH, generator=generator, dtype=torch.float64) * 0.3
    eps = 0.2
    total = clipfrac = 0.0
    count = 0
    for v_row, o_row, r_row, m_row in zip(*_lists(values, old, returns, mask)):
        for v, o, r, m in zip(v_row, o_row, r_row, m_row):
            if not m:
                continue
            clipped_v = o + min(max(v - o, -eps), eps)
            unclipped_loss, clipped_loss = (v - r) ** 2, (clipped_v - r) ** 2
            total += max(unclipped_loss, clipped_loss)
            clipfrac += 1.0 if clipped_loss > unclipped_loss else 0.0
            count += 1
    count = max(count, 1)
    loss, frac = rl_math.clipped_value_loss(values, old, returns, mask, eps)
    assert_close(loss, torch.tensor(0.5 * total / count, dtype=torch.float64))
    assert_close(frac, torch.tensor(clipfrac / count))


# --------------------------------------------------------------------------------------------------
# Baselines without a value model


def _scores(seed: int, group_size: int, n_groups: int = 3) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(n_groups * group_size, generator=generator, dtype=torch.float64)


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("group_size", [2, 4])
def test_grpo_group_advantages_match_a_loop(seed, group_size):
    scores = _scores(seed, group_size)
    values = scores.tolist()
    scaled, centred = [], []
    for start in range(0, len(values), group_size):
        group = values[start : start + group_size]
        mean, std = statistics.mean(group), statistics.stdev(group)
        scaled += [(r - mean) / (std + 1e-6) for r in group]
        centred += [r - mean for r in group]
    assert_close(rl_math.grpo_group_advantages(scores, group_size), torch.tensor(scaled, dtype=torch.float64))
    assert_close(
        rl_math.grpo_group_advantages(scores, group_size, scale_by_std=False),
        torch.tensor(centred, dtype=torch.float64),
    )


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("group_size", [2, 3, 5])
def test_rloo_advantages_use_the_leave_one_out_mean(seed, group_size):
    scores = _scores(seed, group_size)
    values = scores.tolist()
    expected = []
    for start in range(0, len(values), group_size):
        group = values[start : start + group_size]
        for i, r in enumerate(group):
            others = [x for j, x in enumerate(group) if j != i]
            expected.append(r - sum(others) / len(others))
    assert_close(rl_math.rloo_advantages(scores, group_size), torch.tensor(expected, dtype=torch.float64))


def test_group_baselines_refuse_groups_that_do_not_split():
    for function in (rl_math.grpo_group_advantages, rl_math.rloo_advantages):
        with pytest.raises(ValueError, match="at least 2"):
            function(torch.zeros(4), 1)
        with pytest.raises(ValueError, match="groups of 3"):
            function(torch.zeros(4), 3)


@pytest.mark.parametrize("seed,holes", CASES)
@pytest.mark.parametrize("gamma", [1.0, 0.9])
def test_reinforce_pp_advantages_whiten_the_returns_over_the_batch(seed, holes, gamma):
    rewards, _, mask = _inputs(seed, holes)
    r, m = _lists(rewards, mask)
    expected_returns = loop_returns(r, m, gamma)
    advantages, returns = rl_math.reinforce_pp_advantages(rewards, mask, gamma)
    assert_close(returns, _tensor(expected_returns))
    assert_close(advantages, _tensor(loop_whiten(expected_returns, m, shift_mean=True)))


# --------------------------------------------------------------------------------------------------
# Importing the module stays instant


def test_importing_rl_math_does_not_import_torch():
    code = "import sys, easyrlhf_core.kit.rl_math\nprint('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"
