"""The gradient under modified backward rules: the base of guided backprop and DeconvNet."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from torch import Tensor, nn

from saliency.engine import Engine, Points
from saliency.errors import InvalidOptionError
from saliency.methods.base import Method
from saliency.propagation import propagation
from saliency.targets import Target


@dataclass(frozen=True)
class ModifiedGradient(Method):
    """∂f_t/∂x computed with the propagation rules named in :attr:`rules` (see
    :mod:`saliency.propagation`); with no rules, the plain gradient.

    The rules are active only during this method's passes and attach nothing to the model, so
    functional, in-place and reused ReLUs are all covered and the model is left as it was. The
    model runs eagerly (``compile`` does not apply: compiled graphs would bypass the rules).
    """

    compiles = False
    rules: ClassVar[tuple[str, ...]] = ()

    def attribute(self, engine: Engine, inputs: Tensor, target: Target) -> Tensor:
        _refuse_replica_threads(engine.model)
        eager = engine.with_options(compile=False) if engine.compile else engine
        with propagation(*self.rules):
            return eager.accumulate(Points.of(inputs), target)


def _refuse_replica_threads(model: object) -> None:
    """The rules are thread-local: ``nn.DataParallel`` over several devices runs its replicas in
    other threads, which would silently get the ordinary gradient."""
    modules = model.modules() if isinstance(model, nn.Module) else ()
    for module in modules:
        if isinstance(module, nn.DataParallel) and len(module.device_ids) > 1:
            raise InvalidOptionError(
                "propagation rules apply on the calling thread only, and nn.DataParallel runs "
                f"its replicas on {len(module.device_ids)} devices in other threads; pass "
                "model.module (one device), or use DistributedDataParallel"
            )
