"""I3D: input-dependent dynamic depth with gate predictors per attention / feed-forward module
(:mod:`~dyncli.methods.gates.predictor`: the predictors and training-time gates;
:mod:`~dyncli.methods.gates.policy`: the inference policy)."""
