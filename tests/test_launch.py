"""The launcher commands for multi-process runs (the 2-rank runs themselves are in the method tests)."""

from __future__ import annotations

import subprocess
import sys

import pytest

from easyrlhf_core.commands.cli import _rank_args
from easyrlhf_core.runtime.launcher import LaunchOptions, launcher_command
from tests.subprocess_runs import easyrlhf_command, free_port, subprocess_env


def test_cpu_uses_torchrun_with_per_machine_processes():
    cmd = launcher_command(
        LaunchOptions(
            num_processes=2, num_machines=3, machine_rank=1, main_process_ip="10.0.0.1", main_process_port=1234
        ),
        ["run", "--method", "dpo"],
        use_gpu=False,
    )
    assert cmd[:4] == [sys.executable, "-m", "easyrlhf_core.runtime.rank_errors", "torchrun"]  # torchrun, run by us
    joined = " ".join(cmd)
    assert "--nproc_per_node 2 --nnodes 3 --node_rank 1 --master_port 1234 --master_addr 10.0.0.1" in joined
    assert cmd[-5:] == ["-m", "easyrlhf_core.commands.cli", "run", "--method", "dpo"]


def test_gpu_uses_accelerate_with_total_processes():
    cmd = launcher_command(LaunchOptions(num_processes=4, num_machines=2), ["run"], use_gpu=True)
    assert cmd[:4] == [sys.executable, "-m", "easyrlhf_core.runtime.rank_errors", "accelerate"]
    assert cmd[cmd.index("--num_processes") + 1] == "8" and "--multi_gpu" in cmd
    assert cmd.index("--multi_gpu") < cmd.index("easyrlhf_core.commands.cli")  # a launcher option, not the CLI's


@pytest.mark.parametrize("use_gpu", [False, True])
def test_one_deepspeed_process_is_launched_by_torchrun(use_gpu):
    """DeepSpeed needs RANK / WORLD_SIZE / MASTER_ADDR even for one process (else it looks for MPI):
    torchrun sets them; accelerate would refuse --multi_gpu with one process and set none without it."""
    options = LaunchOptions(num_processes=1, deepspeed=True)
    assert options.needs_launcher and not options.distributed
    cmd = launcher_command(options, ["run", "--deepspeed", "zero3"], use_gpu=use_gpu)
    assert cmd[:4] == [sys.executable, "-m", "easyrlhf_core.runtime.rank_errors", "torchrun"]
    assert "--nproc_per_node 1 " in " ".join(cmd)
    assert not LaunchOptions(num_processes=1).needs_launcher


def test_rank_args_drop_launcher_options_and_fix_the_output_dir():
    argv = [
        "run",
        "--method",
        "dpo",
        "--num-processes",
        "2",
        "--num-machines=1",
        "--overwrite",
        "-o",
        "runs/x",
        "--set",
        "beta=0.2",
        "--main-process-port",
        "2900",
    ]
    assert _rank_args(argv, "runs/x-fixed") == [
        "run",
        "--method",
        "dpo",
        "--set",
        "beta=0.2",
        "--output-dir",
        "runs/x-fixed",
    ]


