"""Training pieces: CTC on true lengths, augmentation determinism, LR schedule."""

from __future__ import annotations

import torch

from dyncli.models.components import LogMelFrontend, warp_frequency
from dyncli.models.config import FrontendConfig
from dyncli.training import TrainConfig, ctc_loss
from dyncli.training.augment import AugmentConfig, perturb_waves, spec_augment, speed_perturb
from dyncli.training.trainer import lr_lambda


def test_ctc_loss_uses_true_lengths_not_padding() -> None:
    torch.manual_seed(0)
    a = torch.randn(1, 12, 6).log_softmax(-1)
    b = torch.randn(1, 20, 6).log_softmax(-1)
    padded = torch.zeros(2, 20, 6)
    padded[0, :12], padded[1] = a[0], b[0]
    padded[0, 12:] = torch.randn(8, 6).log_softmax(-1)  # garbage in the padding
    targets = [[1, 2, 3], [4, 5]]
    batch = ctc_loss(padded, torch.tensor([12, 20]), targets)
    single = (
        ctc_loss(a, torch.tensor([12]), targets[:1]) + ctc_loss(b, torch.tensor([20]), targets[1:])
    ) / 2
    torch.testing.assert_close(batch, single)


def test_augmentation_is_seeded_and_finite() -> None:
    cfg = AugmentConfig()
    waves = [torch.randn(4000) * 0.1, torch.randn(6000) * 0.1]
    one = perturb_waves(waves, cfg, torch.Generator().manual_seed(3))
    two = perturb_waves(waves, cfg, torch.Generator().manual_seed(3))
    for x, y in zip(one, two, strict=True):
        torch.testing.assert_close(x, y)
        assert torch.isfinite(x).all() and x.abs().max() <= 1.0 + 1e-6
    feats = torch.randn(2, 50, 40)
    masked = spec_augment(feats, torch.tensor([50, 30]), cfg, torch.Generator().manual_seed(0))
    assert masked.shape == feats.shape and (masked == 0).any()


def test_augmentation_ramp() -> None:
    cfg = AugmentConfig(ramp_steps=100)
    assert cfg.probability(0) == 0.01
    assert cfg.probability(49) == 0.5
    assert cfg.probability(99) == cfg.probability(5000) == 1.0
    assert AugmentConfig(ramp_steps=0).probability(0) == 1.0
    waves = [torch.randn(4000) * 0.1 for _ in range(4)]
    untouched = perturb_waves(waves, cfg, torch.Generator().manual_seed(0), prob=0.0)
    assert all(a is b for a, b in zip(untouched, waves, strict=True))


def test_speed_perturb_changes_duration() -> None:
    wave = torch.randn(8000)
    assert abs(speed_perturb(wave, 1.25).shape[0] - 6400) <= 2
    assert speed_perturb(wave, 1.0) is wave


def test_frequency_warp_moves_energy() -> None:
    spec = torch.zeros(1, 129, 3)
    spec[0, 40] = 1.0
    up = warp_frequency(spec, torch.tensor([1.1]))
    assert int(up[0, :, 0].argmax()) == 44
    same = warp_frequency(spec, torch.tensor([1.0]))
    torch.testing.assert_close(same, spec)


def test_front_end_warp_only_when_asked() -> None:
    fe = LogMelFrontend(FrontendConfig())
    wave = torch.randn(1, 4000) * 0.1
    plain, _ = fe(wave, torch.tensor([4000]))
    warped, _ = fe(wave, torch.tensor([4000]), warp=torch.tensor([0.9]))
    assert not torch.allclose(plain, warped)


def test_lr_schedule_warms_up_then_decays() -> None:
    cfg = TrainConfig(warmup_steps=10, min_lr_ratio=0.1)
    f = lr_lambda(cfg, total=100)
    assert f(0) < f(5) < f(9) <= 1.0
    assert f(50) < f(10)
    assert abs(f(100) - 0.1) < 1e-6
