"""Environments (the fourth plugin kind) and the multi-turn rollout (easyrlhf_core.kit.episodes): episodes with a
scripted model, the environment's tokens masked out of training (the policy loss's gradient is exactly zero there,
GAE never reads them), tool failures, max_turns and the token budget, the fallback tool format and a template
that renders tools itself, a TRL-style class registered in one line, runs of grpo, rloo and ppo on environments
(a third-party one included), the mask TRL's loss reads in grpo and rloo (0 on every token the environment
wrote), and a grpo / rloo environment run killed after a checkpoint resuming exactly."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import pytest
import torch

from easyrlhf_core.kit import rl_math
from easyrlhf_core.kit.config import option
from easyrlhf_core.kit.environments import StepResult, ToolEnvironment, TurnEnvironment, from_trl, tool_schemas
from easyrlhf_core.kit.episodes import (
    EnvironmentFailed,
    EpisodeSettings,
    episode_text,
    parse_tool_calls,
    run_episodes,
    template_renders_tools,
)
from easyrlhf_core.kit.model_loading import load_tokenizer
from easyrlhf_core.kit.rollout import Rollouts, Sampling


class ScriptedEngine:
    """A rollout engine that answers from a script: call k gives every running episode the k-th text."""

    name = "scripted"

    def __init__(self, tokenizer: Any, turns: list[str]) -> None:
        self.tokenizer, self.turns, self.calls = tokenizer, turns, 0

    def generate(self, prompt_ids: list[list[int]], sampling: Sampling, logprobs: bool = False) -> Rollouts:
        from easyrlhf_core.kit.causal_lm import left_pad, right_pad

        text = self.turns[min(self.calls, len(self.turns) - 1)]
        self.calls += 1
        ids = self.tokenizer.encode(text, add_special_tokens=False)[: sampling.max_new_tokens - 1]
        ids = ids + [self.tokenizer.eos_token_id]
        responses, mask = right_pad([ids] * len(prompt_ids), sampling.pad_token_id)
        queries, query_mask = left_pad(prompt_ids, sampling.pad_token_id)
        return Rollouts(queries, query_mask, responses, mask, None, [text] * len(prompt_ids))

    def sync_weights(self, model: Any) -> None: ...

    def close(self) -> None: ...


class Calculator(ToolEnvironment):
    name = "test-calculator"

    def reset(self, **row: Any) -> str | None:
        self.answer = row["answer"]
        self.final = ""
        return None

    def calculate(self, expression: str) -> str:
        """Evaluate an arithmetic expression.

        Args:
            expression: Numbers and + - * /.
        """
        if not set(expression) <= set("0123456789+-*/ ()"):
            raise ValueError(f"not arithmetic: {expression}")
        return str(eval(expression))  # noqa: S307 (checked characters only)

    def finish(self, messages: list[dict[str, Any]]) -> None:
        self.final = messages[-1]["content"]

    def get_reward(self) -> float:
        return float(self.answer in self.final)


class Forever(TurnEnvironment):
    name = "test-forever"

    def step(self, message: str) -> StepResult:
        return StepResult("Go on.", reward=0.25)


@pytest.fixture(scope="module")
def tokenizer(tiny_model_dir):
    return load_tokenizer(str(tiny_model_dir), padding_side="left")


def _sampling(tokenizer, max_new_tokens: int = 400) -> Sampling:
    return Sampling(max_new_tokens, [tokenizer.eos_token_id], tokenizer.pad_token_id)


PROMPT = [{"role": "user", "content": "What is 12 * 34?"}]
CALL = '<tool_call>{"name": "calculate", "arguments": {"expression": "12 * 34"}}</tool_call>'


def test_a_tool_episode_runs_the_tool_and_masks_what_the_environment_wrote(tokenizer):
    engine = ScriptedEngine(tokenizer, [CALL, "The answer is 408."])
    (episode,) = run_episodes(
        engine, tokenizer, [Calculator()], [PROMPT], [{"answer": "408"}], _sampling(tokenizer), EpisodeSettings(4, 4096)
    )
    assert (episode.turns, episode.tool_calls, episode.tool_failures, episode.done) == (2, 1, 0, True)
    assert episode.env_reward == 1.0
    assert [m["role"] for m in episode.transcript] == ["assistant", "tool", "assistant"]
    assert episode.transcript[1]["content"] == "408"
    ids, mask = episode.completion_ids, episode.env_mask
    assert len(ids) == len(mask) and 0 in mask and mask[0] == 1 and mask[-1] == 1
    model = tokenizer.decode([t for t, m in zip(ids, mask) if m])
    written = tokenizer.decode([t for t, m in zip(ids, mask) if not m])
    assert "calculate" in model and "The answer is 408." in model and "408" not in model.split("</tool_call>")[1][:3]
    assert "408" in written and "tool" in written  # the result, inside the template's markup
    # the prompt told the model about the tool in the system message: the tiny template renders no tools
    assert not template_renders_tools(tokenizer)
    assert "calculate" in episode.messages[0]["content"] and episode.messages[0]["role"] == "system"
    assert "[tool] 408" in episode_text(episode)


def test_tool_failures_reach_the_model_as_text(tokenizer):
    bad = [
        '<tool_call>{"name": "calculate", "arguments": {"expression": "__import__(1)"}}</tool_call>',
        '<tool_call>{"name": "nope", "arguments": {}}</tool_call>',
        "<tool_call>{not json}</tool_call>",
        "I give up.",
    ]
    engine = ScriptedEngine(tokenizer, bad)
    (episode,) = run_episodes(
        engine, tokenizer, [Calculator()], [PROMPT], [{"answer": "408"}], _sampling(tokenizer), EpisodeSettings(8, 8192)
    )
    results = [m["content"] for m in episode.transcript if m["role"] == "tool"]
    assert results[0].startswith("Error: ValueError: not arithmetic")
    assert results[1].startswith("Error: no tool named 'nope'")
    assert results[2].startswith("Error: the tool call is not valid JSON")
    assert (episode.tool_calls, episode.tool_failures, episode.turns, episode.env_reward) == (3, 3, 4, 0.0)


def test_max_turns_and_the_token_budget_end_episodes(tokenizer):
    engine = ScriptedEngine(tokenizer, ["Still thinking."])
    (episode,) = run_episodes(
        engine, tokenizer, [Forever()], [PROMPT], [{}], _sampling(tokenizer), EpisodeSettings(3, 4096)
    )
    assert (episode.turns, episode.done) == (3, False)
    assert episode.env_reward == pytest.approx(0.75)  # a step reward per answered message
    engine = ScriptedEngine(tokenizer, ["Still thinking."])
    (short,) = run_episodes(
        engine, tokenizer, [Forever()], [PROMPT], [{}], _sampling(tokenizer), EpisodeSettings(9, 40)
    )
    assert len(short.completion_ids) <= 40 and short.turns < 9


def test_a_template_that_renders_tools_gets_them_as_tools(tokenizer):
    native = load_tokenizer_with_tools(tokenizer)
    assert template_renders_tools(native)
    engine = ScriptedEngine(native, [CALL, "408"])
    (episode,) = run_episodes(
        engine, native, [Calculator()], [PROMPT], [{"answer": "408"}], _sampling(native), EpisodeSettings(4, 4096)
    )
    assert episode.messages[0]["role"] == "user"  # no system message added: the template has the tools
    assert "calculate" in native.decode(episode.prompt_ids)
    assert episode.env_reward == 1.0


def load_tokenizer_with_tools(tokenizer: Any) -> Any:
    import copy

    native = copy.deepcopy(tokenizer)
    native.chat_template = (
        "{% if tools %}<|im_start|>system\nTools: {{ tools | tojson }}<|im_end|>\n{% endif %}"
        "{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n{% endfor %}"
        "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
    )
    return native


def test_parse_tool_calls():
    assert parse_tool_calls("no call") == []
    assert parse_tool_calls(CALL + " and " + CALL) == [("calculate", {"expression": "12 * 34"})] * 2
    assert parse_tool_calls('<tool_call>{"name": 3}</tool_call>')[0].startswith("Error")


def test_the_policy_loss_never_trains_on_environment_tokens():
    """The rollout's mask is the episode's env_mask: the gradient at every environment position is exactly zero,
    and GAE's advantages and returns at the model's positions do not read the environment's values."""
    torch.manual_seed(0)
    env_mask = torch.tensor([[1, 1, 0, 0, 0, 1, 1, 0], [1, 0, 0, 1, 1, 1, 0, 0]])
    logits = torch.randn(2, 8, 11, requires_grad=True)
    tokens = torch.randint(0, 11, (2, 8))
    logprobs = torch.log_softmax(logits, -1).gather(-1, tokens.unsqueeze(-1)).squeeze(-1)
    advantages = torch.randn(2, 8)
    loss = rl_math.clipped_policy_loss(logprobs, logprobs.detach() - 0.1, advantages, env_mask, 0.2).loss
    loss.backward()
    assert logits.grad is not None
    assert torch.all(logits.grad[env_mask == 0] == 0)
    assert torch.any(logits.grad[env_mask == 1] != 0)
    rewards, values = torch.randn(2, 8), torch.randn(2, 8)
    adv, ret = rl_math.gae_advantages(rewards, values, env_mask, 0.9, 0.95)
    noisy = torch.where(env_mask.bool(), values, torch.randn(2, 8) * 100)
    noisy_rewards = torch.where(env_mask.bool(), rewards, torch.randn(2, 8) * 100)
    adv2, ret2 = rl_math.gae_advantages(noisy_rewards, noisy, env_mask, 0.9, 0.95)
    assert torch.allclose(adv, adv2) and torch.allclose(ret, ret2)
    assert torch.all(adv[env_mask == 0] == 0)


