"""The options of ``saliency explain`` and the checks of its choices that need no model.

Each check raises :class:`UsageError` (exit code 2) saying what is accepted: method names
(``all`` = every registered method), method options (through each method's own validation), the
output format, overlay options and the output folder.
"""

from __future__ import annotations

import argparse
import os
import re
import tempfile
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, get_args

from PIL import Image, features

from saliency.cli import UsageError, method_options, option_values
from saliency.cli.method_options import MethodOption, options_for
from saliency.cli.model import DEFAULT_SIZE
from saliency.cli.names import split_names
from saliency.engine import PRECISIONS
from saliency.errors import SaliencyError
from saliency.framing import DEFAULT_FIT, FITS
from saliency.methods.base import Method
from saliency.methods.registry import family_prefixes, get_method, list_methods
from saliency.output_files import file_stem
from saliency.rendering import Sign, colormap_lut
from saliency.run_folder import FORMATS, json_safe

DEFAULT_METHODS = ("gradient", "integrated_gradients", "smoothgrad", "gradcam")
BATCH_CPU, BATCH_GPU = 16, 32
"""Images explained together by default on a CPU and on a GPU."""
DEFAULT_MAX_PIXELS = 89_478_485  # Pillow's own default decompression-bomb limit
# Method names become file names: keep them to a portable, harmless alphabet.
_SAFE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.+-]*")
_FORMAT_FEATURES = {"jpg": "jpg", "webp": "webp"}


@dataclass(frozen=True)
class ChosenMethod:
    """A method of the run, built once to validate its options.

    Attributes:
        instance: The method object (its options checked).
        options: The options to pass to :func:`saliency.explain` for it.
        recorded: Its option values as JSON, for the manifest.
    """

    instance: Method
    options: dict[str, Any]
    recorded: dict[str, Any]


def method_names(values: Sequence[str] | None) -> list[str]:
    """The ``--method`` values: repeatable, comma-separated, ``all``; default the four core ones.

    Raises:
        UsageError: An unknown name, or a name unusable as a file name.
    """
    registered = list_methods(families=False)  # a family's library loads only when named
    if not values:
        return [name for name in DEFAULT_METHODS if name in registered]
    names: list[str] = []
    for name in split_names(values):
        # all: every method but the members of method families (captum:NAME...), many of
        # which need options (Occlusion's window) or are exponential (ShapleyValues).
        for item in registered if name == "all" else [name]:
            if not method_options.is_registered(item):
                raise UsageError(
                    f"unknown method {item!r}; accepted: {', '.join(list_methods())}, or all"
                )
            if item not in names:
                names.append(item)
    if not names:
        raise UsageError(f"--method is empty; accepted: {', '.join(list_methods())}, or all")
    for name in names:
        if not _SAFE_NAME.fullmatch(file_stem(name)):
            raise UsageError(f"method {name!r} cannot be used: its name is not a safe file name")
    return names


def choose_methods(names: Iterable[str], given: Mapping[str, Any]) -> dict[str, ChosenMethod]:
    """Build every chosen method with the given options it accepts.

    Raises:
        UsageError: An option value a method rejects.
    """
    chosen = {}
    for name in names:
        try:
            options = options_for(name, given)
            instance = get_method(name).create(**options)
        except (SaliencyError, ValueError, TypeError) as exc:
            raise UsageError(f"{name}: {exc}") from None
        recorded = json_safe(instance.options())
        chosen[name] = ChosenMethod(instance, options, recorded)
    return chosen


def check_format(extension: str) -> None:
    """Raise unless this Pillow can encode the overlay format."""
    feature = _FORMAT_FEATURES.get(extension)
    if feature is not None and not features.check(feature):
        raise UsageError(f"--format {extension}: this Pillow cannot write it; use --format png")


def render_options(alpha: float, colormap: str | None, sign: str | None) -> dict[str, Any]:
    """Keyword options of :func:`saliency.render` for the overlays, checked.

    Raises:
        UsageError: ``alpha`` outside [0, 1] or an unknown colormap.
    """
    if not 0.0 <= alpha <= 1.0:
        raise UsageError(f"--overlay-alpha {alpha}: accepted: a number in [0, 1]")
    options: dict[str, Any] = {"alpha": alpha}
    if colormap is not None:
        try:
            colormap_lut(colormap)
        except SaliencyError as exc:
            raise UsageError(f"--overlay-cmap: {exc}") from None
        options["cmap"] = colormap
    if sign is not None:
        options["sign"] = sign
    return options


