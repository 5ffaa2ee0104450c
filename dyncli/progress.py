"""Progress of long work, as the library reports it; the command layer decides whether and how
to show it (see :class:`dyncli.cli.progress.WorkProgress`)."""

from __future__ import annotations

from typing import Protocol


class Progress(Protocol):
    """What :func:`dyncli.measure.evaluate.evaluate` and ``transcribe`` report while they work."""

    def begin(self, audio_seconds: float, items: int) -> None:
        """The size of the whole job: seconds of audio it will decode and items it will read."""

    def stage(self, label: str, total: float, timed: bool = False) -> None:
        """A new stage of ``total`` units; ``timed`` stages are being measured (no redraws
        while they run)."""

    def advance(self, amount: float = 1.0, note: str = "") -> None:
        """``amount`` units done; ``note`` says what is being worked on now."""

    def end(self) -> None:
        """The job is over."""


class Silent:
    """A :class:`Progress` that shows nothing."""

    def begin(self, audio_seconds: float, items: int) -> None:
        pass

    def stage(self, label: str, total: float, timed: bool = False) -> None:
        pass

    def advance(self, amount: float = 1.0, note: str = "") -> None:
        pass

    def end(self) -> None:
        pass
