"""Export a checkpoint to ONNX: one graph from the waveform to CTC log-probs, front end included,
at batch 1, with what a deployment needs to decode in the file's metadata.

The graph takes ``wave`` (1, N) float32 samples in [-1, 1] at the model's sample rate, any N
(shorter than the front end's minimum, it is zero-padded as dyncli pads it), and returns
``log_probs`` (1, T, V) and ``frame_layers`` (1, T) int64, the encoder layers each frame ran
(the model's depth everywhere at full depth). The model metadata (``metadata_props``, all
strings) holds:

==================  ==========================================================================
key                 value
==================  ==========================================================================
``dyncli_version``  the dyncli that wrote the file
``sample_rate``     Hz the input must be at
``blank_id``        the CTC blank
``tokens``          JSON list: id -> the text that id adds to a transcript (blank: "")
``decode``          how a transcript is read: ``greedy-ctc`` (best id per frame, repeats
                    collapsed, blanks dropped, the tokens' texts joined, runs of spaces made
                    one, the ends stripped)
``policy``          the skip policy inside the graph (``static``: every layer on every frame)
``threshold``       its threshold, exactly (Python's ``repr``; empty for ``static``)
``settings``        JSON object: the policy's other settings (blank-skip: ``layer``, the exit
                    whose blank posterior decides, and ``neighbours``; ``{}`` for ``static``)
``backbone``        the checkpoint's backbone
``source_sha256``   sha256 of the checkpoint it was exported from
==================  ==========================================================================

Stack traces in node metadata (which would embed local paths and make the file several times
larger) are removed. A skip policy goes inside the graph through its own ``export_forward``
(blank-skip and early exit have one; the others are refused with one line until they do).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from dyncli import __version__
from dyncli.checkpoint import Checkpoint, file_sha256
from dyncli.data.text import Tokenizer
from dyncli.errors import UsageError
from dyncli.models.base import CTCEncoder

OPSET = 18
MAX_SECONDS = 3600  # the longest input the graph's dynamic length allows
DECODE = "greedy-ctc"


def require_onnx() -> None:
    """Refuse, in one line, when the ``export`` extra is not installed."""
    missing = []
    for name in ("onnx", "onnxscript"):
        try:
            __import__(name)
        except ImportError:
            missing.append(name)
    if missing:
        raise UsageError(f"ONNX export needs {' and '.join(missing)}: pip install 'dyncli[export]'")


class ExportGraph(torch.nn.Module):
    """What the exported graph computes: waveform (1, N) -> log-probs (1, T, V), at full depth,
    or through ``policy.export_forward`` (the policy's own exportable code)."""

    def __init__(self, model: CTCEncoder, policy: Any = None) -> None:
        super().__init__()
        self.model = model
        self.policy = policy
        self.min_samples = int(getattr(getattr(model, "frontend", None), "min_samples", 1))

    def forward(self, wave: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        short = torch.sym_max(0, self.min_samples - wave.shape[1])
        wave = torch.nn.functional.pad(wave, (0, short))  # as dyncli pads a short wave
        lengths = torch.tensor([wave.shape[1]])
        feats, frames = self.model.features(wave, lengths)
        x, _ = self.model.embed(feats, frames)
        if self.policy is not None:
            out: tuple[torch.Tensor, torch.Tensor] = self.policy.export_forward(self.model, x)
            return out
        layers = torch.full_like(x[..., 0], self.model.num_layers, dtype=torch.int64)
        return self.model.log_probs(self.model.run_layers(x, None)), layers


def exportable(policy: Any) -> bool:
    """Whether a policy object can go inside an exported graph (it has ``export_forward``)."""
    return callable(getattr(policy, "export_forward", None))


def token_texts(tokenizer: Tokenizer, vocab_size: int, blank_id: int) -> list[str]:
    """For each output id, the text it adds to a transcript (the blank and ids the tokenizer
    does not know add nothing), so that greedy CTC decoding needs no tokenizer library."""
    state = tokenizer.to_state()
    texts = [""] * vocab_size
    if state["kind"] == "char":
        for i, symbol in enumerate(state["symbols"]):
            if i + 1 < vocab_size:
                texts[i + 1] = symbol
    elif state["kind"] == "sentencepiece":
        import sentencepiece as spm

        sp = spm.SentencePieceProcessor()
        sp.LoadFromSerializedProto(state["model_proto"])
        for i in range(1, vocab_size):
            if i - 1 < sp.GetPieceSize() and not sp.IsControl(i - 1):
                piece = sp.IdToPiece(i - 1)
                texts[i] = " ⁇ " if sp.IsUnknown(i - 1) else piece.replace("▁", " ")
    elif state["kind"] == "vocab":
        delimiter = state.get("word_delimiter", "|")
        lower = bool(state.get("lower", False))  # do_lower_case: decode() lower-cases the text
        for i, token in enumerate(state["tokens"][:vocab_size]):
            texts[i] = " " if token == delimiter else token.lower() if lower else token
    else:
        raise UsageError(f"cannot export a {state['kind']!r} tokenizer's vocabulary")
    texts[blank_id] = ""
    return texts


def greedy_transcript(log_probs: Any, tokens: list[str], blank_id: int) -> str:
    """The ``greedy-ctc`` rule of the metadata, on (T, V) scores (numpy or torch)."""
    best = [int(i) for i in log_probs.argmax(-1).tolist()]
    ids = [k for j, k in enumerate(best) if k != blank_id and (j == 0 or best[j - 1] != k)]
    return " ".join("".join(tokens[k] for k in ids).split())


@dataclass
class ExportResult:
    path: Path
    policy: str
    threshold: float | None
    nodes: int
    bytes: int


def export_onnx(
    ckpt: Checkpoint,
    output: str | Path,
    *,
    policy: Any = None,
    policy_name: str = "static",
    threshold: float | None = None,
) -> ExportResult:
    """Write ``ckpt`` to ``output`` as an ONNX graph (see the module docstring), atomically:
    at full depth, or with ``policy`` (a policy object with ``export_forward``; its registered
    name and threshold go to the metadata) inside the graph."""
    require_onnx()
    if policy is not None and not exportable(policy):
        raise UsageError(
            f"the {policy_name} policy cannot be exported yet (it has no exportable forward); "
            "export another policy, or give --full-depth"
        )
    import onnx

    model = ckpt.model.eval()
    graph = ExportGraph(model, policy).eval()
    sample = torch.zeros(1, max(graph.min_samples, model.sample_rate))
    length = torch.export.Dim("samples", min=1, max=MAX_SECONDS * model.sample_rate)
    with torch.inference_mode(False), torch.no_grad(), _quiet(), warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # the exporter's own deprecations
        warnings.simplefilter("ignore", DeprecationWarning)
        program = torch.onnx.export(
            graph,
            (sample,),
            input_names=["wave"],
            output_names=["log_probs", "frame_layers"],
            dynamic_shapes=({1: length},),
            dynamo=True,
            opset_version=OPSET,
            verbose=False,
        )
    assert program is not None  # dynamo=True returns the program
    proto = program.model_proto
    _strip_node_metadata(proto)
    blank = int(model.blank_id)
    vocab = int(model.head.out_features)
    meta = {
        "dyncli_version": __version__,
        "sample_rate": str(model.sample_rate),
        "blank_id": str(blank),
        "tokens": json.dumps(token_texts(ckpt.tokenizer, vocab, blank), ensure_ascii=False),
        "decode": DECODE,
        "policy": policy_name if policy is not None else "static",
        # repr: the shortest text that reads back as the same float the graph compares with
        "threshold": "" if policy is None or threshold is None else repr(float(threshold)),
        "settings": json.dumps(policy_settings(model, policy)),
        "backbone": ckpt.backbone,
        "source_sha256": file_sha256(ckpt.path) if ckpt.path else "",
    }
    del proto.metadata_props[:]
    for key, value in meta.items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value
    data = proto.SerializeToString()
    if len(data) > 2**31 - 1:
        raise UsageError("the model is larger than 2 GB, the limit of one ONNX file")
    onnx.checker.check_model(proto)
    from dyncli.fileio import atomic_write

    def write(fh: Any) -> None:
        fh.write(data)

    atomic_write(output, write)
    name = policy_name if policy is not None else "static"
    kept = threshold if policy is not None else None
    return ExportResult(Path(output), name, kept, len(proto.graph.node), len(data))


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """The exporter's log lines (torchvision ops it skips, initializers it keeps) are about its
    internals, not the user's model: errors only while exporting."""
    loggers = [logging.getLogger(name) for name in ("torch.onnx", "onnxscript", "onnx_ir")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    try:
        yield
    finally:
        for lg, level in zip(loggers, levels, strict=True):
            lg.setLevel(level)


def policy_settings(model: CTCEncoder, policy: Any) -> dict[str, Any]:
    """The policy's settings besides its threshold (blank-skip: ``layer`` resolved to the exit
    that decides, ``neighbours``); empty at full depth."""
    config = getattr(policy, "config", None)
    if config is None or not dataclasses.is_dataclass(config) or isinstance(config, type):
        return {}
    settings = {k: v for k, v in dataclasses.asdict(config).items() if k != "threshold"}
    trigger = getattr(policy, "trigger", None)
    if settings.get("layer", 0) is None and callable(trigger):
        settings["layer"] = int(trigger(model))
    return settings


def _strip_node_metadata(proto: Any) -> None:
    """Remove the exporter's per-node metadata (stack traces with local paths, module names)
    and doc strings from every graph and subgraph."""

    def graphs(g: Any) -> Any:
        yield g
        for node in g.node:
            for attr in node.attribute:
                if attr.HasField("g"):
                    yield from graphs(attr.g)
                for sub in attr.graphs:
                    yield from graphs(sub)

    for g in graphs(proto.graph):
        for node in g.node:
            del node.metadata_props[:]
            node.doc_string = ""
        g.doc_string = ""
    for fn in proto.functions:
        for node in fn.node:
            del node.metadata_props[:]
            node.doc_string = ""
    proto.doc_string = ""
