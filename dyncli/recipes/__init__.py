"""The commands that produce a checkpoint, one module each (``train``, ``convert``,
``distill``, ``prune``), on the shared set-up of :mod:`dyncli.recipes.common` and the one training
engine of :mod:`dyncli.training`."""
