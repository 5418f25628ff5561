"""Graceful stop on SIGINT/SIGTERM (and Ctrl-Break on Windows): finish the current step, save, exit 0.

Why a flag and not an exception: an exception can land in the middle of an optimizer step or a
checkpoint write; the loop instead checks the flag between steps, so the saved state is always a whole
step. A second SIGINT means "now": it raises KeyboardInterrupt at once (the CLI exits 130).
Under torchrun every rank gets the signal; the loop ORs the flag over ranks so all stop at one step.

Windows: Ctrl-C (SIGINT) and Ctrl-Break (SIGBREAK) reach the handler; SIGTERM is only delivered when
raised inside the process, since ``taskkill /F`` and TerminateProcess end a process without a signal
(the checkpoint files stay loadable either way: they are replaced atomically).
"""

from __future__ import annotations

import signal
import sys
import threading
from types import FrameType

# SIGBREAK exists on Windows only (Ctrl-Break)
STOP_SIGNALS = tuple(
    s for s in (signal.SIGINT, signal.SIGTERM, getattr(signal, "SIGBREAK", None)) if s is not None
)


class StopRequest:
    """Installs the handlers on ``__enter__`` and restores the previous ones on ``__exit__``."""

    def __init__(self, announce: bool = True) -> None:
        self.requested = False
        self.signal_name: str | None = None
        self._announce = announce
        self._previous: dict[int, object] = {}

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self.requested and signum == signal.SIGINT:
            signal.signal(signal.SIGINT, signal.default_int_handler)
            raise KeyboardInterrupt
        self.requested = True
        self.signal_name = signal.Signals(signum).name
        if self._announce:
            print(
                f"\n{self.signal_name} received: finishing this step and saving (Ctrl-C again to quit now)",
                file=sys.stderr,
                flush=True,
            )

    def __enter__(self) -> StopRequest:
        if threading.current_thread() is threading.main_thread():
            for signum in STOP_SIGNALS:
                self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)  # type: ignore[arg-type]
        self._previous.clear()
