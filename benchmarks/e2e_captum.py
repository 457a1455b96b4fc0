"""The captum + matplotlib pipeline, written as a captum user does: image files → overlay PNGs.

For each batch of images: decode with Pillow, resize the whole image to the model's input size,
normalise, predict, then captum ``Saliency`` (vanilla gradient) and ``LayerGradCam`` (+
``LayerAttribution.interpolate``); each map is upsampled to the image's own size and drawn with
``captum.attr.visualization.visualize_image_attr(..., "blended_heat_map")`` and saved with
``Figure.savefig`` as ``OUT/<file name>/<method>.png``. Prints ``BENCH-SECONDS <s>``: the time
after the imports (model loading included).

    python benchmarks/e2e_captum.py FOLDER OUT --weights resnet18.pth [--model resnet18]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import numpy as np
import torch
import torch.nn.functional as F
import torchvision
from captum.attr import LayerAttribution, LayerGradCam, Saliency
from captum.attr import visualization as viz
from PIL import Image
from torchvision.transforms.functional import normalize, to_tensor

MEAN, STD = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]
EXTENSIONS = {".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("folder", type=Path)
    parser.add_argument("out", type=Path)
    parser.add_argument("--weights", type=Path, required=True, help="a state-dict file")
    parser.add_argument("--model", default="resnet18")
    parser.add_argument("--size", type=int, default=224, help="model input side")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--threads", type=int, help="torch CPU threads (default: torch's)")
    args = parser.parse_args()
    started = time.perf_counter()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    model = torchvision.models.get_model(args.model, weights=None)
    model.load_state_dict(torch.load(args.weights, weights_only=True))
    model.eval().to(device)
    gradient = Saliency(model)
    gradcam = LayerGradCam(model, model.layer4[-1])
    paths = sorted(p for p in args.folder.iterdir() if p.suffix.lower() in EXTENSIONS)
    for start in range(0, len(paths), args.batch):
        batch = paths[start : start + args.batch]
        images = [Image.open(path).convert("RGB") for path in batch]
        inputs = torch.stack(
            [
                normalize(
                    to_tensor(image.resize((args.size, args.size), Image.Resampling.BILINEAR)),
                    MEAN,
                    STD,
                )
                for image in images
            ]
        ).to(device)
        with torch.no_grad():
            target = model(inputs).argmax(1)
        maps = {
            "gradient": gradient.attribute(inputs, target=target),
            "gradcam": LayerAttribution.interpolate(
                gradcam.attribute(inputs, target=target, relu_attributions=True),
                (args.size, args.size),
                interpolate_mode="bilinear",
            ),
        }
        for index, (path, image) in enumerate(zip(batch, images, strict=True)):
            folder = args.out / path.name
            folder.mkdir(parents=True, exist_ok=True)
            for name, attributions in maps.items():
                full = F.interpolate(
                    attributions[index : index + 1],
                    size=(image.height, image.width),
                    mode="bilinear",
                    align_corners=False,
                )[0]
                figure, _ = viz.visualize_image_attr(
                    full.permute(1, 2, 0).detach().cpu().numpy(),
                    np.asarray(image),
                    method="blended_heat_map",
                    sign="absolute_value",
                    use_pyplot=False,
                )
                figure.savefig(folder / f"{name}.png")
    print(f"BENCH-SECONDS {time.perf_counter() - started:.6f}")


if __name__ == "__main__":
    main()
