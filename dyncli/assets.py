"""Paths of the bundled demo model and evaluation set (shipped inside the package)."""

from __future__ import annotations

from pathlib import Path

ASSETS = Path(__file__).resolve().parent / "assets"
DEMO_STATIC = ASSETS / "demo_static.ckpt"
DEMO_DYNAMIC = ASSETS / "demo_dynamic.ckpt"
EVAL_MANIFEST = ASSETS / "eval" / "manifest.jsonl"


def require(path: Path, what: str) -> Path:
    from dyncli.errors import InputError

    if not path.exists():
        raise InputError(
            f"the bundled {what} is missing ({path}); reinstall dyncli or pass a path explicitly"
        )
    return path
