"""Second-round probes of the training commands: torchrun variables set oddly, names the file
system cannot hold, ignored signals, and a run directory cleaned up in part."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest

from tests.conftest import invoke_cli, tone_manifest

TORCHRUN_VARS = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tone_manifest(tmp_path_factory.mktemp("probes-training-data"))


@pytest.fixture(autouse=True)
def no_torchrun(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in TORCHRUN_VARS:
        monkeypatch.delenv(name, raising=False)


def train(data: Path, out: Path | str, *extra: object, env: dict[str, str] | None = None):
    return invoke_cli(
        "train", "--train", data, "--dev", data, "-o", out, "--preset", "tiny",
        "--tokenizer", "char", "--epochs", "1", "--max-steps", "1", "--batch-size", "2",
        "--warmup-steps", "1", "--threads", "1", *extra, env=env,
    )  # fmt: skip


def one_line_error(result) -> str:
    lines = [ln for ln in result.output.splitlines() if ln.strip()]
    assert lines and lines[-1].startswith("error: "), result.output
    assert "Traceback" not in result.output
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    return lines[-1]


# --- torchrun variables -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        # RANK 1 of a world of 1: no rank wrote, dev scoring raised KeyError: 0.
        ({"RANK": "1", "WORLD_SIZE": "1"}, "RANK=1 in the environment is outside 0..0"),
        ({"RANK": "abc", "WORLD_SIZE": "2"}, "RANK='abc' in the environment is not an integer"),
        ({"RANK": "0", "WORLD_SIZE": "1", "LOCAL_RANK": "x"}, "LOCAL_RANK='x'"),
        ({"RANK": "0", "WORLD_SIZE": "0"}, "WORLD_SIZE=0 in the environment"),
        # A group of two without a rendezvous address: torch's ValueError traceback.
        ({"RANK": "0", "WORLD_SIZE": "2"}, "MASTER_ADDR and MASTER_PORT are not set"),
    ],
)
def test_probe_bad_torchrun_variables_are_one_line(
    data: Path, tmp_path: Path, env: dict[str, str], expected: str
) -> None:
    out = tmp_path / "x.ckpt"
    result = train(data, out, env=env)
    assert result.exit_code == 2, result.output
    assert expected in one_line_error(result)
    assert not out.exists()
    assert not (tmp_path / "x.ckpt.run").exists()


def test_probe_lone_rank_variable_still_reports(data: Path, tmp_path: Path) -> None:
    # RANK without WORLD_SIZE is not torchrun: the run is rank 0's, and says what it saved
    # (it used to print nothing while still writing the output).
    out = tmp_path / "x.ckpt"
    result = train(data, out, env={"RANK": "1"})
    assert result.exit_code == 0, result.output
    assert "saved" in result.output
    assert out.is_file()


# --- names the file system cannot hold --------------------------------------------------------


@pytest.mark.parametrize("length", [250, 253, 300])
def test_probe_too_long_output_name_is_refused_before_work(
    data: Path, tmp_path: Path, length: int
) -> None:
    # 250 bytes: trained, then "cannot write" (the temporary's name did not fit); 253: the
    # run directory OUT.run raised OSError; 300: OSError from the first stat.
    name = "a" * (length - 5) + ".ckpt"
    result = train(data, tmp_path / name)
    assert result.exit_code == 2, result.output
    line = one_line_error(result)
    assert f"is {length} bytes" in line
    assert "step 1" not in result.output  # refused before any training
    assert list(tmp_path.iterdir()) == []


def test_probe_too_long_run_dir_and_path_are_refused(data: Path, tmp_path: Path) -> None:
    result = train(data, tmp_path / "x.ckpt", "--run-dir", tmp_path / ("r" * 300))
    assert result.exit_code == 2
    assert "--run-dir" in one_line_error(result)
    deep = tmp_path.joinpath(*["d" * 200] * 22) / "x.ckpt"
    result = train(data, deep)
    assert result.exit_code == 2
    assert "the path is too long" in one_line_error(result)


def test_probe_longest_name_that_fits_is_written(data: Path, tmp_path: Path) -> None:
    from dyncli.fileio import TEMP_NAME_EXTRA

    name = "b" * (os.pathconf(tmp_path, "PC_NAME_MAX") - TEMP_NAME_EXTRA - 5) + ".ckpt"
    result = train(data, tmp_path / name)
    assert result.exit_code == 0, result.output
    assert (tmp_path / name).is_file()


# --- ignored signals --------------------------------------------------------------------------


def test_probe_an_ignored_sigint_stays_ignored_during_a_save(tmp_path: Path) -> None:
    # A background job (`dyncli train ... &` in a script) starts with SIGINT ignored; holding
    # signals during a save turned a Ctrl-C meant for the script into exit 130 for the job.
    from dyncli.fileio import atomic_write

    out = tmp_path / "x.bin"
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:

        def write(fh) -> None:
            os.kill(os.getpid(), signal.SIGINT)
            fh.write(b"new")

        atomic_write(out, write)
        assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN
    finally:
        signal.signal(signal.SIGINT, previous)
    assert out.read_bytes() == b"new"


def test_probe_an_ignored_sigterm_stays_ignored() -> None:
    from dyncli.cli.errors import sigterm_as_interrupt

    previous = signal.signal(signal.SIGTERM, signal.SIG_IGN)
    try:
        with sigterm_as_interrupt():
            assert signal.getsignal(signal.SIGTERM) is signal.SIG_IGN
            os.kill(os.getpid(), signal.SIGTERM)
    finally:
        signal.signal(signal.SIGTERM, previous)


# --- a run directory cleaned up in part -------------------------------------------------------


def test_probe_resume_without_best_checkpoint_is_one_line(data: Path, tmp_path: Path) -> None:
    # An interrupt during the final clean-up could remove best.ckpt and keep state.pt; the
    # --resume the message suggests then raised FileNotFoundError.
    import subprocess
    import sys

    out = tmp_path / "x.ckpt"
    args = [
        sys.executable, "-m", "dyncli", "train", "--train", str(data), "--dev", str(data),
        "-o", str(out), "--preset", "tiny", "--tokenizer", "char", "--epochs", "1",
        "--max-steps", "1", "--batch-size", "2", "--warmup-steps", "1", "--threads", "1",
        "--device", "cpu",
    ]  # fmt: skip
    env = {k: v for k, v in os.environ.items() if k not in TORCHRUN_VARS}
    killed = subprocess.run(
        args, env={**env, "DYNCLI_KILL_AFTER_STATE": "1"}, capture_output=True, check=False
    )
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    run_dir = tmp_path / "x.ckpt.run"
    (run_dir / "best.ckpt").unlink()
    result = invoke_cli(*args[3:], "--resume")
    assert result.exit_code == 1, result.output
    assert "best checkpoint best.ckpt is gone" in one_line_error(result)
    assert not out.exists()


def test_probe_run_dir_removal_takes_the_state_first(tmp_path: Path, monkeypatch) -> None:
    from dyncli.training import rundir

    run_dir = tmp_path / "r.run"
    run_dir.mkdir()
    for name in ("best.ckpt", "state.pt", rundir.MARKER):
        (run_dir / name).write_bytes(b"x")
    removed: list[str] = []
    real_unlink = os.unlink

    def unlink(path, *a, **k) -> None:
        removed.append(Path(path).name)
        real_unlink(path, *a, **k)

    monkeypatch.setattr(rundir.os, "unlink", unlink)
    rundir.remove_run_dir(run_dir)
    assert removed[0] == "state.pt"
    assert not run_dir.exists()


def test_probe_run_dir_given_as_a_symlink_is_cleaned_up(tmp_path: Path) -> None:
    # `--run-dir LINK` (a symlink to a directory): the finished run left state.pt, best.ckpt and
    # the marker behind, and the next run was refused as "an unfinished run".
    from dyncli.training.rundir import MARKER, claim_run_dir, remove_run_dir

    target = tmp_path / "runs"
    target.mkdir()
    link = tmp_path / "link"
    link.symlink_to(target)
    claim_run_dir(link, tmp_path / "x.ckpt")
    (link / "state.pt").write_bytes(b"state")
    (link / "best.ckpt").write_bytes(b"best")
    (target / "notes.txt").write_text("mine")
    assert remove_run_dir(link) == [target / "notes.txt"]
    assert sorted(p.name for p in target.iterdir()) == ["notes.txt"]
    assert link.is_symlink() and not (target / MARKER).exists()


def test_probe_run_dir_given_as_a_dangling_symlink(data: Path, tmp_path: Path) -> None:
    # Was FileExistsError from mkdir: the directory the link names is made, then removed.
    link = tmp_path / "link"
    link.symlink_to(tmp_path / "runs")
    result = train(data, tmp_path / "x.ckpt", "--run-dir", link)
    assert result.exit_code == 0, result.output
    assert (tmp_path / "x.ckpt").is_file()
    assert link.is_symlink() and not (tmp_path / "runs").exists()


def test_probe_transcribe_with_a_lone_rank_variable_prints(tiny_ckpt: Path, tmp_path: Path) -> None:
    # RANK=1 left in the environment (no WORLD_SIZE: not torchrun) made transcribe print
    # nothing and exit 0; RANK=1 of a world of 1 is a one-line error.
    from tests.conftest import write_wav

    wav = write_wav(tmp_path / "a.wav")
    result = invoke_cli("transcribe", tiny_ckpt, wav, env={"RANK": "1"})
    assert result.exit_code == 0, result.output
    assert result.stdout.startswith(f"{wav}\t")
    result = invoke_cli("transcribe", tiny_ckpt, wav, env={"RANK": "1", "WORLD_SIZE": "1"})
    assert result.exit_code == 2
    assert "outside 0..0" in one_line_error(result)


@pytest.mark.parametrize("command", [["convert", "--method", "gates"], ["distill"]])
def test_probe_wer_budget_in_points_is_refused(
    tiny_ckpt: Path, data: Path, tmp_path: Path, command: list[str]
) -> None:
    # --wer-budget 5 (meant: 5 points) allowed 500 points: the cheapest threshold was stored as
    # the operating point whatever its WER.
    out = tmp_path / "x.ckpt"
    result = invoke_cli(
        *command, tiny_ckpt, "--train", data, "--dev", data, "-o", out, "--wer-budget", "5",
        "--epochs", "1", "--max-steps", "1", "--threads", "1",
    )  # fmt: skip
    assert result.exit_code == 2, result.output
    assert "for 5 points give 0.05" in one_line_error(result)
    assert not out.exists() and not (tmp_path / "x.ckpt.run").exists()
