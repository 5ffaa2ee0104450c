"""The plugin registry: built-ins and third-party plugins take the same path."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import typer
from typer.testing import CliRunner

from dyncli import hookimpl, plugins
from dyncli.cli.app import build_app
from dyncli.errors import UsageError

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "plugins" / "dyncli-transformer"))
import dyncli_transformer  # noqa: E402

runner = CliRunner()


@pytest.fixture
def registered() -> Iterator[callable]:
    pm = plugins.get_plugin_manager()
    added = []

    def register(obj, name: str) -> None:
        pm.register(obj, name=name)
        added.append(obj)

    yield register
    for obj in added:
        pm.unregister(obj)


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


def test_duplicate_names_are_refused(registered) -> None:
    conformer = plugins.get_backbone("conformer")

    class Dup:
        @hookimpl
        def register_backbones(self, register):
            register(conformer)

    registered(Dup(), "dup")
    with pytest.raises(UsageError, match="two plugins"):
        plugins.backbones()


def test_transformer_plugin_backbone(registered, tmp_path: Path) -> None:
    registered(dyncli_transformer, "transformer")
    spec = plugins.get_backbone("transformer")
    model = spec.build(spec.presets["tiny"], 6).eval()
    waves = [torch.randn(4000) * 0.1, torch.randn(7000) * 0.1]
    batch = torch.zeros(2, 7000)
    batch[0, :4000], batch[1] = waves[0], waves[1]
    with torch.inference_mode():
        out, lens = model(batch, torch.tensor([4000, 7000]))
        single, _ = model(waves[0][None], torch.tensor([4000]))
    torch.testing.assert_close(out[0, : int(lens[0])], single[0], atol=1e-5, rtol=1e-4)


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
