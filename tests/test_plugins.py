"""The plugin registry: built-ins and third-party plugins take the same path."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import typer
from typer.testing import CliRunner

from dyncli import hookimpl
from dyncli.cli.app import build_app
from dyncli.errors import UsageError
from dyncli.registry import manager as plugins

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "plugins" / "dyncli-exit-at"))
import dyncli_exit_at  # noqa: E402

runner = CliRunner()


@pytest.fixture
def fresh_registry(monkeypatch: pytest.MonkeyPatch) -> None:
    """A plugin manager built afresh for the test; the session's is restored afterwards."""
    for attr in ("_failures", "_distributions", "_warned"):
        monkeypatch.setattr(plugins, attr, getattr(plugins, attr))
    monkeypatch.setattr(plugins, "_pm", None)


@pytest.fixture
def registered(fresh_registry: None) -> Iterator[callable]:
    pm = plugins.get_plugin_manager()
    added = []

    def register(obj, name: str) -> None:
        pm.register(obj, name=name)
        added.append(obj)

    yield register
    for obj in added:
        if pm.is_registered(obj):  # a plugin that failed is unregistered already
            pm.unregister(obj)


def entry_point(name: str, load) -> SimpleNamespace:
    """An installed plugin as importlib.metadata lists it, from distribution dyncli-<name>."""
    return SimpleNamespace(name=name, dist=SimpleNamespace(name=f"dyncli-{name}"), load=load)


def broken_load():
    raise ImportError("No module named 'numpyy'")


@pytest.fixture
def installed(monkeypatch: pytest.MonkeyPatch, fresh_registry: None) -> Callable[..., None]:
    """Fake the installed entry points (no package is installed); the manager loads them anew."""

    def install(*eps: SimpleNamespace) -> None:
        monkeypatch.setattr(plugins.importlib.metadata, "entry_points", lambda group: list(eps))

    return install


def test_builtin_conformer_comes_through_the_hook() -> None:
    pm = plugins.get_plugin_manager()
    assert "dyncli.default_plugins.conformer" in dict(pm.list_name_plugin())
    assert "conformer" in plugins.backbones()


@dataclass
class NeverSkipConfig:
    threshold: float = 1.0


class NeverSkipPlugin:
    @hookimpl
    def register_skip_policies(self, register):
        register(
            plugins.SkipPolicySpec(
                name="never",
                config_cls=NeverSkipConfig,
                build=lambda cfg: None,
                description="never skips",
            )
        )

    @hookimpl
    def register_commands(self, cli):
        extra = typer.Typer(help="Plugin command.")

        @extra.command("hi")
        def hi() -> None:
            typer.echo("hello from plugin")

        cli.add_typer(extra, name="greet")


def test_plugin_registers_policy_and_command(registered) -> None:
    registered(NeverSkipPlugin(), "never-skip")
    assert plugins.get_skip_policy("never").config_cls is NeverSkipConfig
    result = runner.invoke(build_app(), ["greet", "hi"])
    assert result.exit_code == 0 and "hello from plugin" in result.output
    result = runner.invoke(build_app(), ["plugins", "--json", "-"])
    assert '"never"' in result.output


def test_plugin_unregistered_afterwards() -> None:
    with pytest.raises(UsageError, match="unknown skip policy"):
        plugins.get_skip_policy("never")


