"""DD-Ranking's ``compute_metrics`` through ``rd3fast.ddranking`` on real data: Fashion-MNIST, one RDED set.

    python benchmarks/ddranking_api.py --out runs/ddranking_api      # 2 CPU cores: ~15 min

The teacher and the RDED IPC-10 set are the embedded default sweep's (``rd3fast.bench.default_sweep``: made in
``<out>/inputs`` when missing). Then one ``compute_metrics`` call with DD-Ranking's keywords as its demo
scripts use them (soft_label_mode 'M', KL, CutMix, SGD with a step schedule, ``num_eval`` rounds, the
learning rate searched over its five values, on the held-out split here), shortened to ``--epochs`` and
with the real-hard reference trained ``--real-epochs`` on the 60,000 training images. Prints the returned
keys as JSON and the wall time (also ``<out>/summary.json``); everything lies in ``<out>/root`` (``python -m rd3fast.bench report`` it).
A rerun trains nothing and takes seconds.
"""
from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from rd3fast.bench.default_sweep import DEFAULT_STUDENT, DEFAULT_TEACHER, default_inputs  # noqa: E402
from rd3fast.ddranking import compute_metrics  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="runs/ddranking_api")
    ap.add_argument("--epochs", type=int, default=50, help="num_epochs (DD-Ranking's demos: 300-1000)")
    ap.add_argument("--real-epochs", type=int, default=2, help="epochs of the real-hard reference")
    ap.add_argument("--num-eval", type=int, default=3)
    ap.add_argument("--quick", action="store_true", help="a check that it runs: 2 epochs, 1 real epoch, 2 rounds")
    args = ap.parse_args()
    if args.quick:
        args.epochs, args.real_epochs, args.num_eval = 2, 1, 2
    out = Path(args.out)
    inputs = out / "inputs"
    inputs.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    default_inputs(inputs)
    t_inputs = time.perf_counter() - t0
    result = compute_metrics(image_path=str(inputs / "syn" / "rded-ipc10"), dataset="fashion-mnist", ipc=10,
                             model_name=DEFAULT_STUDENT, teacher=DEFAULT_TEACHER,
                             teacher_weights=str(inputs / "teacher.pt"), soft_label_mode="M",
                             soft_label_criterion="kl", data_aug_func="cutmix", aug_params={"beta": 1.0},
                             optimizer="sgd", lr_scheduler="step", num_epochs=args.epochs,
                             step_size=args.epochs // 2, num_eval=args.num_eval, eval_full_data=True,
                             real={"epochs": args.real_epochs, "eval_every": args.real_epochs},
                             save_path=str(out / "root"), parallel_seeds=args.num_eval, progress=False)
    wall = time.perf_counter() - t0
    shown = {"machine": f"{platform.processor() or platform.machine()}, Python {platform.python_version()}",
             "inputs_s": round(t_inputs, 1), "wall_s": round(wall, 1), "epochs": args.epochs,
             "real_epochs": args.real_epochs, **result}
    (out / "summary.json").write_text(json.dumps(shown, indent=1))
    print(json.dumps({k: v for k, v in shown.items() if k != "per_seed"}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