class PlainTRLEnv:
    """A class written for TRL's environment_factory: reset, a tool, get_reward."""

    def reset(self, **row: Any) -> str | None:
        self.used = 0
        return " (use the tool)"

    def shout(self, text: str) -> str:
        """Say it louder.

        Args:
            text: What to say.
        """
        self.used += 1
        return text.upper()

    def get_reward(self) -> float:
        return float(self.used)


def test_a_trl_environment_registers_in_one_line(tokenizer):
    adapted = from_trl(PlainTRLEnv, "shouter")
    assert adapted.name == "shouter" and adapted.kind == "tools"
    assert [s["function"]["name"] for s in tool_schemas(adapted())] == ["shout"]
    call = '<tool_call>{"name": "shout", "arguments": {"text": "hi"}}</tool_call>'
    (episode,) = run_episodes(
        ScriptedEngine(tokenizer, [call, "done"]),
        tokenizer,
        [adapted()],
        [PROMPT],
        [{}],
        _sampling(tokenizer),
        EpisodeSettings(4, 4096),
    )
    assert episode.transcript[1]["content"] == "HI" and episode.env_reward == 1.0
    assert episode.messages[-4]["content"].endswith("(use the tool)")  # reset's text joins the last user message


class Exploding(TurnEnvironment):
    name = "test-exploding"

    def step(self, message: str) -> StepResult:
        raise RuntimeError("boom")


