"""The launcher commands for multi-process runs (the 2-rank runs themselves are in the method tests)."""

from __future__ import annotations

import sys

from easyrlhf_core.cli import _rank_args
from easyrlhf_core.launch import LaunchOptions, launcher_command


def test_cpu_uses_torchrun_with_per_machine_processes():
    cmd = launcher_command(LaunchOptions(num_processes=2, num_machines=3, machine_rank=1,
                                         main_process_ip="10.0.0.1", main_process_port=1234),
                           ["run", "--method", "dpo"], use_gpu=False)
    assert cmd[:3] == [sys.executable, "-m", "torch.distributed.run"]
    joined = " ".join(cmd)
    assert "--nproc_per_node 2 --nnodes 3 --node_rank 1 --master_port 1234 --master_addr 10.0.0.1" in joined
    assert cmd[-5:] == ["-m", "easyrlhf_core.cli", "run", "--method", "dpo"]


def test_gpu_uses_accelerate_with_total_processes():
    cmd = launcher_command(LaunchOptions(num_processes=4, num_machines=2), ["run"], use_gpu=True)
    assert cmd[:3] == [sys.executable, "-m", "accelerate.commands.launch"]
    assert cmd[cmd.index("--num_processes") + 1] == "8" and "--multi_gpu" in cmd


def test_rank_args_drop_launcher_options_and_fix_the_output_dir():
    argv = ["run", "--method", "dpo", "--num-processes", "2", "--num-machines=1", "--overwrite",
            "-o", "runs/x", "--set", "beta=0.2", "--main-process-port", "2900"]
    assert _rank_args(argv, "runs/x-fixed") == ["run", "--method", "dpo", "--set", "beta=0.2",
                                                "--output-dir", "runs/x-fixed"]
