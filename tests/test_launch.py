"""Tests for the console script's process set-up (saliency.cli.launch, saliency.cli.collection).

Each case runs :func:`console` in a fresh interpreter with ``main`` replaced by a probe, so
what is checked is the process around the command: the exit code, the output, the exit
handlers, the garbage collector and the environment torch starts with.
"""

from __future__ import annotations

import gc
import mmap
import os
import subprocess
import sys
import textwrap

import pytest

from saliency.cli.allocation import runs_on_glibc
from saliency.cli.collection import set_up_without_collecting, start_collecting


def console_with(
    main_body: str, *argv: str, env: dict[str, str] | None = None
) -> tuple[int, str, str]:
    """(exit code, stdout, stderr) of ``console()`` with ``main`` replaced by ``main_body``."""
    program = textwrap.dedent(
        """
        import atexit, gc, os, sys
        import saliency.cli.main as cli_main
        from saliency.cli.collection import set_up_without_collecting, start_collecting
        def main():
        {body}
        cli_main.main = main
        sys.argv = ["saliency", *{argv!r}]
        from saliency.cli.launch import console
        console()
        """
    ).format(body=textwrap.indent(textwrap.dedent(main_body), "    "), argv=list(argv))
    environment = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    result = subprocess.run(
        [sys.executable, "-c", program],
        capture_output=True,
        text=True,
        timeout=120,
        env={**environment, **(env or {})},
    )
    return result.returncode, result.stdout, result.stderr


def test_the_exit_code_output_and_later_exit_handlers_all_survive_the_fast_exit() -> None:
    code, out, err = console_with(
        """
        atexit.register(lambda: print("handler ran", flush=True))
        print("buffered output", end="")  # not flushed by the command itself
        sys.stderr.write("to stderr")
        return 3
        """,
        "methods",
    )
    assert (code, out, err) == (3, "buffered outputhandler ran\n", "to stderr")


@pytest.mark.parametrize(("raised", "expected"), [("SystemExit(0)", 0), ("SystemExit(2)", 2)])
def test_argparse_exits_keep_their_code(raised: str, expected: int) -> None:
    code, out, _ = console_with(f"print('help'); raise {raised}", "explain", "--help")
    assert (code, out) == (expected, "help\n")


def test_a_message_exit_and_an_escaping_exception_take_the_normal_shutdown() -> None:
    code, _, err = console_with("raise SystemExit('no such thing')", "x")
    assert (code, err) == (1, "no such thing\n")
    code, _, err = console_with("raise RuntimeError('boom')", "x")
    assert code == 1 and "Traceback" in err and "RuntimeError: boom" in err


def test_collection_is_off_during_set_up_and_on_with_everything_frozen_after() -> None:
    code, out, _ = console_with(
        """
        states = [gc.isenabled()]
        start_collecting()  # what main() does once the command's modules are imported
        states += [gc.isenabled(), gc.get_freeze_count() > 0]
        with set_up_without_collecting():
            states.append(gc.isenabled())
        states.append(gc.isenabled())
        print(states)
        return 0
        """,
        "explain",
    )
    assert (code, out) == (0, "[False, True, True, False, True]\n")


def test_explain_gets_the_passive_openmp_wait_policy_unless_one_is_set() -> None:
    show = "print(os.environ.get('OMP_WAIT_POLICY')); return 0"
    assert console_with(show, "explain", "x")[1] == "PASSIVE\n"
    assert console_with(show, "--quiet", "explain")[1] == "PASSIVE\n"  # the first non-option
    assert console_with(show, "methods")[1] == "None\n"
    assert console_with(show, "explain", env={"OMP_WAIT_POLICY": "ACTIVE"})[1] == "ACTIVE\n"


def test_in_process_callers_keep_their_collector_as_it_was() -> None:
    assert gc.isenabled()
    frozen = gc.get_freeze_count()
    start_collecting()
    with set_up_without_collecting():
        assert gc.isenabled()
    assert gc.isenabled() and gc.get_freeze_count() == frozen


def test_python_m_runs_a_real_command_through_the_console() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "saliency.cli", "explain", "--help"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0 and result.stderr == ""
    assert result.stdout.startswith("usage: saliency explain") and "--workers" in result.stdout


_BLOCK_BYTES = 64 << 20
_BLOCK_PAGES = _BLOCK_BYTES // mmap.PAGESIZE

# Faults of touching a 64 MiB malloc block a second time, after freeing the first: each page
# faults again when the block is mapped anew, none when the heap keeps it.
_REFAULTS = f"""
import ctypes, resource
process = ctypes.CDLL(None)
process.malloc.restype = ctypes.c_void_p
process.free.argtypes = [ctypes.c_void_p]
size = {_BLOCK_BYTES}
def touch_once():
    block = process.malloc(size)
    ctypes.memset(block, 1, size)
    process.free(block)
touch_once()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
touch_once()
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
return 0
"""


@pytest.mark.skipif(not runs_on_glibc(), reason="a glibc malloc setting")
def test_explain_keeps_freed_large_blocks_for_the_next_batch_other_commands_do_not() -> None:
    code, out, err = console_with(_REFAULTS, "explain", "x")
    assert code == 0, err
    assert int(out) < _BLOCK_PAGES // 20
    code, out, err = console_with(_REFAULTS, "methods")
    assert code == 0, err
    assert int(out) >= _BLOCK_PAGES * 9 // 10


@pytest.mark.skipif(not runs_on_glibc(), reason="a glibc malloc setting")
@pytest.mark.parametrize(
    "setting",
    [
        {"MALLOC_MMAP_THRESHOLD_": "65536"},
        {"MALLOC_TRIM_THRESHOLD_": "65536"},
        {"GLIBC_TUNABLES": "glibc.malloc.mmap_threshold=65536"},
    ],
)
def test_a_malloc_setting_of_the_users_is_left_alone(setting: dict[str, str]) -> None:
    code, out, err = console_with(_REFAULTS, "explain", "x", env=setting)
    assert code == 0, err
    assert int(out) >= _BLOCK_PAGES * 9 // 10
