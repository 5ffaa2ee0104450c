"""Skip-policy configurations (plain dataclasses; importing this module does not import torch).

Each registered skip policy has a ``name`` and one of these configs. A config knows the valid
range of its threshold and the default sweep ``dyncli profile`` runs.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from dyncli.errors import UsageError

# The command-line flag of each policy setting, where it is not --<setting>.
SETTING_FLAGS = {"layer": "--skip-layer", "neighbours": "--skip-neighbours"}


@dataclass
class BlankSkipConfig:
    """CTC blank-triggered layer skipping (arXiv 2401.02046).

    Layers 1..``layer`` always run. The exit head after ``layer`` gives each frame's blank
    posterior; frames with P(blank) >= ``threshold`` skip layers ``layer``+1..L and emit that
    head's posteriors. The ``neighbours`` frames on each side of every kept frame are kept too
    ("spike extension": label spikes and the convolution module keep their context).
    ``layer=None`` means the checkpoint's operating point, else the exit nearest mid-depth.
    """

    threshold: float = 0.9
    layer: int | None = None
    neighbours: int = 1
    # Pad the compacted width up to a multiple of this many frames (0: exact). Equal outputs
    # (the padding is masked), a small set of shapes: what CUDA graphs captured per length
    # bucket need. Off by default: on the CPU the padding is pure cost.
    bucket: int = 0

    def validate(self) -> None:
        if self.bucket < 0:
            raise UsageError(f"blank-skip bucket must be >= 0, got {self.bucket}")
        if not 0.0 < self.threshold <= 1.0:
            raise UsageError(
                f"blank-skip threshold {self.threshold} is out of range: it is a blank "
                "probability, 0 < threshold <= 1"
            )
        if self.neighbours < 0:
            raise UsageError(f"--skip-neighbours must be >= 0, got {self.neighbours}")


@dataclass
class EarlyExitConfig:
    """Utterance-level early exit (arXiv 2309.09546): stop at the first confident exit.

    ``entropy``: mean frame entropy of the exit's posteriors divided by log V (0 = certain,
    1 = uniform); exit when <= ``threshold``.
    ``posterior``: mean maximum posterior over the frames where the greedy path emits a token
    (blank frames are near-certain and would drown the score; if no token is emitted, all
    frames count); exit when >= ``threshold``.
    """

    threshold: float = 0.1
    criterion: str = "entropy"

    def validate(self) -> None:
        if self.criterion not in ("entropy", "posterior"):
            raise UsageError(
                f"early-exit criterion must be 'entropy' or 'posterior', got {self.criterion!r}"
            )
        if not 0.0 <= self.threshold <= 1.0:
            kind = "normalised entropy" if self.criterion == "entropy" else "posterior"
            raise UsageError(
                f"early-exit-{self.criterion} threshold {self.threshold} is out of range: "
                f"it is a {kind}, 0 <= threshold <= 1"
            )


@dataclass
class DropConfig:
    """Run a sub-network of ``threshold`` layers (a layer count, not a probability).

    The kept layers are evenly spaced over the depth, the first and the last always among them
    (indices round(i * (L - 1) / (N - 1)) for i = 0..N-1; N = 1 keeps the last layer, which
    feeds the head). Evenly spaced is what layer-drop training prepares a model for (every
    layer was trained to work after any earlier one being absent; Fan et al. 2019 found
    "every other layer" the best fixed pruning of such models); the first layer is the only
    one that has seen the subsampling's raw output, and the last the only one whose output
    the final head was trained on. The model needs no exits.
    """

    threshold: float = 6

    def validate(self) -> None:
        whole = math.isfinite(self.threshold) and self.threshold == int(self.threshold)
        if not whole or self.threshold < 1:
            raise UsageError(
                f"drop threshold {self.threshold:g} is not a layer count: give whole numbers "
                ">= 1 (the layers to run)"
            )


@dataclass
class GatesConfig:
    """I3D gates (arXiv 2303.07624): a block runs when its gate's open probability, from the
    model's gate predictor, is >= ``threshold`` (per utterance). Lower thresholds open more
    blocks; 0 runs every block. Needs a model made by ``convert --method gates``."""

    threshold: float = 0.5

    def validate(self) -> None:
        if not 0.0 <= self.threshold <= 1.0:
            raise UsageError(
                f"gates threshold {self.threshold} is out of range: it is a gate-open "
                "probability, 0 <= threshold <= 1"
            )
