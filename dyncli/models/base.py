"""The interface every backbone implements, so dynamic-depth code is written once.

A CTC encoder is a pipeline whose middle part is a list of layers that can be run one by one::

    wave (B, N) --frontend--> feats (B, T_f, F) --embed--> x (B, T, D)
        --layers[0..L-1] (run_layer)--> x (B, T, D) --head--> log-probs (B, T, V)

Later features insert heads, gates and frame skipping between layers through ``run_layer``.

Early exits: ``attach_exits([4, 8])`` adds one CTC head after each named layer (1-based), kept in
``exit_heads`` (a ``ModuleDict`` keyed by the layer number as a string, each its own ``Linear``).
A static model has none, so its state dict is unchanged.

Exit heads come in two forms with the same weights (``exit_head_form``, recorded in the
checkpoint's method as ``exit_head``): ``softmax``, one softmax over the vocabulary, and
``factorized`` (``dyncli distill --factorized-head``), where the blank logit is a Bernoulli logit
of its own, P(blank) = sigmoid(z_blank), and the other logits give the distribution over the
non-blank tokens: log p(v) = log sigmoid(-z_blank) + log_softmax(z_non-blank)(v).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping

import torch

from dyncli.data.text import BLANK_ID
from dyncli.errors import UsageError
from dyncli.models.components import lengths_to_mask

EXIT_HEAD_FORMS = ("softmax", "factorized")

# A gate per block: a bool or float tensor (B,) (one decision per utterance), or a Python bool
# (the same for the whole batch; ``False`` bypasses the block). A block without an entry runs.
Gates = Mapping[str, "torch.Tensor | bool"]


def apply_gate(
    x: torch.Tensor,
    gate: torch.Tensor | bool,
    branch: Callable[[torch.Tensor | None], torch.Tensor],
    scale: float = 1.0,
) -> torch.Tensor:
    """``x + gate * scale * f(x)`` for one residual block, computing f only where needed.

    ``branch(rows)`` computes f on the utterances ``rows`` (None: all of them). A float gate
    (training: straight-through Gumbel) scales the branch, every row computed so its gradient
    exists; a bool gate decides: a closed block is not computed, and in a batch only the
    utterances whose gate is open run it. Every backbone's blocks go through here.
    """
    if gate is False:
        return x
    if gate is True:
        delta = branch(None)
        return torch.add(x, delta, alpha=scale) if scale != 1.0 else x + delta
    if gate.is_floating_point():
        return x + (gate.to(x.dtype) * scale).view(-1, 1, 1) * branch(None)
    if torch.compiler.is_exporting():  # a graph (batch 1): the decision is a graph branch
        if x.shape[0] != 1:
            raise UsageError("a gated block exports at batch 1 only")

        def run(h: torch.Tensor) -> torch.Tensor:
            return torch.add(h, branch(None), alpha=scale).reshape(-1)

        def bypass(h: torch.Tensor) -> torch.Tensor:
            return h.reshape(-1).clone()

        return torch.cond(gate.reshape(()), run, bypass, (x,)).reshape(x.shape)
    if bool(gate.all()):
        return apply_gate(x, True, branch, scale)
    if not bool(gate.any()):
        return x
    rows = gate.nonzero().squeeze(1)
    return x.index_add(0, rows, branch(rows), alpha=scale)


class CTCEncoder(torch.nn.Module):
    """Base class for backbones. Subclasses set ``frontend``, ``layers``, ``head``."""

    frontend: torch.nn.Module
    layers: torch.nn.ModuleList
    head: torch.nn.Linear
    sample_rate: int
    # Whether attention depends on frames' positions in the full sequence (WavLM's relative
    # bias): a policy that removes frames then passes each kept frame's position.
    relative_positions: bool = False

    def __init__(self) -> None:
        super().__init__()
        self.exit_heads = torch.nn.ModuleDict()
        self.exit_head_form = "softmax"
        # The CTC blank's output id. It belongs to the model and its vocabulary (dyncli's own
        # tokenizers put it at 0; a wav2vec2 vocabulary's blank is its <pad> token): decoding,
        # blank-skip, the CTC loss and factorized KD all read it from here.
        self.blank_id = BLANK_ID

    @property
    def exits(self) -> list[int]:
        """1-based layers that carry an intermediate CTC head, ascending."""
        return sorted(int(k) for k in self.exit_heads)

    def attach_exits(self, exits: list[int], init_from_final: bool = True) -> None:
        """Add an intermediate CTC head after each layer in ``exits`` (1-based, < num_layers).

        Each head is its own ``Linear(D, V)``; with ``init_from_final`` it starts as a copy of
        the final head's weights (a warm start: later layers refine the same representation).
        """
        for layer in exits:
            if not 1 <= layer < self.num_layers:
                raise ValueError(f"exit layer {layer} outside 1..{self.num_layers - 1}")
            head = torch.nn.Linear(self.head.in_features, self.head.out_features)
            if init_from_final:
                with torch.no_grad():
                    head.weight.copy_(self.head.weight)
                    head.bias.copy_(self.head.bias)
            self.exit_heads[str(layer)] = head.to(self.head.weight.device)

    def exit_log_probs(self, layer: int, x: torch.Tensor) -> torch.Tensor:
        """CTC log-probs (B, T, V) of the exit head after 1-based ``layer``, from (B, T, D)."""
        logits = self.exit_heads[str(layer)](self.head_input(x))
        if self.exit_head_form == "factorized":
            return factorized_log_probs(logits, self.blank_id)
        return torch.log_softmax(logits, dim=-1)

    def embed(
        self, feats: torch.Tensor, lengths: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Features (B, T_f, F) -> encoder input (B, T, D) and its lengths."""
        raise NotImplementedError

    def run_layer(
        self,
        index: int,
        x: torch.Tensor,
        pad_mask: torch.Tensor | None,
        gates: Gates | None = None,
        positions: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Run layer ``index`` on (B, T, D); ``pad_mask`` (B, T) is True on padding, or None.

        ``gates`` (a backbone that names its blocks, :meth:`blocks`): block name -> a (B,)
        tensor or a bool; a closed block is bypassed. ``positions`` (B, T): each frame's index
        in the full sequence when a policy removed frames; only a backbone with
        :attr:`relative_positions` reads it, the others ignore it.
        """
        raise NotImplementedError

    def run_layers(
        self,
        x: torch.Tensor,
        pad_mask: torch.Tensor | None,
        layers: Iterable[int] | None = None,
        positions: torch.Tensor | None = None,
        exits: dict[int, torch.Tensor] | None = None,
        gates: Callable[[int, torch.Tensor], Gates | None] | None = None,
        grad: bool = True,
    ) -> torch.Tensor:
        """The 0-based ``layers`` in the order given (every layer when None) on (B, T, D): the
        one loop every policy, training path and full-depth pass runs its layers through
        (early exit, which stops between layers, calls :meth:`run_layer` itself).

        ``exits``, when given (``layers`` then ascending), is filled with the CTC log-probs of
        every exit head (1-based layer -> (B, T, V)); an exit reads the output of the last
        layer run before it. ``gates(i, x)`` gives layer ``i``'s gates from its input (see
        :meth:`run_layer`). ``grad`` False: the layers record no gradients (a frozen
        backbone); the exit heads still do.
        """
        if exits is None and gates is None and grad:
            for i in range(self.num_layers) if layers is None else layers:
                if positions is None:  # (a plugin backbone need not know ``positions``)
                    x = self.run_layer(i, x, pad_mask)
                else:
                    x = self.run_layer(i, x, pad_mask, positions=positions)
            return x
        run = set(range(self.num_layers) if layers is None else layers)
        heads = set(self.exits) if exits is not None else set()
        for i in range(self.num_layers):
            if i in run:
                g = gates(i, x) if gates is not None else None
                with torch.set_grad_enabled(grad and torch.is_grad_enabled()):
                    if positions is not None:
                        x = self.run_layer(i, x, pad_mask, gates=g, positions=positions)
                    elif g is not None:
                        x = self.run_layer(i, x, pad_mask, gates=g)
                    else:
                        x = self.run_layer(i, x, pad_mask)
            if exits is not None and i + 1 in heads:
                exits[i + 1] = self.exit_log_probs(i + 1, x)
            if not heads and i >= max(run, default=-1):
                break
        return x

    def blocks(self, index: int) -> tuple[str, ...]:
        """The residual blocks of layer ``index`` in execution order, each ``x + f(x)`` that can
        be run or bypassed (a Conformer: ``ffn1``, ``attn``, ``conv``, ``ffn2``). A layer may
        also close with ``norm``, which always runs. A backbone that does not name its blocks
        returns ``()``: it runs whole layers only, and gates do not apply to it."""
        return ()

    def closing_block(self, index: int) -> str | None:
        """The name of the op that closes layer ``index`` after its residual blocks and always
        runs (a Conformer layer's LayerNorm: ``norm``), or None (a pre-norm Transformer)."""
        return None

    @property
    def gateable_blocks(self) -> tuple[str, ...]:
        """The blocks a gate may close (attention and feed-forward blocks); ``()`` if none."""
        return ()

    def run_block(
        self, index: int, name: str, x: torch.Tensor, pad_mask: torch.Tensor | None
    ) -> torch.Tensor:
        """The branch f(x) of block ``name`` of layer ``index`` (for ``norm``: the norm of x),
        so that FLOPs can be counted per block."""
        raise NotImplementedError(f"{type(self).__name__} does not name its blocks")

    @property
    def num_layers(self) -> int:
        return len(self.layers)

    def features(
        self, wave: torch.Tensor, lengths: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Waveforms (B, N) and sample counts (B,) -> features (B, T_f, F) and frame counts (B,).

        ``lengths`` may live on another device than ``wave`` (e.g. built on the host); the
        frame counts come back on the waveform's device.
        """
        feats, frames = self.frontend(wave, lengths)
        return feats, frames.to(wave.device)

    def encode_features(
        self, feats: torch.Tensor, frames: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Features -> final encoder output (B, T, D) and lengths, through every layer."""
        x, lengths = self.embed(feats, frames.to(feats.device))
        pad_mask = lengths_to_mask(lengths, x.shape[1]) if x.shape[0] > 1 else None
        return self.run_layers(x, pad_mask), lengths

    def head_input(self, x: torch.Tensor) -> torch.Tensor:
        """What every CTC head reads from a layer's output: ``x`` itself, or, for a pre-norm
        encoder, its final LayerNorm (so exit heads see what the final head was trained on)."""
        return x

    def log_probs(self, x: torch.Tensor) -> torch.Tensor:
        return torch.log_softmax(self.head(self.head_input(x)), dim=-1)

    def forward(
        self, wave: torch.Tensor, lengths: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Waveforms (B, N) and sample counts (B,) -> CTC log-probs (B, T, V) and lengths (B,)."""
        feats, frames = self.features(wave, lengths)
        x, out_lengths = self.encode_features(feats, frames)
        return self.log_probs(x), out_lengths

    def forward_exits(
        self, wave: torch.Tensor, lengths: torch.Tensor, layers: Iterable[int] | None = None
    ) -> tuple[dict[int, torch.Tensor], torch.Tensor]:
        """One pass; log-probs (B, T, V) at every exit and at ``num_layers`` (final). ``layers``
        (0-based, ascending): run only these (e.g. one left out to score the model without it);
        an exit reads the output of the last layer run before it. Default: every layer."""
        feats, frames = self.features(wave, lengths)
        x, out_lengths = self.embed(feats, frames.to(feats.device))
        pad_mask = lengths_to_mask(out_lengths, x.shape[1]) if x.shape[0] > 1 else None
        out: dict[int, torch.Tensor] = {}
        x = self.run_layers(x, pad_mask, layers, exits=out)
        out[self.num_layers] = self.log_probs(x)
        return out, out_lengths


def factorized_log_probs(logits: torch.Tensor, blank: int = BLANK_ID) -> torch.Tensor:
    """CTC log-probs from logits read in factorized form: the blank logit is a Bernoulli logit,
    the others a softmax over the non-blank tokens (see the module docstring)."""
    z_blank = logits[..., blank : blank + 1]
    rest = torch.cat([logits[..., :blank], logits[..., blank + 1 :]], dim=-1)
    nonblank = torch.nn.functional.logsigmoid(-z_blank) + torch.log_softmax(rest, dim=-1)
    blank_lp = torch.nn.functional.logsigmoid(z_blank)
    return torch.cat([nonblank[..., :blank], blank_lp, nonblank[..., blank:]], dim=-1)
