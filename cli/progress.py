"""What the commands print: progress of a run on stderr (a redrawn bar on a terminal, a few
plain lines otherwise), and every message line, with the user's strings in it escaped."""

from __future__ import annotations

import shutil
import sys
import time
import unicodedata
from collections.abc import Callable
from typing import TextIO

# Characters a terminal would act on or hide: controls (ESC, CR, BEL, ...), format characters
# (bidirectional overrides), lone surrogates (undecodable file-name bytes), line separators.
_HIDDEN = frozenset({"Cc", "Cf", "Cs", "Zl", "Zp"})


def terminal_text(text: str, *, lines: bool = False) -> str:
    """``text`` safe to print: every control or invisible character written as ``\\xNN`` /
    ``\\uNNNN`` (a file name's newline or escape sequence shows as such, and undecodable bytes as
    ``\\xNN``). ``lines``: keep ``\\n`` as a line break (messages of several lines)."""
    out = []
    for char in text:
        if char == "\n" and lines:
            out.append(char)
        elif unicodedata.category(char) in _HIDDEN:
            code = ord(char)
            if 0xDC80 <= code <= 0xDCFF:  # an undecodable byte of a file name
                out.append(f"\\x{code - 0xDC00:02x}")
            else:
                out.append(f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}")
        else:
            out.append(char)
    return "".join(out)


def say(text: str, file: TextIO | None = None, *, lines: bool = False) -> None:
    """Print one message (stdout by default) through :func:`terminal_text`; every command's
    message goes through here, so no user string reaches the terminal raw."""
    print(terminal_text(text, lines=lines), file=file if file is not None else sys.stdout)


# A terminal bar is redrawn at most this often; plain lines come at each tenth of the work, at
# most this often, and at least once a minute.
_REDRAW_SECONDS = 0.1
_LINE_MIN_SECONDS = 2.0
_LINE_MAX_SECONDS = 60.0
# Completions this close together belong to one burst (the images of one batch, written one
# after another): the burst that ends the warm-up is left out of the rate.
_BURST_SECONDS = 0.5


def format_duration(seconds: float) -> str:
    """``1:02:03``, ``2:03`` or ``4.2s``."""
    if seconds < 60:
        return f"{seconds:.1f}s"
    minutes, secs = divmod(round(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


def format_rate(count: float, seconds: float, unit: str = "images") -> str:
    """``2.5 images/s`` at one per second or more; below, ``12.3 s/image`` (never ``0.0/s``)."""
    if count <= 0 or seconds <= 0:
        return f"- {unit}/s"
    per_second = count / seconds
    if per_second >= 1.0:
        return f"{per_second:.1f} {unit}/s"
    return f"{seconds / count:.1f} s/{unit.removesuffix('s')}"


class Progress:
    """Reports images done out of ``total``, the rate and the time left.

    The time left is estimated from the work done after the warm-up: the rate counts the
    completions after the first one (and the burst of completions that arrive with it: a
    batch's images) over the time since, so model loading, starting workers and the first,
    slower batch (allocations, kernel selection, compilation) do not inflate it. Until a second
    completion arrives, the estimate uses the whole time since the start (an upper bound).

    Args:
        total: Images this run processes.
        stream: Where to write (stderr).
        enabled: False for ``--quiet``: only :meth:`message` lines are written.
        interactive: Draw a bar (default: when ``stream`` is a terminal).
        label: The prefix of plain lines (the command).
        unit: What is counted.
        clock: Seconds, monotonic (a fake one in tests).
    """

    def __init__(
        self,
        total: int,
        stream: TextIO | None = None,
        enabled: bool = True,
        interactive: bool | None = None,
        label: str = "saliency explain",
        unit: str = "images",
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.total = total
        self.label = label
        self.unit = unit
        self.stream = stream if stream is not None else sys.stderr
        self.enabled = enabled and total > 0
        self.interactive = self.stream.isatty() if interactive is None else interactive
        self.done = 0
        self.failed = 0
        self._clock = clock
        self._start = clock()
        self._warm: tuple[float, int] | None = None  # (time, done) at the end of the warm-up
        self._warming = True  # still in the burst of the first completion
        self._last_draw = 0.0
        self._last_tenth = 0
        self._drawn = False

    def advance(self, failed: bool = False) -> None:
        """One more image finished (``failed``: with an error)."""
        now = self._clock()
        self.done += 1
        self.failed += int(failed)
        if self._warming:
            if self._warm is None or now - self._warm[0] <= _BURST_SECONDS:
                self._warm = (now, self.done)
            else:
                self._warming = False
        if not self.enabled:
            return
        finished = self.done >= self.total
        if self.interactive:
            if finished or now - self._last_draw >= _REDRAW_SECONDS:
                self._draw_bar()
                self._last_draw = now
            return
        tenth = self.done * 10 // max(self.total, 1)
        due = tenth > self._last_tenth and now - self._last_draw >= _LINE_MIN_SECONDS
        if finished or due or now - self._last_draw >= _LINE_MAX_SECONDS:
            self.stream.write(f"{self.label}: {self._status()}\n")
            self.stream.flush()
            self._last_draw, self._last_tenth = now, tenth

    def message(self, text: str) -> None:
        """Write a line (an error, a note) above the bar."""
        self._clear()
        self.stream.write(terminal_text(text.rstrip("\n")) + "\n")
        self.stream.flush()
        if self._drawn:
            self._draw_bar()

    def close(self) -> None:
        """End the bar's line."""
        if self._drawn:
            self.stream.write("\n")
            self.stream.flush()
            self._drawn = False

    def rate(self) -> float:
        """Units per second over the whole run so far (warm-up included)."""
        return self.done / max(self._clock() - self._start, 1e-9)

    def seconds_per_unit(self) -> float | None:
        """Seconds per unit after the warm-up (see the class docstring); None before any unit."""
        now = self._clock()
        if self._warm is not None and not self._warming and now > self._warm[0]:
            return (now - self._warm[0]) / (self.done - self._warm[1])
        if self.done:
            return max(now - self._start, 0.0) / self.done
        return None

    def eta(self) -> float | None:
        """Seconds left (None: nothing finished yet to estimate from)."""
        each = self.seconds_per_unit()
        return None if each is None else each * max(self.total - self.done, 0)

    def _status(self) -> str:
        each = self.seconds_per_unit()
        left = self.eta()
        failed = f", {self.failed} failed" if self.failed else ""
        rate = format_rate(1.0, each, self.unit) if each else format_rate(0, 0, self.unit)
        eta = "-" if left is None else format_duration(left)
        return f"{self.done}/{self.total} {self.unit}{failed}, {rate}, ETA {eta}"

    def _draw_bar(self) -> None:
        status = self._status()
        width = shutil.get_terminal_size((80, 20)).columns
        room = max(10, min(40, width - len(status) - 4))
        filled = room * self.done // max(self.total, 1)
        self.stream.write(f"\r[{'#' * filled}{'.' * (room - filled)}] {status}\x1b[K")
        self.stream.flush()
        self._drawn = True

    def _clear(self) -> None:
        if self._drawn:
            self.stream.write("\r\x1b[K")