def prepare_out(text: str) -> Path:
    """Create the output folder if needed and check that files can be written in it.

    Raises:
        UsageError: It is a file, cannot be created, or is not writable.
    """
    if not text:
        raise UsageError("--out '': accepted: a folder path (use --out . for this folder)")
    out = Path(text)
    if out.exists() and not out.is_dir():
        raise UsageError(f"--out {text} exists and is not a folder; accepted: a folder path")
    try:
        out.mkdir(parents=True, exist_ok=True)
        descriptor, probe = tempfile.mkstemp(prefix=".saliency-write-test.", dir=out)
        os.close(descriptor)
        os.unlink(probe)
    except OSError as exc:
        raise UsageError(f"--out {text} is not a writable folder: {exc.strerror or exc}") from None
    return out


@contextmanager
def image_pixel_limit(limit: int | None) -> Iterator[None]:
    """Pillow's decompression-bomb limit for the block (None: no limit), restored after."""
    before = Image.MAX_IMAGE_PIXELS
    Image.MAX_IMAGE_PIXELS = limit
    try:
        yield
    finally:
        Image.MAX_IMAGE_PIXELS = before


def positive_int(text: str) -> int:
    """An argparse type: an integer >= 1."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: accepted: an integer >= 1") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text}: accepted: an integer >= 1")
    return value


_BYTE_UNITS = {
    "": 1,
    "b": 1,
    "kb": 10**3,
    "mb": 10**6,
    "gb": 10**9,
    "kib": 2**10,
    "mib": 2**20,
    "gib": 2**30,
}


def byte_size(text: str) -> int:
    """An argparse type: a positive number of bytes, e.g. ``4000000000``, ``512MiB``, ``2GB``."""
    stripped = text.strip().lower()
    digits = stripped.rstrip("abcdefghijklmnopqrstuvwxyz").strip()
    unit = stripped[len(digits) :].strip()
    try:
        value = float(digits) * _BYTE_UNITS[unit]
    except (KeyError, ValueError):
        value = 0
    if not 1 <= value < 2**63:  # also NaN and inf
        raise argparse.ArgumentTypeError(
            f"{text!r}: accepted: a positive size in bytes, optionally with a unit "
            "(kB, MB, GB, KiB, MiB, GiB), e.g. 2GiB"
        )
    return int(value)


DESCRIPTION = """\
Explain a model's predictions on image files. For every input image, writes
OUT/<relpath>/<method>.<format>: an overlay of the saliency map on the image, at the
image's own resolution (<relpath> is the image's path relative to the folder argument it
was found in, extension kept; a file argument: its name; inputs that would collide get a
~2, ~3... suffix). OUT/manifest.json lists every input with its status, prediction,
top-5, target and outputs, and the run's settings (see docs/manifest.md).

By default (--fit squash) the model sees the WHOLE image, resized to the model's square
input size (its preprocessing crop size, e.g. 224; --input-size to change) ignoring the
aspect ratio, so the map covers the whole image; --fit crop gives the model its evaluation
transform (resize, centre crop) and --fit pad keeps the aspect ratio. Either way the map is
drawn back onto the original image through the same geometry, exactly aligned; with crop,
what the model did not see is grey. saliency.load_images(..., fit=...) gives the same inputs.
"""

EPILOG = """\
Folders: files with an extension Pillow decodes; subfolders with --recursive (symbolic
links to folders are followed, loops are not); hidden names (.*) and OUT itself are
skipped. Files named directly are always tried.

Resume: a rerun skips the (image, method) pairs whose outputs and manifest entries are
complete and says how many it skipped; --overwrite redoes them. Results made with another
model, weights, target, precision or method options are never mixed silently: such a rerun
stops with exit code 2 unless --overwrite. Ctrl-C stops cleanly: finished outputs and the
manifest are kept, and the rerun resumes. Every file is written to a temporary name and
renamed; nothing is written outside OUT.

Many GPUs or machines: torchrun --nproc-per-node N -m saliency.cli explain ... shares
the inputs among N processes, one per GPU (cuda:LOCAL_RANK); each records its share in
OUT/manifest.rank-R.json and rank 0 merges them into OUT/manifest.json. Across machines,
OUT must be on a shared file system.

