"""``dyncli export --full-depth`` on checkpoints ``dyncli import`` made from Hugging Face wav2vec2
and HuBERT directories (tiny and random, built by transformers itself as a user's model nobody
here built): onnxruntime gives dyncli's full-depth log-probs and transcripts."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

transformers = pytest.importorskip("transformers")
ort = pytest.importorskip("onnxruntime")
onnx = pytest.importorskip("onnx")

from dyncli.checkpoint import load_checkpoint  # noqa: E402
from dyncli.decoding import greedy_ctc  # noqa: E402
from dyncli.export.onnx import greedy_transcript  # noqa: E402
from tests.conftest import invoke_cli  # noqa: E402
from tests.test_export import reference, session  # noqa: E402
from tests.test_hf import tiny_dir  # noqa: E402


def shortest_wave(config: Any) -> int:
    """The fewest samples the conv feature extractor turns into one frame."""
    n = 1
    for _, kernel, stride in reversed(config.extractor_conv_layer_config):
        n = (n - 1) * stride + kernel
    return n


@pytest.mark.filterwarnings("ignore:.*left unmapped:UserWarning")  # masked_spec_embed
@pytest.mark.parametrize(
    ("arch", "stable", "lower"),
    [
        ("Wav2Vec2ForCTC", False, False),  # group-norm extractor, post-LN layers
        ("Wav2Vec2ForCTC", True, False),  # layer-norm extractor, pre-LN ("stable") layers
        ("HubertForCTC", False, True),  # and a do_lower_case tokenizer
    ],
)
def test_imported_directory_exports_at_full_depth(
    tmp_path: Path, arch: str, stable: bool, lower: bool
) -> None:
    hf_dir = tiny_dir(tmp_path, arch, stable)
    hf = getattr(transformers, arch).from_pretrained(hf_dir)
    with torch.no_grad():  # a head that reads the encoder, not only its bias: varied transcripts
        hf.lm_head.weight.mul_(10.0)
    hf.save_pretrained(hf_dir)
    if lower:
        tok_cfg = json.loads((hf_dir / "tokenizer_config.json").read_text())
        (hf_dir / "tokenizer_config.json").write_text(
            json.dumps({**tok_cfg, "do_lower_case": True})
        )
    ckpt_path, onnx_path = tmp_path / "imported.ckpt", tmp_path / "imported.onnx"
    result = invoke_cli("import", hf_dir, "-o", ckpt_path)
    assert result.exit_code == 0, result.output
    result = invoke_cli("export", ckpt_path, "-o", onnx_path, "--full-depth")
    assert result.exit_code == 0, result.output

    ckpt = load_checkpoint(ckpt_path)
    model = ckpt.model
    assert ckpt.tokenizer.to_state()["lower"] is lower
    s = session(onnx_path)
    meta = {e.key: e.value for e in onnx.load(str(onnx_path)).metadata_props}
    tokens, blank = json.loads(meta["tokens"]), int(meta["blank_id"])
    assert blank == model.blank_id == 0 and meta["sample_rate"] == str(model.sample_rate)
    shortest = shortest_wave(ckpt.config)
    assert model.min_samples == shortest
    rng = np.random.default_rng(0)
    texts = []
    # shorter than one frame: zero-padded up to the extractor's minimum, in both runtimes
    for n in (1, shortest - 1, shortest, shortest + 1, 2345, 16007):
        wave = torch.from_numpy((0.1 * rng.standard_normal((1, n))).astype(np.float32))
        ref = reference(model, wave)
        out, layers = s.run(None, {"wave": wave.numpy()})
        assert out.shape == tuple(ref.shape), (n, out.shape, ref.shape)
        assert layers.dtype == np.int64 and layers.shape == out.shape[:2]
        assert (layers == model.num_layers).all()
        np.testing.assert_allclose(out, ref.numpy(), atol=1e-4, rtol=0)
        ours = greedy_transcript(ref[0], tokens, blank)
        assert greedy_transcript(out[0], tokens, blank) == ours
        ids = greedy_ctc(ref, torch.tensor([ref.shape[1]]), blank)[0]
        # dyncli's (and transformers') transcript, runs of spaces made one as the metadata says
        assert ours == " ".join(ckpt.tokenizer.decode(ids).split())
        texts.append(ours)
    letters = set("".join(texts).replace(" ", ""))
    assert len(letters) >= 2, texts  # the transcripts say something to compare
    assert all(c == c.lower() for c in letters) if lower else any(c.isupper() for c in letters)
