"""The SFT -> RM -> PPO pipeline: stage dirs, hand-over of models, skipping complete stages, given models."""

from __future__ import annotations

import json

import pytest
from easyrlhf_core.runtime.registry import get_registry
import yaml

TINY_STAGES = [
    "--max-steps",
    "2",
    "--set",
    "max_train_samples=12",
    "--set",
    "max_eval_samples=2",
    "--set",
    "sft.max_length=256",
    "--set",
    "rm.max_length=256",
    "--set",
    "ppo.max_length=256",
    "--set",
    "ppo.max_new_tokens=8",
    "--set",
    "ppo.rollout_batch_size=4",
]


def _pipeline(cli_run, model, out, *extra):
    return cli_run("run", "--method", "rlhf", "--model", str(model), "--output-dir", str(out), *TINY_STAGES, *extra)


@pytest.fixture(scope="module")
def pipeline_run(tiny_model_dir, tmp_path_factory):
    from tests.helpers import run_cli

    out = tmp_path_factory.mktemp("rlhf") / "run"
    result = _pipeline(run_cli, tiny_model_dir, out)
    assert result.exit_code == 0, result.stderr
    return out, result


def test_pipeline_runs_every_stage_and_hands_models_over(pipeline_run, tiny_model_dir):
    out, result = pipeline_run
    for stage in ("sft", "rm", "ppo"):
        assert (out / stage / "model" / "config.json").is_file(), stage
        assert (out / stage / "config.yaml").is_file() and (out / stage / "README.md").is_file()
    configs = {s: yaml.safe_load((out / s / "config.yaml").read_text()) for s in ("sft", "rm", "ppo")}
    assert configs["sft"]["model"] == str(tiny_model_dir)
    assert configs["rm"]["model"] == str(out / "sft" / "model")  # RM starts from the SFT model
    assert configs["ppo"]["model"] == str(out / "sft" / "model")  # the policy too
    assert configs["ppo"]["reward_model"] == str(out / "rm" / "model")  # scored by the RM
    assert all(c["max_steps"] == 2 and c["max_train_samples"] == 12 for c in configs.values())
    assert "value model: initialised from the reward model" in result.stderr
    assert (out / "model").resolve() == (out / "ppo" / "model").resolve()
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2, 3]
    assert "sft/loss" in rows[0] and "rm/loss" in rows[1] and "ppo/score" in rows[2]


def test_rerun_skips_complete_stages(pipeline_run, tiny_model_dir, cli_run, tmp_path):
    import shutil

    out = tmp_path / "run"
    shutil.copytree(pipeline_run[0], out, symlinks=True)
    before = {s: (out / s / "model" / "model.safetensors").stat().st_mtime_ns for s in ("sft", "rm", "ppo")}
    refused = _pipeline(cli_run, tiny_model_dir, out)
    assert refused.exit_code == 2 and "pass --overwrite to replace it, --resume" in refused.stderr
    result = _pipeline(cli_run, tiny_model_dir, out, "--resume")
    assert result.exit_code == 0, result.stderr
    assert "is complete; nothing to do" in result.stderr  # the whole pipeline finished
    for stage in ("sft", "rm", "ppo"):
        assert (out / stage / "model" / "model.safetensors").stat().st_mtime_ns == before[stage]
    (out / "COMPLETE").unlink()  # as if it died after its last stage: complete stages are skipped
    (out / "model").unlink()
    result = _pipeline(cli_run, tiny_model_dir, out, "--resume")
    assert result.exit_code == 0, result.stderr
    for stage in ("sft", "rm", "ppo"):
        assert f"rlhf: {stage} stage already complete" in result.stderr
        assert (out / stage / "model" / "model.safetensors").stat().st_mtime_ns == before[stage]


def test_interrupted_pipeline_continues_where_it_stopped(pipeline_run, tiny_model_dir, cli_run, tmp_path):
    import shutil

    out = tmp_path / "run"
    shutil.copytree(pipeline_run[0], out, symlinks=True)
    shutil.rmtree(out / "ppo")  # as if the run died before PPO finished
    (out / "COMPLETE").unlink(missing_ok=True)
    result = _pipeline(cli_run, tiny_model_dir, out, "--resume")
    assert result.exit_code == 0, result.stderr
    assert "rlhf: sft stage already complete" in result.stderr and "rlhf: rm stage already complete" in result.stderr
    assert "rlhf: ppo stage -> " in result.stderr and (out / "ppo" / "model" / "config.json").is_file()


