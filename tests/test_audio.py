"""Audio reading: resampling, downmix, bad files."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from dyncli.data.audio import load_audio
from dyncli.data.dataset import Utterance, load_utterances, pad_waves
from dyncli.data.manifest import read_manifest
from dyncli.data.sampler import bucket_batches
from dyncli.errors import InputError
from tests.conftest import write_wav


def test_resamples_to_model_rate(tmp_path: Path) -> None:
    wav = write_wav(tmp_path / "x.wav", seconds=0.5, rate=16000, freq=1000.0)
    wave = load_audio(wav, 8000)
    assert wave.dtype == torch.float32 and wave.ndim == 1
    assert wave.shape[0] == 4000
    # The 1 kHz tone survives: its spectral peak is at 1 kHz.
    spectrum = torch.fft.rfft(wave).abs()
    assert abs(int(spectrum.argmax()) * 8000 / 4000 - 1000) <= 4


def test_stereo_is_downmixed_with_warning(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    import dyncli.data.audio

    dyncli.data.audio._warned_stereo = False
    wav = write_wav(tmp_path / "s.wav", channels=2)
    with caplog.at_level(logging.WARNING, logger="dyncli"):
        wave = load_audio(wav, 8000)
    assert wave.ndim == 1
    assert "downmixed" in caplog.text


def test_bad_audio(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="not found"):
        load_audio(tmp_path / "none.wav", 8000)
    junk = tmp_path / "junk.wav"
    junk.write_bytes(b"RIFF0000WAVEjunk" * 4)
    with pytest.raises(InputError, match="unreadable audio"):
        load_audio(junk, 8000)
    empty = tmp_path / "empty.wav"
    sf.write(str(empty), np.zeros(0, dtype=np.float32), 8000)
    with pytest.raises(InputError, match="empty"):
        load_audio(empty, 8000)


def test_load_utterances_names_line_and_skips(tmp_path: Path) -> None:
    write_wav(tmp_path / "ok.wav")
    (tmp_path / "junk.wav").write_bytes(b"not audio")
    m = tmp_path / "m.tsv"
    m.write_text("ok.wav\tone\njunk.wav\ttwo\n")
    with pytest.raises(InputError, match=r"m\.tsv:2"):
        load_utterances(read_manifest(m), 8000)
    utts, skipped = load_utterances(read_manifest(m), 8000, skip_bad=True)
    assert len(utts) == 1 and len(skipped) == 1


def test_bucket_batches_respect_limits_and_cover_all() -> None:
    lengths = [5, 50, 7, 48, 6, 49, 100]
    import random

    batches = bucket_batches(
        lengths, max_batch_frames=100, max_batch_size=3, shuffle=True, rng=random.Random(1)
    )
    assert sorted(i for b in batches for i in b) == list(range(len(lengths)))
    for b in batches:
        assert len(b) <= 3
        assert len(b) == 1 or len(b) * max(lengths[i] for i in b) <= 100
        # bucketed: a batch never mixes the shortest and the longest utterances
        assert max(lengths[i] for i in b) - min(lengths[i] for i in b) <= 45


def test_pad_waves() -> None:
    batch, lens = pad_waves([torch.ones(3), torch.ones(5)])
    assert batch.shape == (2, 5) and lens.tolist() == [3, 5]
    assert batch[0, 3:].abs().sum() == 0
    assert Utterance(torch.ones(4), "x", "o").samples == 4


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf], ids=["nan", "inf", "-inf"])
def test_nan_or_inf_samples_are_refused(tmp_path: Path, bad: float) -> None:
    samples = np.full(4000, 0.1, dtype=np.float32)
    samples[1234] = bad
    wav = tmp_path / "bad.wav"
    sf.write(str(wav), samples, 8000, subtype="FLOAT")
    assert not np.isfinite(sf.read(str(wav), dtype="float32")[0]).all()  # stored as written
    with pytest.raises(InputError) as info:
        load_audio(wav, 8000)
    assert str(info.value) == f"{wav}: audio holds NaN/inf samples"
    with pytest.raises(InputError, match="NaN/inf"):
        load_audio(wav, 16000)  # refused before resampling spreads it


def test_nan_audio_is_skipped_with_skip_bad(tmp_path: Path) -> None:
    write_wav(tmp_path / "ok.wav")
    samples = np.zeros((4000, 2), dtype=np.float32)
    samples[10, 1] = np.nan  # one bad sample in one channel of a stereo file
    sf.write(str(tmp_path / "nan.wav"), samples, 8000, subtype="FLOAT")
    m = tmp_path / "m.tsv"
    m.write_text("ok.wav\tone\nnan.wav\ttwo\n")
    with pytest.raises(InputError, match=r"m\.tsv:2: .*nan\.wav: audio holds NaN/inf samples"):
        load_utterances(read_manifest(m), 8000)
    utts, skipped = load_utterances(read_manifest(m), 8000, skip_bad=True)
    assert [u.text for u in utts] == ["one"]
    assert len(skipped) == 1 and "nan.wav: audio holds NaN/inf samples" in skipped[0]
