"""Tests for importing torchvision without torch._dynamo (saliency.cli.dynamo_deferral).

Each case runs in a fresh interpreter: what is checked is a process's first imports.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from typing import Any


def run_fresh(program: str) -> Any:
    """The JSON that ``program``, run in a fresh interpreter, prints on its last line."""
    result = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(program)],
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout.splitlines()[-1])


def test_torchvision_imports_without_dynamo_and_its_function_answers_as_the_real_one() -> None:
    seen = run_fresh(
        """
        import json, sys
        from saliency.cli.dynamo_deferral import _TorchvisionImport, defer_dynamo_import
        defer_dynamo_import()
        defer_dynamo_import()  # twice: still one finder
        finders = sum(isinstance(f, _TorchvisionImport) for f in sys.meta_path)
        import torch, torchvision
        after_import = {
            "finders before": finders,
            "dynamo": "torch._dynamo" in sys.modules,
            "dynamo utils": "torch._dynamo.utils" in sys.modules,
            "finders after": sum(isinstance(f, _TorchvisionImport) for f in sys.meta_path),
            "loader attributes": sorted(vars(torchvision.__spec__.loader)),
            "loader": type(torchvision.__loader__).__name__,
        }
        x = torch.arange(2 * 3 * 8 * 8, dtype=torch.float32).reshape(2, 3, 8, 8)
        boxes = torch.tensor([[0, 0.0, 0.0, 6.0, 6.0], [1, 1.0, 2.0, 7.0, 5.0]])
        pooled = torchvision.ops.roi_align(x, boxes, (2, 2), aligned=True)
        deferred = torchvision.ops.roi_align.__globals__["is_compile_supported"]
        before = "torch._dynamo" in sys.modules
        answers = [deferred(d) for d in ("cpu", "meta")]
        import torch._dynamo.utils as real
        compiled = torch.compile(lambda t: t.sin() + 1, backend="eager")(torch.ones(3))
        print(json.dumps({
            "after import": after_import,
            "pooled": pooled.tolist(),
            "dynamo before the call": before,
            "answers": answers,
            "real answers": [real.is_compile_supported(d) for d in ("cpu", "meta")],
            "deferred is real": deferred is real.is_compile_supported,
            "real module": type(sys.modules["torch._dynamo.utils"]).__name__,
            "compiled": compiled.tolist(),
            "expected": (torch.ones(3).sin() + 1).tolist(),
        }))
        """
    )
    assert seen["after import"] == {
        "finders before": 1,
        "dynamo": False,
        "dynamo utils": False,
        "finders after": 0,
        "loader attributes": ["name", "path"],  # no exec_module left on the instance
        "loader": "SourceFileLoader",
    }
    assert seen["dynamo before the call"] is False
    assert seen["answers"] == seen["real answers"] == [True, False]
    assert seen["deferred is real"] is False  # a forwarding function, not a copy
    assert seen["real module"] == "module"
    assert seen["compiled"] == seen["expected"]
    # Box 0 on image 0, channel 0 (values 8·row + col): aligned, each 3×3-pixel bin is sampled
    # at its 3×3 pixel centres, so a bin's value is the ramp at the bin's middle pixel.
    ramp_at_bin_middles = [[8 * (1 + 3 * r) + (1 + 3 * c) for c in range(2)] for r in range(2)]
    assert seen["pooled"][0][0] == ramp_at_bin_middles


def test_other_names_come_from_dynamo_itself_and_none_is_deferred_once_it_is_in() -> None:
    seen = run_fresh(
        """
        import json, sys
        import torch
        from saliency.cli.dynamo_deferral import (
            _TorchvisionImport, _dynamo_utils_stand_in, defer_dynamo_import,
        )
        with _dynamo_utils_stand_in():
            stand_in = sys.modules["torch._dynamo.utils"]
            probes = [hasattr(stand_in, "__path__"), "torch._dynamo" in sys.modules]
            from torch._dynamo.utils import counters
            inside = type(sys.modules["torch._dynamo.utils"]).__name__
        import torch._dynamo.utils as real
        defer_dynamo_import()  # torch._dynamo is imported now: nothing to defer
        import torchvision
        print(json.dumps({
            "probes": probes,
            "inside after the name": inside,
            "counters is real": counters is real.counters,
            "after": sys.modules["torch._dynamo.utils"] is real and real is not stand_in,
            "finders": sum(isinstance(f, _TorchvisionImport) for f in sys.meta_path),
            "torchvision's is real": torchvision.ops.roi_align.__globals__["is_compile_supported"]
            is real.is_compile_supported,
        }))
        """
    )
    assert seen == {
        "probes": [False, False],  # the import system's probes load nothing
        "inside after the name": "module",  # the real module replaced the stand-in
        "counters is real": True,
        "after": True,
        "finders": 0,
        "torchvision's is real": True,
    }
