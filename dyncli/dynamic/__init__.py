"""Dynamic-depth inference: skip policies whose skipped work is never computed.

What every method shares lives here: :mod:`~dyncli.dynamic.trace` (a policy's output, its
protocol, the executed trace), :mod:`~dyncli.dynamic.compaction` (gathering kept frames and
scattering them back) and :mod:`~dyncli.dynamic.run` (a registered policy by name). Each
method's policy lives in its own home under :mod:`dyncli.methods`.
"""

from dyncli.dynamic.run import build_policy, run_policy
from dyncli.dynamic.trace import DynamicOutput, SkipPolicy, TraceStep

__all__ = ["DynamicOutput", "SkipPolicy", "TraceStep", "build_policy", "run_policy"]
