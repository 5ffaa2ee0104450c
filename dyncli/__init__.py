"""dyncli: input-dependent depth for CTC speech encoders, measured honestly."""

from dyncli.registry.hookspecs import hookimpl

__version__ = "0.1.0"

__all__ = ["__version__", "hookimpl"]
