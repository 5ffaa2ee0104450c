"""Issue 17, training options and usage errors: non-finite and out-of-range values, options
that do not apply, --wer-budget policies checked before training, one-line usage errors and
messages that blame the flags the user gave."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import typer

from dyncli import hookimpl
from dyncli.errors import UsageError
from dyncli.registry import manager as plugins
from tests.conftest import invoke_cli, tone_manifest


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tone_manifest(tmp_path_factory.mktemp("data"))


def error_line(result) -> str:
    """The one line a refused command prints; fails on anything else (a traceback, a box)."""
    lines = [line for line in result.stderr.splitlines() if not line.startswith("warning:")]
    assert result.exit_code == 2, result.output
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert "Traceback" not in result.output and "╭" not in result.output
    return lines[0]


def convert(ckpt: Path, data: Path, out: Path, *args: object):
    return invoke_cli(
        "convert", ckpt, "-o", out, "--train", data, "--dev", data, "--max-steps", "1",
        "--epochs", "1", *args,
    )  # fmt: skip


def distill(ckpt: Path, data: Path, out: Path, *args: object):
    return invoke_cli(
        "distill", ckpt, "-o", out, "--train", data, "--dev", data, "--max-steps", "1",
        "--epochs", "1", *args,
    )  # fmt: skip


def train(data: Path, out: Path, *args: object):
    return invoke_cli(
        "train", "--train", data, "--dev", data, "-o", out, "--preset", "tiny", "--max-steps",
        "1", "--epochs", "1", *args,
    )  # fmt: skip


# 7a: NaN / inf in any float option, and out-of-range training values


def float_options() -> list[tuple[str, str, list[str]]]:
    """(command, flag, required args) for every float option of every built-in command."""
    from typer.main import get_group

    from dyncli.cli.app import build_app
    from dyncli.cli.command import flag_name

    found = []
    for name, command in get_group(build_app()).commands.items():
        required: list[str] = []
        for p in command.params:
            if p.required:
                required += ["1"] if not getattr(p, "opts", [""])[0].startswith("-") else []
                required += [p.opts[0], "1"] if p.opts[0].startswith("-") else []
        for p in command.params:
            if getattr(getattr(p, "type_descriptor", None), "annotation", None) is float:
                found.append((name, flag_name(p), required))
    return found


@pytest.mark.parametrize("value", ["nan", "inf", "-inf"])
def test_item7a_every_float_option_refuses_non_finite(value: str) -> None:
    cases = float_options()
    assert {c for c, _, _ in cases} >= {"train", "convert", "distill", "profile", "evaluate"}
    for command, flag, required in cases:
        result = invoke_cli(command, *required, f"{flag}={value}")
        line = error_line(result)
        assert flag in line, (command, line)


def test_item7a_gate_lr_scale_nan_saves_nothing(tiny_ckpt: Path, data: Path, tmp_path) -> None:
    out = tmp_path / "gated.ckpt"
    result = convert(tiny_ckpt, data, out, "--method", "gates", "--gate-lr-scale", "nan")
    assert "--gate-lr-scale" in error_line(result)
    assert not out.exists()


def test_item7a_core_refuses_nan_hyperparameters() -> None:
    from dyncli.methods.gates import GateTraining
    from dyncli.recipes.distill import DistillOptions

    for field in ("weight", "lr_scale", "temperature"):
        with pytest.raises(UsageError, match="finite"):
            GateTraining(**{field: float("nan")}).validate()
    with pytest.raises(UsageError, match="--kd-weight must be a finite number"):
        DistillOptions(kd_weight=float("nan")).check()


def test_item7a_lr_zero_refused_up_front(data: Path, tmp_path) -> None:
    result = train(data, tmp_path / "m.ckpt", "--lr", "0")
    assert "--lr must be a positive" in error_line(result)


def test_item7c_all_loss_weights_zero_refused(tiny_ckpt: Path, data: Path, tmp_path) -> None:
    out = tmp_path / "dyn.ckpt"
    result = convert(
        tiny_ckpt, data, out, "--exits", "1", "--exit-weight", "0", "--final-weight", "0"
    )
    assert "nothing would be trained" in error_line(result)
    result = convert(
        tiny_ckpt, data, out, "--exits", "1", "--freeze-backbone", "--exit-weight", "0"
    )
    assert "--exit-weight is 0" in error_line(result)
    result = distill(
        tiny_ckpt, data, out, "--method", "dld", "--final-weight", "0", "--kd-weight", "0"
    )
    assert "nothing would be trained" in error_line(result)
    assert not out.exists()


def test_item7c_one_zero_weight_warns_once(tiny_ckpt: Path, data: Path, tmp_path) -> None:
    out = tmp_path / "dyn.ckpt"
    result = convert(tiny_ckpt, data, out, "--exits", "1", "--exit-weight", "0")
    assert result.exit_code == 0, result.output
    warnings = [line for line in result.stderr.splitlines() if "--exit-weight 0" in line]
    assert len(warnings) == 1 and warnings[0].startswith("warning:")


# 10: --wer-budget --policy checked against the method before training


def test_item10_budget_policy_gates_refused_before_training(
    tiny_ckpt: Path, data: Path, tmp_path
) -> None:
    out = tmp_path / "dyn.ckpt"
    args = ("--exits", "1", "--wer-budget", "0.01", "--policy", "gates")
    line = error_line(convert(tiny_ckpt, data, out, *args))
    assert "--policy gates" in line and "gate predictor" in line
    assert not out.exists() and not (tmp_path / "dyn.ckpt.run").exists()


def test_item10_budget_policy_needing_exits_refused(tiny_ckpt: Path, data: Path, tmp_path) -> None:
    out = tmp_path / "dyn.ckpt"
    args = ("--method", "layerdrop", "--wer-budget", "0.01", "--policy", "blank-skip")
    line = error_line(convert(tiny_ckpt, data, out, *args))
    assert "--policy blank-skip" in line and "intermediate CTC heads" in line
    line = error_line(distill(tiny_ckpt, data, out, "--method", "dld", *args[2:]))
    assert "--policy blank-skip" in line
    assert not out.exists()


def test_item10_policy_without_budget_refused(tiny_ckpt: Path, data: Path, tmp_path) -> None:
    result = convert(tiny_ckpt, data, tmp_path / "d.ckpt", "--exits", "1", "--policy", "drop")
    assert "give --wer-budget too" in error_line(result)


# 12: LOW:HIGH training ranges


@pytest.mark.parametrize(
    ("flag", "value"),
    [
        ("--speed", "0:0"),
        ("--vtlp", "0:0"),
        ("--speed", "-1:-1"),
        ("--noise-snr", "nan:nan"),
        ("--vtlp", "inf:inf"),
        ("--speed", "1.1:0.9"),
    ],
)
def test_item12_training_ranges_refused(data: Path, tmp_path, flag: str, value: str) -> None:
    line = error_line(train(data, tmp_path / "m.ckpt", flag, value))
    assert line.startswith(f"error: {flag}"), line
    assert not (tmp_path / "m.ckpt").exists()


def test_item12_skip_threshold_range_domain(tiny_ckpt: Path, data: Path, tmp_path) -> None:
    args = ("--exits", "1", "--skip-layer", "1", "--skip-threshold-range", "0.9:1.1")
    line = error_line(convert(tiny_ckpt, data, tmp_path / "d.ckpt", *args))
    assert "--skip-threshold-range must satisfy 0 < LOW <= HIGH <= 1" in line


# 18: options that do not apply to the chosen method


@pytest.mark.parametrize(
    ("method", "args", "flag"),
    [
        ("early-exit", ("--exits", "1", "--predictor", "bogus"), "--predictor"),
        ("early-exit", ("--exits", "1", "--gate-weight", "2"), "--gate-weight"),
        ("early-exit", ("--exits", "1", "--drop-rate", "0.9"), "--drop-rate"),
        ("layerdrop", ("--target-modules", "0.3"), "--target-modules"),
        ("layerdrop", ("--skip-threshold-range", "0.5:0.9"), "--skip-threshold-range"),
        ("gates", ("--drop-rate", "0.2"), "--drop-rate"),
        ("gates", ("--skip-neighbours", "2"), "--skip-neighbours"),
    ],
)
def test_item18_convert_refuses_other_methods_flags(
    tiny_ckpt: Path, data: Path, tmp_path, method: str, args: tuple[str, ...], flag: str
) -> None:
    line = error_line(convert(tiny_ckpt, data, tmp_path / "d.ckpt", "--method", method, *args))
    assert line.startswith(f"error: {flag} does not apply to --method {method}"), line


def test_item18_convert_predictor_is_a_choice(tiny_ckpt: Path, data: Path, tmp_path) -> None:
    args = ("--method", "gates", "--predictor", "bogus")
    assert "--predictor 'bogus'" in error_line(convert(tiny_ckpt, data, tmp_path / "d", *args))


def test_item18_convert_threshold_range_needs_skip_layer(
    tiny_ckpt: Path, data: Path, tmp_path
) -> None:
    args = ("--exits", "1", "--skip-threshold-range", "0.5:0.9")
    line = error_line(convert(tiny_ckpt, data, tmp_path / "d.ckpt", *args))
    assert "give --skip-layer" in line


@pytest.mark.parametrize(
    ("method", "args", "flag"),
    [
        ("exit-kd", ("--temperature", "2"), "--temperature"),
        ("exit-kd", ("--kd-weight", "2"), "--kd-weight"),
        ("dld", ("--alpha", "0.5"), "--alpha"),
        ("dld", ("--exit-weight", "2"), "--exit-weight"),
        ("factorized-kd", ("--drop-rate", "0.2"), "--drop-rate"),
    ],
)
def test_item18_distill_refuses_other_methods_flags(
    tiny_ckpt: Path, data: Path, tmp_path, method: str, args: tuple[str, ...], flag: str
) -> None:
    line = error_line(distill(tiny_ckpt, data, tmp_path / "d.ckpt", "--method", method, *args))
    assert line.startswith(f"error: {flag} does not apply to --method {method}"), line


def test_item18_train_vocab_size_with_char_tokenizer(data: Path, tmp_path) -> None:
    result = train(data, tmp_path / "m.ckpt", "--tokenizer", "char", "--vocab-size", "500")
    assert "--vocab-size does not apply to --tokenizer char" in error_line(result)
    result = train(data, tmp_path / "m.ckpt", "--exit-weight", "2")
    assert "give --exits" in error_line(result)


# 19: click usage errors are one line, plugin commands included


@pytest.mark.parametrize(
    "args",
    [
        ("train", "--bogus"),
        ("train",),
        ("evaluate", "--threads", "many"),
        ("no-such-command",),
        ("--bogus",),
    ],
)
def test_item19_usage_errors_are_one_line(args: tuple[str, ...]) -> None:
    line = error_line(invoke_cli(*args))
    assert "--help" in line  # where to look next, on the same line


class _PluginWithCommand:
    @hookimpl
    def register_commands(self, cli):
        extra = typer.Typer()

        @extra.command("hi")
        def hi(times: int = 1) -> None:
            typer.echo("hi" * times)

        cli.add_typer(extra, name="greet")


def test_item19_plugin_command_usage_error_is_one_line(monkeypatch: pytest.MonkeyPatch) -> None:
    for attr in ("_failures", "_distributions", "_warned"):
        monkeypatch.setattr(plugins, attr, getattr(plugins, attr))
    monkeypatch.setattr(plugins, "_pm", None)
    plugin = _PluginWithCommand()
    pm = plugins.get_plugin_manager()
    pm.register(plugin, name="greeter")
    try:
        assert invoke_cli("greet", "hi", "--times", "2").stdout == "hihi\n"
        line = error_line(invoke_cli("greet", "hi", "--times", "x"))
        assert "--times" in line
    finally:
        pm.unregister(plugin)


# 20: messages that name the right flags, and examples that parse


def test_item20d_operating_point_errors_name_given_flags(tiny_ckpt: Path) -> None:
    from dyncli.checkpoint import load_checkpoint
    from dyncli.dynamic.operating_point import resolve_run

    ckpt = load_checkpoint(tiny_ckpt)
    with pytest.raises(UsageError) as err:
        resolve_run(ckpt, threshold=0.5, full_depth=True)
    assert str(err.value) == "--full-depth runs every layer: drop --threshold"
    with pytest.raises(UsageError) as err:
        resolve_run(ckpt, threshold=0.5)
    assert "--threshold" in str(err.value) and "--policy" not in str(err.value)
    ckpt.model.attach_exits([1])  # exits, no stored operating point
    with pytest.raises(UsageError) as err:
        resolve_run(ckpt, overrides={"layer": 1})
    message = str(err.value)
    assert message.startswith("--skip-layer given") and "--policy blank-skip needs" not in message


def test_item20e_messages_use_current_flag_names(tiny_ckpt: Path, data: Path, tmp_path) -> None:
    out = tmp_path / "d.ckpt"
    line = error_line(convert(tiny_ckpt, data, out, "--exits", "1", "--skip-layer", "2"))
    assert line.startswith("error: --skip-layer 2")
    line = error_line(
        convert(tiny_ckpt, data, out, "--exits", "1", "--skip-layer", "1", "--freeze-backbone")
    )
    assert "--skip-layer" in line and "--skip-aware" not in line
    source = (Path(__file__).resolve().parents[2] / "dyncli" / "recipes" / "convert.py").read_text()
    assert "--skip-aware" not in source and "--skip-thresholds" not in source


def test_item20f_range_examples_parse() -> None:
    from dyncli.cli.options import RANGE_DOMAINS, parse_range

    for flag, domain in RANGE_DOMAINS.items():
        with pytest.raises(UsageError) as err:
            parse_range("bogus", flag)
        example = re.search(r"e\.g\. (\S+)\)", str(err.value))
        assert example is not None and example.group(1) == domain.example
        parse_range(example.group(1), flag)  # the example is accepted by the same parser
    lo, hi = parse_range(RANGE_DOMAINS["--skip-threshold-range"].example, "--skip-threshold-range")
    assert 0 < lo <= hi <= 1  # a threshold range convert accepts
