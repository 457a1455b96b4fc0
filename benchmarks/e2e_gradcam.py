"""The pytorch-grad-cam pipeline, as its README shows: image files → Grad-CAM overlay PNGs.

For each batch of images: decode with Pillow, resize the whole image to the model's input size,
normalise, ``GradCAM(model, target_layers=[model.layer4[-1]])`` with ``targets=None`` (each
image's top class); each map is resized to the image's own size with ``cv2.resize``, blended
with ``show_cam_on_image`` and written with ``cv2.imwrite`` as ``OUT/<file name>/gradcam.png``.
Prints ``BENCH-SECONDS <s>``: the time after the imports (model loading included).

    python benchmarks/e2e_gradcam.py FOLDER OUT --weights resnet18.pth [--model resnet18]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import cv2
import numpy as np
import torch
import torchvision
from PIL import Image
from pytorch_grad_cam import GradCAM
from pytorch_grad_cam.utils.image import show_cam_on_image
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
    paths = sorted(p for p in args.folder.iterdir() if p.suffix.lower() in EXTENSIONS)
    with GradCAM(model=model, target_layers=[model.layer4[-1]]) as cam:
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
            maps = cam(input_tensor=inputs, targets=None)
            for path, image, grayscale in zip(batch, images, maps, strict=True):
                rgb = np.float32(np.asarray(image)) / 255
                mask = cv2.resize(grayscale, (image.width, image.height))
                overlay = show_cam_on_image(rgb, mask, use_rgb=True)
                folder = args.out / path.name
                folder.mkdir(parents=True, exist_ok=True)
                cv2.imwrite(str(folder / "gradcam.png"), cv2.cvtColor(overlay, cv2.COLOR_RGB2BGR))
    print(f"BENCH-SECONDS {time.perf_counter() - started:.6f}")


if __name__ == "__main__":
    main()
