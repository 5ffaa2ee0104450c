"""The training loop every training command runs on, in one process or under torchrun.

The :class:`Trainer` owns the loop (length-bucketed global batches sharded over ranks),
AMP on CUDA, gradient clipping, dev scoring (sharded over ranks and gathered), best-by-dev,
patience and the run directory. Only rank 0 reports and writes.

The run directory (default ``OUT.run/``) holds the in-progress state:

* ``state.pt``: everything a resumed run needs to end where an uninterrupted run would: model,
  optimizer, scheduler, step, the epoch's batches and how many ran, every rank's RNG states,
  the history and the best-so-far. Written atomically every ``save_every`` steps and at each
  epoch end, so a kill at any moment (during the write included) leaves the previous state.
* ``best.ckpt``: the best epoch's checkpoint so far.

The output is written once, by :func:`publish`, when the run ends; the run directory is then
removed. ``--resume`` continues from ``state.pt``.
"""

from __future__ import annotations

import math
import os
import random
import shutil
import signal
import statistics
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass
from functools import partial
from pathlib import Path
from typing import Any

import torch

from dyncli.checkpoint import Checkpoint, NonFiniteWeights, load_checkpoint, save_checkpoint
from dyncli.data.dataset import Utterance, pad_waves
from dyncli.data.sampler import bucket_batches, epoch_batches, shard
from dyncli.data.text import Tokenizer
from dyncli.decoding import greedy_ctc
from dyncli.errors import CheckpointError, JobFailed, UsageError
from dyncli.fileio import atomic_write
from dyncli.metrics import ErrorRates, error_rates
from dyncli.models.base import CTCEncoder
from dyncli.training import distributed
from dyncli.training.augment import perturb_waves, spec_augment, warp_factors
from dyncli.training.config import Reporter, SilentReporter, TrainConfig, TrainResult
from dyncli.training.data import TrainData
from dyncli.training.distributed import World
from dyncli.training.module import TrainingModule
from dyncli.training.objectives import Batch
from dyncli.training.rundir import remove_run_dir

STATE_FORMAT = "dyncli-train-state"
STATE_VERSION = 1
# Fault injection for the resume tests: SIGKILL this process right after the state of this
# step has been written (a real kill, not an exception).
FAULT_ENV = "DYNCLI_KILL_AFTER_STATE"


def default_run_dir(output: str | Path) -> Path:
    out = Path(output)
    return out.with_name(out.name + ".run")


def lr_lambda(cfg: TrainConfig, total: int) -> Callable[[int], float]:
    """Linear warm-up to the peak, then cosine decay to ``min_lr_ratio`` of it."""

    def f(step: int) -> float:
        if step < cfg.warmup_steps:
            return (step + 1) / cfg.warmup_steps
        progress = min(1.0, (step - cfg.warmup_steps) / max(1, total - cfg.warmup_steps))
        cosine = 0.5 * (1 + math.cos(math.pi * progress))
        return cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * cosine

    return f


@dataclass
class Progress:
    """Where the loop stands; with the RNG states, what ``state.pt`` restores."""

    step: int = 0
    epoch: int = 1
    position: int = 0  # batches of this epoch already run
    batches: list[list[int]] | None = None  # this epoch's global batches, once drawn
    epoch_loss: float = 0.0
    epoch_steps: int = 0
    stale: int = 0
    finished: bool = False


