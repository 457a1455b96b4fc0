"""The processes of a ``saliency explain`` run: one (a world of size 1), or several started by
``torchrun``.

A run always goes through a :class:`Group`: alone, its meeting points cost nothing and its
messages stay in the process; under ``torchrun`` they go through :mod:`torch.distributed`.

``torchrun`` starts one process per device and tells each its place through the environment:
``RANK`` (0 .. ``WORLD_SIZE`` - 1 over every machine), ``WORLD_SIZE`` and ``LOCAL_RANK`` (its
index on its own machine), plus the rendezvous (``MASTER_ADDR``/``MASTER_PORT``). When
``WORLD_SIZE`` is above 1, the command joins a :mod:`torch.distributed` process group: NCCL
when the processes run on CUDA devices, else Gloo. The processes only exchange a few small
messages (set-up errors, the end of the work, the per-rank manifests), always through Gloo on
the CPU: a NCCL default group gets a Gloo group beside it for them, so no GPU time is spent and
no GPU is shared by two processes' communicators.

Each process uses ``cuda:LOCAL_RANK`` under ``--device auto`` (when CUDA is available) or
``--device cuda``; ``--device cpu`` (or ``auto`` without CUDA) runs every process on the CPU.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, TypeVar, cast

import torch
import torch.distributed as dist

from saliency.cli import UsageError
from saliency.cli.model import resolve_device
from saliency.run_folder import MANIFEST_NAME, rank_manifest_name

T = TypeVar("T")

# How long one process waits for the others at a meeting point. The end of the work is one:
# a rank with more or slower images finishes later, so this is generous.
WAIT_TIMEOUT = timedelta(hours=24)


@dataclass(frozen=True)
class Ranks:
    """Where this process stands among those ``torchrun`` started.

    Attributes:
        rank: Its global index, 0 .. ``world_size`` - 1.
        world_size: How many processes there are, over every machine.
        local_rank: Its index on its own machine (which CUDA device it uses).
    """

    rank: int
    world_size: int
    local_rank: int

    @property
    def is_main(self) -> bool:
        """Whether this is rank 0, which merges the manifests and reports for everyone."""
        return self.rank == 0


ALONE = Ranks(rank=0, world_size=1, local_rank=0)
"""A process started without ``torchrun``: a world of size 1."""


def detect(environ: Mapping[str, str] | None = None) -> Ranks | None:
    """The ranks ``torchrun`` set in the environment; None when not several processes.

    Raises:
        UsageError: ``WORLD_SIZE`` is above 1 but ``RANK``/``LOCAL_RANK`` are missing or bad.
    """
    env = os.environ if environ is None else environ
    try:
        world_size = int(env.get("WORLD_SIZE", "1"))
        if world_size <= 1:
            return None
        ranks = Ranks(int(env["RANK"]), world_size, int(env.get("LOCAL_RANK", "0")))
    except (KeyError, ValueError):
        raise UsageError(
            "WORLD_SIZE is above 1 but RANK, WORLD_SIZE or LOCAL_RANK is missing or not an "
            "integer; start several processes with torchrun, which sets them"
        ) from None
    if not 0 <= ranks.rank < world_size or ranks.local_rank < 0:
        raise UsageError(f"RANK={ranks.rank} is outside 0..{world_size - 1} (WORLD_SIZE)")
    return ranks


def backend_for(device: str) -> str:
    """The default group's backend for ``--device``: NCCL for CUDA devices, else Gloo.

    Decided from the argument and this machine alone, so every rank of a uniform job decides
    the same before any of them has checked its device.
    """
    wants_cuda = device == "auto" or device.split(":")[0] == "cuda"
    if wants_cuda and torch.cuda.is_available() and dist.is_nccl_available():
        return "nccl"
    return "gloo"


def rank_device(text: str, ranks: Ranks) -> torch.device:
    """This rank's device for ``--device`` (see the module docstring); CUDA: made current.

    Alone (a world of size 1), any device :func:`resolve_device` accepts.

    Raises:
        UsageError: A device this rank cannot use: no ``cuda:LOCAL_RANK``, or an explicit
            ``cuda:N`` (every rank would share that one device).
    """
    if ranks.world_size == 1:
        return resolve_device(text)
    if text == "auto" and not torch.cuda.is_available():
        return resolve_device("auto")
    if text != "auto":
        device = resolve_device(text)  # checks the text, and that CUDA is there
        if device.type != "cuda":
            return device
        if torch.device(text).index is not None:
            raise UsageError(
                f"--device {text}: under torchrun each process uses its own GPU, "
                "cuda:LOCAL_RANK; accepted: --device cuda (or auto), or cpu"
            )
    count = torch.cuda.device_count()
    if ranks.local_rank >= count:
        raise UsageError(
            f"--device {text}: local rank {ranks.local_rank} needs cuda:{ranks.local_rank} but "
            f"this machine has {count} CUDA device(s); start at most {count} processes per "
            "machine (torchrun --nproc-per-node), or pass --device cpu"
        )
    device = torch.device("cuda", ranks.local_rank)
    torch.cuda.set_device(device)
    return device


def shard(items: Sequence[T], rank: int, world_size: int) -> list[T]:
    """This rank's share of ``items``: round-robin, item ``i`` goes to rank ``i % world_size``.

    Every rank passes the same sequence, so the shares are disjoint, cover every item, and
    differ in size by at most one.

    Raises:
        ValueError: ``rank`` is not in ``0 .. world_size - 1``.
    """
    if not 0 <= rank < world_size:
        raise ValueError(f"rank {rank} is outside 0..{world_size - 1}")
    return list(items[rank::world_size])


@dataclass(frozen=True)
class Group:
    """The processes of the run, for the few messages they exchange (on the CPU, via Gloo).

    Attributes:
        ranks: This process's place.
        control: The Gloo group the messages go through (None: the default group).
        local: A process alone, without :mod:`torch.distributed`: the messages stay in it.
    """

    ranks: Ranks
    control: dist.ProcessGroup | None
    local: bool = False

    @property
    def shared(self) -> bool:
        """Whether the run has several processes (each then records its own share)."""
        return self.ranks.world_size > 1

    @property
    def manifest_name(self) -> str:
        """The file this process records its share in: ``manifest.json`` alone, else
        ``manifest.rank-R.json``."""
        return rank_manifest_name(self.ranks.rank) if self.shared else MANIFEST_NAME

    def label(self, command: str) -> str:
        """What this process's messages start with: ``command``, and ``[rank R]`` if shared."""
        return f"{command} [rank {self.ranks.rank}]" if self.shared else command

    def barrier(self) -> None:
        """Wait until every rank gets here."""
        if not self.local:
            dist.barrier(group=self.control)

    def all_gather(self, value: T) -> list[T]:
        """Every rank's ``value`` (picklable), in rank order, on every rank."""
        if self.local:
            return [value]
        values: list[Any] = [None] * self.ranks.world_size
        dist.all_gather_object(values, value, group=self.control)
        return cast(list[T], values)

    def gather(self, value: T) -> list[T] | None:
        """Every rank's ``value`` in rank order on rank 0; None on the other ranks."""
        if self.local:
            return [value]
        values: list[Any] | None = [None] * self.ranks.world_size if self.ranks.is_main else None
        dist.gather_object(value, values, dst=0, group=self.control)
        return cast(list[T], values) if values is not None else None

    def share(self, items: Sequence[T]) -> list[T]:
        """This process's share of ``items`` (see :func:`shard`)."""
        return shard(items, self.ranks.rank, self.ranks.world_size)


