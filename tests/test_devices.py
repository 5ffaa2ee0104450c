"""Devices: ``--device`` is checked up front, and the inference and profile paths build every
tensor on the device of their inputs, so lengths built on the host work with a model on a GPU.

Without a GPU, three things stand in for one: an audit that every tensor factory called from
``dyncli`` code names its device; the "meta" device (shapes only, no data), which still refuses
to mix with CPU tensors, for the code that never reads a value back; and CUDA tests that run
where a GPU is present.
"""

from __future__ import annotations

import copy
import os
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import torch
from torch.overrides import TorchFunctionMode

import dyncli
from dyncli.data.dataset import pad_waves
from dyncli.dynamic import build_policy, run_policy
from dyncli.errors import EXIT_USAGE, UsageError
from dyncli.inference import pick_device
from dyncli.measure.flops import FlopTable
from dyncli.methods.early_exit.policy import exit_confidence
from dyncli.methods.static import StaticPolicy
from dyncli.models.components import masked_normalize
from dyncli.models.config import CONFORMER_PRESETS
from dyncli.models.conformer import build_conformer_ctc

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")

# --- pick_device ------------------------------------------------------------------------------


@pytest.fixture
def one_gpu(monkeypatch: pytest.MonkeyPatch) -> None:
    """Pretend this machine has exactly one CUDA device."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)


@pytest.fixture
def no_gpu(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 0)


def _usage_error(device: str) -> str:
    with pytest.raises(UsageError) as info:
        pick_device(device)
    assert info.value.exit_code == EXIT_USAGE
    message = str(info.value)
    assert "\n" not in message
    return message


def test_auto_picks_cpu_without_cuda(no_gpu: None) -> None:
    assert pick_device("auto") == torch.device("cpu")
    assert pick_device("cpu") == torch.device("cpu")
    assert pick_device("cpu:0") == torch.device("cpu")


def test_auto_picks_cuda_when_present(one_gpu: None) -> None:
    assert pick_device("auto") == torch.device("cuda")


def test_cuda_without_cuda_is_a_usage_error(no_gpu: None) -> None:
    for device in ("cuda", "cuda:0"):
        assert _usage_error(device) == (
            f"--device {device}: no CUDA device is available; use --device cpu"
        )


def test_existing_cuda_index_is_accepted(one_gpu: None) -> None:
    assert pick_device("cuda") == torch.device("cuda")
    assert pick_device("cuda:0") == torch.device("cuda", 0)


def test_missing_cuda_index_names_the_devices_there_are(
    one_gpu: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert _usage_error("cuda:7") == (
        "--device cuda:7: this machine has 1 CUDA device (cuda:0); use --device cuda:0"
    )
    assert _usage_error("cuda:1").startswith("--device cuda:1: this machine has 1 CUDA device")
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 4)
    assert pick_device("cuda:3") == torch.device("cuda", 3)
    assert _usage_error("cuda:4") == (
        "--device cuda:4: this machine has 4 CUDA devices (cuda:0..cuda:3); "
        "use --device cuda:0..cuda:3"
    )


@pytest.mark.parametrize("device", ["gpu", "CUDA", "cuda:x", "cuda:-1", "", "cpu:1", " cpu"])
def test_unparseable_device_is_a_usage_error(one_gpu: None, device: str) -> None:
    assert _usage_error(device) == (
        f"--device {device}: not a device; use auto, cpu, cuda or cuda:N"
    )


@pytest.mark.parametrize("device", ["mps", "meta", "xla", "mps:0"])
def test_other_device_types_are_refused(one_gpu: None, device: str) -> None:
    assert _usage_error(device) == (
        f"--device {device}: not supported; use auto, cpu, cuda or cuda:N"
    )


# --- the tensor-factory audit ---------------------------------------------------------------

_TORCH_DIR = os.path.dirname(torch.__file__) + os.sep
_DYNCLI_DIR = os.path.dirname(dyncli.__file__) + os.sep
_SOURCE_ROOT = os.path.dirname(os.path.dirname(dyncli.__file__))
_FACTORIES = frozenset(
    {
        torch.tensor,
        torch.as_tensor,
        torch.asarray,
        torch.scalar_tensor,
        torch.arange,
        torch.zeros,
        torch.ones,
        torch.full,
        torch.empty,
        torch.empty_strided,
        torch.linspace,
        torch.logspace,
        torch.eye,
        torch.rand,
        torch.randn,
        torch.randint,
        torch.randperm,
        torch.tril_indices,
        torch.triu_indices,
    }
)
# Not audited: ``torch.*_like`` and ``Tensor.new_*`` take their device from the tensor given.


class FactoryAudit(TorchFunctionMode):
    """Records each tensor-factory call without ``device=`` whose caller (the first frame
    outside torch itself) is a file of the ``dyncli`` package: ``(factory, file:line)``."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[tuple[str, str]] = []

    def __torch_function__(
        self,
        func: Callable[..., Any],
        types: Any,
        args: tuple[Any, ...] = (),
        kwargs: dict[str, Any] | None = None,
    ) -> Any:
        kwargs = kwargs or {}
        if func in _FACTORIES and kwargs.get("device") is None:
            frame = sys._getframe(1)
            while frame.f_back is not None and frame.f_code.co_filename.startswith(_TORCH_DIR):
                frame = frame.f_back
            filename = frame.f_code.co_filename
            if filename.startswith(_DYNCLI_DIR):
                where = f"{os.path.relpath(filename, _SOURCE_ROOT)}:{frame.f_lineno}"
                self.calls.append((func.__name__, where))
        return func(*args, **kwargs)


