"""``dyncli inspect``: summarise a checkpoint."""

from __future__ import annotations

from typing import Any

from dyncli.cli.options import CheckpointArg, JsonOpt

NAME = "inspect"


def run(checkpoint: CheckpointArg, json_path: JsonOpt = None) -> None:
    """Print a checkpoint's architecture, size, tokenizer, method and provenance."""
    from rich.table import Table

    from dyncli.checkpoint import summarize
    from dyncli.cli.output import print_table
    from dyncli.cli.render import write_json
    from dyncli.fileio import check_output_path

    if json_path is not None:
        check_output_path(json_path, "--json", allow_stdout=True)
    info = summarize(checkpoint)
    if json_path is not None:
        write_json(json_path, info)
        if str(json_path) == "-":
            return
    cfg = info["config"]
    table = Table(title=f"dyncli inspect: {checkpoint}", show_header=False)
    table.add_column("field", style="bold")
    table.add_column("value")
    rows = [
        ("backbone", info["backbone"]),
        ("parameters", f"{info['parameters'] / 1e6:.2f} M (stored as {info['stored_dtype']})"),
        ("layers", str(info["layers"])),
        (
            "width",
            f"d_model {cfg.get('d_model')}, heads {cfg.get('num_heads')}, ffn {cfg.get('ffn_dim')}",
        ),
        (
            "CTC heads",
            str(info["ctc_heads"])
            + (f" (exits after layers {info['exits']})" if info["exits"] else ""),
        ),
        ("tokenizer", f"{info['tokenizer']} ({info['vocab_size']} classes incl. blank)"),
        ("sample rate", f"{info['sample_rate']} Hz"),
        ("method", info["method"] + distilled(info["distillation"])),
        (
            "operating point",
            ", ".join(f"{k}={v}" for k, v in (info["operating_point"] or {}).items()) or "-",
        ),
        (
            "metrics",
            ", ".join(
                f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}"
                for k, v in info["metrics"].items()
            )
            or "-",
        ),
        (
            "trained on",
            f"{info['provenance'].get('train_manifest', '-')} "
            f"(sha256 {str(info['provenance'].get('train_fingerprint', '-'))[:12]})",
        ),
        ("sha256", info["sha256"]),
    ]
    for k, v in rows:
        table.add_row(k, v)
    print_table(table)


def distilled(record: dict[str, Any] | None) -> str:
    """', distilled: factorized-kd (teacher: self)' for a distilled checkpoint, else ''."""
    if not record:
        return ""
    teacher = record.get("teacher") or {}
    kind = teacher.get("kind")
    who = "its own full depth" if kind == "self" else teacher.get("path") or kind or "?"
    return f", distilled: {record.get('method', '?')} (teacher: {who})"
