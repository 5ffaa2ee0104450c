"""Output paths are checked before a job starts; atomic writes never touch a directory."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from dyncli.errors import EXIT_USAGE, InputError, UsageError
from dyncli.fileio import atomic_path, atomic_write_text, check_output_path


def test_plain_file_path_is_accepted(tmp_path: Path) -> None:
    check_output_path(tmp_path / "report.json", "--json")
    existing = tmp_path / "old.json"
    existing.write_text("{}")
    check_output_path(existing, "--json")  # overwriting a file is fine
    check_output_path(str(tmp_path / "x.json"), "--json")


def test_stdout_only_where_allowed(tmp_path: Path) -> None:
    check_output_path("-", "--json", allow_stdout=True)
    with pytest.raises(UsageError, match=r"^--output -: .*give a file path$") as info:
        check_output_path("-", "--output")
    assert info.value.exit_code == EXIT_USAGE


def test_directory_is_refused(tmp_path: Path) -> None:
    with pytest.raises(UsageError) as info:
        check_output_path(tmp_path, "--json")
    assert str(info.value) == f"--json {tmp_path}: is a directory; give a file path"
    assert info.value.exit_code == EXIT_USAGE


def test_missing_parent_is_created(tmp_path: Path) -> None:
    target = tmp_path / "a" / "b" / "report.json"
    check_output_path(target, "--json")
    assert target.parent.is_dir() and not target.exists()


@pytest.mark.parametrize("depth", [0, 2], ids=["parent-is-file", "ancestor-is-file"])
def test_parent_that_cannot_be_created_is_refused(tmp_path: Path, depth: int) -> None:
    blocker = tmp_path / "file.txt"
    blocker.write_text("not a directory")
    target = blocker.joinpath(*["sub"] * depth, "out.json")
    with pytest.raises(UsageError) as info:
        check_output_path(target, "-o")
    where = "" if depth == 0 else f"cannot create {target.parent}: "
    assert str(info.value) == f"-o {target}: {where}{blocker} is not a directory"
    assert blocker.read_text() == "not a directory"


def test_unwritable_parent_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Tests run as root, for whom every directory is writable: simulate a read-only one.
    locked = tmp_path / "locked"
    locked.mkdir()
    real_access = os.access

    def access(path: str | os.PathLike[str], mode: int, **kwargs: object) -> bool:
        if Path(path) == locked and mode & os.W_OK:
            return False
        return real_access(path, mode)

    monkeypatch.setattr(os, "access", access)
    with pytest.raises(UsageError) as info:
        check_output_path(locked / "out.json", "--csv")
    assert str(info.value) == f"--csv {locked / 'out.json'}: directory {locked} is not writable"


def test_empty_path_is_refused() -> None:
    with pytest.raises(UsageError, match="empty path"):
        check_output_path("", "--json")


def test_atomic_path_refuses_a_directory(tmp_path: Path) -> None:
    target = tmp_path / "out"
    target.mkdir()
    with pytest.raises(InputError, match="is a directory"), atomic_path(target):
        pytest.fail("atomic_path yielded for a directory")
    assert target.is_dir() and list(target.iterdir()) == []
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]  # no stray temporary file


def test_atomic_write_replaces_and_cleans_up(tmp_path: Path) -> None:
    target = tmp_path / "deep" / "r.txt"
    atomic_write_text(target, "one")
    atomic_write_text(target, "two")
    assert target.read_text() == "two"
    assert sorted(p.name for p in target.parent.iterdir()) == ["r.txt"]
    with pytest.raises(RuntimeError), atomic_path(target) as tmp:
        tmp.write_text("half")
        raise RuntimeError("interrupted")
    assert target.read_text() == "two"
    assert sorted(p.name for p in target.parent.iterdir()) == ["r.txt"]