def test_an_environment_that_raises_is_one_error_naming_it_and_the_row(tokenizer):
    with pytest.raises(EnvironmentFailed) as info:
        run_episodes(
            ScriptedEngine(tokenizer, ["x"]),
            tokenizer,
            [Exploding()],
            [PROMPT],
            [{}],
            _sampling(tokenizer),
            EpisodeSettings(2, 64),
            row_indices=[17],
        )
    assert "environment 'test-exploding' raised in step() on data row 17: RuntimeError: boom" in str(info.value)


# --------------------------------------------------------------------------------------------------
# Runs


@dataclass
class EchoOptions:
    rounds: int = option(2, "Rounds before the game ends.")


class EchoGame(TurnEnvironment):
    """Rewards saying 'a'; ends after `rounds` messages."""

    name = "echo-game"
    description = "a third-party test game"
    options_class = EchoOptions

    def reset(self, **row: Any) -> str | None:
        self.seen = 0
        return None

    def step(self, message: str) -> StepResult:
        self.seen += 1
        done = self.seen >= self.options.rounds
        return StepResult("Again." if not done else None, done=done, reward=float("a" in message))


class EchoPlugin:
    @staticmethod
    def register_environments(register: Any) -> None:
        register(EchoGame)


@pytest.fixture
def echo_registered():
    from easyrlhf_core import hookimpl
    from easyrlhf_core.runtime.registry import register_plugin, unregister_plugin

    class Plugin:
        __doc__ = "echo game plugin"

        @hookimpl
        def register_environments(self, register: Any) -> None:
            register(EchoGame)

    register_plugin("echo-plugin", Plugin())
    yield
    unregister_plugin("echo-plugin")


