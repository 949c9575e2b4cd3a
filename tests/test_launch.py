"""The launcher commands for multi-process runs (the 2-rank runs themselves are in the method tests)."""

from __future__ import annotations

import subprocess
import sys

import pytest

from easyrlhf_core.cli import _rank_args
from easyrlhf_core.launch import LaunchOptions, launcher_command

from tests.subprocess_runs import easyrlhf_command, free_port, subprocess_env


def test_cpu_uses_torchrun_with_per_machine_processes():
    cmd = launcher_command(LaunchOptions(num_processes=2, num_machines=3, machine_rank=1,
                                         main_process_ip="10.0.0.1", main_process_port=1234),
                           ["run", "--method", "dpo"], use_gpu=False)
    assert cmd[:4] == [sys.executable, "-m", "easyrlhf_core.ranks", "torchrun"]  # torchrun, run by us
    joined = " ".join(cmd)
    assert "--nproc_per_node 2 --nnodes 3 --node_rank 1 --master_port 1234 --master_addr 10.0.0.1" in joined
    assert cmd[-5:] == ["-m", "easyrlhf_core.cli", "run", "--method", "dpo"]


def test_gpu_uses_accelerate_with_total_processes():
    cmd = launcher_command(LaunchOptions(num_processes=4, num_machines=2), ["run"], use_gpu=True)
    assert cmd[:4] == [sys.executable, "-m", "easyrlhf_core.ranks", "accelerate"]
    assert cmd[cmd.index("--num_processes") + 1] == "8" and "--multi_gpu" in cmd
    assert cmd.index("--multi_gpu") < cmd.index("easyrlhf_core.cli")  # a launcher option, not the CLI's


@pytest.mark.parametrize("use_gpu", [False, True])
def test_one_deepspeed_process_is_launched_by_torchrun(use_gpu):
    """DeepSpeed needs RANK / WORLD_SIZE / MASTER_ADDR even for one process (else it looks for MPI):
    torchrun sets them; accelerate would refuse --multi_gpu with one process and set none without it."""
    options = LaunchOptions(num_processes=1, deepspeed=True)
    assert options.needs_launcher and not options.distributed
    cmd = launcher_command(options, ["run", "--deepspeed", "zero3"], use_gpu=use_gpu)
    assert cmd[:4] == [sys.executable, "-m", "easyrlhf_core.ranks", "torchrun"]
    assert "--nproc_per_node 1 " in " ".join(cmd)
    assert not LaunchOptions(num_processes=1).needs_launcher


def test_rank_args_drop_launcher_options_and_fix_the_output_dir():
    argv = ["run", "--method", "dpo", "--num-processes", "2", "--num-machines=1", "--overwrite",
            "-o", "runs/x", "--set", "beta=0.2", "--main-process-port", "2900"]
    assert _rank_args(argv, "runs/x-fixed") == ["run", "--method", "dpo", "--set", "beta=0.2",
                                                "--output-dir", "runs/x-fixed"]


RANK_THAT_EXITS = """
import sys, torch, torch.distributed as dist
from easyrlhf_core.launch import exit_launched_rank
dist.init_process_group("gloo", init_method="tcp://127.0.0.1:{port}", rank=0, world_size=1)
model = torch.nn.parallel.DistributedDataParallel(torch.nn.Linear(2, 2))  # a reducer, as a trained rank has
gathered = [torch.zeros(1)]
dist.all_gather(gathered, torch.ones(1))
sys.stdout.write("last words, still buffered")
exit_launched_rank(3)
print("not reached")
"""


def test_a_finished_rank_exits_with_its_code_and_its_output_flushed():
    env = {key: value for key, value in subprocess_env().items() if key != "PYTHONUNBUFFERED"}  # block-buffered
    done = subprocess.run([sys.executable, "-c", RANK_THAT_EXITS.format(port=free_port())], capture_output=True,
                          text=True, env={**env, "EASYRLHF_LAUNCHED": "1"}, timeout=120)
    assert done.returncode == 3, done.stderr
    assert done.stdout == "last words, still buffered"


def test_a_launched_rank_given_bad_input_prints_one_error_line_and_exits_2(tmp_path):
    done = subprocess.run(easyrlhf_command("run", "--method", "no-such-method", "--output-dir", str(tmp_path / "o")),
                          capture_output=True, text=True, env={**subprocess_env(), "EASYRLHF_LAUNCHED": "1"},
                          timeout=120)
    assert done.returncode == 2
    assert done.stderr.strip().startswith("Error: ") and len(done.stderr.strip().splitlines()) == 1
    assert "no-such-method" in done.stderr
