"""What the commands print: progress of a run on stderr (a redrawn bar on a terminal, a few
plain lines otherwise), and every message line, with the user's strings in it escaped."""

from __future__ import annotations

import shutil
import sys
import time
import unicodedata
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


def format_duration(seconds: float) -> str:
    """``1:02:03``, ``2:03`` or ``4.2s``."""
    if seconds < 60:
        return f"{seconds:.1f}s"
    minutes, secs = divmod(round(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


class Progress:
    """Reports images done out of ``total``, images/s and the time left.

    Args:
        total: Images this run processes.
        stream: Where to write (stderr).
        enabled: False for ``--quiet``: only :meth:`message` lines are written.
        interactive: Draw a bar (default: when ``stream`` is a terminal).
        label: The prefix of plain lines (the command).
        unit: What is counted.
    """

    def __init__(
        self,
        total: int,
        stream: TextIO | None = None,
        enabled: bool = True,
        interactive: bool | None = None,
        label: str = "saliency explain",
        unit: str = "images",
    ) -> None:
        self.total = total
        self.label = label
        self.unit = unit
        self.stream = stream if stream is not None else sys.stderr
        self.enabled = enabled and total > 0
        self.interactive = self.stream.isatty() if interactive is None else interactive
        self.done = 0
        self.failed = 0
        self._start = time.monotonic()
        self._last_draw = 0.0
        self._last_tenth = 0
        self._drawn = False

    def advance(self, failed: bool = False) -> None:
        """One more image finished (``failed``: with an error)."""
        self.done += 1
        self.failed += int(failed)
        if not self.enabled:
            return
        now = time.monotonic()
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
        """Units per second so far."""
        return self.done / max(time.monotonic() - self._start, 1e-9)

    def _status(self) -> str:
        rate = self.rate()
        left = (self.total - self.done) / rate if rate > 0 else 0.0
        failed = f", {self.failed} failed" if self.failed else ""
        return (
            f"{self.done}/{self.total} {self.unit}{failed}, {rate:.2f} {self.unit}/s, "
            f"ETA {format_duration(left)}"
        )

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