def test_duplicate_names_warn_and_the_builtin_is_kept(registered, capsys) -> None:
    conformer = plugins.get_backbone("conformer")
    blank_skip = plugins.get_skip_policy("blank-skip")

    class Dup:
        @hookimpl
        def register_backbones(self, register):
            register(plugins.BackboneSpec("conformer", NeverSkipConfig, build=None, presets={}))
            register(plugins.BackboneSpec("dup-net", NeverSkipConfig, build=None, presets={}))

        @hookimpl
        def register_skip_policies(self, register):
            register(plugins.SkipPolicySpec("blank-skip", NeverSkipConfig, build=lambda c: None))

        @hookimpl
        def register_commands(self, cli):
            cli.add_typer(typer.Typer(), name="train")

    registered(Dup(), "dup")
    found = plugins.backbones()
    assert found["conformer"] == conformer and "dup-net" in found
    assert plugins.get_skip_policy("blank-skip") == blank_skip
    err = capsys.readouterr().err
    assert "'conformer' is registered by both plugin 'dyncli.default_plugins.conformer'" in err
    assert "and plugin 'dup'" in err

    result = runner.invoke(build_app(), ["plugins", "--json", "-"])
    assert result.exit_code == 0, result.output
    info = json.loads(result.stdout)
    assert info["skip_policies"]["blank-skip"]["description"] == blank_skip.description
    assert "train" not in info["commands"] and info["failed"] == []
    assert "command 'train' is registered by both dyncli itself and plugin 'dup'" in result.stderr
    assert "dup" in info["plugins"]


def test_two_third_party_plugins_clash_first_registered_is_kept(registered, capsys) -> None:
    class Other:
        @hookimpl
        def register_skip_policies(self, register):
            register(plugins.SkipPolicySpec("never", NeverSkipConfig, build=lambda c: None))

    registered(NeverSkipPlugin(), "never-skip")
    registered(Other(), "other")
    assert plugins.get_skip_policy("never").description == "never skips"
    assert "both plugin 'never-skip' and plugin 'other'" in capsys.readouterr().err


def test_plugin_whose_hook_raises_is_skipped_and_warned_once(registered, capsys) -> None:
    class Raises:
        @hookimpl
        def register_skip_policies(self, register):
            register(plugins.SkipPolicySpec("half", NeverSkipConfig, build=lambda c: None))
            raise RuntimeError("boom\nsecond line")

    registered(NeverSkipPlugin(), "never-skip")
    registered(Raises(), "raises")
    for _ in range(2):
        found = plugins.skip_policies()
        assert "blank-skip" in found and "never" in found and "half" not in found
    err = capsys.readouterr().err
    assert err.count("warning: plugin 'raises' failed in register_skip_policies") == 1, err
    assert plugins.plugin_failures() == [
        plugins.PluginFailure("raises", None, "RuntimeError: boom second line")
    ]
    assert plugins.get_plugin_manager().get_plugin("raises") is None

    result = runner.invoke(build_app(), ["plugins", "--json", "-"])
    assert result.exit_code == 0
    info = json.loads(result.stdout)
    assert info["failed"] == [
        {"name": "raises", "distribution": None, "reason": "RuntimeError: boom second line"}
    ]
    assert "raises" not in info["plugins"] and "never" in info["skip_policies"]


def test_plugin_whose_command_hook_raises_is_skipped(registered) -> None:
    class Raises:
        @hookimpl
        def register_commands(self, cli):
            cli.add_typer(typer.Typer(), name="half")
            raise ValueError("no commands today")

    registered(Raises(), "raises")
    registered(NeverSkipPlugin(), "never-skip")
    result = runner.invoke(build_app(), ["greet", "hi"])
    assert result.exit_code == 0 and "hello from plugin" in result.stdout
    assert "plugin 'raises' failed in register_commands" in result.stderr
    result = runner.invoke(build_app(), ["half"])
    assert result.exit_code == 2


