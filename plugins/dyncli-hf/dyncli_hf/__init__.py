"""dyncli-hf: Hugging Face wav2vec2 / HuBERT / WavLM CTC model directories as dyncli checkpoints.

Registers a checkpoint reader (every command that takes a checkpoint accepts such a directory)
and the command ``dyncli import HF_DIR -o OUT.ckpt``. See README.md.
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

from dyncli import hookimpl
from dyncli.errors import CheckpointError, UsageError
from dyncli.plugins import CheckpointReaderSpec

ARCHITECTURES = {"Wav2Vec2ForCTC": "wav2vec2", "HubertForCTC": "hubert", "WavLMForCTC": "wavlm"}
WEIGHTS = ("model.safetensors", "pytorch_model.bin")


def accepts(path: Path) -> bool:
    """A directory with a ``config.json`` and a weights file."""
    p = Path(path)
    return (p / "config.json").is_file() and any((p / w).is_file() for w in WEIGHTS)


def _json(path: Path, name: str, required: bool = True) -> dict[str, Any]:
    f = path / name
    if not f.is_file():
        if required:
            raise CheckpointError(f"{path}: no {name}")
        return {}
    try:
        data = json.loads(f.read_text())
    except (OSError, ValueError) as exc:
        raise CheckpointError(f"{f}: not readable JSON ({exc})") from None
    if not isinstance(data, dict):
        raise CheckpointError(f"{f}: not a JSON object")
    return data


def check_config(path: Path, cfg: dict[str, Any]) -> str:
    """The architecture, or a one-line error naming what is not supported."""
    archs = cfg.get("architectures") or []
    arch = archs[0] if archs else None
    if arch not in ARCHITECTURES:
        raise UsageError(
            f"{path}: architecture {arch!r} is not supported; dyncli-hf reads "
            f"{', '.join(ARCHITECTURES)}"
        )
    checks = {
        "feat_extract_norm": (cfg.get("feat_extract_norm", "group"), ("group", "layer")),
        "hidden_act": (cfg.get("hidden_act", "gelu"), ("gelu",)),
        "feat_extract_activation": (cfg.get("feat_extract_activation", "gelu"), ("gelu",)),
        "add_adapter": (bool(cfg.get("add_adapter", False)), (False,)),
        "feat_proj_layer_norm": (cfg.get("feat_proj_layer_norm", True), (True,)),
        "conv_pos_batch_norm": (bool(cfg.get("conv_pos_batch_norm", False)), (False,)),
    }
    for key, (value, allowed) in checks.items():
        if value not in allowed:
            raise UsageError(f"{path}: config option {key}={value!r} is not supported")
    return str(arch)


def _check_bin(path: Path) -> None:
    """Load a ``.bin`` with ``weights_only=True`` first: pickled code is refused, never run."""
    import pickle

    import torch

    try:
        torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, OSError) as exc:
        first = " ".join(str(exc).split())[:160]
        raise CheckpointError(
            f"{path}: refused: not a plain weights file (weights_only load failed: {first})"
        ) from None


def import_model(path: str | Path) -> Any:
    """A ``dyncli.checkpoint.Checkpoint`` from a Hugging Face CTC model directory."""
    import torch

    from dyncli.checkpoint import Checkpoint
    from dyncli.models.config import Wav2Vec2Config
    from dyncli.models.wav2vec2 import Wav2Vec2CTC

    p = Path(path)
    cfg = _json(p, "config.json")
    arch = check_config(p, cfg)
    safetensors = (p / "model.safetensors").is_file()
    if not safetensors:
        _check_bin(p / "pytorch_model.bin")
    import transformers

    cls = getattr(transformers, arch)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            hf = cls.from_pretrained(p, local_files_only=True, use_safetensors=safetensors).eval()
        except (OSError, ValueError, RuntimeError) as exc:
            first = " ".join(str(exc).split())[:200]
            raise CheckpointError(f"{p}: transformers could not load it ({first})") from None
    base = getattr(hf, ARCHITECTURES[arch])
    # The feature extractor's settings: preprocessor_config.json, or (newer transformers) the
    # "feature_extractor" entry of processor_config.json.
    pre = _json(p, "preprocessor_config.json", required=False) or (
        _json(p, "processor_config.json", required=False).get("feature_extractor") or {}
    )
    config = Wav2Vec2Config(
        extractor_mode=f"{cfg.get('feat_extract_norm', 'group')}_norm",
        extractor_conv_layer_config=[
            [int(d), int(k), int(s)]
            for d, k, s in zip(cfg["conv_dim"], cfg["conv_kernel"], cfg["conv_stride"], strict=True)
        ],
        extractor_conv_bias=bool(cfg.get("conv_bias", False)),
        encoder_embed_dim=int(cfg["hidden_size"]),
        encoder_projection_dropout=float(cfg.get("feat_proj_dropout", 0.0)),
        encoder_pos_conv_kernel=int(cfg["num_conv_pos_embeddings"]),
        encoder_pos_conv_groups=int(cfg["num_conv_pos_embedding_groups"]),
        encoder_num_layers=int(cfg["num_hidden_layers"]),
        encoder_num_heads=int(cfg["num_attention_heads"]),
        encoder_attention_dropout=float(cfg.get("attention_dropout", 0.0)),
        encoder_ff_interm_features=int(cfg["intermediate_size"]),
        encoder_ff_interm_dropout=float(cfg.get("activation_dropout", 0.0)),
        encoder_dropout=float(cfg.get("hidden_dropout", 0.0)),
        encoder_layer_norm_first=bool(cfg.get("do_stable_layer_norm", False)),
        sample_rate=int(pre.get("sampling_rate", 16000)),
        normalize_waveform=bool(pre.get("do_normalize", False)),
        wavlm=arch == "WavLMForCTC",
        encoder_num_buckets=int(cfg.get("num_buckets", 320)),
        encoder_max_distance=int(cfg.get("max_bucket_distance", 800)),
    )
    vocab_size = int(hf.lm_head.out_features)
    model = Wav2Vec2CTC(config, vocab_size)
    mapped = _map_weights(hf, base, model)
    left = sorted(set(hf.state_dict()) - mapped)
    if left:
        warnings.warn(f"{p}: left unmapped: {', '.join(left)}", stacklevel=2)
    tokenizer = _tokenizer(p, cfg, vocab_size)
    model.blank_id = tokenizer.blank_id
    with torch.no_grad():
        model.eval()
    return Checkpoint(
        model=model,
        tokenizer=tokenizer,
        backbone="wav2vec2",
        config=config,
        provenance={
            "imported_from": str(p),
            "architecture": arch,
            "weights": WEIGHTS[0] if safetensors else WEIGHTS[1],
        },
        path=p,
    )


def _map_weights(hf: Any, base: Any, model: Any) -> set[str]:
    """Load each part of ``model`` from its Hugging Face counterpart; the HF state-dict names
    that were mapped."""
    kind = next(k for k in ("wav2vec2", "hubert", "wavlm") if hasattr(hf, k))
    prefix = f"{kind}."
    parts = {
        "feature_extractor": (base.feature_extractor, model.feature_extractor),
        "feature_projection": (base.feature_projection, model.feature_projection),
    }
    mapped: set[str] = set()
    for name, (src, dst) in parts.items():
        state = src.state_dict()
        _load(dst, state, f"{prefix}{name}")
        mapped |= {f"{prefix}{name}.{k}" for k in state}
    encoder = base.encoder.state_dict()
    hf_names = {f"{prefix}encoder.{k}" for k in encoder}
    if kind == "wavlm":  # q/k/v/out projections -> torchaudio's packed MultiheadAttention
        from torchaudio.models.wav2vec2.utils.import_huggingface import (
            transform_wavlm_encoder_state,
        )

        transform_wavlm_encoder_state(encoder, len(model.layers))
    routes = (("pos_conv_embed.", model.pos_conv_embed), ("layer_norm.", model.encoder_norm))
    for key_prefix, dst in routes:
        sub = {k[len(key_prefix) :]: v for k, v in encoder.items() if k.startswith(key_prefix)}
        _load(dst, sub, f"{prefix}encoder.{key_prefix}")
        mapped |= {f"{prefix}encoder.{key_prefix}{k}" for k in sub}
    layers = {k[len("layers.") :]: v for k, v in encoder.items() if k.startswith("layers.")}
    _load(model.layers, layers, f"{prefix}encoder.layers")
    mapped |= {n for n in hf_names if n.startswith(f"{prefix}encoder.layers.")}
    head = hf.lm_head.state_dict()
    _load(model.head, head, "lm_head")
    mapped |= {f"lm_head.{k}" for k in head}
    return mapped


def _load(module: Any, state: dict[str, Any], where: str) -> None:
    try:
        module.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()[0]
        raise CheckpointError(f"{where}: the weights do not fit dyncli's model ({first})") from None


def _tokenizer(path: Path, cfg: dict[str, Any], vocab_size: int) -> Any:
    from dyncli.text import VocabTokenizer

    vocab = _json(path, "vocab.json")
    if vocab and all(isinstance(v, dict) for v in vocab.values()):  # {lang: {token: id}}
        raise UsageError(f"{path}: a multi-lingual vocab.json is not supported")
    tokens = [""] * vocab_size
    for token, i in vocab.items():
        if not 0 <= int(i) < vocab_size:
            raise CheckpointError(f"{path}/vocab.json: id {i} outside the head's {vocab_size}")
        tokens[int(i)] = token
    extra = [i for i, t in enumerate(tokens) if not t]
    for i in extra:  # ids the head has but the vocabulary does not name (never decoded)
        tokens[i] = f"<unused{i}>"
    tok_cfg = _json(path, "tokenizer_config.json", required=False)
    pad = _token(tok_cfg.get("pad_token"), "<pad>")
    blank = int(cfg.get("pad_token_id", vocab.get(pad, 0)))
    return VocabTokenizer(
        tokens,
        blank,
        word_delimiter=_token(tok_cfg.get("word_delimiter_token"), "|"),
        unk=_token(tok_cfg.get("unk_token"), "<unk>"),
        lower=bool(tok_cfg.get("do_lower_case", False)),
    )


def _token(value: Any, default: str) -> str:
    if isinstance(value, dict):  # an AddedToken serialised as a dict
        value = value.get("content")
    return str(value) if value else default


@hookimpl
def register_checkpoint_readers(register: Callable[[Any], None]) -> None:
    register(
        CheckpointReaderSpec(
            name="huggingface",
            accepts=accepts,
            read=import_model,
            description="Hugging Face Wav2Vec2ForCTC / HubertForCTC / WavLMForCTC directories",
        )
    )


@hookimpl
def register_commands(cli: Any) -> None:
    import typer

    @cli.command("import")
    def import_command(
        hf_dir: Path = typer.Argument(..., help="A Hugging Face CTC model directory."),
        output: Path = typer.Option(..., "--output", "-o", help="The dyncli checkpoint to write."),
    ) -> None:
        """Import a Hugging Face CTC model directory (Wav2Vec2ForCTC, HubertForCTC, WavLMForCTC)
        as a dyncli checkpoint."""
        from dyncli.checkpoint import save_checkpoint
        from dyncli.fileio import check_output_path

        check_output_path(output, "--output")
        if not Path(hf_dir).is_dir() or not accepts(Path(hf_dir)):
            raise UsageError(f"{hf_dir}: not a model directory (config.json and weights)")
        ckpt = import_model(hf_dir)
        save_checkpoint(output, ckpt)
        typer.echo(
            f"imported {ckpt.provenance['architecture']} ({ckpt.model.num_layers} layers, "
            f"vocabulary {ckpt.tokenizer.vocab_size}, blank id {ckpt.model.blank_id}) -> {output}"
        )
