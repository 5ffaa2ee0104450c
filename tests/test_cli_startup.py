"""The CLI starts without torch and reports errors as one line."""

from __future__ import annotations

import os
import subprocess
import sys

from typer.testing import CliRunner

from dyncli import __version__
from dyncli.cli.app import build_app

runner = CliRunner()


HELP_SCRIPT = """
import importlib.metadata
import sys
from types import SimpleNamespace

loaded = []
plugin = SimpleNamespace(name="spy", dist=SimpleNamespace(name="dyncli-spy"),
                         load=lambda: loaded.append("spy") or SimpleNamespace())
importlib.metadata.entry_points = lambda group=None, **kw: [plugin] if group == "dyncli" else []

from dyncli.cli.app import build_app

app = build_app()
try:
    app(sys.argv[1:])
except SystemExit:
    pass
assert 'torch' not in sys.modules, 'torch imported by --help'
assert 'torchaudio' not in sys.modules
assert loaded == [], 'a third-party plugin was loaded by --help'
print('ok')
"""


def run_help(*args: str) -> subprocess.CompletedProcess[str]:
    """``dyncli ARGS`` in a fresh interpreter with one installed (fake) third-party plugin
    that records being loaded; the script asserts it was not, and that torch was not imported."""
    return subprocess.run(
        [sys.executable, "-c", HELP_SCRIPT, *args],
        capture_output=True,
        text=True,
        env={**os.environ, "COLUMNS": "120"},
    )


def test_help_does_not_import_torch_or_load_plugins() -> None:
    out = run_help("--help")
    assert out.returncode == 0, out.stderr
    assert "ok" in out.stdout
    assert "evaluate" in out.stdout and "train" in out.stdout
    assert "dyncli plugins" in out.stdout  # where plugin commands are listed


def test_command_help_loads_no_plugin() -> None:
    out = run_help("inspect", "--help")
    assert out.returncode == 0, out.stderr
    assert "ok" in out.stdout and "Usage" in out.stdout


def test_version() -> None:
    result = runner.invoke(build_app(), ["--version"])
    assert result.exit_code == 0
    assert __version__ in result.output


def test_every_command_has_help() -> None:
    app = build_app()
    for name in ("train", "evaluate", "transcribe", "inspect"):
        result = runner.invoke(app, [name, "--help"])
        assert result.exit_code == 0, name
        assert "Usage" in result.output


def test_unknown_command_is_usage_error() -> None:
    result = runner.invoke(build_app(), ["frobnicate"])
    assert result.exit_code == 2


def test_console_script_error_is_one_line(tmp_path) -> None:
    missing = tmp_path / "nope.ckpt"
    out = subprocess.run(
        [sys.executable, "-m", "dyncli", "inspect", str(missing)], capture_output=True, text=True
    )
    assert out.returncode == 2
    lines = [line for line in out.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:"), out.stderr
    assert "Traceback" not in out.stderr


def test_debug_env_shows_traceback(tmp_path) -> None:
    out = subprocess.run(
        [sys.executable, "-m", "dyncli", "inspect", str(tmp_path / "x.ckpt")],
        capture_output=True,
        text=True,
        env={**os.environ, "DYNCLI_DEBUG": "1"},
    )
    assert out.returncode != 0
    assert "Traceback" in out.stderr
