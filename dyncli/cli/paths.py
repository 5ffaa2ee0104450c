"""One check of a command's files before it does any work.

Every command states its inputs and outputs here; :func:`check_paths` refuses, with one line,
an output that cannot be written (:func:`dyncli.fileio.check_output_path`), an output that is
an input or another output (:func:`dyncli.fileio.check_io`), and a run directory dyncli may not
use (:func:`dyncli.training.rundir.check_run_dir`).
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from pathlib import Path

PathOrNone = str | os.PathLike[str] | Iterable[str | os.PathLike[str]] | None


def check_paths(
    *,
    inputs: Mapping[str, PathOrNone],
    outputs: Mapping[str, str | os.PathLike[str] | None],
    streams: Iterable[str] = (),
    run_dir: str | os.PathLike[str] | None = None,
    output_for_run_dir: str | os.PathLike[str] | None = None,
    manifests: Iterable[str] = (),
) -> None:
    """Check ``outputs`` (flag -> path) against ``inputs`` and each other, before any work.

    Flags in ``streams`` may name stdout (``-``, ``/dev/stdout``) or another special file.
    With ``output_for_run_dir`` (a training command's ``--output``), the run directory
    (``run_dir``, or the default ``OUTPUT.run``) is checked too. The inputs named in
    ``manifests`` are manifests: the audio files they list are inputs as well.
    """
    from dyncli.errors import UsageError
    from dyncli.fileio import check_io, check_output_path, resolve

    stream_flags = set(streams)
    for flag, path in outputs.items():
        if path is not None:
            check_output_path(path, flag, allow_stdout=flag in stream_flags)
    if any(path is not None for path in outputs.values()):
        inputs = {**inputs, **_listed_audio(inputs, manifests)}
    check_io(inputs=inputs, outputs=outputs)
    if output_for_run_dir is not None:
        from dyncli.training.rundir import check_run_dir
        from dyncli.training.trainer import default_run_dir

        directory = (
            Path(run_dir) if run_dir is not None else default_run_dir(os.fspath(output_for_run_dir))
        )
        if resolve(directory) == resolve(output_for_run_dir):
            raise UsageError(
                f"--run-dir {directory}: is the --output path; give the run directory its own "
                "path (default: OUTPUT.run)"
            )
        check_run_dir(directory, output=output_for_run_dir)
        check_io(inputs=inputs, outputs={"--run-dir": directory})


def _listed_audio(
    inputs: Mapping[str, PathOrNone], manifests: Iterable[str]
) -> dict[str, list[Path]]:
    """The audio files each manifest in ``inputs`` lists, keyed ``FLAG audio``. A manifest that
    cannot be read adds nothing here: reading it for the job reports the problem."""
    from dyncli.data.manifest import read_manifest
    from dyncli.errors import DyncliError

    out: dict[str, list[Path]] = {}
    for flag in manifests:
        path = inputs.get(flag)
        if path is None or not isinstance(path, str | os.PathLike):
            continue
        try:
            manifest = read_manifest(os.fspath(path), skip_bad=True)
        except DyncliError:
            continue
        out[f"{flag} audio"] = [item.audio for item in manifest.items]
    return out


def check_training_paths(
    *,
    output: str | os.PathLike[str],
    run_dir: str | os.PathLike[str] | None,
    train: str | os.PathLike[str],
    dev: str | os.PathLike[str],
    **checkpoints: str | os.PathLike[str] | None,
) -> None:
    """:func:`check_paths` for a training command: ``--output`` and the run directory against
    the manifests (and the audio they list) and the checkpoints it reads (keyword = flag:
    ``CHECKPOINT=...``, ``teacher=...`` for ``--teacher``)."""
    inputs: dict[str, PathOrNone] = {
        (name if name.isupper() else f"--{name}"): path for name, path in checkpoints.items()
    }
    check_paths(
        inputs={**inputs, "--train": train, "--dev": dev},
        outputs={"--output": output},
        run_dir=run_dir,
        output_for_run_dir=output,
        manifests=["--train", "--dev"],
    )