@contextmanager
def audit_factories() -> Iterator[list[tuple[str, str]]]:
    with FactoryAudit() as audit:
        yield audit.calls


def test_audit_catches_a_factory_without_device() -> None:
    """The audit itself: a call from a dyncli file is caught, one naming its device is not."""
    fake = str(Path(_DYNCLI_DIR) / "fake_module.py")
    code = compile("torch.zeros(3)\ntorch.arange(4)\ntorch.zeros(3, device='cpu')\n", fake, "exec")
    with audit_factories() as calls:
        exec(code, {"torch": torch})
        torch.ones(2)  # called from this test file: not dyncli's
    assert calls == [("zeros", "dyncli/fake_module.py:1"), ("arange", "dyncli/fake_module.py:2")]


LENGTHS = (8000, 5600)


@pytest.fixture(scope="module")
def model() -> torch.nn.Module:
    """The tiny preset with an exit after layer 1 whose head favours blank (as a trained one)."""
    torch.manual_seed(0)
    m = build_conformer_ctc(CONFORMER_PRESETS["tiny"], 12).eval()
    m.attach_exits([1])
    with torch.no_grad():
        m.exit_heads["1"].bias[0] += 2.5
    return m


@pytest.fixture(scope="module")
def waves() -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(1)
    return [torch.randn(n, generator=gen) * 0.1 for n in LENGTHS]


def _batch(waves: list[torch.Tensor], size: int) -> tuple[torch.Tensor, torch.Tensor]:
    return pad_waves(waves[:size])


def _thresholds(model: torch.nn.Module, waves: list[torch.Tensor]) -> dict[str, list[float]]:
    """Per policy, thresholds that reach every branch: nothing skipped, everything skipped,
    and in between (some frames kept; one utterance exiting early and one going on)."""
    with torch.inference_mode():
        out, n = model.forward_exits(*pad_waves(waves))
        blank = out[1][..., 0].exp()
        conf = {c: exit_confidence(out[1], n, c).tolist() for c in ("entropy", "posterior")}
    assert min(conf["entropy"]) != max(conf["entropy"])
    return {
        "blank-skip": [1.0, float(blank[0, : int(n[0])].median()), 1e-6],
        "early-exit-entropy": [0.0, sum(conf["entropy"]) / 2, 1.0],
        "early-exit-posterior": [1.0, sum(conf["posterior"]) / 2, 0.0],
    }


def test_forward_builds_no_tensor_without_a_device(model, waves) -> None:
    batches = [_batch(waves, size) for size in (1, 2)]  # host-side batching is not audited
    with torch.inference_mode(), audit_factories() as calls:
        for wave, lens in batches:
            model(wave, lens)
            model.forward_exits(wave, lens)
            feats, frames = model.features(wave, lens)
            model.encode_features(feats, frames)
    assert calls == []


def _policy(name: str, threshold: float) -> Any:
    if name == "static":
        return StaticPolicy()
    if name == "blank-skip":
        return build_policy(name, threshold, neighbours=1)
    return build_policy(name, threshold)


POLICIES = ["static", "blank-skip", "early-exit-entropy", "early-exit-posterior"]


@pytest.mark.parametrize("name", POLICIES)
def test_policies_build_no_tensor_without_a_device(model, waves, name) -> None:
    thresholds = [1.0] if name == "static" else _thresholds(model, waves)[name]
    policies = [_policy(name, th) for th in thresholds]
    for policy in policies:
        policy.check(model)
    layers_seen: set[int] = set()
    batches = [_batch(waves, size) for size in (1, 2)]
    with torch.inference_mode(), audit_factories() as calls:
        for wave, lens in batches:
            for policy in policies:
                out = run_policy(model, policy, wave, lens)
                layers_seen.update(out.frame_layers[out.frame_layers > 0].tolist())
            feats, frames = model.features(wave, lens)
            x, n = model.embed(feats, frames)
            policies[0].sweep(model, x, n, thresholds)
    assert calls == []
    expected = {model.num_layers} if name == "static" else {1, model.num_layers}
    assert layers_seen == expected  # both the skipping and the full-depth branches ran


def test_flop_table_builds_no_tensor_without_a_device(model) -> None:
    with audit_factories() as calls:
        table = FlopTable(model)
        table.static(4000)
        table.exit_head(1, 5)
    assert calls == []