@contextmanager
def join(ranks: Ranks | None, device: str) -> Iterator[Group]:
    """The run's processes for the block: this one alone (``ranks`` None or of size 1), or the
    process group ``torchrun`` started (joined here unless the caller already did).

    Args:
        ranks: From :func:`detect`.
        device: The ``--device`` argument (see :func:`backend_for`).

    Raises:
        UsageError: This torch has no :mod:`torch.distributed`.
    """
    if ranks is None or ranks.world_size == 1:
        yield Group(ranks or ALONE, None, local=True)
        return
    if not dist.is_available():
        raise UsageError("WORLD_SIZE is above 1 but this torch has no torch.distributed")
    owned = not dist.is_initialized()
    if owned:
        dist.init_process_group(
            backend_for(device),
            rank=ranks.rank,
            world_size=ranks.world_size,
            timeout=WAIT_TIMEOUT,
        )
    control = None if dist.get_backend() == "gloo" else _gloo_group()
    try:
        yield Group(ranks, control)
    finally:
        if control is not None:
            dist.destroy_process_group(control)
        if owned:
            dist.destroy_process_group()


def _gloo_group() -> dist.ProcessGroup:
    """A Gloo group of every rank, beside a default group of another backend."""
    group = dist.new_group(backend="gloo", timeout=WAIT_TIMEOUT)
    assert isinstance(group, dist.ProcessGroup)  # every rank is a member
    return group


def agree(group: Group, error: str | None, value: T) -> tuple[str | None, T]:
    """Every rank's set-up outcome, the same on every rank.

    Args:
        group: The processes.
        error: This rank's set-up error, or None.
        value: This rank's candidate for a value every rank must share (rank 0's wins).

    Returns:
        The combined error (None when every rank is ready) and rank 0's ``value``.
    """
    outcomes = group.all_gather((error, value))
    failed: dict[str, list[int]] = {}
    for rank, (message, _) in enumerate(outcomes):
        if message is not None:
            failed.setdefault(message, []).append(rank)
    return combine_errors(failed, group.ranks.world_size), outcomes[0][1]


def combine_errors(failed: Mapping[str, Sequence[int]], world_size: int) -> str | None:
    """One message for the set-up errors of the ranks (``message -> ranks``); None if none.

    An error every rank had is said once, as is; others name their ranks.
    """
    if not failed:
        return None
    if len(failed) == 1:
        message, ranks = next(iter(failed.items()))
        if len(ranks) == world_size:
            return message
    return "; ".join(
        f"rank{'s' if len(ranks) > 1 else ''} {', '.join(map(str, ranks))}: {message}"
        for message, ranks in failed.items()
    )