def _prompts(tmp_path):
    path = tmp_path / "prompts.jsonl"
    path.write_text(
        "".join(json.dumps({"prompt": [{"role": "user", "content": f"Say a, {i}."}]}) + "\n" for i in range(8))
    )
    return path


def test_list_plugins_shows_environments(echo_registered, cli_run):
    result = cli_run("list-plugins", "--json")
    names = {e["name"] for e in json.loads(result.stdout)["environments"]}
    assert {"calculator", "guess-number", "echo-game"} <= names


@pytest.mark.parametrize("method", ["grpo", "rloo", "ppo"])
def test_methods_train_on_a_third_party_environment(method, echo_registered, cli_run, tiny_model_dir, tmp_path):
    out = tmp_path / method
    args = ["run", "--method", method, "--model", str(tiny_model_dir), "--env", "echo-game", "--dataset", "jsonl"]
    args += ["--data-files", str(_prompts(tmp_path)), "--output-dir", str(out), "--max-steps", "2", "--seed", "1"]
    args += ["--set", "eval_fraction=0", "--set", "max_turns=3", "--set", "max_episode_tokens=96"]
    args += ["--set", "env_options={rounds: 3}", "--set", "save_steps=1"]
    if method in ("grpo", "rloo"):
        args += ["--set", "num_generations=2", "--set", "per_device_train_batch_size=2"]
        args += ["--set", "max_completion_length=6", "--set", "max_length=200"]
    else:
        args += ["--set", "rollout_batch_size=2", "--set", "per_device_train_batch_size=2", "--set", "max_new_tokens=6"]
        args += ["--set", "max_length=200"]
    result = cli_run(*args)
    assert result.exit_code == 0, result.stderr
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    turns = [r["episodes/turns"] for r in rows if "episodes/turns" in r]
    assert turns and all(t == 3 for t in turns)  # every message answered until the game's 3 rounds
    samples = [json.loads(line) for line in (out / "samples.jsonl").read_text().splitlines()]
    assert samples and "echo-game" in samples[0]["rewards"] and "[user] Again." in samples[0]["completion"]
    assert (out / "model" / "config.json").is_file()


def test_env_options_are_refused_before_anything_is_written(echo_registered, cli_run, tiny_model_dir, tmp_path):
    out = tmp_path / "never"
    result = cli_run(
        "run", "--method", "ppo", "--model", str(tiny_model_dir), "--env", "echo-game", "--output-dir", str(out),
        "--set", "env_options={roundz: 3}",
    )  # fmt: skip
    assert result.exit_code == 2
    assert "env_options" in result.stderr and "did you mean 'rounds'" in result.stderr
    assert not out.exists()
    unknown = cli_run("run", "--method", "ppo", "--model", str(tiny_model_dir), "--env", "echo-gme")
    assert unknown.exit_code == 2 and "did you mean 'echo-game'" in unknown.stderr


