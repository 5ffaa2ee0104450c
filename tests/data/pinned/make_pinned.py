"""Regenerate the pinned ``profile`` reports of the bundled models (``demo_*.json`` here).

``tests/test_pinned_profile.py`` compares a fresh ``dyncli profile --format json`` of each
bundled model with these files, timing fields excluded (``tests/pinned_report.py`` says which
fields are kept and why). Regenerate only when a change is *meant* to alter those results, and
say so in CHANGELOG.md; a refactor (issue 19) must leave them as they are.

    .venv/bin/python tests/data/pinned/make_pinned.py            # rewrite both files
    .venv/bin/python tests/data/pinned/make_pinned.py --check    # compare only, exit 1 on change
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[2]
sys.path.insert(0, str(ROOT))  # for tests.pinned_report, when run as a script

from tests.pinned_report import COMMON_ARGS, MODELS, pinned_fields  # noqa: E402


def profile(name: str) -> dict:
    """``dyncli profile`` of the bundled model ``name``, as the pinned subset."""
    import dyncli

    checkpoint = Path(dyncli.__file__).resolve().parent / "assets" / f"{name}.ckpt"
    command = [sys.executable, "-m", "dyncli", "profile", str(checkpoint), *MODELS[name]]
    done = subprocess.run(
        [*command, *COMMON_ARGS], cwd=ROOT, capture_output=True, text=True, check=False
    )
    if done.returncode != 0:
        sys.exit(f"{' '.join(command)} exited {done.returncode}:\n{done.stderr}")
    return pinned_fields(json.loads(done.stdout))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="compare, do not write")
    args = parser.parse_args()
    changed = 0
    for name in MODELS:
        path = HERE / f"{name}.json"
        text = json.dumps(profile(name), indent=2) + "\n"
        if args.check:
            same = path.exists() and path.read_text() == text
            print(f"{path.name}: {'unchanged' if same else 'CHANGED'}")
            changed += not same
        else:
            path.write_text(text)
            print(f"wrote {path.relative_to(ROOT)}")
    return 1 if changed else 0


if __name__ == "__main__":
    sys.exit(main())
