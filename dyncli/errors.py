"""One error family for everything a user can get wrong.

Every :class:`DyncliError` carries a one-line message (what was wrong, how to fix it) and an
exit code. The CLI prints the message without a traceback unless ``DYNCLI_DEBUG=1``.
"""

from __future__ import annotations

EXIT_FAILED = 1
EXIT_USAGE = 2


class DyncliError(Exception):
    """Base class: a problem the user can act on. ``exit_code`` is what the CLI returns."""

    exit_code = EXIT_FAILED


class UsageError(DyncliError):
    """A bad flag value or combination of flags."""

    exit_code = EXIT_USAGE


class InputError(DyncliError):
    """A missing, unreadable or malformed input file (audio, manifest, text)."""

    exit_code = EXIT_USAGE


class CheckpointError(InputError):
    """A checkpoint that is missing, truncated, foreign, or not safe to load."""


class JobFailed(DyncliError):
    """A job that started but could not finish (e.g. training diverged)."""

    exit_code = EXIT_FAILED