class Trainer:
    """Runs ``module`` over ``data`` and keeps the best epoch's checkpoint in ``run_dir``."""

    def __init__(
        self,
        *,
        module: TrainingModule,
        tokenizer: Tokenizer,
        data: TrainData,
        config: TrainConfig,
        device: torch.device,
        world: World,
        run_dir: Path,
        make_checkpoint: Callable[[CTCEncoder, dict[str, Any]], Checkpoint],
        reporter: Reporter,
        resume: bool = False,
        fingerprint: dict[str, Any] | None = None,
    ) -> None:
        self.module = module
        self.model = module.model
        self.tokenizer = tokenizer
        self.data = data
        self.cfg = config
        self.device = device
        self.world = world
        self.run_dir = run_dir
        self.make_checkpoint = make_checkpoint
        self.reporter = reporter if world.main else SilentReporter()
        self.resume = resume
        self.fingerprint = plain_fingerprint({**(fingerprint or {}), "world_size": world.size})
        self.targets = [tokenizer.encode(u.text) for u in data.train]
        self.lengths = [u.samples for u in data.train]
        self.batch_samples = int(config.batch_seconds * self.model.sample_rate)
        seed = config.seed
        self.rng = random.Random(seed)  # the global batch order: the same on every rank
        self.aug_gen = torch.Generator().manual_seed(seed + 7919 * world.rank)
        torch.manual_seed(seed + world.rank)  # dropout
        self.trainable = module.trainable_parameters()
        self.optimizer = torch.optim.AdamW(
            module.param_groups(config.lr), lr=config.lr, weight_decay=config.weight_decay
        )
        per_epoch = len(
            epoch_batches(
                self.lengths,
                self.batch_samples,
                config.max_batch_size,
                random.Random(0),
                world.size,
            )
        )
        if per_epoch == 0:
            raise UsageError(
                f"no training batch holds {world.size} utterances: too few utterances for "
                f"{world.size} processes"
            )
        total = per_epoch * config.epochs
        self.total = min(total, config.max_steps) if config.max_steps is not None else total
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lr_lambda(config, self.total)
        )
        self.ddp: torch.nn.Module = module
        if world.distributed:
            from torch.nn.parallel import DistributedDataParallel

            # Paths that leave parameters unused on a step (skip-aware steps, dropped layers,
            # a frozen backbone) need DDP to look for them.
            self.ddp = DistributedDataParallel(module, find_unused_parameters=True)
        self.progress = Progress()
        self.history: list[dict[str, Any]] = []
        self.best: dict[str, Any] | None = None
        self.resumed_from: int | None = None

    # --- state ------------------------------------------------------------------------------

    @property
    def state_path(self) -> Path:
        return self.run_dir / "state.pt"

    @property
    def best_path(self) -> Path:
        return self.run_dir / "best.ckpt"

    def _rng_state(self) -> dict[str, Any]:
        state: dict[str, Any] = {
            "aug": self.aug_gen.get_state(),
            "path": _path_generator_state(self.module),
            "torch": torch.get_rng_state(),
        }
        if self.device.type == "cuda":
            state["cuda"] = torch.cuda.get_rng_state(self.device)
        return state

    def save_state(self) -> None:
        rngs = distributed.all_gather_objects(self.world, self._rng_state())
        if not self.world.main:
            return
        p = self.progress
        state = {
            "format": STATE_FORMAT,
            "format_version": STATE_VERSION,
            "fingerprint": self.fingerprint,
            "progress": asdict(p),
            "python_rng": _plain_rng(self.rng.getstate()),
            "rngs": rngs,
            "model": {k: v.detach().cpu() for k, v in self.model.state_dict().items()},
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "history": self.history,
            "best": self.best,
        }
        atomic_write(self.state_path, lambda fh: torch.save(state, fh))
        kill_at = os.environ.get(FAULT_ENV)
        if kill_at and int(kill_at) == p.step:
            os.kill(os.getpid(), signal.SIGKILL)

    def load_state(self) -> None:
        path = self.state_path
        if not path.is_file():
            raise UsageError(f"--resume: no run state at {path} (nothing to resume)")
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:  # noqa: BLE001 - any unreadable file gets one line
            first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
            raise CheckpointError(f"{path}: unreadable run state ({first})") from None
        if not isinstance(state, dict) or state.get("format") != STATE_FORMAT:
            raise CheckpointError(f"{path}: not a dyncli run state")
        if state.get("format_version") != STATE_VERSION:
            raise CheckpointError(f"{path}: run state version {state.get('format_version')!r}")
        saved = state["fingerprint"]
        if saved != self.fingerprint:
            keys = sorted(
                k
                for k in set(saved) | set(self.fingerprint)
                if saved.get(k) != self.fingerprint.get(k)
            )
            raise UsageError(
                f"--resume: {path} was written by a run with other settings ({', '.join(keys)} "
                "differ); resume with the same options, or remove the run directory"
            )
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.progress = Progress(**state["progress"])
        self.rng.setstate(_rng_tuple(state["python_rng"]))
        rngs = state["rngs"][self.world.rank]
        self.aug_gen.set_state(rngs["aug"])
        _set_path_generator_state(self.module, rngs["path"])
        torch.set_rng_state(rngs["torch"])
        if "cuda" in rngs and self.device.type == "cuda":
            torch.cuda.set_rng_state(rngs["cuda"], self.device)
        self.history = list(state["history"])
        self.best = state["best"]
        self.resumed_from = self.progress.step

    def prepare_run_dir(self) -> None:
        """A fresh run refuses to overwrite the state of an unfinished one."""
        if self.resume:
            self.load_state()
            return
        if self.world.main:
            if self.state_path.exists():
                raise UsageError(
                    f"{self.run_dir} holds the state of an unfinished run: pass --resume to "
                    "continue it, or remove that directory to start over"
                )
            self.run_dir.mkdir(parents=True, exist_ok=True)
        distributed.barrier(self.world)

    # --- the loop ---------------------------------------------------------------------------

    def make_batch(self, ids: list[int], global_size: int) -> Batch:
        cfg = self.cfg
        aug = cfg.augment
        prob = aug.probability(self.progress.step)
        waves = [self.data.train[i].wave for i in ids]
        if aug.enabled:
            waves = perturb_waves(waves, aug, self.aug_gen, prob)
        wave, lens = pad_waves(waves)
        warp = None
        spec = None
        if aug.enabled:
            warp = warp_factors(len(ids), aug, self.aug_gen, prob).to(self.device)
            if aug.freq_masks or aug.time_masks:
                spec = partial(_spec_augment, aug=aug, gen=self.aug_gen, prob=prob)
        return Batch(
            ids=ids,
            wave=wave.to(self.device),
            lengths=lens.to(self.device),
            targets=[self.targets[i] for i in ids],
            warp=warp,
            spec=spec,
            augmented=aug.enabled,
            scale=len(ids) * self.world.size / global_size,
        )

    def train_step(self, batch: Batch) -> float:
        amp = self.cfg.amp and self.device.type == "cuda"
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=amp):
            loss, _terms = self.ddp(batch)
        value = float(distributed.mean(self.world, loss.detach()).item())
        if not math.isfinite(value):
            raise JobFailed(
                f"training diverged at step {self.progress.step + 1} (loss {value}); "
                "lower --lr or raise --warmup-steps"
            )
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.trainable, self.cfg.grad_clip)
        self.optimizer.step()
        self.scheduler.step()
        return value

    def fit(self) -> TrainResult:
        started = time.perf_counter()
        self.prepare_run_dir()
        cfg, p = self.cfg, self.progress
        self.reporter.start(self.total)
        while not p.finished:
            if p.batches is None:
                p.batches = epoch_batches(
                    self.lengths,
                    self.batch_samples,
                    cfg.max_batch_size,
                    self.rng,
                    self.world.size,
                )
            self.module.train()
            while p.position < len(p.batches) and p.step < self.total:
                global_batch = p.batches[p.position]
                ids = shard(global_batch, self.lengths, self.world.rank, self.world.size)
                loss = self.train_step(self.make_batch(ids, len(global_batch)))
                p.step += 1
                p.position += 1
                p.epoch_loss += loss
                p.epoch_steps += 1
                self.reporter.step(p.step, loss, float(self.scheduler.get_last_lr()[0]))
                if p.step % cfg.save_every == 0:
                    self.save_state()
            self.end_epoch(started)
            self.save_state()
        return self.result(started)

    def end_epoch(self, started: float) -> None:
        cfg, p = self.cfg, self.progress
        scores = dev_scores(self.model, self.tokenizer, self.data.dev, self.device, self.world)
        final = scores[self.model.num_layers]
        exits = self.model.exits
        summary: dict[str, Any] = {
            "epoch": p.epoch,
            "step": p.step,
            "train_loss": p.epoch_loss / max(1, p.epoch_steps),
            "dev_wer": final.wer,
            "dev_cer": final.cer,
            "seconds": time.perf_counter() - started,
        }
        if exits:
            summary["dev_exit_wer"] = {str(k): scores[k].wer for k in exits}
        # With exits, the mean over all heads (final and exits): every exit is judged.
        key = [
            statistics.fmean(r.wer for r in scores.values()),
            statistics.fmean(r.cer for r in scores.values()),
        ]
        summary["select"] = key[0]
        improved = self.best is None or key < self.best["key"]
        summary["best"] = improved
        self.history.append(summary)
        if improved:
            self.best = {**summary, "key": key}
            p.stale = 0
            metrics: dict[str, Any] = {
                "dev_wer": final.wer,
                "dev_cer": final.cer,
                "epoch": p.epoch,
                "step": p.step,
            }
            if exits:
                metrics["dev_exit_wer"] = summary["dev_exit_wer"]
            if self.world.main:
                try:
                    save_checkpoint(self.best_path, self.make_checkpoint(self.model, metrics))
                except NonFiniteWeights as exc:
                    raise JobFailed(
                        f"training diverged at epoch {p.epoch}: {exc.count} weight tensors "
                        f"hold NaN or Inf (first: {exc.tensor}); nothing was saved; "
                        "lower --lr or raise --warmup-steps"
                    ) from None
        else:
            p.stale += 1
        self.reporter.epoch(summary)
        out_of_patience = cfg.patience is not None and p.stale >= cfg.patience
        p.finished = p.step >= self.total or p.epoch >= cfg.epochs or out_of_patience
        p.epoch += 1
        p.position, p.batches, p.epoch_loss, p.epoch_steps = 0, None, 0.0, 0

    def result(self, started: float) -> TrainResult:
        best = self.best
        assert best is not None
        return TrainResult(
            output=self.best_path,
            best_epoch=int(best["epoch"]),
            best_dev_wer=float(best["dev_wer"]),
            best_dev_cer=float(best["dev_cer"]),
            history=self.history,
            skipped=self.data.skipped,
            seconds=time.perf_counter() - started,
            best_dev_exit_wer=dict(best.get("dev_exit_wer") or {}),
            resumed_from_step=self.resumed_from,
        )


