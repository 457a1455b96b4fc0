"""Common mistakes with ``saliency.explain`` and ``Explanation.save`` are saliency errors that
say what to do, raised before any work (not raw torch errors from deep in a forward pass)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

import saliency
from saliency.errors import InvalidOptionError


class _Counting(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.linear = nn.Linear(12, 3)
        self.calls = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        return self.linear(x.flatten(1))


def test_a_float64_model_with_float32_inputs_is_refused_before_any_forward() -> None:
    model = _Counting().double()
    with pytest.raises(InvalidOptionError, match=r"torch.float64 but the inputs are torch.float32"):
        saliency.explain(model, torch.rand(2, 3, 2, 2), "gradient")
    assert model.calls == 0
    ex = saliency.explain(model, torch.rand(2, 3, 2, 2, dtype=torch.float64), "gradient")
    assert ex.attributions.dtype == torch.float64


def test_model_and_inputs_on_different_devices_are_refused_before_any_forward() -> None:
    model = _Counting().to("meta")  # a device other than the inputs' without needing a GPU
    with pytest.raises(InvalidOptionError, match=r"the model is on meta but the inputs are on cpu"):
        saliency.explain(model, torch.rand(2, 3, 2, 2), "gradient")
    assert model.calls == 0


def test_images_for_fewer_samples_than_inputs_are_refused() -> None:
    model = _Counting()
    with pytest.raises(InvalidOptionError, match="holds 1 images for 2 input samples"):
        saliency.explain(model, torch.rand(2, 3, 2, 2), "gradient", images=torch.rand(1, 3, 2, 2))
    assert model.calls == 0


def test_saving_into_a_path_that_is_a_file_says_so(tmp_path: Path) -> None:
    ex = saliency.explain(_Counting(), torch.rand(1, 3, 2, 2), "gradient")
    target = tmp_path / "notes.txt"
    target.write_text("keep")
    with pytest.raises(InvalidOptionError, match="exists and is not a folder"):
        ex.save(target)
    assert target.read_text() == "keep"
