"""Skip policies: policy-off equals static, compaction equals a per-utterance reference,
batch equals single, sweeps equal separate runs, bad thresholds are refused."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from dyncli.data.dataset import pad_waves
from dyncli.dynamic import build_policy, run_policy
from dyncli.errors import UsageError
from dyncli.methods.blank_skip import BlankSkipConfig
from dyncli.methods.blank_skip.policy import BlankSkip, keep_mask
from dyncli.methods.early_exit import EarlyExitConfig
from dyncli.methods.early_exit.policy import EarlyExit, exit_confidence
from dyncli.methods.static import StaticPolicy
from dyncli.models.config import CONFORMER_PRESETS
from dyncli.models.conformer import build_conformer_ctc

LENGTHS = (8000, 5600, 12000, 4000)


@pytest.fixture(scope="module")
def model() -> torch.nn.Module:
    torch.manual_seed(0)
    cfg = dataclasses.replace(CONFORMER_PRESETS["tiny"], num_layers=4)
    m = build_conformer_ctc(cfg, 12).eval()
    m.attach_exits([1, 2])
    with torch.no_grad():  # a blank-heavy exit, as a trained CTC head is
        m.exit_heads["2"].bias[0] += 2.5
    return m


@pytest.fixture(scope="module")
def waves() -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(1)
    return [torch.randn(n, generator=gen) * 0.1 for n in LENGTHS]


def _single(model, policy, wave):
    return run_policy(model, policy, wave[None], torch.tensor([wave.shape[0]]))


def _close_on_true_frames(batch_out, singles) -> None:
    for i, one in enumerate(singles):
        n = int(one.lengths[0])
        assert int(batch_out.lengths[i]) == n
        torch.testing.assert_close(batch_out.log_probs[i, :n], one.log_probs[0], atol=2e-5, rtol=0)
        assert torch.equal(batch_out.frame_layers[i, :n], one.frame_layers[0])


@torch.inference_mode()
def test_exit_heads_are_separate_modules(model) -> None:
    a, b = model.exit_heads["1"], model.exit_heads["2"]
    assert a is not b and a.weight.data_ptr() != b.weight.data_ptr()
    assert a.weight.data_ptr() != model.head.weight.data_ptr()


@torch.inference_mode()
@pytest.mark.parametrize(
    "policy",
    [
        build_policy("blank-skip", 1.0, neighbours=0),  # P(blank) never reaches 1 here
        build_policy("early-exit-entropy", 0.0),  # no exit is perfectly certain
        build_policy("early-exit-posterior", 1.0),
    ],
    ids=["blank-skip", "entropy", "posterior"],
)
def test_policy_off_equals_static(model, waves, policy) -> None:
    for wave in waves:
        static = _single(model, StaticPolicy(), wave)
        dyn = _single(model, policy, wave)
        ref, _ = model(wave[None], torch.tensor([wave.shape[0]]))
        torch.testing.assert_close(static.log_probs, ref, atol=0, rtol=0)
        torch.testing.assert_close(dyn.log_probs, ref, atol=0, rtol=0)
        assert int(dyn.frame_layers.min()) == model.num_layers


@torch.inference_mode()
@pytest.mark.parametrize("neighbours", [0, 1, 3])
def test_blank_skip_compaction_equals_per_utterance_reference(model, waves, neighbours) -> None:
    """Reference: each utterance alone, the last layers run on only its kept frames."""
    policy = BlankSkip(BlankSkipConfig(threshold=0.7, layer=2, neighbours=neighbours))
    wave, lens = pad_waves(waves)
    out = run_policy(model, policy, wave, lens)
    skipped_some = False
    for i, w in enumerate(waves):
        feats, frames = model.features(w[None], torch.tensor([w.shape[0]]))
        x, n = model.embed(feats, frames)
        for layer in range(2):
            x = model.run_layer(layer, x, None)
        exit_lp = model.exit_log_probs(2, x)[0]
        keep = exit_lp[:, 0].exp() < 0.7
        if neighbours:
            idx = keep.nonzero().squeeze(1)
            grown = torch.zeros_like(keep)
            for j in idx.tolist():
                grown[max(0, j - neighbours) : j + neighbours + 1] = True
            keep = grown
        expected = exit_lp.clone()
        if keep.any():
            xs = x[:, keep]
            for layer in range(2, model.num_layers):
                xs = model.run_layer(layer, xs, None)
            expected[keep] = model.log_probs(xs)[0]
        skipped_some |= bool((~keep).any())
        t = int(n[0])
        torch.testing.assert_close(out.log_probs[i, :t], expected, atol=2e-5, rtol=0)
        layers = torch.where(keep, 4, 2)
        assert torch.equal(out.frame_layers[i, :t], layers)
    assert skipped_some, "the fixture should make the policy skip frames"


@torch.inference_mode()
@pytest.mark.parametrize(
    "policy",
    [
        BlankSkip(BlankSkipConfig(threshold=0.7, layer=2, neighbours=1)),
        BlankSkip(BlankSkipConfig(threshold=0.05, layer=1, neighbours=0)),  # everything skips
        EarlyExit(EarlyExitConfig(threshold=0.97, criterion="entropy")),
        EarlyExit(EarlyExitConfig(threshold=0.2, criterion="posterior")),
    ],
    ids=["blank-skip", "blank-skip-all", "entropy", "posterior"],
)
def test_batch_equals_single(model, waves, policy) -> None:
    wave, lens = pad_waves(waves)
    batch = run_policy(model, policy, wave, lens)
    _close_on_true_frames(batch, [_single(model, policy, w) for w in waves])


@torch.inference_mode()
def test_early_exit_mixes_exits_within_a_batch(model, waves) -> None:
    """Pick a threshold between utterances' confidences so some exit early and some do not."""
    feats, frames = model.features(*pad_waves(waves))
    x, n = model.embed(feats, frames)
    h = x
    for layer in range(1):
        h = model.run_layer(layer, h, torch.arange(h.shape[1])[None] >= n[:, None])
    conf = exit_confidence(model.exit_log_probs(1, h), n, "entropy")
    th = float(conf.sort().values[1:3].mean())
    policy = build_policy("early-exit-entropy", th)
    out = policy.encode(model, x, n)
    first = out.frame_layers[:, 0]
    assert set(first.tolist()) >= {1}
    assert first.max() > 1
    _close_on_true_frames(out, [_single(model, policy, w) for w in waves])


