"""Measurement that can be gated on: every figure with its interval (issue 18).

========================  ====================================================================
module                    what lives there
========================  ====================================================================
``flops``                 fvcore FLOPs of the path each utterance executed (its trace)
``sweep``                 accuracy and executed work of every configuration, one shared pass
``timing``                the one timer (``evaluate`` and ``profile``): configurations back to
                          back per utterance, ABBA order, ``--repeats auto``
``stats``                 paired bootstrap intervals: WER differences over utterances,
                          speedups over timed pairs, one system's WER
``gate``                  the three-way release gate: PASS, FAIL, INCONCLUSIVE (exit 3)
``report``                the ``profile`` report: schema version, definitions, Pareto flags
``profile``               ``profile()``: resolves the policies and models to run, then calls
                          the above in order (sweep, timing, stats, gate), builds the report
``evaluate``              ``evaluate``: one configuration's WER/CER and end-to-end RTF
``plot``                  the ``--plot`` figure (WER against speedup or FLOPs, per policy)
========================  ====================================================================
"""
