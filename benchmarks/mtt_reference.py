"""rd3fast's `mtt` preset against MTT's own ``evaluate_synset`` on one grayscale set (Fashion-MNIST).

    pip install kornia                    # MTT's utils.py imports it (not an rd3fast dependency)
    python benchmarks/mtt_reference.py --mtt-repo PATH/TO/mtt-distillation --out runs/mtt_reference

Upstream (GeorgeCazenavette/mtt-distillation, imported from ``--mtt-repo``, never copied): ``utils.get_network
("ConvNet", channel=1, ...)`` (width 128, depth 3, instance norm, first conv padding 3 on 28 px) trained by
``utils.evaluate_synset`` (SGD momentum 0.9, wd 5e-4, ``Epoch + 1`` epochs, the lr x 0.1 with a fresh SGD after
epoch ``Epoch // 2 + 1``, batch 256, DSA ``color_crop_cutout_flip_scale_rotate`` with ``ParamDiffAug``, test
once at the end). MTT's get_dataset has no Fashion-MNIST: its images and the test loader are given the same
normalization rd3fast uses (the dataset's mean/std), as DC/DM do for MNIST.

rd3fast: ``python -m rd3fast.run --preset mtt`` on the same set (one channel under ``--gray-channels 1``, the
preset's value), with the lr and epochs given, ``--milestones Epoch // 2 + 2`` (rd3fast counts epochs from 1).
Upstream seeds itself from the clock (``get_network``), so the comparison is of distributions: mean ± std
over ``--seeds`` runs each. The set defaults to a random real IPC-10 subset of the training split (seed 0).
Writes ``<out>/summary.json`` and prints a table headed by the machine.
"""
from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from rd3fast.data.datasets import BUILTIN  # noqa: E402
from rd3fast.data.sets import load_distilled, load_real, write_image_folder  # noqa: E402
from rd3fast.methods.coreset import random_real  # noqa: E402
from rd3fast.run import main as rd3fast_run  # noqa: E402

DATASET = "fashion-mnist"


def upstream(mtt_repo: Path, images: torch.Tensor, labels: torch.Tensor, epochs: int, lr: float,
             seeds: int) -> list[float]:
    """MTT's evaluate_synset, ``seeds`` times: test top-1 (%) after the last epoch."""
    sys.path.insert(0, str(mtt_repo))
    import utils  # noqa: PLC0415 - MTT's module, from its checkout

    info = BUILTIN[DATASET]
    mean, std = info.mean[0], info.std[0]
    test = load_real(DATASET, "test")
    x_test = (test.images.float() / 255 - mean) / std
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x_test, test.labels), batch_size=256,
                                         shuffle=False, num_workers=0)
    x = (images.float() / 255 - mean) / std
    out = []
    for seed in range(seeds):
        args = SimpleNamespace(device="cpu", lr_net=lr, epoch_eval_train=epochs, batch_train=256, dsa=True,
                               dsa_strategy="color_crop_cutout_flip_scale_rotate", dsa_param=utils.ParamDiffAug(),
                               dataset="FashionMNIST")
        net = utils.get_network("ConvNet", 1, info.num_classes, (info.image_size, info.image_size))
        # On today's CPU torch the conv stack can return a channels-last tensor, on which ConvNet's
        # `out.view(n, -1)` fails; a contiguous copy of the features changes no value.
        net.features.register_forward_hook(lambda _m, _a, y: y.contiguous())
        torch.manual_seed(seed)  # the DSA draws and the batch order; the network's init is the clock's
        _, _, acc = utils.evaluate_synset(seed, net, x, labels, loader, args)
        out.append(100.0 * float(acc))
    return out


def ours(set_dir: Path, out: Path, epochs: int, lr: float, seeds: int) -> list[float]:
    """rd3fast's mtt preset on the same set: last-epoch test top-1 (%) per seed."""
    run_out = out / "rd3fast"
    code = rd3fast_run(["--preset", "mtt", "--distilled", str(set_dir), "--dataset", DATASET, "--lr", str(lr),
                        "--epochs", str(epochs + 1), "--milestones", str(epochs // 2 + 2),
                        "--eval-every", str(epochs + 1), "--seeds", ",".join(map(str, range(seeds))),
                        "--out", str(run_out), "--no-progress"])
    if code != 0:
        raise SystemExit(f"rd3fast run failed with exit status {code}")
    runs = json.loads((run_out / "results.json").read_text())["runs"]
    return [float(r["last_top1"]) for r in runs]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--mtt-repo", type=Path, required=True, help="a checkout of GeorgeCazenavette/mtt-distillation")
    ap.add_argument("--set", type=Path, default=None, help="an ImageFolder (default: random real IPC 10, seed 0)")
    ap.add_argument("--out", type=Path, default=Path("runs/mtt_reference"))
    ap.add_argument("--epochs", type=int, default=300, help="MTT's epoch_eval_train (it trains Epoch + 1)")
    ap.add_argument("--lr", type=float, default=0.01)
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--quick", action="store_true", help="a check that it runs: 20 epochs, one seed")
    args = ap.parse_args()
    if args.quick:
        args.epochs, args.seeds = 20, 1
    if not (args.mtt_repo / "utils.py").is_file():
        raise SystemExit(f"--mtt-repo {args.mtt_repo}: no utils.py (a checkout of mtt-distillation?)")
    args.out.mkdir(parents=True, exist_ok=True)
    set_dir = args.set
    if set_dir is None:
        set_dir = args.out / "random-ipc10"
        if not set_dir.is_dir():
            write_image_folder(random_real(load_real(DATASET, "train"), 10, seed=0), set_dir)
    s = load_distilled(set_dir)
    gray = s.images[:, :1]  # the folder's PNGs are gray: one channel, as MTT holds them
    t0 = time.perf_counter()
    theirs = upstream(args.mtt_repo, gray, s.labels, args.epochs, args.lr, args.seeds)
    t1 = time.perf_counter()
    mine = ours(set_dir, args.out, args.epochs, args.lr, args.seeds)
    t2 = time.perf_counter()
    machine = f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads, torch {torch.__version__}"
    summary = {"machine": machine, "set": str(set_dir), "epochs": args.epochs + 1, "lr": args.lr,
               "upstream": {"top1": theirs, "seconds": t1 - t0}, "rd3fast": {"top1": mine, "seconds": t2 - t1}}
    (args.out / "summary.json").write_text(json.dumps(summary, indent=1))
    print(f"# MTT evaluate_synset vs rd3fast --preset mtt ({machine})\n")
    print("| | test top-1 (%) per seed | mean ± std | wall |\n|---|---|---|---|")
    for name, values, secs in (("MTT utils.evaluate_synset", theirs, t1 - t0), ("rd3fast --preset mtt", mine, t2 - t1)):
        sd = statistics.stdev(values) if len(values) > 1 else 0.0
        print(f"| {name} | {', '.join(f'{v:.2f}' for v in values)} | {statistics.fmean(values):.2f} ± {sd:.2f} | "
              f"{secs:.0f} s |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
