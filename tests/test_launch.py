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


def _hold(port: int):
    """A socket listening on ``port`` (None when something else already does: it is taken either way)."""
    import socket

    sock = socket.socket()
    try:
        sock.bind(("", port))
    except OSError:
        sock.close()
        return None
    sock.listen()
    return sock


def test_two_runs_on_one_machine_pick_a_free_port_and_a_taken_one_given_is_one_line(tiny_model_dir, tmp_path):
    """Without --main-process-port a run on one machine meets on a free port (29500, held here, as by
    another run, is not needed); a port given and taken is one Error line naming it, before any rank
    starts, and the output directory is left as it was found."""
    from tests.subprocess_runs import toy_pair, trainer_run_args, write_rows

    data = write_rows(tmp_path / "pairs.jsonl", [toy_pair(i) for i in range(8)])
    default, given = _hold(29500), _hold(taken := free_port())
    try:
        out = tmp_path / "free"
        args = [*trainer_run_args("sft", tiny_model_dir, data, out, per_device=2, steps=1), "--num-processes", "2"]
        done = subprocess.run(easyrlhf_command(*args), capture_output=True, text=True, env=subprocess_env(),
                              timeout=300)
        assert done.returncode == 0, done.stderr
        assert "--master_port 29500" not in done.stderr and (out / "COMPLETE").is_file()

        out = tmp_path / "taken"
        args = [*trainer_run_args("sft", tiny_model_dir, data, out, per_device=2, steps=1), "--num-processes", "2",
                "--main-process-port", str(taken)]
        done = subprocess.run(easyrlhf_command(*args), capture_output=True, text=True, env=subprocess_env(),
                              timeout=300)
    finally:
        for sock in (default, given):
            if sock is not None:
                sock.close()
    assert done.returncode == 2, done.stderr
    errors = [line for line in done.stderr.splitlines() if "Error" in line]
    assert errors == [f"Error: --main-process-port: port {taken} is taken on this machine (another run, or another "
                      f"program, listens on it); pass a free one with --main-process-port, or leave the option "
                      f"out on one machine to pick a free one"], done.stderr
    assert "Traceback" not in done.stderr and "launching" not in done.stderr
    assert not out.exists() or not any(out.iterdir())


def test_the_launcher_finding_its_port_taken_is_one_line_without_a_traceback(tmp_path):
    """Should the port be taken between our check and the launcher's bind, torch elastic's
    ``DistNetworkError`` traceback (EADDRINUSE) becomes the same one line, handed to the parent."""
    from easyrlhf_core.ranks import RANK_ERRORS_ENV, first_failure

    script = tmp_path / "hello.py"
    script.write_text("print('never started')\n", encoding="utf-8")
    errors = tmp_path / "errors"
    errors.mkdir()
    sock = _hold(taken := free_port())
    try:
        done = subprocess.run([sys.executable, "-m", "easyrlhf_core.ranks", "torchrun", "--nproc_per_node", "1",
                               "--master_port", str(taken), str(script)], capture_output=True, text=True,
                              env={**subprocess_env(), RANK_ERRORS_ENV: str(errors)}, timeout=120)
    finally:
        sock.close()
    assert done.returncode == 1
    assert "Traceback" not in done.stderr and "never started" not in done.stdout, done.stderr
    message, code = first_failure(errors)
    assert code == 1 and message.startswith(f"port {taken} is taken on this machine"), message
