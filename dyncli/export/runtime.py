"""Run an exported graph with onnxruntime: what ``--runtime onnxruntime`` and ``.onnx`` model
paths use in ``profile``, ``evaluate`` and ``transcribe``.

:class:`OnnxModel` loads a file written by :func:`dyncli.export.onnx.export_onnx` and decodes
with the graph's own metadata (tokens, blank id, greedy CTC), as a deployment does
(``examples/deploy/transcribe_onnx.py``): nothing of the checkpoint is needed. :func:`export_run`
exports a checkpoint's run (full depth, or a policy at a threshold) on the fly, into a folder
the caller owns, and loads it.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from dyncli.errors import UsageError

REQUIRED_KEYS = ("sample_rate", "blank_id", "tokens", "decode")


def require_onnxruntime() -> Any:
    """The ``onnxruntime`` module, or a one-line refusal when the ``export`` extra is missing."""
    try:
        import onnxruntime
    except ImportError:
        raise UsageError(
            "--runtime onnxruntime needs onnxruntime: pip install 'dyncli[export]'"
        ) from None
    return onnxruntime


def is_onnx_path(path: str | Path) -> bool:
    return str(path).lower().endswith(".onnx")


@dataclass
class OnnxRun:
    """One utterance through the graph: (T, V) log-probs and (T,) layers each frame ran (None
    when the file has no ``frame_layers`` output)."""

    log_probs: np.ndarray
    frame_layers: np.ndarray | None


class OnnxModel:
    """An exported dyncli graph in an onnxruntime session on the CPU, ``threads`` intra-op
    threads (one inter-op thread: the graph is one chain)."""

    def __init__(self, path: str | Path, threads: int = 1) -> None:
        ort = require_onnxruntime()
        self.path = Path(path)
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.log_severity_level = 3  # errors only: its warnings are not the user's concern
        try:
            self.session = ort.InferenceSession(
                str(path), options, providers=["CPUExecutionProvider"]
            )
        except Exception as exc:  # onnxruntime raises its own types (Fail, InvalidProtobuf, ...)
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise UsageError(f"{path}: not an ONNX model onnxruntime can load ({first})") from None
        meta = dict(self.session.get_modelmeta().custom_metadata_map)
        missing = [k for k in REQUIRED_KEYS if k not in meta]
        if missing:
            raise UsageError(
                f"{path}: not a dyncli export (its metadata lacks {', '.join(missing)}); "
                "write one with 'dyncli export'"
            )
        if meta["decode"] != "greedy-ctc":
            raise UsageError(f"{path}: decoding {meta['decode']!r} is not greedy-ctc")
        names = [i.name for i in self.session.get_inputs()]
        if names != ["wave"]:
            raise UsageError(f"{path}: the graph takes {names}, not one input 'wave'")
        self.meta = meta
        self.sample_rate = int(meta["sample_rate"])
        self.blank_id = int(meta["blank_id"])
        self.tokens: list[str] = json.loads(meta["tokens"])
        self.policy = meta.get("policy") or "static"
        threshold = meta.get("threshold") or ""
        self.threshold: float | None = float(threshold) if threshold else None
        self.settings: dict[str, Any] = json.loads(meta.get("settings") or "{}")
        self.backbone = meta.get("backbone", "")
        self.source_sha256 = meta.get("source_sha256", "")
        self.outputs = [o.name for o in self.session.get_outputs()]

    def run(self, wave: np.ndarray) -> OnnxRun:
        """``wave``: (N,) or (1, N) float32 samples at :attr:`sample_rate`."""
        feed = np.ascontiguousarray(wave, dtype=np.float32).reshape(1, -1)
        try:
            outs = self.session.run(None, {"wave": feed})
        except Exception as exc:  # onnxruntime's own error types: one line, not a traceback
            first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
            raise UsageError(
                f"{self.path}: onnxruntime failed on a {feed.shape[1]}-sample wave ({first})"
            ) from None
        layers = outs[1][0] if len(outs) > 1 else None
        return OnnxRun(outs[0][0], layers)

    def decode(self, log_probs: np.ndarray) -> str:
        from dyncli.export.onnx import greedy_transcript

        return greedy_transcript(log_probs, self.tokens, self.blank_id)

    def transcribe(self, wave: np.ndarray) -> str:
        return self.decode(self.run(wave).log_probs)

    def describe(self) -> str:
        if self.policy == "static":
            return "full depth"
        settings = "".join(f", {k}={v}" for k, v in self.settings.items() if v)
        threshold = "" if self.threshold is None else f" @ {self.threshold:g}"
        return f"{self.policy}{threshold}{settings}"


def export_run(
    ckpt: Any,
    folder: str | Path | None = None,
    *,
    policy: Any = None,
    policy_name: str = "static",
    threshold: float | None = None,
    threads: int = 1,
) -> OnnxModel:
    """Export ``ckpt`` (full depth, or ``policy`` at ``threshold``) into ``folder`` (None: a
    temporary folder, removed once the session has read the file) and load it.

    A policy without an exportable forward is refused with one line (as ``dyncli export``
    refuses it)."""
    from dyncli.export.onnx import export_onnx, exportable

    if policy is not None and not exportable(policy):
        raise UsageError(
            f"--runtime onnxruntime: the {policy_name} policy cannot be exported yet (it has no "
            "exportable forward); use --runtime torch"
        )
    if folder is None:
        import tempfile

        with tempfile.TemporaryDirectory(prefix="dyncli-export-") as tmp:
            return export_run(
                ckpt,
                tmp,
                policy=policy,
                policy_name=policy_name,
                threshold=threshold,
                threads=threads,
            )
    tag = "static" if policy is None else f"{policy_name}-{_slug(threshold)}"
    path = Path(folder) / f"{tag}-{len(list(Path(folder).iterdir()))}.onnx"
    export_onnx(ckpt, path, policy=policy, policy_name=policy_name, threshold=threshold)
    return OnnxModel(path, threads)


def check_runtime_device(runtime: str | None, device: str) -> None:
    """onnxruntime runs on the CPU here: refuse an explicit CUDA device with it."""
    if runtime == "onnxruntime" and device not in ("cpu", "auto"):
        raise UsageError(
            f"--runtime onnxruntime runs on the CPU (its CPU provider); drop --device {device} "
            "or use --runtime torch"
        )


def _slug(value: float | None) -> str:
    if value is None or not math.isfinite(value):
        return "none"
    return f"{value:g}".replace(".", "p").replace("-", "m")