def test_broken_entry_point_is_skipped_with_one_warning(installed) -> None:
    installed(
        entry_point("broken", broken_load),
        entry_point("never-skip", lambda: NeverSkipPlugin()),
    )
    app = build_app()
    result = runner.invoke(app, ["plugins", "--json", "-"])
    assert result.exit_code == 0, result.output
    info = json.loads(result.stdout)
    assert info["failed"] == [
        {
            "name": "broken",
            "distribution": "dyncli-broken",
            "reason": "ImportError: No module named 'numpyy'",
        }
    ]
    assert "never-skip" in info["plugins"] and "broken" not in info["plugins"]
    assert "never" in info["skip_policies"] and "greet" in info["commands"]
    assert result.stderr.count("dyncli-broken") == 1, result.stderr
    assert (
        "warning: plugin 'broken' (distribution 'dyncli-broken') failed to load and was skipped: "
        "ImportError: No module named 'numpyy'" in result.stderr
    )
    result = runner.invoke(app, ["greet", "hi"])  # same process: no second warning
    assert result.exit_code == 0 and "hello from plugin" in result.stdout
    assert "dyncli-broken" not in result.stderr

    result = runner.invoke(app, ["plugins"])
    assert result.exit_code == 0
    assert "failed plugin" in result.stdout and "numpyy" in result.stdout


def test_unknown_command_with_a_broken_plugin_is_usage_error(installed) -> None:
    installed(entry_point("broken", broken_load))
    result = runner.invoke(build_app(), ["frobnicate"])
    assert result.exit_code == 2
    assert "dyncli-broken" in result.stderr


def test_exit_at_plugin_policy(registered) -> None:
    """The example plugin's policy goes through the registry like a built-in: the layers after
    its exit are never run, and the profile sweep counts them out."""
    from dyncli.dynamic import build_policy
    from dyncli.models.config import CONFORMER_PRESETS
    from dyncli.models.conformer import build_conformer_ctc

    registered(dyncli_exit_at, "exit-at")
    torch.manual_seed(0)
    model = build_conformer_ctc(CONFORMER_PRESETS["tiny"], 7).eval()
    model.attach_exits([1, 2])
    x = torch.randn(2, 9, model.head.in_features)
    lengths = torch.tensor([9, 6])
    with torch.inference_mode():
        out = build_policy("exit-at", 1).encode(model, x, lengths)
        ref = model.exit_log_probs(1, model.run_layer(0, x, None))
    assert [s[:2] for s in out.trace] == [("layer", 0), ("exit", 1)]
    torch.testing.assert_close(out.log_probs[0], ref[0], atol=1e-5, rtol=1e-5)
    assert out.frame_layers.tolist()[1] == [1] * 6 + [0] * 3
    with pytest.raises(UsageError, match="no exit there"):
        build_policy("exit-at", 3).check(model)


def test_load_plugins_env_filters_entry_points(monkeypatch) -> None:
    loaded = []
    fake = [
        SimpleNamespace(
            name=n,
            dist=SimpleNamespace(name=f"dyncli-{n}"),
            load=lambda n=n: loaded.append(n) or SimpleNamespace(),
        )
        for n in ("alpha", "beta")
    ]
    monkeypatch.setattr(plugins.importlib.metadata, "entry_points", lambda group: fake)

    class PM:
        def __init__(self):
            self.names = []

        def get_plugin(self, name):
            return None

        def register(self, obj, name):
            self.names.append(name)

    monkeypatch.setenv("DYNCLI_LOAD_PLUGINS", "beta")
    pm = PM()
    plugins._load_entry_points(pm)
    assert pm.names == ["beta"] and loaded == ["beta"]
    monkeypatch.setenv("DYNCLI_LOAD_PLUGINS", "")
    pm = PM()
    plugins._load_entry_points(pm)
    assert pm.names == []
    monkeypatch.delenv("DYNCLI_LOAD_PLUGINS")
    pm = PM()
    plugins._load_entry_points(pm)
    assert pm.names == ["alpha", "beta"]


def test_the_old_plugin_api_path_is_an_alias_of_the_registry() -> None:
    """Plugins written against ``dyncli.plugins`` (before issue 19) still find the specs."""
    import dyncli.plugins as old
    import dyncli.registry as new

    for name in ("BackboneSpec", "CheckpointReaderSpec", "SkipPolicySpec", "hookimpl"):
        assert getattr(old, name) is getattr(new, name)
