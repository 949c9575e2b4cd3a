"""Plugin discovery through entry points, broken plugins, name collisions, list-plugins output."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from easyrlhf_core.runtime import registry
from tests.plugin_fixtures import EchoPlugin, add_to_path, write_fake_distribution

GOOD_PLUGIN = '''
"""Adds the 'shout' reward function."""
from easyrlhf_core import hookimpl
from easyrlhf_core.kit.bases import RewardFunction

class Shout(RewardFunction):
    name = "shout"
    description = "counts exclamation marks"
    def score(self, prompts, completions):
        return [float(c.count("!")) for c in completions]

@hookimpl
def register_rewards(register):
    register(Shout)
'''

BROKEN_PLUGIN = '''
"""Fails at import."""
import a_module_that_does_not_exist_anywhere
'''

CLASHING_PLUGIN = '''
"""Registers a reward called 'shout' too."""
from easyrlhf_core import hookimpl
from easyrlhf_core.kit.bases import RewardFunction

class OtherShout(RewardFunction):
    name = "shout"
    description = "another shout"
    def score(self, prompts, completions):
        return [0.0 for _ in completions]

@hookimpl
def register_rewards(register):
    register(OtherShout)
'''


@pytest.fixture
def fake_dists(tmp_path, monkeypatch):
    """Install fake distributions (dist-info + module) onto sys.path."""

    def install(name: str, version: str, module: str, source: str, ep_name: str) -> None:
        write_fake_distribution(tmp_path / name, name, version, {ep_name: module}, {module: source})
        add_to_path(monkeypatch, tmp_path / name)
        registry.reset_registry()

    return install


def test_entry_point_plugin_is_discovered_with_its_distribution(fake_dists):
    fake_dists("easyrlhf-plugin-shout", "1.2.3", "fakeplug_shout", GOOD_PLUGIN, "shout")
    reg = registry.build_registry()
    entry = reg.rewards["shout"]
    assert entry.plugin.package == "easyrlhf-plugin-shout"
    assert entry.plugin.version == "1.2.3"
    assert entry.plugin.description == "Adds the 'shout' reward function."
    assert reg.get("rewards", "shout")().score([[]], ["hi!!"]) == [2.0]


def test_broken_plugin_is_listed_as_error_and_others_still_work(fake_dists, cli_run):
    fake_dists("easyrlhf-plugin-broken", "0.1", "fakeplug_broken", BROKEN_PLUGIN, "broken")
    fake_dists("easyrlhf-plugin-shout", "1.2.3", "fakeplug_shout", GOOD_PLUGIN, "shout")
    result = cli_run("list-plugins", "--json")
    assert result.exit_code == 0
    data = json.loads(result.stdout)
    broken = next(p for p in data["plugins"] if p["name"] == "broken")
    assert broken["status"] == "error"
    assert "a_module_that_does_not_exist_anywhere" in broken["error"]
    assert broken["package"] == "easyrlhf-plugin-broken"
    shout = next(p for p in data["plugins"] if p["name"] == "shout")
    assert shout["status"] == "ok" and shout["error"] is None
    assert any(r["name"] == "shout" for r in data["rewards"])


def test_same_name_from_two_plugins_is_an_error_naming_both_packages(fake_dists):
    fake_dists("easyrlhf-plugin-shout", "1.0", "fakeplug_shout", GOOD_PLUGIN, "shout")
    fake_dists("easyrlhf-plugin-clash", "2.0", "fakeplug_clash", CLASHING_PLUGIN, "clash")
    reg = registry.build_registry()
    with pytest.raises(registry.PluginError) as err:
        reg.get("rewards", "shout")
    message = str(err.value)
    assert "easyrlhf-plugin-shout" in message and "easyrlhf-plugin-clash" in message
    # both plugins are flagged, each naming the other; list-plugins lists both providers with run's sentence
    flagged = {p.name: p.error for p in reg.plugins if p.status == "conflict"}
    assert sorted(flagged) == ["clash", "shout"]
    assert "easyrlhf-plugin-clash" in flagged["shout"] and "easyrlhf-plugin-shout" in flagged["clash"]
    rows = [r for r in reg.as_dict()["rewards"] if r["name"] == "shout"]
    assert sorted(r["package"] for r in rows) == ["easyrlhf-plugin-clash", "easyrlhf-plugin-shout"]
    assert all(r["conflict"] == message.split(": ", 1)[1] for r in rows)
    assert "EASYRLHF_LOAD_PLUGINS" in message  # the way out that needs no uninstall


@pytest.fixture
def two_shouts(fake_dists, monkeypatch):
    """Two installed third-party plugins that both register the reward 'shout'; EASYRLHF_LOAD_PLUGINS unset."""
    fake_dists("easyrlhf-plugin-shout", "1.0", "fakeplug_shout", GOOD_PLUGIN, "shout")
    fake_dists("easyrlhf-plugin-clash", "2.0", "fakeplug_clash", CLASHING_PLUGIN, "clash")
    monkeypatch.delenv(registry.LOAD_PLUGINS_ENV, raising=False)


def _third_party(reg: registry.Registry) -> list[str]:
    return sorted(p.package for p in reg.plugins if p.package != "easyrlhf")


@pytest.mark.parametrize(
    "listed,package,score",
    [
        ("easyrlhf-plugin-shout", "easyrlhf-plugin-shout", 2.0),  # a distribution name, as LLM_LOAD_PLUGINS
        (" Easyrlhf_Plugin.Shout ", "easyrlhf-plugin-shout", 2.0),  # compared as pip compares names
        ("clash", "easyrlhf-plugin-clash", 0.0),  # an entry-point name
        ("clash,easyrlhf", "easyrlhf-plugin-clash", 0.0),  # naming the built-ins changes nothing
    ],
)
def test_load_plugins_env_resolves_a_name_clash_without_uninstalling(two_shouts, monkeypatch, listed, package, score):
    assert ("rewards", "shout") in registry.build_registry().conflicts  # unset: both load, as before
    monkeypatch.setenv(registry.LOAD_PLUGINS_ENV, listed)
    reg = registry.build_registry()
    assert reg.conflicts == {} and _third_party(reg) == [package]
    assert reg.get("rewards", "shout")().score([[]], ["hi!!"]) == [score]
    assert {"sft", "dpo", "ppo"} <= set(reg.methods) and "length" in reg.rewards  # the built-ins always load


def test_empty_load_plugins_env_lists_the_builtins_and_no_third_party_plugin(two_shouts, monkeypatch, cli_run):
    monkeypatch.setenv(registry.LOAD_PLUGINS_ENV, "")
    result = cli_run("list-plugins", "--json")
    assert result.exit_code == 0, result.stderr
    data = json.loads(result.stdout)
    assert {p["package"] for p in data["plugins"]} == {"easyrlhf"}
    assert {"hh_rlhf", "rewards", "ppo"} <= {p["name"] for p in data["plugins"]}
    assert not any(r["name"] == "shout" for r in data["rewards"])


def test_load_plugins_env_naming_a_plugin_that_is_not_installed_is_one_error_line(two_shouts, monkeypatch, cli_run):
    monkeypatch.setenv(registry.LOAD_PLUGINS_ENV, "easyrlhf-plugin-shout, easyrlhf-plugin-nope")
    result = cli_run("list-plugins")
    assert result.exit_code == 2
    assert result.stderr.startswith("Error: EASYRLHF_LOAD_PLUGINS: ") and result.stderr.count("\n") == 1
    assert "'easyrlhf-plugin-nope'" in result.stderr and "'easyrlhf-plugin-shout'" not in result.stderr
    assert "easyrlhf-plugin-clash (clash)" in result.stderr  # what could have been meant


def test_list_plugins_json_shape(cli_run):
    registry.register_plugin("echo-test", EchoPlugin)
    try:
        result = cli_run("list-plugins", "--json")
    finally:
        registry.unregister_plugin("echo-test")
    assert result.exit_code == 0, result.stderr
    data = json.loads(result.stdout)
    assert set(data) == {"plugins", "methods", "datasets", "rewards", "environments"}
    for kind in ("plugins", "methods", "datasets", "rewards"):
        for item in data[kind]:
            assert {"name", "plugin", "package", "version", "description"} <= set(item), (kind, item)
    for plugin in data["plugins"]:
        assert plugin["status"] in ("ok", "error", "conflict") and "error" in plugin
    echo = next(m for m in data["methods"] if m["name"] == "echo")
    assert echo["plugin"] == "echo-test" and echo["shape"] == "prompt"
    assert next(d for d in data["datasets"] if d["name"] == "test-prompts")["shapes"] == ["prompt"]


def test_list_plugins_table_shows_names(cli_run):
    registry.register_plugin("echo-test", EchoPlugin)
    try:
        result = cli_run("list-plugins")
    finally:
        registry.unregister_plugin("echo-test")
    assert result.exit_code == 0
    assert "echo" in result.stdout and "test-prompts" in result.stdout and "Plugins" in result.stdout


def test_builtin_plugins_all_load():
    reg = registry.build_registry()
    errors = {p.name: p.error for p in reg.plugins if p.status != "ok"}
    assert errors == {}
    builtin = {p.name for p in reg.plugins if p.package == "easyrlhf"}
    assert {"hh_rlhf", "jsonl", "slimorca", "rewards", "sft", "rm", "dpo", "rrhf", "ppo"} <= builtin
    assert {"sft", "rm", "dpo", "ipo", "rrhf", "ppo"} <= set(reg.methods)


@pytest.mark.parametrize("args", [["list-plugins"], ["--help"], ["run", "--help"], ["show-config", "--help"]])
def test_fast_paths_do_not_import_torch(args):
    code = (
        "import sys\nfrom easyrlhf_core.commands.cli import cli\n"
        f"try:\n    cli({args!r}, prog_name='easyrlhf')\nexcept SystemExit:\n    pass\n"
        "heavy = [m for m in ('torch', 'transformers', 'trl', 'datasets', 'peft') if m in sys.modules]\n"
        "print('HEAVY', heavy)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert "HEAVY []" in out, out