def test_a_trl_trainer_without_rollout_func_refuses_environments(cli_run, tiny_model_dir, tmp_path):
    """A plugin's method on a TRL trainer that takes no rollout_func, with no episode mixin of its own (rloo has
    one), cannot keep the environment's tokens out of the loss: one line saying so."""
    from easyrlhf_plugins.methods.grpo import RLOOConfig

    from easyrlhf_core import hookimpl
    from easyrlhf_core.kit.online_trl import OnlineMethod
    from easyrlhf_core.runtime.registry import register_plugin, unregister_plugin

    class BareRLOO(OnlineMethod):
        name, description, config_class = "bare-rloo", "RLOOTrainer without episodes", RLOOConfig
        trl_names = ("RLOOConfig", "RLOOTrainer")

    class Plugin:
        __doc__ = "bare rloo plugin"

        @hookimpl
        def register_methods(self, register: Any) -> None:
            register(BareRLOO)

    register_plugin("bare-rloo-plugin", Plugin())
    try:
        result = cli_run(
            "run", "--method", "bare-rloo", "--model", str(tiny_model_dir), "--env", "guess-number",
            "--output-dir", str(tmp_path / "r"), "--max-steps", "1",
        )  # fmt: skip
    finally:
        unregister_plugin("bare-rloo-plugin")
    assert result.exit_code == 2 and "takes no rollout_func" in result.stderr, result.stderr


def _runs(mask: list[int]) -> list[tuple[int, int, int]]:
    """``(value, start, end)`` for each run of equal values in a 0/1 row."""
    runs: list[tuple[int, int, int]] = []
    for i, v in enumerate(mask):
        if runs and runs[-1][0] == v:
            runs[-1] = (v, runs[-1][1], i + 1)
        else:
            runs.append((v, i, i + 1))
    return runs


@pytest.mark.parametrize("method", ["grpo", "rloo"])
def test_trl_methods_train_only_on_the_models_tokens(
    method, echo_registered, cli_run, tiny_model_dir, tmp_path, monkeypatch
):
    """The mask TRL's loss reads is 0 on every token the environment wrote (the game's two "Again." observations
    and their markup) and 1 on the model's; rloo's ratio log-probs still read the environment's tokens as context
    (its old log-probs are TRL's own on the model's tokens with every completion token attended to)."""
    import trl

    trainer_class = getattr(trl, {"grpo": "GRPOTrainer", "rloo": "RLOOTrainer"}[method])
    seen: list[dict[str, Any]] = []
    compute_loss = trainer_class._compute_loss

    def spy(self: Any, model: Any, inputs: dict[str, Any]) -> Any:
        batch = {k: v.detach().clone() if torch.is_tensor(v) else v for k, v in inputs.items()}
        if method == "rloo" and not seen:  # the policy has not moved yet: old log-probs are the current ones
            ids = torch.cat([batch["prompt_ids"], batch["completion_ids"]], dim=1)
            attention = torch.cat([batch["prompt_mask"], torch.ones_like(batch["completion_ids"])], dim=1)
            with torch.no_grad():
                logps = trainer_class._get_per_token_logps_and_entropies(
                    self, model, ids, attention, batch["completion_ids"].size(1)
                )[0]
            batch["reference_old_logps"] = (logps * batch["completion_mask"]).sum(1)
        seen.append(batch)
        return compute_loss(self, model, inputs)

    monkeypatch.setattr(trainer_class, "_compute_loss", spy)
    out = tmp_path / method
    args = ["run", "--method", method, "--model", str(tiny_model_dir), "--env", "echo-game", "--dataset", "jsonl"]
    args += ["--data-files", str(_prompts(tmp_path)), "--output-dir", str(out), "--max-steps", "1", "--seed", "2"]
    args += ["--set", "eval_fraction=0", "--set", "max_turns=3", "--set", "max_episode_tokens=96"]
    args += ["--set", "env_options={rounds: 3}", "--set", "num_generations=2", "--set", "per_device_train_batch_size=2"]
    args += ["--set", "max_completion_length=6", "--set", "max_length=200"]
    result = cli_run(*args)
    assert result.exit_code == 0, result.stderr
    tokenizer = load_tokenizer(str(tiny_model_dir))
    assert seen
    for batch in seen:
        loss_mask = batch["completion_mask"] * batch.get("tool_mask", 1)  # what TRL's loss multiplies by
        for ids, mask in zip(batch["completion_ids"].tolist(), loss_mask.tolist()):
            runs = _runs(mask)
            inside = [(s, e) for v, s, e in runs[:-1] if v == 0]  # env tokens between the model's messages
            assert len(inside) == 2, runs  # the game's two observations, each masked
            for s, e in inside:
                assert "Again." in tokenizer.decode(ids[s:e])
            model_text = tokenizer.decode([t for t, m in zip(ids, mask) if m])
            assert "Again." not in model_text and model_text.strip()
        if "reference_old_logps" in batch:
            assert torch.allclose(batch["old_logps"], batch["reference_old_logps"], atol=1e-4)