Exit codes: 0 every input done; 1 some inputs failed (each has its error in the manifest)
and every other input was processed; 2 usage or set-up error (unknown method, model,
option or layer, unusable --out...), found before any work; 130 interrupted.

Integrated Hessians --query y0,x0,y1,x1 is a box in pixels of the ORIGINAL image (half-open),
mapped onto each image's model input through --fit; an input whose box lies outside the image
(or, with --fit crop, outside the crop) fails with that message.

Registered methods: {methods}.
Offline: the default model needs its torchvision weights in the torch cache; else pass
--weights FILE (a state dict), --weights none (random), or a demo model (--model demo:shapes).
"""


def names_a_family(arguments: Sequence[str]) -> bool:
    """Whether a command line names a member of a method family (``captum:NAME`` anywhere:
    ``--method``, ``--base``, ``--option base=...``)."""
    prefixes = family_prefixes()
    return any(prefix in argument for argument in arguments for prefix in prefixes)


def registered_names(families: bool) -> list[str]:
    """The registered methods for the help; with ``families`` False a family is named once,
    ``PREFIX:NAME``, without loading its library."""
    if families:
        return list_methods()
    return list_methods(families=False) + [f"{prefix}NAME" for prefix in family_prefixes()]


def add_arguments(parser: argparse.ArgumentParser, families: bool = True) -> list[MethodOption]:
    """Add the help text and every option of ``saliency explain`` to ``parser``; returns the
    method options generated from the registry (see :mod:`saliency.cli.method_options`).

    Args:
        parser: The sub-parser.
        families: Also list the method families' members and add their options (loads their
            libraries, e.g. captum: a command line that names none leaves them out, so that
            ``saliency explain --help`` stays quick).
    """
    registered = registered_names(families)
    parser.description = DESCRIPTION
    parser.epilog = EPILOG.format(methods=", ".join(registered))
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.add_argument("inputs", nargs="+", metavar="INPUT", help="image files and/or folders")
    model = parser.add_argument_group("model")
    model.add_argument(
        "--model",
        default="resnet50",
        metavar="NAME|PATH",
        help="torchvision model name, TorchScript file, or PREFIX:NAME source such as "
        "demo:shapes (default: resnet50)",
    )
    model.add_argument(
        "--weights",
        default="DEFAULT",
        metavar="NAME|PATH",
        help="torchvision weights name (default: DEFAULT), a local state-dict file, or 'none' "
        "for random weights",
    )
    model.add_argument(
        "--device", default="auto", help="auto (default: CUDA if available), cpu, cuda, cuda:N"
    )
    model.add_argument("--precision", choices=PRECISIONS, default="fp32", help="default: fp32")
    model.add_argument(
        "--compile",
        action="store_true",
        help="torch.compile the model forward for gradient passes (worth it on a GPU for many "
        "points: integrated_gradients, smoothgrad); falls back to eager with a warning",
    )
    model.add_argument(
        "--channels-last",
        action="store_true",
        help="run the model's convolutions in channels-last memory format (faster on CPU and "
        "tensor cores; results differ from the default in the last bits)",
    )
    model.add_argument(
        "--input-size",
        type=positive_int,
        metavar="N",
        help=f"the model's square input side (default: the model's crop size, else {DEFAULT_SIZE})",
    )
    model.add_argument(
        "--fit",
        choices=FITS,
        default=None,
        help=f"how an image becomes the model's input (default: {DEFAULT_FIT}): squash = the "
        "whole image resized to the square input, ignoring its aspect ratio; crop = the "
        "model's evaluation transform, shorter side resized (e.g. to 256) then a centre crop "
        "(224): outside the crop the overlay is grey; pad = the whole image, aspect kept, "
        "padded with the mean colour. The same as fit= of saliency.load_images",
    )
    explaining = parser.add_argument_group("explaining")
    explaining.add_argument(
        "--method",
        action="append",
        metavar="NAME",
        help=f"repeatable and/or comma-separated; one of: {', '.join(registered)}; or all "
        f"(default: {','.join(n for n in DEFAULT_METHODS if n in registered)})",
    )
    explaining.add_argument(
        "--target",
        default="predicted",
        metavar="predicted|INT|LABEL",
        help="class to explain: each image's top class (default), a class index or a class name",
    )
    explaining.add_argument(
        "--batch-size",
        type=positive_int,
        metavar="N",
        help=f"at most N images per forward/backward pass, and N images explained together "
        f"(default: automatic: {BATCH_CPU} images per batch on CPU, {BATCH_GPU} on GPU, "
        "passes sized by the engine)",
    )
    explaining.add_argument(
        "--memory-budget",
        type=byte_size,
        metavar="SIZE",
        help="memory one automatic forward/backward pass may use, e.g. 4GiB (default: 60%% of "
        "the free GPU memory, or 25%% of the available RAM up to 8 GiB)",
    )
    output = parser.add_argument_group("output")
    output.add_argument(
        "--out", default="saliency-out", metavar="DIR", help="default: ./saliency-out"
    )
    output.add_argument(
        "--format", choices=FORMATS, default="png", help="overlay format (default: png)"
    )
    output.add_argument(
        "--save-raw",
        action="store_true",
        help="also write <method>.npy: raw float32 attributions at the model's input size",
    )
    output.add_argument(
        "--overwrite", action="store_true", help="redo finished outputs (default: resume)"
    )
    output.add_argument(
        "--overlay-alpha",
        type=float,
        default=0.5,
        metavar="A",
        help="heatmap weight, 0..1 (default 0.5)",
    )
    output.add_argument("--overlay-cmap", metavar="NAME", help="matplotlib colormap")
    output.add_argument(
        "--overlay-sign",
        choices=_choices(Sign),
        help="which attributions to show (default: absolute values)",
    )
    running = parser.add_argument_group("running")
    running.add_argument("-r", "--recursive", action="store_true", help="search subfolders")
    running.add_argument(
        "--max-image-pixels",
        type=_non_negative_int,
        default=DEFAULT_MAX_PIXELS,
        metavar="N",
        help="refuse larger images as decompression bombs (default: Pillow's "
        f"{DEFAULT_MAX_PIXELS:,}; 0: no limit)",
    )
    running.add_argument(
        "--workers",
        type=positive_int,
        default=min(4, os.cpu_count() or 1),
        metavar="N",
        help="worker processes that decode and encode images while the device explains "
        "(at most one per CPU and per input; threads where fork is unavailable; default: up "
        "to 4)",
    )
    running.add_argument(
        "--threads",
        type=_threads,
        default="auto",
        metavar="N|auto",
        help="torch CPU threads; auto (default): torch's choice (one per core), but 1 when the "
        "load average already reaches the number of cores, where torch's thread team would "
        "stall waiting for busy cores",
    )
    running.add_argument(
        "-q", "--quiet", action="store_true", help="no progress, only errors and the summary"
    )
    running.add_argument(
        "--gallery",
        action="store_true",
        help="build the HTML gallery (OUT/index.html) at the end of the run, as `saliency gallery`",
    )
    reserved = {
        text.lstrip("-").replace("-", "_")
        for action in parser._actions
        for text in action.option_strings
    } | {
        "batch_size", "create_graph", "precision", "target", "images", "compile", "memory_budget",
        "channels_last",
    }  # fmt: skip
    generated = method_options.registry_options(reserved, families=families)
    family_note = (
        ""
        if families or not family_prefixes()
        else "\nThe options of a method family's members (captum:NAME) are listed when the\n"
        "command line names one: saliency explain --method captum:NAME --help."
    )
    group = parser.add_argument_group(
        "method options",
        "From the registered methods' options. Each goes only to the methods that have it\n"
        "(and to a wrapper such as smoothgrad when its --base method has it); unset, each\n"
        "method uses its own default. 'none' sets an optional value to None." + family_note,
    )
    method_options.add_arguments(group, generated)
    group.add_argument(
        "--option",
        dest="method_option_values",
        action=option_values.OptionAction,
        accepted=method_options.all_option_names,
        type=option_values.parse_option,
        metavar="KEY=VALUE",
        help="any method option, also those without a flag above (repeatable); VALUE is a "
        "literal: 3, 0.5, true, null, [3, 8, 8] or a string, e.g. --option n_steps=16",
    )
    return generated


def _non_negative_int(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"{text}: accepted: an integer >= 0")
    return value


def _threads(text: str) -> int | str:
    return text if text == "auto" else positive_int(text)


def _choices(literal: Any) -> list[str]:
    return list(get_args(literal))
