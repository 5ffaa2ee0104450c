"""One vocabulary of options: one name per concept, shared help, old spellings as hidden aliases."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import typer

from dyncli.cli.app import build_app
from dyncli.cli.command import RENAMED, rename_deprecated
from dyncli.cli.options import parse_range
from dyncli.errors import UsageError
from tests.conftest import invoke_cli
from tests.test_profile import setup  # noqa: F401  (the module-scoped tiny dynamic model)

TIMING_COMMANDS = {"evaluate", "profile"}
JOB_COMMANDS = {"train", "convert", "distill", "transcribe"}
# Flags whose help may differ between commands, because what they do depends on the job.
JOB_DEPENDENT = {
    "--threads",  # timing: 1 thread; jobs: every core
    "--device",  # timing: cpu; jobs: auto
    "--batch-size",  # a training batch vs a timed batch
    "--policy",  # the policy to run vs the one convert's operating point is chosen for
    "--skip-layer",  # convert: also turns on skip-aware training
    "--skip-neighbours",
    "--method",  # convert: what is attached; distill: how the teacher is distilled
    "--format",  # a report (table, tsv, json) vs transcribe's one line per file (tsv, jsonl)
    "--repeats",  # evaluate: N timed passes of one model; profile: auto (until the speedup
    # intervals are narrow enough) or N, for configurations timed against each other
}


def _options() -> dict[str, dict[str, object]]:
    """command -> {flag: click option} over the built-in commands, hidden ones included."""
    group = typer.main.get_command(build_app())
    out: dict[str, dict[str, object]] = {}
    for name, command in group.commands.items():  # type: ignore[attr-defined]
        flags: dict[str, object] = {}
        for param in command.params:
            for flag in [*param.opts, *param.secondary_opts]:
                if flag.startswith("--"):
                    flags[flag] = param
        out[name] = flags
    return out


def test_old_spellings_are_gone_from_every_command() -> None:
    old = {flag for table in RENAMED.values() for flag in table}
    for command, flags in _options().items():
        assert not old & set(flags), (command, old & set(flags))


def test_same_flag_same_help_and_default() -> None:
    seen: dict[str, tuple[str, str, object]] = {}
    for command, flags in _options().items():
        for flag, param in flags.items():
            help_text = " ".join((getattr(param, "help", "") or "").split())
            assert help_text, f"{command} {flag} has no help"
            if flag in JOB_DEPENDENT or flag in ("--help",):
                continue
            if flag in seen:
                other, other_help, _ = seen[flag]
                assert help_text == other_help, f"{flag}: {command} vs {other}"
            else:
                seen[flag] = (command, help_text, getattr(param, "default", None))


def test_defaults_differ_only_where_the_job_does_and_say_why() -> None:
    options = _options()
    for command in TIMING_COMMANDS:
        device, threads = options[command]["--device"], options[command]["--threads"]
        assert device.default == "cpu" and threads.default == 1  # type: ignore[attr-defined]
        assert "reproducible" in threads.help  # type: ignore[attr-defined]
    for command in JOB_COMMANDS:
        device, threads = options[command]["--device"], options[command]["--threads"]
        assert device.default == "auto" and threads.default is None  # type: ignore[attr-defined]
        assert "every core" in threads.help  # type: ignore[attr-defined]


@pytest.mark.parametrize("command", ["profile", "evaluate", "transcribe", "convert"])
def test_policy_help_lists_the_registered_policies(command) -> None:
    result = invoke_cli(command, "--help", env={"COLUMNS": "400"})
    assert result.exit_code == 0, result.output
    text = " ".join(result.output.split())
    for name in ("blank-skip", "early-exit-entropy", "early-exit-posterior"):
        assert name in text
    assert "{skip_policies}" not in text


def test_profile_help_does_not_call_batch_size_one_streaming() -> None:
    result = invoke_cli("profile", "--help", env={"COLUMNS": "400"})
    assert "streaming" not in result.output


def test_rename_table_rewrites_both_spellings(capsys) -> None:
    args = ["--layer", "3", "--neighbours=2", "--", "--layer"]
    assert rename_deprecated("profile", args) == [
        "--skip-layer", "3", "--skip-neighbours=2", "--", "--layer",
    ]  # fmt: skip
    err = capsys.readouterr().err
    assert err.count("--layer is deprecated") == 1 and "use --skip-layer" in err
    assert rename_deprecated("convert", ["--skip-aware", "3", "--skip-thresholds", "0.5:0.9"]) == [
        "--skip-layer", "3", "--skip-threshold-range", "0.5:0.9",
    ]  # fmt: skip
    assert rename_deprecated("evaluate", ["--layer", "3"]) == ["--layer", "3"]
    path = Path("--layer")  # not a string: left alone
    assert rename_deprecated("profile", [path]) == [path]


def test_deprecated_profile_flags_still_work(setup, tmp_path) -> None:  # noqa: F811
    out_old, out_new = tmp_path / "old.json", tmp_path / "new.json"
    common = ["profile", setup["ckpt"], "--data", setup["data"], "--repeats", "1"]
    old = invoke_cli(*common, "--thresholds", "0.9", "--layer", "1", "--neighbours", "0",
                     "--json", out_old)  # fmt: skip
    new = invoke_cli(*common, "--thresholds", "0.9", "--skip-layer", "1", "--skip-neighbours",
                     "0", "--json", out_new)  # fmt: skip
    assert old.exit_code == 0 and new.exit_code == 0, old.output + new.output
    assert "--layer is deprecated" in old.stderr and "--neighbours is deprecated" in old.stderr
    assert "deprecated" not in new.stderr
    cfg_old = json.loads(out_old.read_text())["policy"]["config"]
    assert cfg_old == json.loads(out_new.read_text())["policy"]["config"]
    assert cfg_old == {"layer": 1, "neighbours": 0}


def test_ranges_are_low_high() -> None:
    assert parse_range("0.5:0.99", "--skip-threshold-range") == (0.5, 0.99)
    with pytest.raises(UsageError, match="LOW:HIGH"):
        parse_range("0.5:0.9:3", "--speed")
    with pytest.raises(UsageError, match="must not exceed"):
        parse_range("0.9:0.5", "--speed")
