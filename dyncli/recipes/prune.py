"""``dyncli prune``: iterative layer pruning, the static baseline dynamic depth is judged against.

As in the I3D paper's baseline (arXiv 2303.07624), layers are removed one at a time from a trained
static model, with a short fine-tuning after each removal, until ``keep`` layers remain:

1. Score every remaining layer by the dev WER of the model without it (the layer bypassed; ties
   broken by dev CER, then by the later layer). That is the criterion the method is named for,
   measured rather than estimated: on a dev set of a few hundred words it costs one greedy pass
   per candidate (about a second each for the demo model), far less than the fine-tuning, and
   a cheaper proxy (weight or activation norms) would need its own justification on CTC models.
2. Remove the layer whose removal costs the least: the model is rebuilt with one layer fewer,
   the other layers' weights carried over in order.
3. Fine-tune the smaller model on the training engine (every training option applies to each
   round: ``--epochs``/``--max-steps`` are per round), keep its best epoch by dev WER.

The result is a static checkpoint with ``keep`` layers (its config says so) that every command
accepts; its method record is None (static) and its provenance says which layers of the
original it kept and what each round cost on dev. Each finished round is kept in the run
directory, so ``--resume`` continues from the last one.
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from dyncli.checkpoint import Checkpoint, file_sha256, load_checkpoint, save_checkpoint
from dyncli.errors import UsageError
from dyncli.models.base import CTCEncoder
from dyncli.recipes.common import RunOptions, run_engine, seed_everything, start
from dyncli.training.augment import AugmentConfig
from dyncli.training.config import Reporter, SilentReporter, TrainConfig, TrainResult
from dyncli.training.data import load_data, provenance
from dyncli.training.objectives import FinalCTC, FullDepth
from dyncli.training.rundir import remove_run_dir
from dyncli.training.trainer import dev_scores, publish


def prune_defaults() -> TrainConfig:
    """Per-round fine-tuning defaults: one short epoch at a fine-tuning learning rate."""
    return TrainConfig(epochs=1, lr=3e-4, warmup_steps=30, augment=AugmentConfig(ramp_steps=0))


@dataclass
class PruneRound:
    removed: int  # index in the original model (0-based)
    removed_now: int  # index in the model of that round (0-based)
    dev_wer_without: float  # before fine-tuning
    dev_wer_after: float  # after fine-tuning
    candidates: list[dict[str, Any]] = field(default_factory=list)


@dataclass
class PruneResult:
    output: Path
    kept: list[int]  # original 0-based indices of the layers kept
    rounds: list[PruneRound]
    train: list[TrainResult]


def with_layers(config: Any, count: int, backbone: str) -> Any:
    """``config`` with ``count`` encoder layers (``num_layers`` or ``encoder_num_layers``)."""
    fields = {f.name for f in dataclasses.fields(config)}
    for name in ("num_layers", "encoder_num_layers"):
        if name in fields:
            return dataclasses.replace(config, **{name: count})
    raise UsageError(f"the {backbone} config names no layer count: cannot prune it")


def without_layer(model: CTCEncoder, index: int, backbone: str, config: Any) -> CTCEncoder:
    """A new model with layer ``index`` removed: one layer fewer in its config, every other
    weight carried over (layers after ``index`` move up by one)."""
    from dyncli.registry.manager import get_backbone

    smaller = get_backbone(backbone).build(
        with_layers(config, model.num_layers - 1, backbone), int(model.head.out_features)
    )
    smaller.blank_id = model.blank_id
    state = {}
    for key, value in model.state_dict().items():
        if key.startswith("layers."):
            i, rest = key[len("layers.") :].split(".", 1)
            j = int(i)
            if j == index:
                continue
            key = f"layers.{j - 1 if j > index else j}.{rest}"
        state[key] = value
    smaller.load_state_dict(state, strict=True)
    return smaller.to(model.head.weight.device)


def score_candidates(
    model: CTCEncoder, ckpt: Checkpoint, dev: list[Any], device: torch.device
) -> list[dict[str, Any]]:
    """Dev WER and CER of the model without each layer (bypassed), best candidate first."""
    out = []
    for skip in range(model.num_layers):
        rest = [i for i in range(model.num_layers) if i != skip]
        rates = dev_scores(model, ckpt.tokenizer, dev, device, layers=rest)[model.num_layers]
        out.append({"layer": skip, "dev_wer": rates.wer, "dev_cer": rates.cer})
    return sorted(out, key=lambda c: (c["dev_wer"], c["dev_cer"], -c["layer"]))


def finished_rounds(run_dir: Path) -> list[Path]:
    """The finished rounds' checkpoints kept in ``run_dir`` (``round-N.ckpt``)."""
    if not run_dir.is_dir():
        return []
    found = [p for p in run_dir.glob("round-*.ckpt") if re.fullmatch(r"round-\d+\.ckpt", p.name)]
    return sorted(found, key=lambda p: int(p.name[6:-5]))


def _round_dirs(run_dir: Path) -> list[Path]:
    return sorted(run_dir.glob("round-*.run")) if run_dir.is_dir() else []


