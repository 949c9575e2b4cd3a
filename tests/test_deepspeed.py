"""DeepSpeed ZeRO for real, on CPU (DeepSpeed's CPU accelerator, gloo): two ranks under ZeRO-2 and ZeRO-3 end
with the weights of the plain 2-rank DDP run (same seed, data and batch) for sft, dpo and ppo; rrhf, grpo and
the rlhf pipeline (sft -> rm -> ppo with that reward model) run under ZeRO-3; one process needs no launcher
environment; a failing rank is one ``Error:`` line and the output directory is left as it was found. (ipo
and rloo share dpo's and grpo's trainers; every method x preset x 1 and 2 processes was run by hand for
BENCHMARKS.md, "DeepSpeed on CPU".)

Tolerance of the weight comparison: ``1e-6`` absolute. The runs differ only in how gradients are summed
across ranks (DDP's all-reduce of buckets vs ZeRO's reduce-scatter of partitions) and clipped (one global
norm, computed over partitions), i.e. in fp32 rounding: the weights (|w| <= ~1) end within a few ulps
(fp32 eps 1.2e-7; measured 0.08-2.6e-7). Training moves them by >= 1e-3 in these runs, so a ZeRO run that
dropped a rank's gradients, skipped the optimizer, saved empty partitions or read other data is off by
about that much, a thousand times the tolerance. Each ZeRO run also proves it was one: its checkpoint holds
one optimizer-state shard per rank (``zero_pp_rank_<r>_*optim_states.pt``), which DDP never writes.

The preference runs read pairs of uneven lengths (:func:`tests.subprocess_runs.uneven_pair`) with the
chunked LM head at 4 positions a chunk (:func:`tests.subprocess_runs.head_chunk_env`), so the two ranks run
different numbers of head chunks in a step: under ZeRO-3 that hung for good while each chunk called the
head module (one parameter all-gather per call). A hung run is killed and fails the test.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

from tests.subprocess_runs import (
    head_chunk_env,
    max_difference,
    model_tensors,
    ppo_run_args,
    run_easyrlhf,
    toy_prompt,
    trainer_run_args,
    uneven_pair,
    write_rows,
)

#: See the module docstring.
TOLERANCE = 1e-6


@pytest.fixture(scope="module")
def pairs_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_rows(tmp_path_factory.mktemp("data") / "pairs.jsonl", [uneven_pair(i) for i in range(24)])


@pytest.fixture(scope="module")
def small_chunks(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """A child run's environment for an LM head of 4 positions a chunk (see the module docstring)."""
    return head_chunk_env(tmp_path_factory.mktemp("head-chunks"), tokens=4)


@pytest.fixture(scope="module")
def prompts_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_rows(tmp_path_factory.mktemp("data") / "prompts.jsonl", [toy_prompt(i) for i in range(16)])


def zero_shards(out: Path) -> list[str]:
    """The ZeRO optimizer-state shards in the run's newest checkpoint, one per rank."""
    checkpoints = sorted((out / "checkpoints").glob("checkpoint-*"), key=lambda p: int(p.name.split("-")[1]))
    assert checkpoints, f"no checkpoint in {out}"
    return sorted(p.name for p in checkpoints[-1].rglob("*optim_states.pt") if p.name.startswith("zero_pp_rank_"))


def args_for(method: str, model: Path, data: Path):
    if method == "ppo":
        return lambda out: ppo_run_args(model, data, out, iterations=2)
    return lambda out: trainer_run_args(method, model, data, out, per_device=2)


@pytest.mark.parametrize("method", ["sft", "dpo", "ppo"])
def test_zero2_and_zero3_end_with_the_ddp_weights(
    method, tiny_model_dir, pairs_file, prompts_file, shared_runs, small_chunks
):
    data = prompts_file if method == "ppo" else pairs_file
    env = None if method == "ppo" else small_chunks
    ddp_name = "ppo-ddp" if method == "ppo" else f"{method}-ddp-uneven"  # ppo-ddp: test_ppo_processes' run too
    ddp = shared_runs.get(ddp_name, args_for(method, tiny_model_dir, data), num_processes=2, env=env)
    assert ddp.returncode == 0, ddp.stderr
    assert zero_shards(ddp.output_dir) == []
    folders = ["model", "value_model"] if method == "ppo" else ["model"]
    start = model_tensors(tiny_model_dir)
    moved = max_difference(model_tensors(ddp.output_dir / "model"), start)
    assert moved > 1e-3
    for preset in ("zero2", "zero3"):
        run = shared_runs.get(
            f"{method}-{preset}",
            lambda out: [*args_for(method, tiny_model_dir, data)(out), "--deepspeed", preset],
            num_processes=2,
            env=env,
        )
        assert run.returncode == 0, run.stderr
        assert "Traceback" not in run.stderr
        assert zero_shards(run.output_dir) == [f"zero_pp_rank_{r}_mp_rank_00_optim_states.pt" for r in (0, 1)]
        for folder in folders:
            got, want = model_tensors(run.output_dir / folder), model_tensors(ddp.output_dir / folder)
            assert max_difference(got, want) < TOLERANCE, (preset, folder)
        if preset == "zero3":  # partitioned: no rank holds whole parameters to checksum
            assert "parameter checksum per rank" not in run.stderr
        else:
            assert re.search(r"parameter checksum per rank \[([-\d.e]+), \1\]: identical", run.stderr)


