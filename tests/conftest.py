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


@pytest.fixture(scope="session")
def tiny_ckpt(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny randomly initialised Conformer CTC checkpoint (char tokenizer)."""
    import torch

    from dyncli.checkpoint import Checkpoint, save_checkpoint
    from dyncli.models.config import CONFORMER_PRESETS
    from dyncli.models.conformer import build_conformer_ctc
    from dyncli.text import CharTokenizer

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
