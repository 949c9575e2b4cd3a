"""What a pip-installed user gets: the wheel carries the configs, DeepSpeed presets, the embedded data and
the licenses; shipped configs are reachable by name; --version says what a bug report needs."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_version_names_the_libraries_and_the_gpu(cli_run):
    result = cli_run("--version")
    assert result.exit_code == 0
    lines = result.stdout.splitlines()
    assert lines[0].startswith("easyrlhf ")
    for package in ("torch", "transformers", "trl", "peft", "accelerate", "deepspeed"):
        assert any(line.startswith(f"{package} ") for line in lines), package
    assert lines[-1].startswith("gpu: ")


def test_shipped_configs_by_name_from_anywhere(cli_run, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # no configs/ folder here, as for a pip user
    result = cli_run("show-config", "--config", "rlhf", "--no-comments", "--set", "deepspeed=zero3")
    assert result.exit_code == 0, result.stderr
    assert result.stdout.startswith("method: rlhf\n")
    assert "easyrlhf_core/configs/deepspeed/zero3.json" in result.stdout
    missing = cli_run("show-config", "--config", "rlfh")
    assert (
        missing.exit_code == 2
        and "name a shipped config: dpo, grpo, ipo, ppo, quickstart, quickstart-hh, rlhf, rloo, rm, rrhf, sft"
        in missing.stderr
    )


def test_the_wheel_carries_what_the_docs_reference(tmp_path):
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "-q",
            "-w",
            str(tmp_path),
            str(ROOT),
        ],
        check=True,
        capture_output=True,
    )
    (wheel,) = tmp_path.glob("easyrlhf-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    for required in (
        "easyrlhf_core/configs/rlhf.yaml",
        "easyrlhf_core/configs/grpo.yaml",
        "easyrlhf_core/configs/deepspeed/zero3_offload.json",
        "easyrlhf_plugins/data/embedded/hh-rlhf/LICENSE",
        "easyrlhf_plugins/data/embedded/hh-rlhf/helpful-base/test.jsonl.gz",
        "easyrlhf_core/runtime/report_assets/report.css",  # report.html inlines them
        "easyrlhf_core/runtime/report_assets/report.js",
        "easyrlhf_core/commands/export/launch_converter.py",  # run by path: easyrlhf export --gguf
        "easyrlhf_core/commands/export/quantize.py",
    ):
        assert required in names, required
    licenses = {n.rsplit("/", 1)[-1] for n in names if ".dist-info/licenses/" in n}
    assert {"LICENSE", "NOTICE"} <= licenses, sorted(n for n in names if "dist-info" in n)
    entry_points = next(n for n in names if n.endswith("entry_points.txt"))
    text = zipfile.ZipFile(wheel).read(entry_points).decode()
    assert "grpo = easyrlhf_plugins.methods.grpo" in text and "easyrlhf = easyrlhf_core.kit.testing" in text


def test_a_directory_named_like_a_preset_does_not_shadow_it(cli_run, tmp_path, monkeypatch):
    (tmp_path / "zero2").mkdir()
    (tmp_path / "rlhf").mkdir()
    monkeypatch.chdir(tmp_path)
    result = cli_run("show-config", "--config", "rlhf", "--no-comments", "--set", "deepspeed=zero2")
    assert result.exit_code == 0, result.stderr
    assert "configs/deepspeed/zero2.json" in result.stdout
