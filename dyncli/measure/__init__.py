"""Measurement that can be gated on: figures with intervals (issue 18).

========================  ====================================================================
module                    what lives there
========================  ====================================================================
``stats``                 the paired bootstrap of a WER difference over utterances
========================  ====================================================================

``dyncli.profiling`` and the timer in ``dyncli.evaluation`` move here part by part (flops,
timing, sweep, gate, report), as ``../shared/ARCHITECTURE.md`` item 4 describes.
"""