@pytest.mark.parametrize("method", ["rrhf", "ipo", "grpo"])  # rm: in the pipeline below; rloo: grpo's trainer
def test_the_other_methods_train_under_zero3_on_two_ranks(
    method, tiny_model_dir, pairs_file, prompts_file, tmp_path, small_chunks
):
    """rrhf and ipo (dpo's trainer with its own loss) read the chunked LM head too: uneven batches, small
    chunks, so the ranks differ in chunk count (each hung here before the head was one call per forward)."""
    out = tmp_path / method
    args = [
        "run",
        "--method",
        method,
        "--model",
        str(tiny_model_dir),
        "--dataset",
        "jsonl",
        "--output-dir",
        str(out),
        "--max-steps",
        "2",
        "--seed",
        "7",
        "--set",
        "max_length=64",
        "--set",
        "per_device_train_batch_size=2",
        "--set",
        "eval_fraction=0",
        "--set",
        "save_steps=2",
        "--deepspeed",
        "zero3",
    ]
    if method in ("grpo", "rloo"):
        args += [
            "--data-files",
            str(prompts_file),
            "--reward",
            "length",
            "--set",
            "num_generations=2",
            "--set",
            "max_completion_length=6",
        ]
    else:
        args += ["--data-files", str(pairs_file)]
    if method == "rrhf":
        args += ["--set", "candidates=dataset"]
    result = run_easyrlhf(args, num_processes=2, env=small_chunks)
    assert result.returncode == 0, result.stderr
    assert zero_shards(out) == [f"zero_pp_rank_{r}_mp_rank_00_optim_states.pt" for r in (0, 1)]
    saved = model_tensors(out / "model")
    assert saved and all(t.numel() > 0 for t in saved.values())  # gathered whole, not the empty partitions
    assert (
        max_difference(
            {k: saved[k] for k in saved if k in (start := model_tensors(tiny_model_dir))},
            {k: start[k] for k in saved if k in start},
        )
        > 0
    )


def test_the_pipeline_runs_under_zero3_by_name_with_a_reward_model(tiny_model_dir, pairs_file, tmp_path):
    """sft -> rm -> ppo, every stage under ``--deepspeed zero3`` (a preset by name); PPO scores with the rm
    stage's reward model, loaded whole on each rank while the policy is partitioned."""
    out = tmp_path / "rlhf"
    result = run_easyrlhf(
        [
            "run",
            "--method",
            "rlhf",
            "--model",
            str(tiny_model_dir),
            "--dataset",
            "jsonl",
            "--data-files",
            str(pairs_file),
            "--output-dir",
            str(out),
            "--max-steps",
            "1",
            "--deepspeed",
            "zero3",
            *[
                f"--set={stage}.{key}"
                for stage in ("sft", "rm", "ppo")
                for key in ("max_length=64", "eval_fraction=0", "per_device_train_batch_size=2", "save_steps=1")
            ],
            "--set",
            "ppo.max_new_tokens=4",
            "--set",
            "ppo.rollout_batch_size=2",
        ],
        num_processes=2,
    )
    assert result.returncode == 0, result.stderr
    for stage in ("sft", "rm", "ppo"):
        assert (out / stage / "model" / "config.json").is_file(), stage
        assert len(zero_shards(out / stage)) == 2, stage


def test_one_process_starts_without_launcher_variables(tiny_model_dir, pairs_file, tmp_path, monkeypatch):
    """``--deepspeed`` alone: started through a launcher (torchrun, one process), never asking for MPI."""
    for name in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(name, raising=False)
    out = tmp_path / "one"
    result = run_easyrlhf(
        [
            *trainer_run_args("dpo", tiny_model_dir, pairs_file, out, per_device=2),
            "--deepspeed",
            "zero3",
            "--main-process-port",
            str(_free_port()),
        ]
    )
    assert result.returncode == 0, result.stderr
    assert "mpi4py" not in result.stderr and "Traceback" not in result.stderr
    assert "--nproc_per_node 1 " in result.stderr
    assert zero_shards(out) == ["zero_pp_rank_0_mp_rank_00_optim_states.pt"]
    assert (out / "model" / "model.safetensors").is_file() and (out / "COMPLETE").is_file()