def test_given_reward_model_skips_rm_training(pipeline_run, tiny_model_dir, cli_run, tmp_path):
    given = pipeline_run[0] / "rm" / "model"
    out = tmp_path / "run"
    result = _pipeline(cli_run, tiny_model_dir, out, "--set", f"rm.model={given}")
    assert result.exit_code == 0, result.stderr
    assert not (out / "rm").exists()
    assert yaml.safe_load((out / "ppo" / "config.yaml").read_text())["reward_model"] == str(given)


def test_stage_options_override_shared_ones(tiny_model_dir, cli_run, tmp_path):
    from easyrlhf_core.runtime.config_layers import parse_set_options, resolve_config
    from easyrlhf_core.runtime.registry import get_registry

    method = get_registry().get("methods", "rlhf")()
    config = resolve_config(method.config_class, [parse_set_options(["max_steps=5", "sft.max_steps=3", "seed=7"])])
    plan = method.plan(config, tmp_path, get_registry())
    assert (plan["sft"].max_steps, plan["rm"].max_steps, plan["ppo"].max_steps) == (3, 5, 5)
    assert plan["rm"].seed == 7 and plan["rm"].output_dir == str(tmp_path / "rm")


@pytest.mark.parametrize(
    "args, message",
    [
        (
            ["--set", "rm.learnig_rate=1e-5"],
            "Error: --set rm.learnig_rate: unknown option 'rm.learnig_rate' (did you mean 'rm.learning_rate'?)",
        ),
        (["--set", "ppo.model=x"], "Error: --set ppo.model: 'ppo.model' PPO starts from the SFT stage's model"),
        (["--set", "ppo.data_files=/nonexistent/prompts.jsonl"], "Error: /nonexistent/prompts.jsonl: file not found"),
    ],
)
def test_bad_stage_options_fail_before_anything_is_written(tiny_model_dir, cli_run, tmp_path, args, message):
    out = tmp_path / "run"
    result = _pipeline(cli_run, tiny_model_dir, out, *args)
    assert result.exit_code == 2
    assert result.stderr.strip().splitlines()[-1].startswith(message), result.stderr
    assert not out.exists()


def test_stages_inherit_what_was_set_not_what_differs_from_a_default(tiny_model_dir, tmp_path):
    from pathlib import Path

    from easyrlhf_plugins.methods.rlhf import stage_config

    from easyrlhf_core.runtime.lifecycle import resolve
    from easyrlhf_core.runtime.run import RunRequest

    _, config = resolve(
        RunRequest(
            method="rlhf",
            flags={"max_steps": 5, "lora.enabled": True},
            set_options=["sft.max_steps=-1", "max_eval_samples=200", "lora.r=4", "rm.lora.r=8", "seed=42"],
        )
    )
    sft, rm, ppo = (stage_config(config, s, Path(tmp_path) / s, get_registry()) for s in ("sft", "rm", "ppo"))
    assert (sft.max_steps, rm.max_steps, ppo.max_steps) == (-1, 5, 5)  # sft set its own, even to the default
    assert all(c.lora.enabled for c in (sft, rm, ppo))
    assert (sft.lora.r, rm.lora.r, ppo.lora.r) == (4, 8, 4)
    assert ppo.max_eval_samples == 200 and ppo.seed == 42


def test_the_rl_stage_is_selectable(tiny_model_dir, cli_run, tmp_path):
    out = tmp_path / "grpo-pipeline"
    result = _pipeline(
        cli_run,
        tiny_model_dir,
        out,
        "--set",
        "rl_method=grpo",
        "--set",
        "grpo.max_length=256",
        "--set",
        "grpo.max_completion_length=8",
        "--set",
        "grpo.per_device_train_batch_size=4",
    )
    assert result.exit_code == 0, result.stderr
    assert (out / "grpo" / "model" / "config.json").is_file() and not (out / "ppo").exists()
    assert yaml.safe_load((out / "grpo" / "config.yaml").read_text())["reward_model"] == str(out / "rm" / "model")
    assert (out / "model").resolve() == (out / "grpo" / "model").resolve()
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2, 3] and "grpo/loss" in rows[2]


def test_a_full_config_dump_still_lets_top_level_flags_reach_the_stages(tmp_path):
    from easyrlhf_plugins.methods.rlhf import stage_config

    from easyrlhf_core.runtime.lifecycle import resolve
    from easyrlhf_core.runtime.run import RunRequest

    _, config = resolve(RunRequest(method=None, config_file="rlhf", flags={"max_steps": 20, "lora.enabled": True}))
    for stage in ("sft", "rm", "ppo"):
        cfg = stage_config(config, stage, tmp_path / stage, get_registry())
        assert cfg.max_steps == 20 and cfg.lora.enabled, stage