def prune(
    *,
    checkpoint: str | Path,
    output: str | Path,
    keep: int,
    train_manifest: str | Path,
    dev_manifest: str | Path,
    config: TrainConfig | None = None,
    reporter: Reporter,
    run: RunOptions | None = None,
) -> PruneResult:
    """Remove layers from the static model at ``checkpoint`` until ``keep`` remain."""
    if Path(output).resolve() == Path(checkpoint).resolve():
        raise UsageError("-o must differ from the input checkpoint (the static model is kept)")
    cfg = config or prune_defaults()
    run = run or RunOptions()
    static = load_checkpoint(checkpoint)
    if static.method is not None:
        raise UsageError(
            f"{checkpoint}: a dynamic checkpoint (method {static.method.get('name')!r}); prune "
            "the static model it came from"
        )
    depth = static.model.num_layers
    if not 1 <= keep < depth:
        raise UsageError(f"--keep must lie in 1..{depth - 1} (the model has {depth} layers)")
    run_dir = run.directory(output)
    finished = finished_rounds(run_dir)
    if run.resume and not finished and not _round_dirs(run_dir):
        raise UsageError(f"--resume: {run_dir} holds no prune round (nothing to resume)")
    if not run.resume and (finished or _round_dirs(run_dir)):
        raise UsageError(
            f"{run_dir} holds {len(finished)} finished prune round(s) of an unfinished run: pass "
            "--resume to continue it, or remove that directory to start over"
        )
    device, world = start(cfg, run, output)
    if world.distributed:
        raise UsageError("prune runs in one process (its rounds score candidates on dev)")
    reporter = reporter if world.main else SilentReporter()
    seed_everything(cfg.seed)
    data = load_data(train_manifest, dev_manifest, static.model.sample_rate, cfg, reporter)
    prov = provenance(train_manifest, dev_manifest, data, cfg)
    prov["pruned_from"] = str(checkpoint)
    prov["pruned_from_sha256"] = file_sha256(checkpoint)

    current = static
    kept = list(range(depth))
    rounds: list[PruneRound] = []
    results: list[TrainResult] = []
    base = dev_scores(current.model.to(device), current.tokenizer, data.dev, device)
    reporter.message(
        f"prune: {depth} -> {keep} layers; full model dev WER {100 * base[depth].wer:.2f}%"
    )
    for number in range(1, depth - keep + 1):
        done = run_dir / f"round-{number}.ckpt"
        if run.resume and done.exists():
            current = load_checkpoint(done)
            record = current.provenance.get("prune_rounds", [])[-1]
            kept = list(current.provenance["kept_layers"])
            rounds = [PruneRound(**r) for r in current.provenance.get("prune_rounds", [])]
            reporter.message(
                f"round {number}: done earlier (removed layer {record['removed'] + 1} of the "
                "original)"
            )
            continue
        model = current.model.to(device)
        candidates = score_candidates(model, current, data.dev, device)
        best = candidates[0]
        removed = kept.pop(best["layer"])
        smaller = without_layer(model, best["layer"], current.backbone, current.config)
        reporter.message(
            f"round {number}: remove layer {removed + 1} of the original (dev WER without it "
            f"{100 * best['dev_wer']:.2f}%); fine-tuning {smaller.num_layers} layers"
        )
        seed_everything(cfg.seed + number)
        round_out = run_dir / f"round-{number}.tmp.ckpt"
        round_dir = run_dir / f"round-{number}.run"
        round_prov = {
            **prov,
            "kept_layers": list(kept),
            "prune_rounds": [dataclasses.asdict(r) for r in rounds],
        }
        config_now = with_layers(current.config, smaller.num_layers, current.backbone)
        result = run_engine(
            model=smaller,
            tokenizer=current.tokenizer,
            backbone=current.backbone,
            model_config=config_now,
            data=data,
            output=round_out,
            config=cfg,
            method=None,
            provenance=round_prov,
            objectives=[(FinalCTC(), 1.0)],
            path=FullDepth(),
            reporter=reporter,
            device=device,
            world=world,
            # A round killed before its first state save has nothing to resume: it starts over.
            run=RunOptions(
                run_dir=round_dir, resume=run.resume and (round_dir / "state.pt").is_file()
            ),
            fingerprint={"prune_round": number, "kept_layers": list(kept)},
        )
        publish(world, round_dir, round_out)
        results.append(result)
        current = load_checkpoint(round_out)
        rounds.append(
            PruneRound(
                removed=removed,
                removed_now=best["layer"],
                dev_wer_without=best["dev_wer"],
                dev_wer_after=result.best_dev_wer,
                candidates=candidates,
            )
        )
        current.provenance["kept_layers"] = list(kept)
        current.provenance["prune_rounds"] = [dataclasses.asdict(r) for r in rounds]
        save_checkpoint(done, current)
        round_out.unlink(missing_ok=True)
    current.provenance["pruned_to"] = keep
    save_checkpoint(output, current)  # written once, when every round has finished
    remove_run_dir(run_dir)
    return PruneResult(output=Path(output), kept=kept, rounds=rounds, train=results)