RANK_THAT_EXITS = """
import sys, torch, torch.distributed as dist
from easyrlhf_core.runtime.launcher import exit_launched_rank
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
    done = subprocess.run(
        [sys.executable, "-c", RANK_THAT_EXITS.format(port=free_port())],
        capture_output=True,
        text=True,
        env={**env, "EASYRLHF_LAUNCHED": "1"},
        timeout=120,
    )
    assert done.returncode == 3, done.stderr
    assert done.stdout == "last words, still buffered"


def test_a_launched_rank_given_bad_input_prints_one_error_line_and_exits_2(tmp_path):
    done = subprocess.run(
        easyrlhf_command("run", "--method", "no-such-method", "--output-dir", str(tmp_path / "o")),
        capture_output=True,
        text=True,
        env={**subprocess_env(), "EASYRLHF_LAUNCHED": "1"},
        timeout=120,
    )
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
        done = subprocess.run(
            easyrlhf_command(*args), capture_output=True, text=True, env=subprocess_env(), timeout=300
        )
        assert done.returncode == 0, done.stderr
        assert "--master_port 29500" not in done.stderr and (out / "COMPLETE").is_file()

        out = tmp_path / "taken"
        args = [
            *trainer_run_args("sft", tiny_model_dir, data, out, per_device=2, steps=1),
            "--num-processes",
            "2",
            "--main-process-port",
            str(taken),
        ]
        done = subprocess.run(
            easyrlhf_command(*args), capture_output=True, text=True, env=subprocess_env(), timeout=300
        )
    finally:
        for sock in (default, given):
            if sock is not None:
                sock.close()
    assert done.returncode == 2, done.stderr
    errors = [line for line in done.stderr.splitlines() if "Error" in line]
    assert errors == [
        f"Error: --main-process-port: port {taken} is taken on this machine (another run, or another "
        f"program, listens on it); pass a free one with --main-process-port, or leave the option "
        f"out on one machine to pick a free one"
    ], done.stderr
    assert "Traceback" not in done.stderr and "launching" not in done.stderr
    assert not out.exists() or not any(out.iterdir())


def test_the_launcher_finding_its_port_taken_is_one_line_without_a_traceback(tmp_path):
    """Should the port be taken between our check and the launcher's bind, torch elastic's
    ``DistNetworkError`` traceback (EADDRINUSE) becomes the same one line, handed to the parent."""
    from easyrlhf_core.runtime.rank_errors import RANK_ERRORS_ENV, first_failure

    script = tmp_path / "hello.py"
    script.write_text("print('never started')\n", encoding="utf-8")
    errors = tmp_path / "errors"
    errors.mkdir()
    sock = _hold(taken := free_port())
    try:
        done = subprocess.run(
            [
                sys.executable,
                "-m",
                "easyrlhf_core.runtime.rank_errors",
                "torchrun",
                "--nproc_per_node",
                "1",
                "--master_port",
                str(taken),
                str(script),
            ],
            capture_output=True,
            text=True,
            env={**subprocess_env(), RANK_ERRORS_ENV: str(errors)},
            timeout=120,
        )
    finally:
        sock.close()
    assert done.returncode == 1
    assert "Traceback" not in done.stderr and "never started" not in done.stdout, done.stderr
    message, code = first_failure(errors)
    assert code == 1 and message.startswith(f"port {taken} is taken on this machine"), message


def test_a_picked_port_taken_before_the_launcher_binds_it_is_retried_once_on_a_new_one(
    tiny_model_dir, tmp_path, cli_run, monkeypatch
):
    """The race of a port picked free (no --main-process-port): it is released before torchrun's store binds
    it. Here the first port picked is held by another socket, as by a program that took it in between; the
    run is launched again on the next port picked, says so in one line, and trains."""
    import easyrlhf_core.runtime.launcher as launch_module
    from tests.subprocess_runs import toy_pair, trainer_run_args, write_rows

    sock = _hold(taken := free_port())
    assert sock is not None
    picks = [taken]
    monkeypatch.setattr(launch_module, "free_port", lambda: picks.pop(0) if picks else free_port())
    data = write_rows(tmp_path / "pairs.jsonl", [toy_pair(i) for i in range(8)])
    out = tmp_path / "run"
    args = [
        *trainer_run_args("sft", tiny_model_dir, data, out, per_device=2, steps=1),
        "--set",
        "eval_fraction=0",
        "--num-processes",
        "2",
    ]
    monkeypatch.setattr(sys, "argv", ["easyrlhf", *args])  # the ranks' arguments come from the command line
    try:
        result = cli_run(*args)
    finally:
        sock.close()
    assert result.exit_code == 0, result.stderr
    retries = [line for line in result.stderr.splitlines() if "rendezvous port" in line]
    assert len(retries) == 1 and retries[0].startswith(
        f"[easyrlhf] the rendezvous port {taken} was taken before "
        f"the launcher could listen on it; launching again on port "
    )
    again = int(retries[0].rsplit(" ", 1)[1])
    assert again != taken
    launches = [line for line in result.stderr.splitlines() if "launching:" in line]
    assert [f"--master_port {port} " in line for line, port in zip(launches, (taken, again))] == [True, True]
    assert len(launches) == 2 and "Error" not in result.stderr and (out / "COMPLETE").is_file()


def test_a_picked_port_taken_twice_says_so_for_the_automatic_case(monkeypatch):
    """When the port picked again is taken too, the one line speaks of the automatic case (the user gave no
    --main-process-port), names both ports, and never says to leave the option out."""
    import easyrlhf_core.runtime.launcher as launch_module
    from easyrlhf_core.runtime.launcher import Launched, launch
    from easyrlhf_core.runtime.rank_errors import port_taken_message

    picks, launched_on = [41001, 41002], []

    def launcher_finds_its_port_taken(options, cli_args):
        launched_on.append(options.port)
        return Launched(1, port_taken_message(options.port), port_taken=True)

    monkeypatch.setattr(launch_module, "free_port", lambda: picks.pop(0))
    monkeypatch.setattr(launch_module, "_launch_once", launcher_finds_its_port_taken)
    launched = launch(LaunchOptions(num_processes=2), ["run"])
    assert launched_on == [41001, 41002] and launched.code == 1
    assert launched.error == (
        "--main-process-port: not given, so a free port was picked for the rendezvous, but "
        "another program took it before the launcher could listen on it, twice (port 41001, "
        "then 41002); run again, or pass a port kept free for this run with "
        "--main-process-port"
    )
    # a port the user gave is never replaced: its failure is the launcher's own line, launched once
    launched_on.clear()
    launched = launch(LaunchOptions(num_processes=2, main_process_port=41003), ["run"])
    assert launched_on == [41003] and launched.error == port_taken_message(41003)


# torch's own texts (torch 2.13, c10d socket.cpp) when the rendezvous store's port is taken, with and without libuv
STORE_PORT_TAKEN = [
    "The server socket has failed to listen on any local network address. port: {port}, useIpv6: false, code: -98, "
    "name: EADDRINUSE, message: address already in use",
    "The server socket has failed to listen on any local network address. The server socket has failed to bind to "
    "[::]:{port} (errno: 98 - Address already in use). The server could not be initialized on any address for "
    "port={port}, family=10 The server socket has failed to bind to 0.0.0.0:{port} (errno: 98 - Address already in "
    "use). The server could not be initialized on any address for port={port}, family=2",
]


@pytest.mark.parametrize("text", STORE_PORT_TAKEN, ids=["libuv", "socket"])
def test_the_launchers_port_taken_error_is_the_one_port_line(text, tmp_path, monkeypatch):
    """torch elastic's ``DistNetworkError`` from the store becomes the one line naming the port, recorded for
    the parent with ``port_taken`` (what :func:`launch` retries on), and is printed without a traceback when
    there is no parent to hand it to."""
    import json

    from torch.distributed import DistNetworkError

    from easyrlhf_core.runtime import rank_errors as ranks

    error = DistNetworkError(text.format(port=29517))
    assert ranks.is_port_taken(error)
    assert ranks.launcher_error_line(error) == ranks.port_taken_message(29517)
    assert "\n" not in ranks.launcher_error_line(error)

    monkeypatch.setenv(ranks.RANK_ERRORS_ENV, str(tmp_path))
    ranks._write_launcher_error(error)
    assert json.loads((tmp_path / ranks.LAUNCHER_ERROR_FILE).read_text()) == {
        "message": ranks.port_taken_message(29517),
        "port_taken": True,
    }
    assert ranks.launcher_port_taken(tmp_path)
    assert ranks.first_failure(tmp_path) == (ranks.port_taken_message(29517), 1)

    other = RuntimeError("rendezvous timed out")
    assert not ranks.is_port_taken(other)
    assert ranks.launcher_error_line(other) == "the launcher failed: RuntimeError: rendezvous timed out"


def test_the_launcher_failing_on_its_port_with_no_parent_prints_one_line(capsys, monkeypatch):
    from torch.distributed import DistNetworkError

    from easyrlhf_core.runtime import rank_errors as ranks

    def start_store(args):
        raise DistNetworkError(STORE_PORT_TAKEN[0].format(port=29518))

    monkeypatch.delenv(ranks.RANK_ERRORS_ENV, raising=False)
    monkeypatch.setattr(ranks, "_quiet_launcher_logs", lambda: None)  # the test session's loggers stay as they are
    monkeypatch.setattr("torch.distributed.run.run", start_store)
    assert ranks.main(["torchrun", "--nproc_per_node", "1", "--master_port", "29518", "x.py"]) == 1
    err = capsys.readouterr().err
    assert err == f"Error: {ranks.port_taken_message(29518)}\n"