def test_rm_model_with_an_rl_stage_that_names_its_own_reward_is_refused(cli_run, tmp_path, tiny_model_dir):
    result = cli_run(
        "run",
        "--method",
        "rlhf",
        "--output-dir",
        str(tmp_path / "x"),
        "--set",
        f"rm.model={tiny_model_dir}",
        "--set",
        "ppo.reward=length",
    )
    assert result.exit_code == 2 and (
        "'rm.model' is used only when the ppo stage is scored by the reward model" in result.stderr
    )


def _plan(flags: dict, set_options: list[str] | None = None, config_file: str | None = None):
    from pathlib import Path

    from easyrlhf_core.runtime.lifecycle import resolve
    from easyrlhf_core.runtime.run import RunRequest

    method, config = resolve(
        RunRequest(
            method="rlhf" if config_file is None else None,
            config_file=config_file,
            flags=flags,
            set_options=set_options or [],
        )
    )
    return method.plan(config, Path("unused"), get_registry())


def test_pipeline_data_flags_reach_every_stage_that_can_use_them(tmp_path):
    files = [str(tmp_path / "a.jsonl")]
    plan = _plan({"dataset": "hh-rlhf", "data_files": files})
    assert all((cfg.dataset, cfg.data_files) == ("hh-rlhf", files) for cfg in plan.values())
    # The same from a full config dump (every key listed at its default) with the flags on top.
    plan = _plan({"data_files": files}, config_file="rlhf")
    assert all(cfg.data_files == files for cfg in plan.values())


def test_a_prompt_only_dataset_goes_to_the_rl_stage_alone():
    plan = _plan({"dataset": "arithmetic"}, ["rl_method=grpo", "grpo.reward=match"])
    assert plan["grpo"].dataset == "arithmetic"
    assert plan["sft"].dataset == "hh-rlhf" and plan["rm"] is None  # rm skipped: grpo names its own reward


def test_a_stage_that_sets_its_own_data_keeps_it(tmp_path):
    plan = _plan({"dataset": "hh-rlhf", "data_files": [str(tmp_path / "pairs.jsonl")]}, ["ppo.dataset=arithmetic"])
    assert plan["ppo"].dataset == "arithmetic" and plan["ppo"].data_files == []
    assert plan["rm"].data_files == [str(tmp_path / "pairs.jsonl")]


def test_pipeline_data_flags_through_the_cli(cli_run, tiny_model_dir, tmp_path):
    hh = tmp_path / "hh.jsonl"
    rows = [
        {"chosen": f"\n\nHuman: Say {w}.\n\nAssistant: {w}!", "rejected": f"\n\nHuman: Say {w}.\n\nAssistant: no."}
        for w in ("one", "two", "three", "four", "five", "six", "seven", "eight")
    ]
    hh.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "run"
    result = _pipeline(cli_run, tiny_model_dir, out, "--dataset", "hh-rlhf", "--data-files", str(hh))
    assert result.exit_code == 0, result.stderr[-3000:]
    for stage in ("sft", "rm", "ppo"):
        saved = yaml.safe_load((out / stage / "config.yaml").read_text())
        assert saved["data_files"] == [str(hh)], stage
    sft_rows = json.loads((out / "sft" / "summary.json").read_text())["train_examples"]
    assert sft_rows < 8  # the file's 8 conversations less the eval split, not the embedded 6,000


def test_a_dataset_no_stage_can_use_is_one_line(cli_run, tiny_model_dir, tmp_path):
    out = tmp_path / "run"
    result = _pipeline(cli_run, tiny_model_dir, out, "--dataset", "guess-number", "--set", "ppo.dataset=hh-rlhf")
    assert result.exit_code == 2
    assert "no stage can use dataset 'guess-number'" in result.stderr.strip().splitlines()[-1], result.stderr
    assert not out.exists()


def test_env_is_the_rl_stages_and_skips_the_reward_model_stage():
    plan = _plan({"env": "guess-number"})
    assert plan["rm"] is None  # the environment scores the episodes: no reward model to train
    assert plan["ppo"].env == "guess-number" and plan["ppo"].dataset == "guess-number"
    assert plan["sft"].dataset == "hh-rlhf" and not hasattr(plan["sft"], "env")
    grpo = _plan({"env": "calculator"}, ["rl_method=grpo", "grpo.dataset=arithmetic"])
    assert grpo["grpo"].env == "calculator" and grpo["grpo"].dataset == "arithmetic"  # the user's data wins
