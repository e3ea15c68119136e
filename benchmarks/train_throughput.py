"""How many training images per second does the default model take, against the paper's R-50 NAS-FPN 7 @ 256?

Times full training steps (forward over every exit, deep-supervision loss, backward, SGD) on random images
with random boxes, after a few warm-up steps. The paper model runs at a reduced image size by default so that
it fits a CPU; pass --preset-image-size 640 for the paper's resolution.

    python benchmarks/train_throughput.py [--batch-size 2] [--iters 5] [--warmup 2] [--preset-image-size 256]
"""

from __future__ import annotations

import argparse
import time

import torch

from anytime.config import PRESETS, ConfigError, ModelConfig, load_model_config
from anytime.model import AnytimeRetinaNet

PRESET = "r50-nasfpn-7@256"


def random_batch(cfg: ModelConfig, batch: int, device: torch.device, boxes_per_image: int = 5):
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (batch, 3, cfg.image_size, cfg.image_size), generator=g).float()
    targets = []
    for _ in range(batch):
        xy = torch.rand(boxes_per_image, 2, generator=g) * cfg.image_size * 0.7
        wh = (0.05 + torch.rand(boxes_per_image, 2, generator=g) * 0.25) * cfg.image_size
        targets.append({"boxes": torch.cat([xy, xy + wh], 1).to(device),
                        "labels": torch.randint(0, cfg.num_classes, (boxes_per_image,), generator=g).to(device)})
    return images.to(device), targets


def throughput(cfg: ModelConfig, batch: int, iters: int, warmup: int, device: torch.device) -> dict:
    torch.manual_seed(0)
    model = AnytimeRetinaNet(cfg).to(device).train()
    opt = torch.optim.SGD(model.parameters(), lr=1e-4, momentum=0.9)
    amp = device.type == "cuda"
    scaler = torch.amp.GradScaler(device.type, enabled=amp)
    images, targets = random_batch(cfg, batch, device)

    def step():
        with torch.autocast(device.type, enabled=amp):
            loss = model.losses(images, targets)["loss"]
        scaler.scale(loss).backward()
        scaler.step(opt)
        scaler.update()
        opt.zero_grad(set_to_none=True)

    for _ in range(warmup):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(iters):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    dt = (time.perf_counter() - t0) / iters
    return {"params_m": sum(p.numel() for p in model.parameters()) / 1e6, "s_per_iter": dt, "images_per_s": batch / dt}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--batch-size", type=int, default=2)
    p.add_argument("--iters", type=int, default=5, help="timed iterations")
    p.add_argument("--warmup", type=int, default=2, help="untimed iterations first")
    p.add_argument("--preset-image-size", type=int, default=256, help=f"image size for {PRESET} (paper: 640)")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--threads", type=int, help="torch intra-op threads (CPU)")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)

    try:
        default, default_name = load_model_config("default"), "default (configs/default.json)"
    except ConfigError:
        default, default_name = ModelConfig(), "default (ModelConfig())"
    preset = ModelConfig(**PRESETS[PRESET]).replace(image_size=args.preset_image_size)
    rows = []
    for name, cfg in ((default_name, default), (f"{PRESET} @ {preset.image_size}px", preset)):
        r = throughput(cfg, args.batch_size, args.iters, args.warmup, device)
        rows.append((name, cfg, r))

    print(f"training throughput on {device} ({torch.get_num_threads()} threads), batch {args.batch_size}, "
          f"{args.iters} timed iterations after {args.warmup} warm-up")
    print(f"{'model':<40} {'image':>6} {'exits':>5} {'params M':>9} {'s/iter':>8} {'images/s':>9}")
    for name, cfg, r in rows:
        print(f"{name:<40} {cfg.image_size:>6} {cfg.num_exits:>5} {r['params_m']:>9.2f} "
              f"{r['s_per_iter']:>8.3f} {r['images_per_s']:>9.2f}")
    ratio = rows[0][2]["images_per_s"] / rows[1][2]["images_per_s"]
    print(f"{'ratio default / ' + PRESET:<40} {'':>6} {'':>5} {'':>9} {'':>8} {ratio:>8.1f}x")


if __name__ == "__main__":
    main()
