"""``dyncli train``: a CTC model from scratch (with intermediate exit heads when asked)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from dyncli.data.text import build_tokenizer
from dyncli.errors import UsageError
from dyncli.methods.early_exit import early_exit_method
from dyncli.models.config import sample_rate_of
from dyncli.recipes.common import (
    RunOptions,
    ctc_objectives,
    exit_path,
    prepare_run,
    run_engine,
)
from dyncli.registry.manager import get_backbone
from dyncli.training.config import (
    ExitTraining,
    Reporter,
    TrainConfig,
    TrainResult,
    check_exits,
)
from dyncli.training.trainer import publish


def train(
    *,
    train_manifest: str | Path,
    dev_manifest: str | Path,
    output: str | Path,
    backbone: str = "conformer",
    model_config: Any = None,
    config: TrainConfig | None = None,
    exits: ExitTraining | None = None,
    reporter: Reporter,
    run: RunOptions | None = None,
) -> TrainResult:
    """Train a CTC model from scratch (with intermediate exit heads when ``exits`` names any);
    write the checkpoint with the best dev WER to ``output`` when the run ends."""
    cfg = config or TrainConfig()
    run = run or RunOptions()
    spec = get_backbone(backbone)
    model_config = model_config or spec.presets.get("demo") or next(iter(spec.presets.values()))
    exit_cfg = exits or ExitTraining()
    if exit_cfg.freeze_backbone:
        raise UsageError("--freeze-backbone needs a trained backbone: use 'dyncli convert'")
    job = prepare_run(
        cfg, run, output, reporter, train_manifest, dev_manifest, sample_rate_of(model_config)
    )
    tokenizer = build_tokenizer(cfg.tokenizer, [u.text for u in job.data.train], cfg.vocab_size)
    model = spec.build(model_config, tokenizer.vocab_size)
    if exit_cfg.exits:
        model.attach_exits(check_exits(exit_cfg.exits, model.num_layers))
    method = early_exit_method(exit_cfg, training="from-scratch") if exit_cfg.exits else None
    result = run_engine(
        model=model,
        tokenizer=tokenizer,
        backbone=backbone,
        model_config=model_config,
        data=job.data,
        output=output,
        config=cfg,
        method=method,
        provenance=job.provenance,
        objectives=ctc_objectives(exit_cfg),
        path=exit_path(exit_cfg, cfg.seed, job.world.rank),
        reporter=job.reporter,
        device=job.device,
        world=job.world,
        run=run,
    )
    publish(job.world, run.directory(output), output)
    result.output = Path(output)
    return result
