"""The command layer: one module per command; each checks options, calls one core function,
and renders the result. Nothing here imports torch at module level."""