def _env_run_args(method: str, model: Any, out: Any, *extra: str) -> list[str]:
    """A short guess-number run (a built-in: a subprocess sees it), a reward plugin on top so the advantages
    are not all zero, a rate that moves the tiny model."""
    args = ["run", "--method", method, "--model", str(model), "--env", "guess-number", "--output-dir", str(out)]
    args += ["--reward", "length", "--max-steps", "8", "--seed", "5", "--set", "eval_fraction=0"]
    args += ["--set", "save_steps=2", "--set", "lr_scheduler_type=constant", "--set", "learning_rate=1e-3"]
    args += ["--set", "num_generations=2", "--set", "per_device_train_batch_size=2", "--set", "max_turns=2"]
    args += ["--set", "max_completion_length=6", "--set", "max_episode_tokens=48", "--set", "max_length=300"]
    return [*args, *extra]


@pytest.mark.parametrize("method", ["grpo", "rloo"])
def test_an_environment_run_killed_after_a_checkpoint_resumes_exactly(method, tiny_model_dir, tmp_path):
    """SIGKILL after checkpoint-2, then --resume: the same steps, metrics, episodes (samples.jsonl) and final
    weights as the uninterrupted run."""
    from tests.subprocess_runs import RunningProcess, model_tensors, run_easyrlhf, train_rows

    whole = run_easyrlhf(_env_run_args(method, tiny_model_dir, tmp_path / "whole"))
    assert whole.returncode == 0, whole.stderr
    out = tmp_path / "killed"
    running = RunningProcess(_env_run_args(method, tiny_model_dir, out))
    running.wait_until(lambda: (out / "checkpoints" / "checkpoint-2" / "COMPLETE").is_file(), what="checkpoint-2")
    running.kill()
    assert not (out / "COMPLETE").exists()
    resumed = run_easyrlhf(_env_run_args(method, tiny_model_dir, out, "--resume"))
    assert resumed.returncode == 0, resumed.stderr
    assert "--resume: continuing from" in resumed.stderr
    got, want = train_rows(out), train_rows(tmp_path / "whole")
    assert [r["step"] for r in got] == [r["step"] for r in want] == list(range(1, 9))
    keys = ("loss", "grad_norm", "num_tokens", "rewards/length/mean", "rewards/guess-number/mean", "episodes/turns")
    for a, b in zip(got, want):
        for key in keys:
            assert a[key] == pytest.approx(b[key], rel=1e-4, abs=1e-6), (a["step"], key)
    assert any(r["loss"] != 0 for r in want) and any(r["grad_norm"] > 0 for r in want)  # the test has teeth
    episodes = [(s["step"], s["completion"]) for s in _samples(out)]
    assert episodes == [(s["step"], s["completion"]) for s in _samples(tmp_path / "whole")]
    assert {step for step, _ in episodes} == set(range(1, 9))
    final, expected = model_tensors(out / "model"), model_tensors(tmp_path / "whole" / "model")
    start = model_tensors(tiny_model_dir)
    assert any((expected[k] - start[k]).abs().max() > 1e-4 for k in expected)  # training moved the weights
    assert all((final[k] - expected[k]).abs().max() < 1e-5 for k in final)