def publish(
    world: World,
    run_dir: Path,
    output: str | Path,
    transform: Callable[[Checkpoint], Checkpoint] | None = None,
) -> None:
    """Write the output once, from the run's best checkpoint, then remove the run directory.

    ``transform`` (e.g. storing an operating point) runs on the loaded best checkpoint first.
    """
    if world.main:
        best = run_dir / "best.ckpt"
        if not best.is_file():
            raise JobFailed(
                f"{run_dir}: the run finished but its best checkpoint {best.name} is gone "
                "(the run directory was cleaned up in part); remove the run directory and "
                "train again"
            )
        if transform is None:
            # Copied through the atomic writer, not renamed: the run directory may be on
            # another file system, and the output may be a symlink (followed) or keep a mode.
            with open(best, "rb") as src:
                atomic_write(output, lambda fh: shutil.copyfileobj(src, fh, 1 << 20))
        else:
            save_checkpoint(output, transform(load_checkpoint(best)))
        remove_run_dir(run_dir)
    distributed.barrier(world)


def _spec_augment(
    feats: torch.Tensor, frames: torch.Tensor, *, aug: Any, gen: torch.Generator, prob: float
) -> torch.Tensor:
    return spec_augment(feats.cpu(), frames.cpu(), aug, gen, prob).to(feats.device)