def test_a_failing_rank_is_one_error_line_and_the_directory_is_as_found(tiny_model_dir, pairs_file, tmp_path):
    """DeepSpeed refusing the config in every rank, before training, with --overwrite of an earlier run."""
    bad = tmp_path / "bad.json"
    bad.write_text(
        '{"zero_optimization": {"stage": 3}, "train_batch_size": 3, "train_micro_batch_size_per_gpu": 2}\n',
        encoding="utf-8",
    )
    out = tmp_path / "out"
    out.mkdir()
    (out / "notes.txt").write_text("an earlier run\n", encoding="utf-8")
    result = run_easyrlhf(
        [
            *trainer_run_args("sft", tiny_model_dir, pairs_file, out, per_device=2),
            "--deepspeed",
            str(bad),
            "--overwrite",
        ],
        num_processes=2,
    )
    assert result.returncode == 1, result.stderr
    errors = [line for line in result.stderr.splitlines() if "Error" in line]
    assert len(errors) == 1 and errors[0] == result.stderr.strip().splitlines()[-1], result.stderr
    assert re.match(
        r"Error: rank [01]: \w+: .*train_batch_size.*\(run again with --debug for the traceback\)$", errors[0]
    ), errors[0]
    assert "Traceback" not in result.stderr and "ChildFailedError" not in result.stderr
    assert sorted(p.name for p in out.iterdir()) == ["notes.txt"]
    assert (out / "notes.txt").read_text(encoding="utf-8") == "an earlier run\n"


GENERATION_CHECK = """
import sys, torch, deepspeed
from transformers import AutoModelForCausalLM
from easyrlhf_core.kit.zero import _parameter_offload, gathered_for_generation, is_partitioned, start_deepspeed
start_deepspeed()
model = AutoModelForCausalLM.from_pretrained(sys.argv[1], dtype=torch.float32)
config = {"train_micro_batch_size_per_gpu": 1, "gradient_accumulation_steps": 1,
          "zero_optimization": {"stage": 3, "stage3_param_persistence_threshold": 0},
          "optimizer": {"type": "AdamW", "params": {"lr": 1e-3, "torch_adam": True}}}
engine, *_ = deepspeed.initialize(model=model, model_parameters=model.parameters(), config=config)
hooks, ids = _parameter_offload(engine), torch.tensor([[1, 2, 3]])
report = [len(hooks.forward_hooks) > 0, is_partitioned(engine.module)]
with gathered_for_generation(engine, engine.module):
    report += [len(hooks.forward_hooks), engine.module.model.embed_tokens.weight.numel() > 0]
    report.append(engine.module.generate(ids, max_new_tokens=3, do_sample=False).shape[1])
report += [len(hooks.forward_hooks) > 0, engine.module.model.embed_tokens.weight.numel()]
loss = engine(input_ids=ids, labels=ids).loss
engine.backward(loss)
engine.step()
print("REPORT", report, bool(torch.isfinite(loss)))
"""


def test_generation_gathers_the_policy_with_the_hooks_off_and_gives_both_back(tiny_model_dir, tmp_path):
    """Inside the block the ZeRO-3 module is whole and hook-free (``generate`` runs locally); after it the
    parameters are partitions again and the engine trains on (its hooks back)."""
    import subprocess
    import sys

    from tests.subprocess_runs import subprocess_env

    script = tmp_path / "check.py"
    script.write_text(GENERATION_CHECK, encoding="utf-8")
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--nproc_per_node",
            "1",
            "--master_port",
            str(_free_port()),
            str(script),
            str(tiny_model_dir),
        ],
        capture_output=True,
        text=True,
        env={**subprocess_env(), "DS_ACCELERATOR": "cpu"},
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    assert "REPORT [True, True, 0, True, 6, True, 0] True" in done.stdout, done.stdout


def _free_port() -> int:
    from tests.subprocess_runs import free_port

    return free_port()


def test_deepspeed_presets_are_identical_copies():
    root = Path(__file__).resolve().parents[1]
    for shipped in sorted((root / "easyrlhf_core" / "configs" / "deepspeed").glob("*.json")):
        assert (root / "configs" / "deepspeed" / shipped.name).read_text() == shipped.read_text(), shipped.name
    assert os.path.isfile(root / "configs" / "deepspeed" / "zero3_offload.json")
