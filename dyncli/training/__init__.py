"""One training engine for every training recipe (:mod:`dyncli.recipes`: ``train``,
``convert``, ``distill``, ``prune``).

========================  ====================================================================
module                    what lives there
========================  ====================================================================
``config``                ``TrainConfig``, ``ExitTraining``, the reporter protocol, results
``data``                  manifests read once, with their provenance (batches: data.sampler)
``objectives``            the batch, the student's path per step, and the loss objectives
``kd``                    distillation losses on CTC posteriors (factorized, posterior, labels)
``module``                ``TrainingModule`` (``forward(batch)`` returns the loss), ``Teacher``
``trainer``               ``Trainer``: loop, AMP, clipping, dev scoring, best, resume, rank 0 I/O
``distributed``           joining the torchrun process group; gather and broadcast helpers
========================  ====================================================================
"""

from dyncli.methods.early_exit import early_exit_method  # its home; kept here for one release
from dyncli.training.config import (
    ExitTraining,
    Reporter,
    TrainConfig,
    TrainResult,
    check_config,
    check_exits,
)
from dyncli.training.objectives import ctc_loss
from dyncli.training.trainer import dev_scores

__all__ = [
    "ExitTraining",
    "Reporter",
    "TrainConfig",
    "TrainResult",
    "check_config",
    "check_exits",
    "ctc_loss",
    "dev_scores",
    "early_exit_method",
]