# --- lengths on another device than the model (meta: shapes only, no data) -----------------


@pytest.fixture(scope="module")
def meta_model(model) -> torch.nn.Module:
    return copy.deepcopy(model).to("meta")


def test_masked_normalize_takes_lengths_from_another_device() -> None:
    feats = torch.zeros(2, 10, 4, device="meta")
    out = masked_normalize(feats, torch.tensor([10, 6]))
    assert out.device == feats.device and out.shape == feats.shape


@pytest.mark.parametrize("size", [1, 2])
def test_model_takes_lengths_from_another_device(model, meta_model, waves, size) -> None:
    wave, lens = _batch(waves, size)
    with torch.inference_mode():
        ref, ref_lens = model(wave, lens)
        log_probs, out_lens = meta_model(wave.to("meta"), lens)
        exits, exit_lens = meta_model.forward_exits(wave.to("meta"), lens)
        feats, frames = meta_model.features(wave.to("meta"), lens)
    assert log_probs.device.type == "meta" and out_lens.device.type == "meta"
    assert log_probs.shape == ref.shape and out_lens.shape == ref_lens.shape
    assert {lp.device.type for lp in exits.values()} == {"meta"}
    assert exit_lens.device.type == "meta" and frames.device.type == "meta"


@pytest.mark.parametrize("size", [1, 2])
def test_static_policy_takes_lengths_from_another_device(model, meta_model, waves, size) -> None:
    wave, lens = _batch(waves, size)
    with torch.inference_mode():
        feats, frames = model.features(wave, lens)
        x, n = model.embed(feats, frames)
        ref = StaticPolicy().encode(model, x, n)
        out = StaticPolicy().encode(meta_model, x.to("meta"), n)  # n stays on the CPU
    assert out.log_probs.device.type == "meta" and out.log_probs.shape == ref.log_probs.shape
    assert out.lengths.device.type == "meta" and out.frame_layers.device.type == "meta"
    assert out.trace == ref.trace


# --- on a GPU ---------------------------------------------------------------------------------


def _all_policies(model, waves) -> list[Any]:
    thresholds = _thresholds(model, waves)
    return [StaticPolicy()] + [
        _policy(name, th) for name in POLICIES[1:] for th in thresholds[name]
    ]


@needs_cuda
@pytest.mark.parametrize("size", [1, 2])
def test_cuda_model_with_host_lengths_matches_cpu(model, waves, size) -> None:
    cuda_model = copy.deepcopy(model).to("cuda")
    wave, lens = _batch(waves, size)
    with torch.inference_mode():
        ref, ref_lens = model(wave, lens)
        got, got_lens = cuda_model(wave.to("cuda"), lens)  # lengths left on the CPU
        exits, _ = cuda_model.forward_exits(wave.to("cuda"), lens)
    assert got.device.type == "cuda" and got_lens.device.type == "cuda"
    assert torch.equal(got_lens.cpu(), ref_lens)
    torch.testing.assert_close(got.cpu(), ref, atol=1e-2, rtol=1e-2)  # cuDNN may use TF32
    torch.testing.assert_close(exits[model.num_layers].cpu(), ref, atol=1e-2, rtol=1e-2)


@needs_cuda
@pytest.mark.parametrize("size", [1, 2])
def test_cuda_policies_with_host_lengths_match_cpu(model, waves, size) -> None:
    cuda_model = copy.deepcopy(model).to("cuda")
    wave, lens = _batch(waves, size)
    with torch.inference_mode():
        for policy in _all_policies(model, waves):
            ref = run_policy(model, policy, wave, lens)
            got = run_policy(cuda_model, policy, wave.to("cuda"), lens)
            assert got.log_probs.device.type == "cuda"
            assert torch.equal(got.lengths.cpu(), ref.lengths)
            # A frame or utterance right at a threshold may decide differently on another
            # device (cuDNN may use TF32): nearly all must agree, and agree in value.
            valid = torch.arange(ref.log_probs.shape[1])[None, :] < ref.lengths[:, None]
            same = (got.frame_layers.cpu() == ref.frame_layers) & valid
            assert same.sum() >= 0.9 * valid.sum(), policy
            torch.testing.assert_close(
                got.log_probs.cpu()[same], ref.log_probs[same], atol=1e-2, rtol=1e-2
            )
            # The policies' own entry points, with embedded input on the GPU, lengths on the CPU.
            feats, frames = cuda_model.features(wave.to("cuda"), lens)
            x, n = cuda_model.embed(feats, frames)
            policy.encode(cuda_model, x, n.cpu())
            policy.sweep(cuda_model, x, n.cpu(), [0.5])


@needs_cuda
def test_cuda_flop_table_matches_cpu(model) -> None:
    cuda_model = copy.deepcopy(model).to("cuda")
    assert FlopTable(cuda_model).static(4000) == FlopTable(model).static(4000)
