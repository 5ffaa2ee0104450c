"""The dyncli checkpoint: versioned, self-describing, and loaded without executing code.

A checkpoint is a ``torch.save`` archive of one dict of plain types and tensors::

    format          "dyncli-checkpoint"
    format_version  1
    dyncli_version  version that wrote it
    backbone        registered backbone name, e.g. "conformer"
    config          the backbone's config dataclass as a dict (front end included)
    vocab_size      CTC classes, blank included
    tokenizer       tokenizer state (kind + symbols or sentencepiece proto bytes)
    state_dict      weights (float32, or float16 when saved with ``half=True``)
    dtype           "float32" or "float16"
    method          None for a static model; a dict describing the dynamic method otherwise
    provenance      training data fingerprint, seed, command, dates
    metrics         e.g. dev WER at the saved epoch

It is read with ``torch.load(weights_only=True)``, which refuses pickled code, and written
atomically (temporary file, then rename).
"""

from __future__ import annotations

import hashlib
import pickle
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from dyncli import __version__
from dyncli.errors import CheckpointError, DyncliError, InputError
from dyncli.fileio import atomic_write
from dyncli.models.base import EXIT_HEAD_FORMS, CTCEncoder
from dyncli.models.config import config_from_dict, config_to_dict
from dyncli.plugins import get_backbone
from dyncli.text import Tokenizer, tokenizer_from_state

FORMAT = "dyncli-checkpoint"
FORMAT_VERSION = 1


@dataclass
class Checkpoint:
    model: CTCEncoder
    tokenizer: Tokenizer
    backbone: str
    config: Any
    method: dict[str, Any] | None = None
    provenance: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, Any] = field(default_factory=dict)
    dtype: str = "float32"
    path: Path | None = None


def save_checkpoint(path: str | Path, ckpt: Checkpoint, half: bool = False) -> None:
    """Write ``ckpt`` atomically. ``half`` stores floating-point weights as float16."""
    state = {
        k: (v.detach().to("cpu").half() if half and v.is_floating_point() else v.detach().cpu())
        for k, v in ckpt.model.state_dict().items()
    }
    payload = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "dyncli_version": __version__,
        "backbone": ckpt.backbone,
        "config": config_to_dict(ckpt.config),
        "vocab_size": int(ckpt.model.head.out_features),
        "blank_id": int(ckpt.model.blank_id),
        "tokenizer": ckpt.tokenizer.to_state(),
        "state_dict": state,
        "dtype": "float16" if half else "float32",
        "method": plain(ckpt.method),
        "provenance": plain(ckpt.provenance),
        "metrics": plain(ckpt.metrics),
    }
    atomic_write(path, lambda fh: torch.save(payload, fh))


def plain(value: Any) -> Any:
    """Metadata as the plain types ``weights_only`` loading accepts (str, not subclasses)."""
    if value is None or type(value) in (bool, int, float, str, bytes):
        return value
    if isinstance(value, dict):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [plain(v) for v in value]
    if isinstance(value, bool):
        return bool(value)
    if isinstance(value, int):
        return int(value)
    if isinstance(value, float):
        return float(value)
    return str(value)