@torch.inference_mode()
@pytest.mark.parametrize("name", ["blank-skip", "early-exit-entropy", "early-exit-posterior"])
def test_sweep_equals_separate_runs(model, waves, name) -> None:
    thresholds = {
        "blank-skip": [0.5, 0.7, 0.9, 1.0],
        "early-exit-entropy": [0.0, 0.5, 0.9, 0.97],
        "early-exit-posterior": [1.0, 0.5, 0.2],
    }[name]
    for wave in waves:
        feats, frames = model.features(wave[None], torch.tensor([wave.shape[0]]))
        x, n = model.embed(feats, frames)
        swept = build_policy(name, 0.5).sweep(model, x, n, thresholds)
        for th, got in zip(thresholds, swept, strict=True):
            alone = build_policy(name, th).encode(model, x, n)
            torch.testing.assert_close(got.log_probs, alone.log_probs, atol=0, rtol=0)
            assert torch.equal(got.frame_layers, alone.frame_layers)
            assert got.trace == alone.trace


@torch.inference_mode()
def test_skipped_frames_are_not_computed(model, waves) -> None:
    """The trace (what FLOPs are counted from) shows the last layers on kept frames only."""
    policy = BlankSkip(BlankSkipConfig(threshold=0.7, layer=2, neighbours=0))
    out = _single(model, policy, waves[2])
    total = int(out.lengths[0])
    kept = int((out.frame_layers[0] == 4).sum())
    assert 0 < kept < total
    assert [s for s in out.trace if s[0] == "layer" and s[1] >= 2] == [
        ("layer", 2, [kept]),
        ("layer", 3, [kept]),
    ]


@torch.inference_mode()
def test_batched_blank_skip_leaves_frame_counts_on_the_device(model, waves) -> None:
    """In a padded batch the suffix's per-utterance counts stay a device tensor in the raw
    trace (reading them would stall a GPU mid-pass); ``trace`` reads them once, as lists."""
    wave, lengths = pad_waves(waves)
    policy = BlankSkip(BlankSkipConfig(threshold=0.7, layer=2, neighbours=1))
    out = run_policy(model, policy, wave, lengths)
    deferred = [s for s in out.raw_trace if isinstance(s[2], torch.Tensor)]
    assert [s[:2] for s in deferred] == [("layer", 2), ("layer", 3), ("head", 4)]
    kept = [int((out.frame_layers[i] == 4).sum()) for i in range(len(waves))]
    assert [s for s in out.trace if s[0] == "layer" and s[1] >= 2] == [
        ("layer", 2, kept),
        ("layer", 3, kept),
    ]
    nothing = keep_mask(torch.zeros(1, 6, 3), torch.tensor([6]), 0.5, 2)  # P(blank) = 1
    assert not bool(nothing.any())