def _samples(out: Any) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (out / "samples.jsonl").read_text().splitlines()]


@pytest.mark.parametrize("method", ["grpo", "rloo", "ppo"])
def test_two_processes_play_episodes_and_stay_in_sync(method, tiny_model_dir, tmp_path):
    """Two DDP processes each play their share of the episodes, end with the same weights, and every step logs
    its episodes within max_turns."""
    from tests.subprocess_runs import read_metrics, run_easyrlhf

    out = tmp_path / method
    args = ["run", "--method", method, "--model", str(tiny_model_dir), "--env", "guess-number"]
    args += ["--output-dir", str(out), "--max-steps", "2", "--seed", "3", "--set", "eval_fraction=0"]
    args += ["--set", "max_turns=2", "--set", "max_episode_tokens=48", "--set", "max_length=300"]
    if method == "ppo":
        args += ["--set", "rollout_batch_size=2", "--set", "per_device_train_batch_size=2", "--set", "max_new_tokens=6"]
    else:
        args += ["--set", "num_generations=2", "--set", "per_device_train_batch_size=2"]
        args += ["--set", "max_completion_length=6", "--reward", "length"]
    result = run_easyrlhf(args, num_processes=2)
    assert result.returncode == 0, result.stderr
    checksums = result.rank_checksums
    assert len(checksums) == 2 and checksums[0] == checksums[1], result.stderr
    rows = [r for r in read_metrics(out) if "episodes/turns" in r]
    assert sorted({r["step"] for r in rows}) == [1, 2]  # every step played and logged its episodes
    assert all(1 <= r["episodes/turns"] <= 2 for r in rows)  # max_turns held on both ranks


def test_calculator_demonstrations_are_the_episodes_the_environment_plays(tokenizer):
    """The calculator's conversations (the SFT warm start) are episodes as the environment plays and renders
    them: replayed through the rollout, the same messages, the same tokens, reward 1; on problems the
    environment never asks."""
    from tests.data_helpers import check_record
    from easyrlhf_plugins.environments import CalculatorDataset, CalculatorEnvironment

    from easyrlhf_core.kit.shapes import DataOptions, Shape

    dataset = CalculatorDataset()
    demonstrations = dataset.load(DataOptions(Shape.CONVERSATION)).train
    asked = {str(p["prompt"][-1]) for p in dataset.load(DataOptions(Shape.PROMPT)).train}
    assert len(demonstrations) > 900
    assert not asked & {str(d["messages"][1]) for d in demonstrations}
    for record in demonstrations[:3]:
        check_record(Shape.CONVERSATION, record)
        messages = record["messages"]
        assert [m["role"] for m in messages] == ["system", "user", "assistant", "tool", "assistant"]
        engine = ScriptedEngine(tokenizer, [messages[2]["content"], messages[4]["content"]])
        answer = messages[3]["content"]
        (episode,) = run_episodes(
            engine, tokenizer, [CalculatorEnvironment()], [messages[1:2]], [{"answer": answer}],
            _sampling(tokenizer), EpisodeSettings(4, 4096),
        )  # fmt: skip
        assert episode.messages == messages and episode.env_reward == 1.0 and episode.tool_failures == 0
        rendered = tokenizer.encode(tokenizer.apply_chat_template(messages, tokenize=False), add_special_tokens=False)
        played = episode.prompt_ids + episode.completion_ids
        assert list(rendered[: len(played)]) == played
