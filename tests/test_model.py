"""Model shapes, padding invariance, and the checkpoint round trip."""

from __future__ import annotations

import io
import pickle
import zipfile
from pathlib import Path

import pytest
import torch

from dyncli.checkpoint import Checkpoint, load_checkpoint, read_payload, save_checkpoint
from dyncli.data.text import CharTokenizer
from dyncli.errors import CheckpointError, JobFailed
from dyncli.models.components import LogMelFrontend
from dyncli.models.config import CONFORMER_PRESETS, FrontendConfig
from dyncli.models.conformer import Conv2dSubsampling, build_conformer_ctc

CFG = CONFORMER_PRESETS["tiny"]


def tiny(vocab: int = 7, seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    model = build_conformer_ctc(CFG, vocab).eval()
    # Non-trivial batch-norm statistics, so the test would notice them being misused.
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm1d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
    return model


def test_shapes() -> None:
    model = tiny(vocab=7)
    wave = torch.randn(2, 8000) * 0.1
    lengths = torch.tensor([8000, 5000])
    log_probs, out_lens = model(wave, lengths)
    frames = 1 + (lengths - 256) // 80
    expected = Conv2dSubsampling.output_lengths(frames)
    assert out_lens.tolist() == expected.tolist()
    assert log_probs.shape == (2, int(expected.max()), 7)
    assert torch.allclose(log_probs.exp().sum(-1), torch.ones(2, log_probs.shape[1]), atol=1e-5)
    assert model.num_layers == CFG.num_layers


def test_front_end_frame_count_and_short_input() -> None:
    fe = LogMelFrontend(FrontendConfig(), min_frames=7)
    feats, frames = fe(torch.randn(1, 100), torch.tensor([100]))
    assert frames.tolist() == [7] and feats.shape == (1, 7, 40)
    assert torch.isfinite(feats).all()


def test_very_short_input_gives_one_frame() -> None:
    model = tiny()
    log_probs, lens = model(torch.randn(1, 10), torch.tensor([10]))
    assert lens.tolist() == [1] and log_probs.shape[1] == 1


@torch.inference_mode()
def test_batched_equals_single() -> None:
    model = tiny(vocab=9, seed=3)
    torch.manual_seed(1)
    waves = [torch.randn(n) * 0.1 for n in (3000, 8000, 5123)]
    batch = torch.zeros(3, 8000)
    for i, w in enumerate(waves):
        batch[i, : w.shape[0]] = w
    lengths = torch.tensor([w.shape[0] for w in waves])
    batched, lens = model(batch, lengths)
    for i, w in enumerate(waves):
        single, slen = model(w.unsqueeze(0), torch.tensor([w.shape[0]]))
        assert int(slen) == int(lens[i])
        torch.testing.assert_close(batched[i, : int(lens[i])], single[0], atol=1e-5, rtol=1e-4)


@torch.inference_mode()
def test_unmasked_convolution_would_leak() -> None:
    """Guard for the test above: without the mask, padding does change real frames."""
    from dyncli.models import conformer as mod

    model = tiny(vocab=9, seed=3)
    waves = [torch.randn(3000) * 0.1, torch.randn(8000) * 0.1]
    batch = torch.zeros(2, 8000)
    batch[0, :3000], batch[1] = waves[0], waves[1]
    original = mod._conv
    try:
        mod._conv = lambda layer, x, pad_mask, *w, train: original(layer, x, None, *w, train=train)
        batched, lens = model(batch, torch.tensor([3000, 8000]))
    finally:
        mod._conv = original
    single, _ = model(waves[0].unsqueeze(0), torch.tensor([3000]))
    assert not torch.allclose(batched[0, : int(lens[0])], single[0], atol=1e-5)


@torch.inference_mode()
@pytest.mark.parametrize("masked", [False, True])
def test_lean_inference_layer_equals_module_path(masked: bool) -> None:
    """The eval-mode fast path computes what torchaudio's modules (with our mask) compute."""
    from dyncli.models.conformer import conformer_layer, conformer_layer_reference, lean_weights

    model = tiny(vocab=9, seed=5)
    x = torch.randn(2, 23, CFG.d_model)
    pad = torch.arange(23)[None, :] >= torch.tensor([[23], [17]]) if masked else None
    for layer in model.layers:
        ref = conformer_layer_reference(layer, x, pad)
        got = conformer_layer(layer, x, pad, lean_weights(layer))
        keep = slice(None) if pad is None else ~pad
        torch.testing.assert_close(got[keep], ref[keep], atol=2e-5, rtol=1e-5)


def _module_path(model: torch.nn.Module, x: torch.Tensor, pad: torch.Tensor | None) -> list:
    from dyncli.models.conformer import conformer_layer_reference

    return [conformer_layer_reference(layer, x, pad) for layer in model.layers]


@pytest.mark.parametrize("masked", [False, True])
def test_traced_layers_equal_the_module_path_at_other_lengths(
    masked: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Under inference_mode run_layer goes through one trace per layer; traced at one length,
    it serves others (shapes stay symbolic), with and without a padding mask."""
    from dyncli.models import conformer as mod

    monkeypatch.delenv("DYNCLI_EAGER", raising=False)
    model = tiny(vocab=9, seed=6)
    for t in (23, 5, 40):
        x = torch.randn(2, t, CFG.d_model)
        pad = torch.arange(t)[None, :] >= torch.tensor([[t], [t - 3]]) if masked else None
        with torch.inference_mode():
            got = [model.run_layer(i, x, pad) for i in range(model.num_layers)]
        with torch.no_grad():
            refs = _module_path(model, x, pad)
        keep = slice(None) if pad is None else ~pad
        for g, r in zip(got, refs, strict=True):
            torch.testing.assert_close(g[keep], r[keep], atol=2e-5, rtol=1e-5)
    traces = mod.LEAN_TRACES._traces[model.layers[0]]
    key = (torch.device("cpu"), torch.float32, masked, frozenset())
    assert list(traces) == [key]
    assert traces[key] is not False


def test_inference_sees_weights_changed_in_place(monkeypatch: pytest.MonkeyPatch) -> None:
    """Prepared weights and traces are rebuilt or re-read when a parameter or a BatchNorm
    statistic changes in place (an optimizer step between two dev scorings)."""
    monkeypatch.delenv("DYNCLI_EAGER", raising=False)
    model = tiny(vocab=9, seed=7)
    x = torch.randn(1, 19, CFG.d_model)
    layer = model.layers[0]
    with torch.inference_mode():
        before = model.run_layer(0, x, None)
    with torch.no_grad():
        layer.ffn2.sequential[4].weight.mul_(1.5)  # a feed-forward projection
        layer.conv_module.sequential[3].running_mean.add_(0.25)  # folded into the kernel
    with torch.inference_mode():
        after = model.run_layer(0, x, None)
    with torch.no_grad():
        ref = _module_path(model, x, None)[0]
    assert not torch.allclose(before, after)
    torch.testing.assert_close(after, ref, atol=2e-5, rtol=1e-5)


def test_eval_forward_with_grad_reaches_the_parameters() -> None:
    """Outside no_grad the lean path prepares its weights on the fly, differentiably."""
    model = tiny(vocab=9, seed=8)
    x = torch.randn(1, 11, CFG.d_model)
    model.run_layer(0, x, None).sum().backward()
    layer = model.layers[0]
    for p in (layer.ffn1.sequential[1].weight, layer.conv_module.sequential[2].weight):
        assert p.grad is not None and p.grad.abs().sum() > 0


def test_a_failed_trace_or_dyncli_eager_runs_the_layer_eagerly(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from dyncli.models import conformer as mod

    def broken(*args: object, **kwargs: object) -> None:
        raise RuntimeError("no tracer here")

    x = torch.randn(1, 9, CFG.d_model)
    model = tiny(vocab=9, seed=9)
    with torch.no_grad():
        ref = _module_path(model, x, None)[0]
    monkeypatch.setattr(torch.jit, "trace", broken)
    with torch.inference_mode():
        torch.testing.assert_close(model.run_layer(0, x, None), ref, atol=2e-5, rtol=1e-5)
    assert mod.LEAN_TRACES._traces[model.layers[0]] == {
        (torch.device("cpu"), torch.float32, False, frozenset()): False
    }
    monkeypatch.setenv("DYNCLI_EAGER", "1")
    other = tiny(vocab=9, seed=9)
    with torch.inference_mode():
        torch.testing.assert_close(other.run_layer(0, x, None), ref, atol=2e-5, rtol=1e-5)
    assert other.layers[0] not in mod.LEAN_TRACES._traces


def _save_tiny(path: Path, half: bool = False) -> tuple[torch.nn.Module, CharTokenizer]:
    tok = CharTokenizer.train(["one two three"])
    model = tiny(vocab=tok.vocab_size)
    save_checkpoint(
        path,
        Checkpoint(
            model=model, tokenizer=tok, backbone="conformer", config=CFG, provenance={"seed": 1}
        ),
        half=half,
    )
    return model, tok


@torch.inference_mode()
def test_save_load_equality(tmp_path: Path) -> None:
    path = tmp_path / "m.ckpt"
    model, tok = _save_tiny(path)
    loaded = load_checkpoint(path)
    wave = torch.randn(1, 6000) * 0.1
    lengths = torch.tensor([6000])
    torch.testing.assert_close(
        model(wave, lengths)[0], loaded.model(wave, lengths)[0], atol=0, rtol=0
    )
    assert loaded.tokenizer.to_state() == tok.to_state()
    assert loaded.config == CFG and loaded.provenance == {"seed": 1}
    assert loaded.method is None


def test_half_storage_loads_as_float32(tmp_path: Path) -> None:
    path = tmp_path / "m16.ckpt"
    _save_tiny(path, half=True)
    loaded = load_checkpoint(path)
    assert loaded.dtype == "float16"
    assert all(p.dtype == torch.float32 for p in loaded.model.parameters())


def test_atomic_save_keeps_old_file_on_failure(tmp_path: Path, monkeypatch) -> None:
    path = tmp_path / "m.ckpt"
    _save_tiny(path)
    before = path.read_bytes()

    def boom(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", boom)
    with pytest.raises(JobFailed, match="cannot write .*disk full; the old file is left"):
        _save_tiny(path)
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["m.ckpt"]


def test_refuses_truncated(tmp_path: Path) -> None:
    path = tmp_path / "m.ckpt"
    _save_tiny(path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="truncated"):
        load_checkpoint(path)


def test_refuses_foreign_torch_file(tmp_path: Path) -> None:
    path = tmp_path / "foreign.pt"
    torch.save({"model": {"w": torch.zeros(2)}}, path)
    with pytest.raises(CheckpointError, match="not a dyncli checkpoint"):
        load_checkpoint(path)
    text = tmp_path / "notes.txt"
    text.write_text("hello")
    with pytest.raises(CheckpointError, match="not a readable checkpoint"):
        load_checkpoint(text)


class _Evil:
    def __reduce__(self):
        return (Path.touch, (Path("/tmp/dyncli-evil-marker"),))


def test_refuses_pickled_code_without_running_it(tmp_path: Path) -> None:
    marker = Path("/tmp/dyncli-evil-marker")
    marker.unlink(missing_ok=True)
    path = tmp_path / "evil.ckpt"
    torch.save({"format": "dyncli-checkpoint", "payload": _Evil()}, path)
    with pytest.raises(CheckpointError, match="pickled"):
        load_checkpoint(path)
    assert not marker.exists()
    # A raw pickle (not a torch zip archive) is refused too.
    raw = tmp_path / "raw.ckpt"
    raw.write_bytes(pickle.dumps({"x": 1}))
    with pytest.raises(CheckpointError):
        load_checkpoint(raw)


def test_refuses_newer_format_and_mismatched_weights(tmp_path: Path) -> None:
    path = tmp_path / "m.ckpt"
    _save_tiny(path)
    payload = read_payload(path)
    newer = dict(payload, format_version=99)
    torch.save(newer, tmp_path / "new.ckpt")
    with pytest.raises(CheckpointError, match="newer"):
        load_checkpoint(tmp_path / "new.ckpt")
    broken = dict(payload, config={**payload["config"], "num_layers": 5})
    torch.save(broken, tmp_path / "broken.ckpt")
    with pytest.raises(CheckpointError, match="do not match"):
        load_checkpoint(tmp_path / "broken.ckpt")
    odd = dict(payload, backbone="nonexistent")
    torch.save(odd, tmp_path / "odd.ckpt")
    with pytest.raises(CheckpointError, match="unknown backbone"):
        load_checkpoint(tmp_path / "odd.ckpt")


def test_archive_is_a_plain_zip(tmp_path: Path) -> None:
    path = tmp_path / "m.ckpt"
    _save_tiny(path)
    assert zipfile.is_zipfile(io.BytesIO(path.read_bytes()))


def test_saved_files_get_the_usual_permissions(tmp_path: Path) -> None:
    import os

    from dyncli.fileio import atomic_write_text

    atomic_write_text(tmp_path / "r.json", "{}")
    mask = os.umask(0)
    os.umask(mask)
    assert (tmp_path / "r.json").stat().st_mode & 0o777 == 0o666 & ~mask


@pytest.mark.parametrize("masked", [False, True])
def test_training_mode_layer_equals_the_module_path(masked: bool) -> None:
    """The same definition in training: BatchNorm on batch statistics (its running statistics
    updated alike), gradients equal; dropout 0 so both draw nothing."""
    from dyncli.models.conformer import conformer_layer, conformer_layer_reference, layer_weights

    torch.manual_seed(11)
    cfg = CONFORMER_PRESETS["tiny"]
    a = build_conformer_ctc(type(cfg)(**{**cfg.__dict__, "dropout": 0.0}), 9).train()
    b = build_conformer_ctc(type(cfg)(**{**cfg.__dict__, "dropout": 0.0}), 9).train()
    b.load_state_dict(a.state_dict())
    x = torch.randn(2, 21, cfg.d_model)
    pad = torch.arange(21)[None, :] >= torch.tensor([[21], [15]]) if masked else None
    la, lb = a.layers[0], b.layers[0]
    got = conformer_layer(la, x, pad, layer_weights(la), train=True)
    ref = conformer_layer_reference(lb, x, pad)
    keep = slice(None) if pad is None else ~pad
    torch.testing.assert_close(got[keep], ref[keep], atol=2e-5, rtol=1e-5)
    got[keep].square().sum().backward()
    ref[keep].square().sum().backward()
    for (name, pa), pb in zip(la.named_parameters(), lb.parameters(), strict=True):
        assert pa.grad is not None and pb.grad is not None, name
        torch.testing.assert_close(pa.grad, pb.grad, atol=1e-4, rtol=1e-4, msg=name)
    norm_a, norm_b = la.conv_module.sequential[3], lb.conv_module.sequential[3]
    torch.testing.assert_close(norm_a.running_mean, norm_b.running_mean)


@torch.inference_mode()
def test_run_layers_and_a_pass_without_one_layer() -> None:
    """``run_layers`` runs the layers given, in order (all by default), as ``run_layer`` one by
    one does; ``forward_exits(layers=...)`` (what ``prune`` scores) leaves the others out, and
    an exit after a left-out layer reads the last layer run."""
    model = tiny(vocab=7)
    model.attach_exits([2])
    wave, lengths = torch.randn(2, 8000) * 0.1, torch.tensor([8000, 6000])
    feats, frames = model.features(wave, lengths)
    x, n = model.embed(feats, frames)
    pad = torch.arange(x.shape[1])[None, :] >= n[:, None]
    by_hand = x
    for i in range(model.num_layers):
        by_hand = model.run_layer(i, by_hand, pad)
    assert torch.equal(model.run_layers(x, pad), by_hand)
    rest = [0, 2]
    h0 = model.run_layer(0, x, pad)
    without_1 = model.run_layers(x, pad, rest)
    assert torch.equal(without_1, model.run_layer(2, h0, pad))
    outs, out_n = model.forward_exits(wave, lengths, layers=rest)
    assert torch.equal(out_n, n)
    torch.testing.assert_close(outs[2], model.exit_log_probs(2, h0))  # layer 1 (0-based) left out
    torch.testing.assert_close(outs[model.num_layers], model.log_probs(without_1))
    full, _ = model.forward_exits(wave, lengths)
    assert not torch.allclose(full[model.num_layers], outs[model.num_layers], atol=1e-4)
