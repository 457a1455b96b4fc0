"""``saliency explain`` and ``saliency gallery`` against hostile file names, option values and run
folders (issue #13), run in process where they can be (milliseconds each once torch is
imported); signals and concurrent runs are subprocesses with timeouts.

The model is the offline ``demo:shapes`` network on small images, one fast method.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from saliency.cli.main import main
from saliency.run_folder import from_name_bytes, name_bytes, read_manifest, text_form

pytestmark = pytest.mark.usefixtures("one_torch_thread")

BASE = ["--model", "demo:shapes", "--method", "gradient", "--workers", "1", "--quiet"]


def picture(path: Path, seed: int = 0, size: tuple[int, int] = (20, 16)) -> Path:
    pixels = np.random.default_rng(seed).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path, format="PNG")
    return path


def run(capsys: pytest.CaptureFixture[str], *argv: str | Path) -> tuple[int, str, str]:
    """``saliency ARGV`` in process: exit code, stdout, stderr."""
    code = main([*map(str, argv)])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


# ---- 1. file names that are not valid UTF-8 ------------------------------------------------


def test_name_forms_are_text_and_reversible() -> None:
    name = os.fsdecode(b"/photos/caf\xe9 \\x41.png")
    assert text_form(name) == "/photos/caf\\xe9 \\x41.png"
    raw = name_bytes(name)
    assert raw is not None and raw.isascii() and from_name_bytes(raw) == name
    assert text_form("café.png") == "café.png" and name_bytes("café.png") is None
    assert text_form("\ud800") == "\\ud800"  # a JSON escape no file name decodes to


def test_latin1_file_name_is_processed_recorded_and_resumed(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    photos = tmp_path / "photos"
    photos.mkdir()
    picture(photos / "good.png")
    latin1 = picture(Path(os.fsdecode(bytes(photos) + b"/caf\xe9.png")), seed=1)
    out = tmp_path / "out"
    code, _, err = run(capsys, "explain", photos, "--out", out, *BASE)
    assert code == 0, err
    data = json.loads((out / "manifest.json").read_text(encoding="utf-8"))
    entry = next(e for e in data["inputs"] if e["path"] != "good.png")
    assert entry["status"] == "ok" and entry["path"] == "caf\\xe9.png"
    assert entry["source"] == text_form(str(latin1)) and "\\xe9" in entry["source"]
    assert from_name_bytes(entry["source_bytes"]) == str(latin1)
    assert (out / "caf\\xe9.png" / "gradient.png").is_file()
    code, _, err = run(capsys, "explain", photos, "--out", out, *BASE)
    assert code == 0 and "2 of 2 inputs already done" in err
    code, _, err = run(capsys, "gallery", out)
    assert code == 0, err
    assert "caf\\\\xe9.png" in (out / "index.html").read_text(encoding="utf-8")  # in JSON


def test_lone_surrogate_escape_in_a_manifest_neither_crashes_resume_nor_gallery(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    photos = tmp_path / "photos"
    photos.mkdir()
    picture(photos / "good.png")
    out = tmp_path / "out"
    assert run(capsys, "explain", photos, "--out", out, *BASE)[0] == 0
    text = (out / "manifest.json").read_text(encoding="utf-8")
    text = text.replace('"error": null', '"error": "bad \\udcff \\ud800"', 1)
    text = text.replace('"model": "demo:shapes"', '"model": "demo:shapes", "note\\udcff": 1', 1)
    (out / "manifest.json").write_text(text, encoding="utf-8")
    manifest = read_manifest(out)
    assert manifest is not None and manifest.run.extra == {"note\\xff": 1}
    code, _, err = run(capsys, "gallery", out)
    assert code == 0, err
    code, _, err = run(capsys, "explain", photos, "--out", out, *BASE, "--overwrite")
    assert code == 0, err
    json.loads((out / "manifest.json").read_text(encoding="utf-8"))


# ---- 2. option values that could only fail later ---------------------------------------------


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--method", "integrated_gradients", "--baseline", "inf"], "finite number"),
        (["--method", "integrated_gradients", "--baseline", "nan"], "finite number"),
        (["--method", "smoothgrad", "--noise", "inf"], "finite"),
        (["--method", "integrated_gradients", "--steps", "9" * 23], "at most 2147483647"),
        (["--method", "integrated_hessians", "--query", "9,9,1,1"], "query"),  # empty box
        (["--memory-budget", "1e400"], "positive size in bytes"),
        (["--device", "meta"], "cannot compute there"),
        (["--out", ""], "--out ''"),
    ],
)
def test_bad_values_are_usage_errors_before_any_work(
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    argv: list[str],
    message: str,
) -> None:
    monkeypatch.chdir(tmp_path)
    picture(tmp_path / "a.png")
    base = [a for a in BASE if a not in ("--method", "gradient")]
    out = [] if "--out" in argv else ["--out", "out"]
    try:
        code, _, err = run(capsys, "explain", "a.png", *base, *out, *argv)
    except SystemExit as exc:  # argparse's own usage errors
        code, err = int(exc.code or 0), capsys.readouterr().err
    assert code == 2 and message in err, err
    assert sorted(os.listdir(tmp_path)) == ["a.png"]  # nothing written, not even a manifest


def test_library_refuses_a_non_finite_baseline() -> None:
    import torch

    from saliency.baselines import make_baseline
    from saliency.errors import InvalidOptionError

    with pytest.raises(InvalidOptionError, match="finite number"):
        make_baseline(float("inf"), torch.zeros(1, 3, 4, 4))


# ---- 3. one run at a time per run folder -------------------------------------------------------

HOLD_LOCK = """
import sys, time
from pathlib import Path
from saliency.run_lock import lock_run_folder
lock = lock_run_folder(Path(sys.argv[1]))
print("locked", flush=True)
time.sleep(120)
"""


def test_a_second_run_on_a_locked_folder_is_refused_and_a_dead_holder_does_not_block(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    photos = tmp_path / "photos"
    photos.mkdir()
    picture(photos / "a.png")
    out = tmp_path / "out"
    out.mkdir()
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLD_LOCK, str(out)], stdout=subprocess.PIPE, text=True
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline() == "locked\n"
        code, _, err = run(capsys, "explain", photos, "--out", out, *BASE)
        assert code == 2 and "in use by another saliency run" in err
        assert f"process {holder.pid}" in err
        assert not (out / "manifest.json").exists()
    finally:
        holder.kill()  # SIGKILL: no chance to release; the kernel does
        holder.wait(timeout=30)
    code, _, err = run(capsys, "explain", photos, "--out", out, *BASE)
    assert code == 0, err
    assert json.loads((out / "manifest.json").read_text())["inputs"][0]["status"] == "ok"


def test_a_lock_file_is_not_followed_through_a_symbolic_link(tmp_path: Path) -> None:
    from saliency.run_lock import LOCK_NAME, lock_run_folder

    outside = tmp_path / "precious.txt"
    outside.write_text("keep")
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / LOCK_NAME).symlink_to(outside)
    with pytest.raises(OSError):
        lock_run_folder(tmp_path / "out")
    assert outside.read_text() == "keep"


# ---- 4. signals: SIGTERM like Ctrl-C; workers die with their parent; stale temporary files ----

SLOW = ["--method", "smoothgrad", "--samples", "64", "--batch-size", "8"]


def photo_folder(root: Path, count: int) -> Path:
    folder = root / "photos"
    folder.mkdir()
    for index in range(count):
        picture(folder / f"p{index:02d}.png", seed=index)
    return folder


def start_explain(photos: Path, out: Path, *extra: str) -> subprocess.Popen[str]:
    argv = [sys.executable, "-m", "saliency.cli", "explain", str(photos), "--out", str(out)]
    rest = [a for a in BASE if a not in ("--method", "gradient", "--workers", "1")]
    environment = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.Popen(
        [*argv, *rest, *extra],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=environment,
    )


def wait_for(condition: Callable[[], bool], timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def stat_fields(path: str) -> list[str] | None:
    """The fields of a /proc ``stat`` file after the command name (state, parent id, ...),
    or None once the process or thread is gone."""
    try:
        return Path(path).read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None


def children(pid: int) -> list[int]:
    """Process ids whose parent is ``pid`` (from /proc)."""
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            fields = stat_fields(f"/proc/{entry}/stat")
            if fields is not None and int(fields[1]) == pid:
                found.append(int(entry))
    return found


def alive(pid: int) -> bool:
    """Whether a thread of the process is still running or exiting. A zombie leader is not
    enough: its other threads may still be tearing down the memory and the open files they
    share (a forked worker's inherited run lock among them)."""
    try:
        threads = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return False
    for thread in threads:
        fields = stat_fields(f"/proc/{pid}/task/{thread}/stat")
        if fields is not None and fields[0] not in ("Z", "X"):
            return True
    return False


def lock_released(out: Path) -> bool:
    """Whether no process holds the run folder's lock any more."""
    from saliency.errors import SaliencyError
    from saliency.run_lock import lock_run_folder

    try:
        lock_run_folder(out).release()
    except SaliencyError:
        return False
    return True


def stop(process: subprocess.Popen[str], workers: list[int]) -> None:
    """Kill a run and the workers it had (left alive if the code under test is wrong)."""
    process.kill()
    process.wait(timeout=30)
    for pid in workers:
        if alive(pid):
            os.kill(pid, signal.SIGKILL)


@pytest.mark.skipif(sys.platform != "linux", reason="fork workers and /proc: Linux")
def test_sigterm_is_handled_like_ctrl_c(tmp_path: Path) -> None:
    photos = photo_folder(tmp_path, 24)
    out = tmp_path / "out"
    process = start_explain(photos, out, *SLOW, "--workers", "2")
    workers: list[int] = []
    try:
        wait_for(lambda: any(out.glob("*/smoothgrad.png")) and bool(children(process.pid)))
        workers = children(process.pid)
        process.send_signal(signal.SIGTERM)
        _, err = process.communicate(timeout=120)
    finally:
        stop(process, workers)
    assert process.returncode == 130, err
    assert "interrupted" in err and "Traceback" not in err
    done = [e for e in json.loads((out / "manifest.json").read_text())["inputs"]]
    written = {p.parent.name for p in out.glob("*/smoothgrad.png")}
    assert {e["path"] for e in done if e["status"] == "ok"} == written  # the final save


@pytest.mark.skipif(sys.platform != "linux", reason="fork workers and /proc: Linux")
def test_workers_die_with_a_killed_parent_and_release_the_pipe(tmp_path: Path) -> None:
    photos = photo_folder(tmp_path, 24)
    out = tmp_path / "out"
    process = start_explain(photos, out, *SLOW, "--workers", "2")
    workers: list[int] = []
    try:
        wait_for(lambda: any(out.glob("*/smoothgrad.png")) and bool(children(process.pid)))
        workers += children(process.pid)
        process.kill()  # SIGKILL: no handler runs
        process.wait(timeout=30)
        assert process.stdout is not None
        # EOF on its stdout means no worker holds the pipe any more (``| tee`` returns)
        reader = threading.Thread(target=process.stdout.read, daemon=True)
        reader.start()
        reader.join(timeout=30)
        assert not reader.is_alive(), "a worker still holds stdout"
        wait_for(lambda: not any(alive(pid) for pid in workers), timeout=30)
    finally:
        stop(process, workers)


def listed_ok(out: Path) -> set[str]:
    """Relpaths the saved manifest lists as done (none before the first save)."""
    try:
        manifest = json.loads((out / "manifest.json").read_text())
    except (OSError, ValueError):
        return set()
    return {e["path"] for e in manifest["inputs"] if e["status"] == "ok"}


@pytest.mark.skipif(sys.platform != "linux", reason="fork workers and /proc: Linux")
def test_a_killed_run_is_resumed_without_redoing_finished_outputs(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    from saliency.cli.journal import journal_files, read_journals

    photos = photo_folder(tmp_path, 24)
    out = tmp_path / "out"
    options = ["--model", "demo:shapes", "--quiet", *SLOW]
    process = start_explain(photos, out, *SLOW, "--workers", "2")
    workers: list[int] = []

    def written() -> set[str]:
        return {p.parent.name for p in out.glob("*/smoothgrad.png")}

    try:
        # Outputs beyond what the manifest lists (it is saved every few seconds).
        wait_for(lambda: len(written() - listed_ok(out)) >= 3)
        workers = children(process.pid)
        process.kill()  # SIGKILL: no final save
        process.wait(timeout=30)
    finally:
        stop(process, workers)
    wait_for(lambda: not any(alive(pid) for pid in workers), timeout=30)
    wait_for(lambda: lock_released(out), timeout=30)  # the kernel drops it with the last holder
    saved = listed_ok(out)
    journaled = {r.path for j in read_journals(out) for r in j.inputs if "smoothgrad" in r.methods}
    done = saved | journaled
    # Every output on disk is journaled by its writer, but for one caught between its rename
    # and its line (at most one per worker).
    assert len(written() - saved) >= 3 and len(written() - done) <= 2
    stamps = {
        name: (
            os.stat(out / name / "smoothgrad.png").st_ino,
            os.stat(out / name / "smoothgrad.png").st_mtime_ns,
        )
        for name in done
    }
    code, _, err = run(capsys, "explain", photos, "--out", out, *options, "--workers", "1")
    assert code == 0, err
    assert f"resuming: {len(done)} of 24 inputs already done" in err
    for name, stamp in stamps.items():  # not written again
        overlay = out / name / "smoothgrad.png"
        assert (os.stat(overlay).st_ino, os.stat(overlay).st_mtime_ns) == stamp, name
    assert listed_ok(out) == {f"p{i:02d}.png" for i in range(24)}
    leftovers = [n for _, _, names in os.walk(out) for n in names if n.endswith(".tmp")]
    assert not leftovers and not journal_files(out)


def test_stale_temporary_files_of_ours_are_removed_others_kept(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    photos = tmp_path / "photos"
    photos.mkdir()
    picture(photos / "a.png")
    out = tmp_path / "out"
    (out / "a.png").mkdir(parents=True)
    ours = [out / ".manifest.json.k2j_9xq1.tmp", out / "a.png" / ".gradient.png.abcdefgh.tmp"]
    theirs = [out / "notes.tmp", out / ".manifest.json.TOOLONG12.tmp", photos / ".x.abcdefgh.tmp"]
    for path in ours + theirs:
        path.write_text("x")
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    (outside / ".y.abcdefgh.tmp").write_text("x")
    (out / "link").symlink_to(outside, target_is_directory=True)
    code, _, err = run(capsys, "explain", photos / "a.png", "--out", out, *BASE)
    assert code == 0, err
    assert not any(path.exists() for path in ours)
    assert all(path.exists() for path in theirs) and (outside / ".y.abcdefgh.tmp").exists()


# ---- 5. replaced inputs and damaged outputs are redone -----------------------------------------


def test_replaced_input_and_damaged_outputs_are_redone(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    photos = tmp_path / "photos"
    photos.mkdir()
    for name in ("a.png", "b.png", "c.png", "d.png"):
        picture(photos / name)
    out = tmp_path / "out"
    assert run(capsys, "explain", photos, "--out", out, *BASE)[0] == 0
    before = json.loads((out / "manifest.json").read_text())
    entry = {e["path"]: e for e in before["inputs"]}["a.png"]
    assert entry["size"] == (photos / "a.png").stat().st_size and entry["mtime_ns"] > 0
    picture(photos / "a.png", seed=7, size=(30, 10))  # same name, another picture
    (out / "b.png" / "gradient.png").write_bytes(b"garbage, not an image at all")
    overlay = out / "c.png" / "gradient.png"
    overlay.write_bytes(overlay.read_bytes()[:-20])  # truncated
    code, _, err = run(capsys, "explain", photos, "--out", out, *BASE)
    assert code == 0 and "1 input(s) changed since the earlier run" in err
    assert "resuming: 1 of 4 inputs already done" in err  # d.png only
    after = {e["path"]: e for e in json.loads((out / "manifest.json").read_text())["inputs"]}
    assert (after["a.png"]["width"], after["a.png"]["height"]) == (30, 10)
    assert Image.open(out / "a.png" / "gradient.png").size == (30, 10)
    for name in ("b.png", "c.png"):
        Image.open(out / name / "gradient.png").load()  # whole images again


def test_looks_complete_per_format(tmp_path: Path) -> None:
    from saliency.run_folder import encode_overlay, looks_complete

    image = Image.new("RGB", (8, 8), "red")
    for extension in ("png", "jpg", "webp"):
        path = tmp_path / f"x.{extension}"
        data = encode_overlay(image, extension)
        path.write_bytes(data)
        assert looks_complete(path, extension)
        path.write_bytes(data[:-3])
        assert not looks_complete(path, extension)
        path.write_bytes(b"")
        assert not looks_complete(path, extension)
    np.save(tmp_path / "x.npy", np.zeros(3, np.float32))
    assert looks_complete(tmp_path / "x.npy", "npy")


# ---- 6. the gallery never writes or deletes through a symbolic link ---------------------------


def test_gallery_refuses_a_symlinked_assets_folder_and_keeps_outside_files(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    photos = tmp_path / "photos"
    photos.mkdir()
    picture(photos / "a.png")
    out = tmp_path / "out"
    assert run(capsys, "explain", photos, "--out", out, *BASE, "--gallery")[0] == 0
    outside = tmp_path / "outside"
    outside.mkdir()
    precious = outside / "precious.jpg"
    precious.write_bytes(b"precious")
    cache = json.loads((out / "gallery" / "cache.json").read_text())
    cache["assets"]["strip/precious.jpg"] = {"sources": [], "bytes": 8, "facts": {}}
    (out / "gallery" / "cache.json").write_text(json.dumps(cache))
    shutil.rmtree(out / "gallery" / "strip")
    (out / "gallery" / "strip").symlink_to(outside, target_is_directory=True)
    code, _, err = run(capsys, "gallery", out)
    assert code == 2 and "symbolic link" in err
    assert precious.read_bytes() == b"precious" and os.listdir(outside) == ["precious.jpg"]

    # explain --gallery with OUT/gallery itself a link: nothing written outside --out
    shutil.rmtree(out / "gallery")
    (out / "gallery").symlink_to(outside, target_is_directory=True)
    code, _, err = run(capsys, "explain", photos, "--out", out, *BASE, "--gallery")
    assert code == 1 and "symbolic link" in err
    assert os.listdir(outside) == ["precious.jpg"]


# ---- 7. a file named like a model source never wins over the source --------------------------


class _Planted(torch.nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.flatten(1)[:, :7]


@pytest.mark.filterwarnings("ignore:`torch.jit:FutureWarning")
def test_a_file_named_like_a_source_is_loaded_only_as_an_explicit_path(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import saliency

    monkeypatch.chdir(tmp_path)
    torch.jit.script(_Planted()).save("demo:shapes")
    demo = saliency.load_model("demo:shapes")
    planted = saliency.load_model("./demo:shapes")
    probe = torch.zeros(1, 3, 96, 96)
    assert demo.model(probe).shape[1] != 7 and demo.class_names is not None
    assert planted.model(probe).shape == (1, 7)
    assert saliency.models.model_file("demo:shapes") is None
    picture(tmp_path / "a.png")
    code, _, err = run(capsys, "explain", "a.png", "--out", "out", *BASE)
    assert code == 0, err
    assert json.loads(Path("out/manifest.json").read_text())["run"]["model"] == "demo:shapes"


# ---- 8. names are printed escaped ----------------------------------------------------------------


def test_terminal_text_escapes_controls_and_keeps_printable_text() -> None:
    from saliency.cli.progress import terminal_text

    assert terminal_text("naïve café 日本.png") == "naïve café 日本.png"
    assert terminal_text("a\x1b[2Jb\nc\rd\u202ee") == "a\\x1b[2Jb\\x0ac\\x0dd\\u202ee"
    assert terminal_text(os.fsdecode(b"caf\xe9")) == "caf\\xe9"
    assert terminal_text("one\ntwo", lines=True) == "one\ntwo"


def test_hostile_names_reach_the_terminal_escaped(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    photos = tmp_path / "photos"
    photos.mkdir()
    hostile = photos / "evil\x1b]0;pwned\x07\nFAKE LINE.png"
    hostile.write_bytes(b"not an image")  # fails: its name is in the error line
    picture(photos / "good.png")
    out = tmp_path / "out\x1b[31m"
    code, stdout, err = run(capsys, "explain", photos, "--out", out, *BASE)
    assert code == 1
    printed = stdout + err
    assert "\x1b" not in printed and "\x07" not in printed
    assert "\nFAKE LINE" not in printed
    assert "evil\\x1b]0;pwned\\x07\\x0aFAKE LINE.png" in err
    assert "out\\x1b[31m" in stdout  # the manifest's path in the summary


# ---- 9. --workers is bounded by the CPUs and the inputs ----------------------------------------


def test_workers_are_bounded_by_cpus_and_inputs(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from saliency.cli import pipeline

    started: list[int] = []
    original = pipeline.start_workers

    def recording(count: int, *rest: object) -> object:
        started.append(count)
        return original(count, *rest)  # type: ignore[arg-type]

    monkeypatch.setattr(pipeline, "start_workers", recording)
    photos = tmp_path / "photos"
    photos.mkdir()
    picture(photos / "a.png")
    picture(photos / "b.png", seed=1)
    base = [a for a in BASE if a not in ("--workers", "1")]
    out = tmp_path / "out"
    code, _, err = run(capsys, "explain", photos, "--out", out, *base, "--workers", "64")
    assert code == 0, err
    assert started == [min(2, len(os.sched_getaffinity(0)))]
    assert pipeline.worker_count(64, 10**6) == len(os.sched_getaffinity(0))
    assert pipeline.worker_count(3, 0) == 1
    code, _, err = run(capsys, "explain", photos, "--out", out, *base, "--workers", "64")
    assert code == 0 and started == started[:1]  # nothing left to do: no pool at all


# ---- 11. special files and absurd manifests ------------------------------------------------------


def _within(seconds: float, call: Callable[[], object]) -> BaseException | None:
    """Run ``call`` in a daemon thread; the exception it raised (None: it returned). Fails the
    test if it is still running after ``seconds`` (it blocks on a FIFO or reads a device)."""
    outcome: list[BaseException | None] = []

    def target() -> None:
        try:
            call()
            outcome.append(None)
        except BaseException as exc:  # handed to the test
            outcome.append(exc)

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    thread.join(seconds)
    assert outcome, f"still running after {seconds} s"
    return outcome[0]


def test_special_files_as_model_or_manifest_are_clear_errors(tmp_path: Path) -> None:
    import saliency
    from saliency.errors import ModelLoadError
    from saliency.run_folder import ManifestError

    fifo = tmp_path / "model.pt"
    os.mkfifo(fifo)
    for path in ("/dev/zero", str(fifo)):
        error = _within(20, lambda path=path: saliency.load_model(path))
        assert isinstance(error, ModelLoadError) and "not a regular file" in str(error)
    out = tmp_path / "out"
    out.mkdir()
    os.mkfifo(out / "manifest.json")
    error = _within(20, lambda: read_manifest(out))
    assert isinstance(error, ManifestError) and "not a regular file" in str(error)


def test_a_deeply_nested_manifest_is_a_manifest_error(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    from saliency.run_folder import ManifestError

    out = tmp_path / "out"
    out.mkdir()
    (out / "manifest.json").write_text("[" * 100_000 + "]" * 100_000)
    with pytest.raises(ManifestError, match="nested too deeply"):
        read_manifest(out)
    code, _, err = run(capsys, "gallery", out)
    assert code == 2 and "nested too deeply" in err