def _path_generator_state(module: TrainingModule) -> torch.Tensor | None:
    gen = getattr(module.path, "generator", None)
    return gen.get_state() if isinstance(gen, torch.Generator) else None


def _set_path_generator_state(module: TrainingModule, state: torch.Tensor | None) -> None:
    gen = getattr(module.path, "generator", None)
    if isinstance(gen, torch.Generator) and state is not None:
        gen.set_state(state)


def _plain_rng(state: tuple[Any, ...]) -> list[Any]:
    version, internal, gauss = state
    return [version, list(internal), gauss]


def _rng_tuple(state: list[Any]) -> tuple[Any, ...]:
    version, internal, gauss = state
    return (version, tuple(internal), gauss)


def plain_fingerprint(value: Any) -> Any:
    from dyncli.checkpoint import plain_types

    return plain_types(value)


@torch.inference_mode()
def scoring_policy(model: CTCEncoder) -> Any:
    """The policy a registered method scores ``model`` with on dev (None: full depth)."""
    from dyncli.registry.manager import methods

    for spec in methods().values():
        if spec.dev_policy is not None:
            policy = spec.dev_policy(model)
            if policy is not None:
                return policy
    return None


def dev_scores(
    model: CTCEncoder,
    tokenizer: Tokenizer,
    utts: list[Utterance],
    device: torch.device,
    world: World | None = None,
    batch_size: int = 16,
    layers: Iterable[int] | None = None,
) -> dict[int, ErrorRates]:
    """Greedy WER/CER of every head (exits and final, keyed by 1-based layer), one pass each.

    A model that a method scores as it will run (``MethodSpec.dev_policy``: a gated model, with
    the gates policy at threshold 0.5) has its final head's transcripts from that policy, so the
    best epoch is the best model as it runs, not the best full-depth one.

    ``layers`` (0-based): score the model running only these (``prune`` leaves one out);
    default every layer.

    Under torchrun each rank decodes every ``world_size``-th utterance and the transcripts are
    gathered, so every rank computes the same scores from one pass over the dev set.
    """
    gated = scoring_policy(model)
    if gated is not None and layers is not None:
        raise ValueError("dev_scores: a model scored with its policy runs all its layers")
    world = world or World()
    was_training = model.training
    model.eval()
    mine = list(range(world.rank, len(utts), world.size))
    lengths = [utts[i].samples for i in mine]
    batches = bucket_batches(lengths, 10**12, batch_size, shuffle=False)
    heads = [model.num_layers] if gated is not None else [*model.exits, model.num_layers]
    hyps: dict[int, dict[int, str]] = {k: {} for k in heads}
    for batch in batches:
        idx = [mine[j] for j in batch]
        wave, lens = pad_waves([utts[i].wave for i in idx])
        if gated is None:
            outs, out_lens = model.forward_exits(wave.to(device), lens.to(device), layers)
        else:  # one pass as the model runs, scoring the final head only
            feats, frames = model.features(wave.to(device), lens.to(device))
            x, out_lens = model.embed(feats, frames)
            outs = {model.num_layers: gated.encode(model, x, out_lens).log_probs}
        for layer, lp in outs.items():
            for i, ids in zip(idx, greedy_ctc(lp, out_lens, model.blank_id), strict=True):
                hyps[layer][i] = tokenizer.decode(ids)
    model.train(was_training)
    merged: dict[int, dict[int, str]] = {k: {} for k in heads}
    for part in distributed.all_gather_objects(world, hyps):
        for layer in heads:
            merged[layer].update(part[layer])
    refs = [u.text for u in utts]
    return {
        layer: error_rates(refs, [merged[layer][i] for i in range(len(utts))]) for layer in heads
    }