@pytest.mark.parametrize(
    ("name", "threshold"),
    [
        ("blank-skip", 0.0),
        ("blank-skip", 1.5),
        ("blank-skip", -0.1),
        ("early-exit-entropy", 1.2),
        ("early-exit-posterior", -0.5),
    ],
)
def test_out_of_range_thresholds_are_refused(name, threshold) -> None:
    with pytest.raises(UsageError, match="out of range"):
        build_policy(name, threshold)


def test_unknown_policy_is_refused() -> None:
    with pytest.raises(UsageError, match="unknown skip policy 'layer-magic'; choose one of"):
        build_policy("layer-magic", 0.5)


def test_blank_skip_needs_a_head_at_its_layer(model) -> None:
    with pytest.raises(UsageError, match="blank-skip layer 3 has no CTC head"):
        BlankSkip(BlankSkipConfig(layer=3)).check(model)


def test_confidence_criteria() -> None:
    """Entropy is 0 for one-hot and 1 for uniform posteriors; the posterior score ignores
    confident blank frames and looks at the frames that emit tokens."""
    v = 5
    uniform = torch.full((1, 4, v), 1.0 / v).log()
    onehot = torch.full((1, 4, v), 1e-9)
    onehot[..., 0] = 1.0
    onehot = onehot / onehot.sum(-1, keepdim=True)
    lengths = torch.tensor([4])
    ent_u = exit_confidence(uniform, lengths, "entropy")
    ent_o = exit_confidence(onehot.log(), lengths, "entropy")
    assert abs(float(ent_u) - 1.0) < 1e-5 and float(ent_o) < 1e-3
    probs = torch.zeros(1, 4, v)
    probs[0, :3, 0] = 1.0  # three certain blanks
    probs[0, 3] = torch.tensor([0.1, 0.6, 0.1, 0.1, 0.1])  # one uncertain token
    post = exit_confidence(probs.clamp_min(1e-12).log(), lengths, "posterior")
    assert abs(float(post) - 0.6) < 1e-4  # not (3 * 1.0 + 0.6) / 4
    # padding is ignored
    padded = torch.cat([probs, uniform.exp()], dim=1).clamp_min(1e-12).log()
    assert abs(float(exit_confidence(padded, lengths, "posterior")) - 0.6) < 1e-4


@pytest.mark.parametrize("batched", [False, True])
@torch.inference_mode()
def test_bucketed_compaction_equals_exact(model, waves, batched: bool) -> None:
    """Padding the compacted width up to a bucket (for per-bucket CUDA graphs) changes no
    output; the trace counts the padded width, the work that ran."""
    picked = waves if batched else waves[2:3]
    wave, lengths = pad_waves(picked)
    exact = BlankSkip(BlankSkipConfig(threshold=0.7, layer=2, neighbours=0))
    padded = BlankSkip(BlankSkipConfig(threshold=0.7, layer=2, neighbours=0, bucket=16))
    a, b = run_policy(model, exact, wave, lengths), run_policy(model, padded, wave, lengths)
    for i, n in enumerate(a.lengths.tolist()):
        torch.testing.assert_close(b.log_probs[i, :n], a.log_probs[i, :n], atol=2e-5, rtol=1e-4)
    assert torch.equal(a.frame_layers, b.frame_layers)
    kept = max(int((a.frame_layers[i] == 4).sum()) for i in range(len(picked)))
    width = min(-(-kept // 16) * 16, a.log_probs.shape[1])
    assert [s[2] for s in b.trace if s[0] == "layer" and s[1] == 3] == [[width] * len(picked)]
    with pytest.raises(UsageError, match="bucket must be >= 0"):
        BlankSkip(BlankSkipConfig(bucket=-1))


@pytest.mark.parametrize("criterion", ["entropy", "posterior"])
def test_the_batch_one_confidence_equals_the_masked_one(criterion: str) -> None:
    """One unpadded utterance takes a shorter path; it gives the figure the masked path gives
    (checked here by padding the same utterance into a batch of two)."""
    torch.manual_seed(0)
    one = torch.randn(1, 9, 6).log_softmax(-1)
    other = torch.randn(1, 9, 6).log_softmax(-1)
    fast = exit_confidence(one, torch.tensor([9]), criterion)
    masked = exit_confidence(torch.cat([one, other]), torch.tensor([9, 5]), criterion)[:1]
    assert fast.shape == (1,) and torch.allclose(fast, masked, atol=1e-6)
    blanks = torch.full((1, 4, 6), -30.0)
    blanks[..., 0] = 0.0  # every frame a certain blank: the posterior of all frames
    fast = exit_confidence(blanks, torch.tensor([4]), criterion)
    masked = exit_confidence(torch.cat([blanks, other[:, :4]]), torch.tensor([4, 2]), criterion)
    assert torch.allclose(fast, masked[:1], atol=1e-6)