def read_payload(path: str | Path) -> dict[str, Any]:
    """Load and validate the raw checkpoint dict; refuses anything that is not a dyncli file."""
    p = Path(path)
    if not p.is_file():
        raise CheckpointError(f"{p}: checkpoint not found")
    try:
        payload = torch.load(p, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        raise CheckpointError(
            f"{p}: refused: the file holds pickled objects or code, not plain weights "
            "(dyncli never executes code from a checkpoint)"
        ) from None
    except Exception as exc:  # torch raises RuntimeError, KeyError, EOFError... for junk
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CheckpointError(
            f"{p}: not a readable checkpoint (truncated or not a PyTorch archive: {first})"
        ) from None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise CheckpointError(
            f"{p}: not a dyncli checkpoint (no '{FORMAT}' header); "
            "train one with 'dyncli train' or import the model first"
        )
    version = payload.get("format_version")
    if not isinstance(version, int) or version > FORMAT_VERSION:
        raise CheckpointError(
            f"{p}: checkpoint format version {version!r} is newer than this dyncli "
            f"(reads up to {FORMAT_VERSION}); upgrade dyncli"
        )
    for key in ("backbone", "config", "vocab_size", "tokenizer", "state_dict"):
        if key not in payload:
            raise CheckpointError(f"{p}: checkpoint is missing '{key}'")
    return payload


def load_checkpoint(path: str | Path) -> Checkpoint:
    """Rebuild the model (float32, eval mode, on the CPU) and tokenizer from ``path``.

    A directory is read by the plugin that accepts it (``register_checkpoint_readers``; the
    ``dyncli-hf`` plugin reads Hugging Face CTC model directories)."""
    p = Path(path)
    if p.is_dir():
        return _read_foreign(p)
    payload = read_payload(p)
    try:
        spec = get_backbone(str(payload["backbone"]))
    except InputError as exc:
        raise CheckpointError(f"{p}: {exc}") from None
    config: Any = config_from_dict(spec.config_cls, payload["config"])
    model = spec.build(config, int(payload["vocab_size"]))
    method = payload.get("method")
    if method is not None and not isinstance(method, dict):
        raise CheckpointError(f"{p}: checkpoint 'method' is not a mapping")
    exits = (method or {}).get("exits") or []
    try:
        model.attach_exits([int(k) for k in exits], init_from_final=False)
    except (TypeError, ValueError) as exc:
        raise CheckpointError(f"{p}: bad exits {exits!r} in checkpoint method ({exc})") from None
    form = (method or {}).get("exit_head", "softmax")
    if form not in EXIT_HEAD_FORMS:
        raise CheckpointError(f"{p}: unknown exit head form {form!r} in checkpoint method")
    model.exit_head_form = str(form)
    blank = payload.get("blank_id", 0)  # format v1 checkpoints: dyncli's tokenizers, blank 0
    if not isinstance(blank, int) or not 0 <= blank < int(payload["vocab_size"]):
        raise CheckpointError(f"{p}: blank id {blank!r} outside the vocabulary")
    model.blank_id = blank
    gates = (method or {}).get("gates")
    if gates is not None:
        from dyncli.gates import attach_gates

        try:
            attach_gates(model, str(gates["predictor"]), int(gates.get("hidden", 32)))
        except (KeyError, TypeError, ValueError, DyncliError) as exc:
            raise CheckpointError(f"{p}: bad gates {gates!r} in the method ({exc})") from None
    state = {
        k: (v.float() if v.is_floating_point() else v) for k, v in payload["state_dict"].items()
    }
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()[0]
        raise CheckpointError(f"{p}: weights do not match the stored config ({first})") from None
    model.eval()
    return Checkpoint(
        model=model,
        tokenizer=tokenizer_from_state(payload["tokenizer"]),
        backbone=str(payload["backbone"]),
        config=config,
        method=method,
        provenance=dict(payload.get("provenance") or {}),
        metrics=dict(payload.get("metrics") or {}),
        dtype=str(payload.get("dtype", "float32")),
        path=p,
    )


def _read_foreign(p: Path) -> Checkpoint:
    from dyncli.plugins import checkpoint_readers

    for spec in checkpoint_readers().values():
        if spec.accepts(p):
            ckpt: Checkpoint = spec.read(p)
            ckpt.path = p
            return ckpt
    raise CheckpointError(
        f"{p}: a directory, not a dyncli checkpoint, and no installed plugin reads it "
        "(pip install -e plugins/dyncli-hf reads Hugging Face CTC model directories)"
    )


def file_sha256(path: str | Path) -> str:
    """sha256 of a file; of a directory (an imported model), over its files' names and bytes."""
    if Path(path).is_dir():
        h = hashlib.sha256()
        for f in sorted(q for q in Path(path).rglob("*") if q.is_file()):
            h.update(str(f.relative_to(path)).encode() + b"\0" + file_sha256(f).encode())
        return h.hexdigest()
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def summarize(path: str | Path) -> dict[str, Any]:
    """What ``dyncli inspect`` shows: architecture, size, tokenizer, method, provenance."""
    ckpt = load_checkpoint(path)
    model = ckpt.model
    params = sum(p.numel() for p in model.parameters())
    method = ckpt.method or {}
    heads = method.get("exits") or []
    return {
        "path": str(path),
        "format_version": FORMAT_VERSION,
        "backbone": ckpt.backbone,
        "parameters": params,
        "layers": model.num_layers,
        "config": config_to_dict(ckpt.config),
        "ctc_heads": 1 + len(heads),
        "vocab_size": int(model.head.out_features),
        "tokenizer": ckpt.tokenizer.kind,
        "sample_rate": model.sample_rate,
        "stored_dtype": ckpt.dtype,
        "method": method.get("name", "static"),
        "exits": model.exits,
        "operating_point": method.get("operating_point"),
        "distillation": method.get("distillation"),
        "gates": method.get("gates"),
        "metrics": ckpt.metrics,
        "provenance": ckpt.provenance,
        "sha256": file_sha256(path),
    }
