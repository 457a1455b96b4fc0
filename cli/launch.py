"""How a ``saliency`` process starts and exits: the console script's entry point.

Costs of a short run that are the interpreter's, not the work's, and what the console does:

- **Garbage collection during start-up**: off until the command is set up (see
  :mod:`saliency.cli.collection`).
- **``torch._dynamo``**, which ``import torchvision`` imports for one function it calls only
  in ``roi_align`` (1.2–2.3 s): not imported unless something uses it (see
  :mod:`saliency.cli.dynamo_deferral`).
- **Tearing the interpreter down.** Shutdown collects every object once more and then frees
  every module (~1 s with torchvision loaded on a 2-core CPU). Once the command has returned
  (files closed, worker pools joined) and every exit handler has run, the process flushes its
  output and ends (``os._exit``) without that teardown. An exception that escapes takes the
  normal shutdown, which reports it.

``saliency explain`` runs torch beside decoding and writing worker processes. OpenMP's default
wait policy lets an idle torch thread spin for its next task, taking the core a worker needs;
the console sets ``OMP_WAIT_POLICY=PASSIVE`` for ``explain`` (unless it is set already) before
torch is imported: 7% less wall time on the benchmark's 64 photos (``benchmarks/RESULTS.md``).
It also keeps the large blocks a batch frees in the heap for the next one instead of giving
them back to the kernel (see :mod:`saliency.cli.allocation`): half the page faults and ~0.8 s
less system time there.

:func:`saliency.cli.main.main` called in process (tests, notebooks) changes none of this.
"""

from __future__ import annotations

import atexit
import contextlib
import gc
import os
import sys
from typing import NoReturn

from saliency.cli.allocation import reuse_large_buffers
from saliency.cli.collection import pause_for_start_up
from saliency.cli.dynamo_deferral import defer_dynamo_import

_exit_code: int | None = None
"""The command's exit code, once it has returned."""

# Commands whose torch shares the CPU with worker processes and runs batch after batch (see the
# module docstring).
_COMMANDS_WITH_WORKERS = frozenset({"explain"})


def console() -> NoReturn:
    """The ``saliency`` console script: :func:`~saliency.cli.main.main` with the process set
    up as described above; exits with its code."""
    global _exit_code
    pause_for_start_up()
    defer_dynamo_import()
    atexit.register(_end_without_teardown)  # the first registered: it runs after all others
    try:
        command = next((a for a in sys.argv[1:] if not a.startswith("-")), None)
        if command in _COMMANDS_WITH_WORKERS:
            os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
            reuse_large_buffers()
        from saliency.cli.main import main

        try:
            code = main()
        except SystemExit as exc:  # argparse's --help and usage errors
            if not (exc.code is None or isinstance(exc.code, int)):
                raise  # a message to print: the normal shutdown prints it
            code = exc.code or 0
        _exit_code = code
    finally:
        gc.freeze()
    sys.exit(code)


def _end_without_teardown() -> None:
    """The last exit handler: end the process once its output is flushed (see above)."""
    if _exit_code is None:
        return
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
    os._exit(_exit_code)
