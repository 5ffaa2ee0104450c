"""Issue 17, items 1-4, 8c, 9, 11 and 15: nothing a user has is lost.

Run directories are dyncli's own (marked, locked, emptied of what dyncli wrote only); no output
overwrites an input; special files are written through; stale temporaries go; an interrupt
during a save leaves the old file.
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import signal
import stat
import subprocess
import sys
import threading
from pathlib import Path

import pytest
import torch

from dyncli.errors import UsageError
from dyncli.fileio import atomic_write, atomic_write_text
from tests.conftest import invoke_cli, tone_manifest

# What these tests need from the fix is imported where it is used, so that every test (not
# the whole file) fails on a tree without it.
MARKER = ".dyncli-run"


def claim_run_dir(path: Path, output: Path) -> Path:
    from dyncli.training.rundir import claim_run_dir as claim

    return claim(path, output)


def release_run_dir(path: Path) -> None:
    from dyncli.training.rundir import release_run_dir as release

    release(path)


def remove_run_dir(path: Path) -> list[Path]:
    from dyncli.training.rundir import remove_run_dir as remove

    return remove(path)


def check_io(**kwargs) -> None:
    from dyncli.fileio import check_io as check

    check(**kwargs)


def interrupted() -> type[BaseException]:
    try:
        from dyncli.fileio import Interrupted
    except ImportError:
        return KeyboardInterrupt
    return Interrupted


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tone_manifest(tmp_path_factory.mktemp("files-data"))


def train(data: Path, out: Path, *extra: object):
    return invoke_cli(
        "train", "--train", data, "--dev", data, "-o", out, "--preset", "tiny",
        "--tokenizer", "char", "--epochs", "1", "--max-steps", "1", "--batch-size", "2",
        "--warmup-steps", "1", "--threads", "1", *extra,
    )  # fmt: skip


def one_line_error(result) -> str:
    lines = [ln for ln in result.output.splitlines() if ln.strip()]
    assert lines and lines[-1].startswith("error: "), result.output
    assert "Traceback" not in result.output
    return lines[-1]


# --- item 1: run directories ----------------------------------------------------------------


def test_item1_run_dir_holding_the_output_keeps_the_output(data: Path, tmp_path: Path) -> None:
    outd = tmp_path / "outd"
    result = train(data, outd / "model.ckpt", "--run-dir", outd)
    assert result.exit_code == 0, result.output
    assert (outd / "model.ckpt").is_file()  # main deleted the directory with the model in it
    assert sorted(p.name for p in outd.iterdir()) == ["model.ckpt"]


def test_item1_foreign_directory_is_refused_and_left_alone(data: Path, tmp_path: Path) -> None:
    home = tmp_path / "home"
    home.mkdir()
    (home / "thesis.tex").write_text("years of work")
    result = train(data, tmp_path / "m.ckpt", "--run-dir", home)
    assert result.exit_code == 2
    assert "not made by dyncli" in one_line_error(result)
    assert (home / "thesis.tex").read_text() == "years of work"
    assert not (tmp_path / "m.ckpt").exists()


def test_item1_only_what_dyncli_wrote_is_deleted(data: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    claim_run_dir(run, tmp_path / "m.ckpt")  # a run dir dyncli made (marker)
    release_run_dir(run)
    (run / "notes.txt").write_text("mine")
    (run / "state.pt").write_bytes(b"old")  # dyncli's name: stale state would block a run
    (run / "state.pt").unlink()
    result = train(data, tmp_path / "m.ckpt", "--run-dir", run)
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in run.iterdir()) == ["notes.txt"]


def test_item1_a_user_directory_that_was_empty_stays(data: Path, tmp_path: Path) -> None:
    run = tmp_path / "empty"
    run.mkdir()
    result = train(data, tmp_path / "m.ckpt", "--run-dir", run)
    assert result.exit_code == 0, result.output
    assert run.is_dir() and not any(run.iterdir())


def test_item1_second_run_on_a_locked_run_dir_is_refused(data: Path, tmp_path: Path) -> None:
    out = tmp_path / "m.ckpt"
    run = tmp_path / "m.ckpt.run"
    run.mkdir()
    with open(run / MARKER, "a+") as holder:  # another live run holds the lock
        holder.write(json.dumps({"format": "dyncli-run-dir", "pid": os.getpid()}))
        holder.flush()
        fcntl.flock(holder.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        result = train(data, out)
    assert result.exit_code == 2
    assert "another dyncli run is using it" in one_line_error(result)
    assert not out.exists()


def test_item1_output_named_like_a_run_dir_file_is_refused(data: Path, tmp_path: Path) -> None:
    run = tmp_path / "r"
    result = train(data, run / "best.ckpt", "--run-dir", run)
    assert result.exit_code == 2
    assert "deletes when the run ends" in one_line_error(result)


def test_item1_remove_run_dir_keeps_foreign_files(tmp_path: Path) -> None:
    run = tmp_path / "r"
    claim_run_dir(run, tmp_path / "o.ckpt")
    (run / "state.pt").write_bytes(b"x")
    (run / "round-1.run").mkdir()
    (run / "round-1.run" / "best.ckpt").write_bytes(b"x")
    (run / "keep.me").write_text("user")
    kept = remove_run_dir(run)
    assert kept == [run / "keep.me"]
    assert sorted(p.name for p in run.iterdir()) == ["keep.me"]


# --- item 2: outputs over inputs ----------------------------------------------------------------


def test_item2_inspect_json_onto_the_checkpoint(tiny_ckpt: Path, tmp_path: Path) -> None:
    ckpt = tmp_path / "v.ckpt"
    shutil.copy(tiny_ckpt, ckpt)
    before = ckpt.read_bytes()
    result = invoke_cli("inspect", ckpt, "--json", ckpt)
    assert result.exit_code == 2
    assert "is the input CHECKPOINT" in one_line_error(result)
    assert ckpt.read_bytes() == before


@pytest.mark.parametrize(
    "case", ["convert-train", "train-dev", "distill-teacher", "prune-train", "symlink", "hardlink"]
)
def test_item2_training_output_onto_an_input(
    case: str, tiny_ckpt: Path, data: Path, tmp_path: Path
) -> None:
    manifest = tmp_path / "m.jsonl"
    shutil.copy(data, manifest)
    for wav in data.parent.glob("*.wav"):
        shutil.copy(wav, tmp_path / wav.name)
    teacher = tmp_path / "teacher.ckpt"
    shutil.copy(tiny_ckpt, teacher)
    if case == "symlink":
        target = tmp_path / "link.jsonl"
        target.symlink_to(manifest)
    elif case == "hardlink":
        target = tmp_path / "hard.jsonl"
        os.link(manifest, target)
    else:
        target = teacher if case == "distill-teacher" else manifest
    snapshot = {p: p.read_bytes() for p in (manifest, teacher)}
    common = ["--train", manifest, "--dev", manifest, "-o", target, "--max-steps", "1"]
    args = {
        "convert-train": ["convert", teacher, *common, "--exits", "1"],
        "train-dev": ["train", *common, "--preset", "tiny", "--tokenizer", "char"],
        "distill-teacher": ["distill", teacher, *common, "--teacher", teacher],
        "prune-train": ["prune", teacher, *common, "--keep", "2"],
        "symlink": ["convert", teacher, *common, "--exits", "1"],
        "hardlink": ["convert", teacher, *common, "--exits", "1"],
    }[case]
    result = invoke_cli(*args)
    assert result.exit_code == 2, result.output
    assert "is the input" in one_line_error(result)
    assert {p: p.read_bytes() for p in snapshot} == snapshot


def test_item2_profile_and_evaluate_outputs_onto_inputs(tiny_ckpt: Path, data: Path) -> None:
    before = {p: p.read_bytes() for p in (tiny_ckpt, data)}
    cases = [
        ["profile", tiny_ckpt, "--data", data, "--json", tiny_ckpt],
        ["profile", tiny_ckpt, "--data", data, "--plot", data],
        ["evaluate", tiny_ckpt, "--data", data, "--json", data],
    ]
    for args in cases:
        result = invoke_cli(*args)
        assert result.exit_code == 2, (args, result.output)
        assert "is the input" in one_line_error(result)
    assert {p: p.read_bytes() for p in before} == before


def test_item2_json_and_plot_on_the_same_path(tiny_ckpt: Path, data: Path, tmp_path: Path) -> None:
    out = tmp_path / "same.png"
    result = invoke_cli("profile", tiny_ckpt, "--data", data, "--json", out, "--plot", out)
    assert result.exit_code == 2
    assert "name the same file" in one_line_error(result)
    assert not out.exists()


def test_item2_output_inside_an_input_directory(tmp_path: Path) -> None:
    hf = tmp_path / "hf"
    hf.mkdir()
    (hf / "config.json").write_text("{}")
    with pytest.raises(UsageError, match="inside the input HF_DIR"):
        check_io(inputs={"HF_DIR": hf}, outputs={"--output": hf / "config.json"})
    check_io(inputs={"HF_DIR": hf}, outputs={"--output": hf / "new.ckpt"})  # a new file is fine


def test_item2_import_over_the_hf_directory(tmp_path: Path) -> None:
    pytest.importorskip("dyncli_hf")
    hf = tmp_path / "hf"
    hf.mkdir()
    (hf / "config.json").write_text('{"architectures": ["Wav2Vec2ForCTC"]}')
    (hf / "model.safetensors").write_bytes(b"weights")
    proc = subprocess.run(
        [sys.executable, "-m", "dyncli", "import", str(hf), "-o", str(hf / "model.safetensors")],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.strip().startswith("error: ") and "Traceback" not in proc.stderr
    assert (hf / "model.safetensors").read_bytes() == b"weights"


# --- item 3: special files ----------------------------------------------------------------------


def test_item3_symlink_is_followed_and_stays_a_link(tmp_path: Path) -> None:
    real = tmp_path / "real.json"
    real.write_text("old")
    link = tmp_path / "link.json"
    link.symlink_to(real)
    atomic_write_text(link, "new")
    assert link.is_symlink() and real.read_text() == "new"


def test_item3_mode_of_the_existing_file_is_kept(tmp_path: Path) -> None:
    secret = tmp_path / "secret.json"
    secret.write_text("old")
    secret.chmod(0o600)
    atomic_write_text(secret, "new")
    assert stat.S_IMODE(secret.stat().st_mode) == 0o600 and secret.read_text() == "new"


def test_item3_fifo_is_written_through(tmp_path: Path) -> None:
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    got: list[bytes] = []
    reader = threading.Thread(target=lambda: got.append(fifo.read_bytes()), daemon=True)
    reader.start()
    atomic_write_text(fifo, "through the pipe")
    reader.join(timeout=10)
    assert got == [b"through the pipe"]
    assert stat.S_ISFIFO(os.lstat(fifo).st_mode)
    assert not list(tmp_path.glob(".*.tmp"))


def test_item3_dev_fd_stream_is_written_through() -> None:
    read_fd, write_fd = os.pipe()
    try:
        atomic_write_text(f"/dev/fd/{write_fd}", "to the stream")
        os.close(write_fd)
        assert os.read(read_fd, 100) == b"to the stream"
    finally:
        os.close(read_fd)


def test_item3_json_to_an_fd_stream_prints(tiny_ckpt: Path) -> None:
    # /dev/fd/1 rather than /dev/stdout: the code this fixes, run as root, replaced the
    # machine's /dev/stdout symlink with a regular file.
    proc = subprocess.run(
        [sys.executable, "-m", "dyncli", "inspect", str(tiny_ckpt), "--json", "/dev/fd/1"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    assert '"backbone": "conformer"' in proc.stdout


# --- item 4: stale temporaries ----------------------------------------------------------------


def dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_item4_stale_temporaries_of_dead_processes_are_removed(tmp_path: Path) -> None:
    out = tmp_path / "model.ckpt"
    stale = tmp_path / f".model.ckpt.{dead_pid()}.abc123.tmp"
    stale.write_bytes(b"x" * 1000)
    alive = tmp_path / f".model.ckpt.{os.getppid()}.def456.tmp"  # a live process's write
    alive.write_bytes(b"y")
    other = tmp_path / f".other.ckpt.{dead_pid()}.abc.tmp"  # another output's: not ours to judge
    other.write_bytes(b"z")
    atomic_write_text(out, "new")
    assert not stale.exists() and alive.exists() and other.exists()
    assert out.read_text() == "new"


def test_item4_run_dir_temporaries_go_with_the_run_dir(tmp_path: Path) -> None:
    run = tmp_path / "r"
    claim_run_dir(run, tmp_path / "o.ckpt")
    (run / f".state.pt.{dead_pid()}.x1.tmp").write_bytes(b"partial")
    remove_run_dir(run)
    assert not run.exists()


# --- item 9 and 8c: prune resume ----------------------------------------------------------------


def test_item9_prune_resume_after_a_kill_before_the_first_state_save(
    tiny_ckpt: Path, data: Path, tmp_path: Path
) -> None:
    out = tmp_path / "p.ckpt"
    run = tmp_path / "p.ckpt.run"
    claim_run_dir(run, out)
    release_run_dir(run)
    (run / "round-1.run").mkdir()  # the round had started; no state.pt was written yet
    result = invoke_cli(
        "prune", tiny_ckpt, "--train", data, "--dev", data, "-o", out, "--keep", "2",
        "--max-steps", "1", "--threads", "1", "--resume",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert out.is_file() and not run.exists()


def test_item9_prune_without_resume_keeps_finished_rounds(
    tiny_ckpt: Path, data: Path, tmp_path: Path
) -> None:
    out = tmp_path / "p.ckpt"
    run = tmp_path / "p.ckpt.run"
    claim_run_dir(run, out)
    release_run_dir(run)
    shutil.copy(tiny_ckpt, run / "round-1.ckpt")
    result = invoke_cli(
        "prune", tiny_ckpt, "--train", data, "--dev", data, "-o", out, "--keep", "1",
        "--max-steps", "1", "--threads", "1",
    )  # fmt: skip
    assert result.exit_code == 2
    assert "--resume" in one_line_error(result)
    assert (run / "round-1.ckpt").read_bytes() == tiny_ckpt.read_bytes()


def test_item8c_prune_resume_message_names_the_removed_layer(
    tiny_ckpt: Path, data: Path, tmp_path: Path
) -> None:
    from dyncli.checkpoint import load_checkpoint, save_checkpoint
    from dyncli.recipes.prune import without_layer

    ckpt = load_checkpoint(tiny_ckpt)
    smaller = without_layer(ckpt.model, 1, ckpt.backbone, ckpt.config)
    ckpt.model = smaller
    ckpt.config = type(ckpt.config)(**{**vars(ckpt.config), "num_layers": 2})
    ckpt.provenance = {
        "kept_layers": [0, 2],
        "prune_rounds": [
            {"removed": 1, "removed_now": 1, "dev_wer_without": 1.0, "dev_wer_after": 1.0}
        ],
    }
    out = tmp_path / "p.ckpt"
    run = tmp_path / "p.ckpt.run"
    claim_run_dir(run, out)
    release_run_dir(run)
    save_checkpoint(run / "round-1.ckpt", ckpt)
    result = invoke_cli(
        "prune", tiny_ckpt, "--train", data, "--dev", data, "-o", out, "--keep", "2",
        "--threads", "1", "--resume",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "removed layer 2 of the original" in result.output


# --- item 11: every output checked before work ------------------------------------------------


@pytest.mark.parametrize("flag", ["--json", "--plot"])
def test_item11_proc_paths_are_refused_up_front(tiny_ckpt: Path, data: Path, flag: str) -> None:
    result = invoke_cli("profile", tiny_ckpt, "--data", data, flag, "/proc/self/dyncli.out")
    assert result.exit_code == 2
    assert "kernel file system" in one_line_error(result)


def test_item11_run_dir_that_is_a_file(data: Path, tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("x")
    result = train(data, tmp_path / "m.ckpt", "--run-dir", blocker)
    assert result.exit_code == 2
    assert "not a directory" in one_line_error(result)
    assert blocker.read_text() == "x"


def test_item11_read_only_run_dir(data: Path, tmp_path: Path, monkeypatch) -> None:
    locked = tmp_path / "locked"
    locked.mkdir()
    real_access = os.access

    def access(path, mode, **kwargs):  # tests run as root: simulate a read-only directory
        if Path(path) == locked and mode & os.W_OK:
            return False
        return real_access(path, mode, **kwargs)

    monkeypatch.setattr(os, "access", access)
    result = train(data, tmp_path / "m.ckpt", "--run-dir", locked / "run")
    assert result.exit_code == 2
    assert "not writable" in one_line_error(result)


# --- item 15: an interrupt during a save --------------------------------------------------------


class _InterruptingFile:
    """A file object that receives SIGINT in the middle of being written (as a Ctrl-C would)."""

    def __init__(self, fh) -> None:
        self.fh = fh
        self.calls = 0

    def write(self, data) -> int:
        self.calls += 1
        if self.calls == 2:
            os.kill(os.getpid(), signal.SIGINT)
        return self.fh.write(data)

    def flush(self) -> None:
        self.fh.flush()


def test_item15_sigint_during_torch_save_keeps_the_old_file(tmp_path: Path) -> None:
    out = tmp_path / "model.ckpt"
    out.write_bytes(b"the old model")
    payload = {"w": torch.zeros(1000), "v": torch.ones(1000)}
    with pytest.raises(interrupted()):
        atomic_write(out, lambda fh: torch.save(payload, _InterruptingFile(fh)))  # type: ignore[arg-type]
    assert out.read_bytes() == b"the old model"
    assert [p.name for p in tmp_path.iterdir()] == ["model.ckpt"]


def test_item15_sigterm_exits_143() -> None:
    import typer

    from dyncli.cli.errors import guarded
    from dyncli.fileio import Interrupted

    def job() -> None:
        raise Interrupted(signal.SIGTERM)

    with pytest.raises(typer.Exit) as info:
        guarded(job)()
    assert info.value.exit_code == 143  # 128 + SIGTERM


def test_item15_sigint_exits_130() -> None:
    import typer

    from dyncli.cli.errors import guarded

    def job() -> None:
        raise KeyboardInterrupt

    with pytest.raises(typer.Exit) as info:
        guarded(job)()
    assert info.value.exit_code == 130


# --- found while probing: run directory edge cases ------------------------------------------------


def test_item1_run_dir_equal_to_the_output_is_refused(data: Path, tmp_path: Path) -> None:
    out = tmp_path / "x.ckpt"
    result = train(data, out, "--run-dir", out)
    assert result.exit_code == 2
    assert "is the --output path" in one_line_error(result)
    assert not out.exists()


def test_item1_a_run_that_fails_before_saving_leaves_no_run_dir(data: Path, tmp_path: Path) -> None:
    out = tmp_path / "x.ckpt"
    # --exits 3 on a 3-layer model fails after the run directory was claimed, before training.
    result = train(data, out, "--exits", "3")
    assert result.exit_code == 2
    assert not (tmp_path / "x.ckpt.run").exists()
    again = train(data, out)  # and the next run is not blocked by a stale lock or marker
    assert again.exit_code == 0, again.output


def test_item11_a_device_is_not_a_manifest(tiny_ckpt: Path) -> None:
    result = invoke_cli("evaluate", tiny_ckpt, "--data", "/dev/null")
    assert result.exit_code == 2
    assert "not a regular file" in one_line_error(result)


def test_item2_report_onto_an_audio_file_the_manifest_lists(
    tiny_ckpt: Path, tmp_path: Path
) -> None:
    manifest = tone_manifest(tmp_path)
    wav = tmp_path / "u0.wav"
    before = wav.read_bytes()
    result = invoke_cli("evaluate", tiny_ckpt, "--data", manifest, "--json", wav)
    assert result.exit_code == 2
    assert "is the input --data audio" in one_line_error(result)
    assert wav.read_bytes() == before


def test_item3_training_output_through_a_symlink_stays_a_link(data: Path, tmp_path: Path) -> None:
    real = tmp_path / "store" / "model.ckpt"
    real.parent.mkdir()
    real.write_bytes(b"old")
    real.chmod(0o640)
    link = tmp_path / "model.ckpt"
    link.symlink_to(real)
    result = train(data, link)
    assert result.exit_code == 0, result.output
    assert link.is_symlink() and real.stat().st_size > 1000
    assert stat.S_IMODE(real.stat().st_mode) == 0o640
