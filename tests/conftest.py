from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

WORDS = ["one", "two", "three"]


def tone(seconds: float, rate: int = 8000, freq: float = 440.0, channels: int = 1) -> np.ndarray:
    t = np.arange(int(seconds * rate)) / rate
    mono = (0.3 * np.sin(2 * math.pi * freq * t)).astype(np.float32)
    return mono if channels == 1 else np.stack([mono] * channels, axis=1)


def write_wav(
    path: Path, seconds: float = 0.6, rate: int = 8000, freq: float = 440.0, channels: int = 1
) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(str(path), tone(seconds, rate, freq, channels), rate)
    return path


def tone_manifest(root: Path, count: int = 4) -> Path:
    """A JSONL manifest of ``count`` short tones with one to three words each (for tests that
    train or profile a tiny model on a few utterances)."""
    import json

    rows = []
    for i in range(count):
        write_wav(root / f"u{i}.wav", seconds=0.5 + 0.1 * i, freq=300 + 80 * i)
        rows.append({"audio_filepath": f"u{i}.wav", "text": " ".join(WORDS[: 1 + i % 3])})
    manifest = root / "m.jsonl"
    manifest.write_text("\n".join(json.dumps(r) for r in rows))
    return manifest


@pytest.fixture(scope="session")
def tiny_ckpt(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny randomly initialised Conformer CTC checkpoint (char tokenizer)."""
    import torch

    from dyncli.checkpoint import Checkpoint, save_checkpoint
    from dyncli.data.text import CharTokenizer
    from dyncli.models.config import CONFORMER_PRESETS
    from dyncli.models.conformer import build_conformer_ctc

    torch.manual_seed(0)
    tok = CharTokenizer.train(["one two three four five six seven eight nine zero"])
    cfg = CONFORMER_PRESETS["tiny"]
    model = build_conformer_ctc(cfg, tok.vocab_size).eval()
    path = tmp_path_factory.mktemp("ckpt") / "tiny.ckpt"
    save_checkpoint(
        path,
        Checkpoint(
            model=model, tokenizer=tok, backbone="conformer", config=cfg, metrics={"dev_wer": 1.0}
        ),
    )
    return path


# Commands that take --device. Tests mean the CPU unless they say otherwise: the suite gives the
# same results on a machine with CUDA (where 'auto' would pick the GPU).
DEVICE_COMMANDS = {"train", "convert", "distill", "prune", "evaluate", "profile", "transcribe"}


def cpu_args(args: list[str]) -> list[str]:
    """``args`` plus ``--device cpu`` for a command that takes --device and was given none."""
    if args and args[0] in DEVICE_COMMANDS and not any(a.startswith("--device") for a in args):
        return [*args, "--device", "cpu"]
    return args


def invoke_cli(*args: object, **kwargs: object):
    """Run the dyncli app in-process (CliRunner) on the CPU unless ``--device`` is given."""
    from typer.testing import CliRunner

    from dyncli.cli.app import build_app

    return CliRunner().invoke(build_app(), cpu_args([str(a) for a in args]), **kwargs)  # type: ignore[arg-type]
