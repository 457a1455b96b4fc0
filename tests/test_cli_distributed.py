"""``saliency explain`` under torchrun: the real thing on CPU, and its parts.

Two runs of ``python -m torch.distributed.run --nproc-per-node 2 -m saliency.cli explain`` (Gloo,
two processes, offline, a random SqueezeNet 1.1 state dict at 32x32) are shared by the end-to-end
tests through a module fixture: the first does every input (and the gallery), the second is the
same command again and must skip everything. Two inputs share a name (``photos/im0.png`` and
``more/im0.png``), so the ranks must agree on the relpaths (``im0.png``, ``im0.png~2``).

The sharding, the merge, the reading of earlier per-rank manifests and the set-up agreement are
tested in process.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torchvision
from PIL import Image

from saliency.cli import UsageError, distributed
from saliency.cli.distributed import Group, Ranks, combine_errors, detect, rank_device, shard
from saliency.run_folder import (
    InputRecord,
    Manifest,
    MethodRecord,
    RunInfo,
    Totals,
    fold,
    merge,
    merged_device,
    rank_manifest_files,
    rank_manifest_name,
    read_earlier,
    write_manifest,
)

# Global (discovery) order: folder arguments in order, each sorted; round-robin over 2 ranks.
ORDER = ("im0.png", "im1.png", "im2.png", "im3.png", "im4.png", "im0.png~2")
SHARES = {0: {"im0.png", "im2.png", "im4.png"}, 1: {"im1.png", "im3.png", "im0.png~2"}}


@dataclass
class Run:
    """A finished torchrun: exit code, output, the manifests and the overlays' modification
    times as it left them."""

    returncode: int
    stdout: str
    stderr: str
    manifests: dict[str, dict[str, Any]]
    mtimes: dict[str, int]

    def manifest(self, name: str = "manifest.json") -> dict[str, Any]:
        assert name in self.manifests, self.describe()
        return self.manifests[name]

    def describe(self) -> str:
        return f"exit {self.returncode}\n{self.stdout}\n{self.stderr}"


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def torchrun(args: list[str], out: Path, env: dict[str, str]) -> Run:
    command = [
        sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2",
        "--master-addr", "127.0.0.1", "--master-port", str(free_port()),
        "-m", "saliency.cli", "explain", *args, "--out", str(out),
    ]  # fmt: skip
    done = subprocess.run(command, capture_output=True, text=True, env=env, timeout=240)
    overlays = out.glob("*/grad*.png")
    mtimes = {p.relative_to(out).as_posix(): p.stat().st_mtime_ns for p in overlays}
    manifests = {p.name: json.loads(p.read_text("utf-8")) for p in out.glob("manifest*.json")}
    return Run(done.returncode, done.stdout, done.stderr, manifests, mtimes)


@pytest.fixture(scope="module")
def out(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """The run folder after the first run; the runs are in :func:`runs`."""
    yield tmp_path_factory.mktemp("distributed") / "out"


@pytest.fixture(scope="module")
def runs(out: Path) -> dict[str, Run]:
    root = out.parent
    torch.manual_seed(0)
    weights = root / "squeezenet1_1.pth"
    torch.save(torchvision.models.squeezenet1_1(weights=None).state_dict(), weights)
    rng = np.random.default_rng(0)
    (root / "photos").mkdir()
    (root / "more").mkdir()
    for name in [f"photos/im{i}.png" for i in range(5)] + ["more/im0.png"]:
        pixels = rng.integers(0, 256, (20, 24, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(root / name)
    env = {
        **os.environ,
        "OMP_NUM_THREADS": "1",
        "TORCH_HOME": str(root / "torch_home"),
        "https_proxy": "http://127.0.0.1:9",
        "http_proxy": "http://127.0.0.1:9",
        "PYTHONIOENCODING": "utf-8",
    }
    args = [str(root / "photos"), str(root / "more"), "--model", "squeezenet1_1"]
    args += ["--weights", str(weights), "--input-size", "32", "--method", "gradient,gradcam"]
    args += ["--workers", "1"]
    first = torchrun([*args, "--gallery"], out, env)
    return {"first": first, "rerun": torchrun(args, out, env)}


# ---- the real thing ----------------------------------------------------------------------


def test_merged_manifest_has_every_input_once_and_ok(runs: dict[str, Run], out: Path) -> None:
    first = runs["first"]
    assert first.returncode == 0, first.describe()
    merged = first.manifest()
    paths = [entry["path"] for entry in merged["inputs"]]
    assert sorted(paths) == sorted(ORDER)
    assert {entry["status"] for entry in merged["inputs"]} == {"ok"}
    sources = {entry["path"]: entry["source"] for entry in merged["inputs"]}
    assert sources["im0.png"].endswith("photos/im0.png")
    assert sources["im0.png~2"].endswith("more/im0.png")
    run = merged["run"]
    assert run["world_size"] == 2 and run["device"] == "cpu"
    assert run["totals"]["inputs"] == 6 and run["totals"]["ok"] == 6
    assert run["totals"]["error"] == 0 and run["totals"]["skipped"] == 0
    assert "6 done, 0 skipped" in first.stdout and "by 2 processes" in first.stdout


def test_every_output_exists_and_the_gallery_is_built(runs: dict[str, Run], out: Path) -> None:
    first = runs["first"]
    assert first.returncode == 0, first.describe()
    for entry in first.manifest()["inputs"]:
        assert set(entry["methods"]) == {"gradient", "gradcam"}
        for record in entry["methods"].values():
            assert (out / record["overlay"]).is_file()
    assert (out / "index.html").is_file()


def test_both_ranks_did_their_round_robin_share(runs: dict[str, Run], out: Path) -> None:
    first = runs["first"]
    assert first.returncode == 0, first.describe()
    assert sorted(rank_manifest_files(out)) == [0, 1]
    started = first.manifest()["run"]["started"]
    for rank, share in SHARES.items():
        part = first.manifest(rank_manifest_name(rank))
        assert {entry["path"] for entry in part["inputs"]} == share
        assert part["run"]["rank"] == rank and part["run"]["world_size"] == 2
        assert part["run"]["started"] == started  # one start time: the per-rank files belong
        assert part["run"]["totals"]["ok"] == 3


def test_progress_only_on_rank_0_and_summaries_name_the_rank(runs: dict[str, Run]) -> None:
    stderr = runs["first"].stderr
    assert "saliency explain [rank 0]: 3/3 images" in stderr
    assert "saliency explain [rank 1]: 3 done, 0 skipped" in stderr
    assert "[rank 1]: 1/3" not in stderr and "[rank 1]: 3/3" not in stderr


def test_rerun_skips_everything_on_every_rank(runs: dict[str, Run], out: Path) -> None:
    first, rerun = runs["first"], runs["rerun"]
    assert rerun.returncode == 0, rerun.describe()
    assert "0 done, 6 skipped (already done)" in rerun.stdout
    assert "resuming: 6 of 6 inputs already done" in rerun.stderr
    assert rerun.mtimes == first.mtimes and len(first.mtimes) == 12  # nothing rewritten
    for rank in SHARES:
        totals = rerun.manifest(rank_manifest_name(rank))["run"]["totals"]
        assert totals["skipped"] == 3 and totals["ok"] == 3
    assert rerun.manifest()["inputs"] == first.manifest()["inputs"]
    totals = rerun.manifest()["run"]["totals"]
    assert totals == {**totals, "inputs": 6, "ok": 6, "skipped": 6}


# ---- the parts ----------------------------------------------------------------------------


@pytest.mark.parametrize("count", [0, 1, 5, 6, 7])
@pytest.mark.parametrize("world_size", [1, 2, 3])
def test_shard_is_round_robin_disjoint_and_complete(count: int, world_size: int) -> None:
    items = list(range(count))
    shares = [shard(items, rank, world_size) for rank in range(world_size)]
    assert sorted(i for share in shares for i in share) == items
    assert all(i % world_size == rank for rank, share in enumerate(shares) for i in share)
    assert max(map(len, shares)) - min(map(len, shares)) <= 1


def test_shard_refuses_a_rank_outside_the_world() -> None:
    with pytest.raises(ValueError, match="outside"):
        shard([1, 2], 2, 2)


def test_detect_reads_torchrun_environment() -> None:
    assert detect({}) is None
    assert detect({"WORLD_SIZE": "1", "RANK": "0"}) is None
    env = {"WORLD_SIZE": "4", "RANK": "3", "LOCAL_RANK": "1"}
    assert detect(env) == Ranks(rank=3, world_size=4, local_rank=1)
    for bad in (
        {"WORLD_SIZE": "2"},
        {"WORLD_SIZE": "2", "RANK": "x"},
        {"WORLD_SIZE": "2", "RANK": "2"},
    ):
        with pytest.raises(UsageError):
            detect(bad)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU-only answers")
def test_rank_device_without_cuda() -> None:
    ranks = Ranks(rank=1, world_size=2, local_rank=1)
    assert rank_device("cpu", ranks) == torch.device("cpu")
    assert rank_device("auto", ranks).type in ("cpu", "mps")
    for text in ("cuda", "cuda:1", "nonsense"):
        with pytest.raises(UsageError):
            rank_device(text, ranks)
    assert distributed.backend_for("auto") == "gloo"


def test_combine_errors_says_a_shared_error_once_and_names_ranks_otherwise() -> None:
    assert combine_errors({}, 2) is None
    assert combine_errors({"bad": [0, 1]}, 2) == "bad"
    assert combine_errors({"bad": [1]}, 2) == "rank 1: bad"
    both = combine_errors({"a": [0], "b": [1, 2]}, 3)
    assert both == "rank 0: a; ranks 1, 2: b"


def test_agree_in_a_one_process_group(tmp_path: Path) -> None:
    """The real collective, through a one-process Gloo group."""
    store = dist.FileStore(str(tmp_path / "store"), 1)
    dist.init_process_group("gloo", store=store, rank=0, world_size=1)
    try:
        group = Group(Ranks(0, 1, 0), None)
        assert distributed.agree(group, None, "t0") == (None, "t0")
        assert distributed.agree(group, "no images", "t0") == ("no images", "t0")
        assert group.gather({"a": 1}) == [{"a": 1}]
        group.barrier()
    finally:
        dist.destroy_process_group()


def record(path: str, status: str = "ok", methods: tuple[str, ...] = ("gradient",)) -> InputRecord:
    entry = InputRecord(path=path, source=f"/photos/{path}", status=status)
    entry.error = None if status == "ok" else f"{path}: broken"
    entry.methods = {m: MethodRecord(f"{path}/{m}.png", None, 0.1) for m in methods}
    return entry


def part(rank: int, records: list[InputRecord], started: str, **totals: Any) -> Manifest:
    run = RunInfo(model="m", device=f"cuda:{rank}", started=started, rank=rank, world_size=2)
    run.totals = Totals(**{"skipped": 0, "seconds": 1.0, **totals})
    return Manifest(run, {entry.path: entry for entry in records})


def test_merge_sums_the_ranks_and_keeps_earlier_inputs() -> None:
    started = "2026-01-01T00:00:00+00:00"
    ranks = [
        part(0, [record("a.png"), record("c.png", "error")], started, skipped=1, seconds=2.0),
        part(1, [record("b.png")], started, skipped=2, seconds=3.5),
    ]
    run = RunInfo(model="m", device="cuda:0", started=started)
    merged = merge(run, {"old.png": record("old.png")}, ranks)
    assert sorted(merged.inputs) == ["a.png", "b.png", "c.png", "old.png"]
    totals = merged.to_json()["run"]["totals"]
    assert totals == {"inputs": 4, "ok": 3, "error": 1, "skipped": 3, "seconds": 3.5}
    assert merged.run.world_size == 2 and merged.run.device == "cuda"
    assert "rank" not in merged.to_json()["run"] and merged.run.started == started
    assert [e["path"] for e in merged.to_json()["inputs"]] == sorted(merged.inputs)


def test_merged_device() -> None:
    assert merged_device(["cpu", "cpu"]) == "cpu"
    assert merged_device(["cuda:0", "cuda:1", "cuda:0"]) == "cuda"
    assert merged_device(["cuda:0", "cpu"]) == "cuda:0, cpu"


def test_fold_takes_the_rank_records_of_the_same_run_only() -> None:
    now, before = "2026-01-02T00:00:00+00:00", "2026-01-01T00:00:00+00:00"
    base = Manifest(RunInfo(model="m", started=now), {"a.png": record("a.png", methods=())})
    current = part(0, [record("a.png")], now)
    stale = part(1, [record("z.png")], before)
    folded = fold(base, [current, stale])
    assert folded is not None and sorted(folded.inputs) == ["a.png"]
    assert "gradient" in folded.inputs["a.png"].methods and folded.run == base.run
    assert fold(base, [stale]) is base
    alone = fold(None, [current, stale])  # no manifest.json: the latest rank files
    assert alone is not None and sorted(alone.inputs) == ["a.png"]
    assert alone.run.rank is None and alone.run.world_size is None
    assert fold(None, []) is None


def test_read_earlier_folds_rank_files_and_warns_about_broken_ones(tmp_path: Path) -> None:
    now = "2026-01-02T00:00:00+00:00"
    write_manifest(tmp_path, Manifest(RunInfo(started=now), {}))
    write_manifest(tmp_path, part(0, [record("a.png")], now), rank_manifest_name(0))
    (tmp_path / rank_manifest_name(1)).write_text("{not json")
    (tmp_path / "manifest.rank-x.json").write_text("ignored: not a rank file name")
    assert sorted(rank_manifest_files(tmp_path)) == [0, 1]
    earlier = read_earlier(tmp_path)
    assert earlier.manifest is not None and sorted(earlier.manifest.inputs) == ["a.png"]
    assert len(earlier.warnings) == 1 and "manifest.rank-1.json" in earlier.warnings[0]


def test_a_process_alone_is_a_local_world_of_one() -> None:
    """Without torchrun the run goes through the same Group, which never calls torch.distributed."""
    assert not dist.is_initialized()
    with distributed.join(detect({}), "cpu") as world:
        assert world.local and not world.shared and world.ranks == distributed.ALONE
        world.barrier()
        assert world.all_gather("x") == ["x"] and world.gather({"a": 1}) == [{"a": 1}]
        assert distributed.agree(world, "no images", "t0") == ("no images", "t0")
        assert world.share([1, 2, 3]) == [1, 2, 3]
        assert world.manifest_name == "manifest.json"
        assert world.label("saliency explain") == "saliency explain"
    assert not dist.is_initialized()
    shared = Group(Ranks(1, 2, 1), None)
    assert shared.shared and shared.manifest_name == rank_manifest_name(1)
    assert shared.label("saliency explain") == "saliency explain [rank 1]"
    assert shared.share([1, 2, 3]) == [2]
