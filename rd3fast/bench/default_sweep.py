"""The embedded default sweep of ``python -m rd3fast.bench``: its inputs (a pre-trained teacher, the distilled
sets, the sweep file) made in ROOT when missing, on Fashion-MNIST, sized to fit 15 minutes on 2 CPU cores.
"""
from __future__ import annotations

import time
from pathlib import Path

from .store import write_text_if_changed

# ---------------------------------------------------------------------------------------------------
# The embedded default sweep
# ---------------------------------------------------------------------------------------------------
DEFAULT_DATASET = "fashion-mnist"


DEFAULT_TEACHER = "convnet-d3-w32"


DEFAULT_TEACHER_EPOCHS = 1  # one pass over the 60,000 training images: 83 % test top-1, a usable teacher


DEFAULT_STUDENT = "convnet-d3-w16"


DEFAULT_EPOCHS = 50  # the protocols use 300-400: shortened so that the sweep fits 15 minutes on 2 CPU cores


DEFAULT_EVAL_EVERY = 25  # each evaluation reads the 10,000 test images; the presets' every 10 would double the cost


DEFAULT_K = 3  # the 3 seeds of a set at once: one teacher pass per step for all three


DEFAULT_IPC = 10


# Every distiller that takes seconds on this CPU: a random real subset (the baseline), RDED's selection, and
# the herding and k-center coresets on the teacher's features.
DEFAULT_SETS = {f"{m}-ipc{DEFAULT_IPC}": m for m in ("random-real", "rded", "herding", "kcenter")}


DEFAULT_REAL_EPOCHS = 2  # the real-hard reference of the scores: the student on all 60,000 training images


DEFAULT_TOML = """\
# The embedded default sweep of `python -m rd3fast.bench`, written by it; rerun it as
#   python -m rd3fast.bench {toml}
# Epochs are shortened to {epochs} (the protocols use 300-400), evaluations to every {eval_every}, so that
# it all fits 15 minutes on 2 CPU cores.
root = "."
dataset = "{dataset}"
seeds = [0, 1, 2]
students = ["{student}"]
epochs = {epochs}
eval_every = {eval_every}
parallel_seeds = {k}

[[teachers]]
arch = "{teacher}"
weights = "teacher.pt"
{sets}
[protocols.rd3-small]

[protocols.own]
small = true

# DD-Ranking's scores: the planner adds the hard-label runs (rd3-small's recipe, CE on hard labels), the
# no-augmentation runs (ARS) and the real-hard reference (the student on the real training split).
[scores]
lrs = true
ars = true

[scores.real]
epochs = {real_epochs}
eval_every = {real_epochs}
"""


def default_inputs(root: Path, progress: bool = True) -> Path:
    """ROOT/teacher.pt, ROOT/syn/<set>/ and ROOT/bench.toml, each made only when missing (the weights and
    the folders are written atomically, so what exists is complete)."""
    t0 = time.perf_counter()
    teacher = root / "teacher.pt"
    if not teacher.is_file():
        _pretrain_teacher(teacher, progress)
        print(f"[{time.perf_counter() - t0:5.1f}s] teacher {DEFAULT_TEACHER} pre-trained -> {teacher}", flush=True)
    missing = [name for name in DEFAULT_SETS if not (root / "syn" / name).is_dir()]
    if missing:
        _distill(root, teacher, missing)
        print(f"[{time.perf_counter() - t0:5.1f}s] distilled IPC {DEFAULT_IPC}: {', '.join(missing)}", flush=True)
    toml = root / "bench.toml"
    sets = "".join(f'\n[[sets]]\nname = "{name}"\npath = "syn/{name}"\nmethod = "{method}"\nipc = {DEFAULT_IPC}\n'
                   for name, method in DEFAULT_SETS.items())
    text = DEFAULT_TOML.format(toml=toml, epochs=DEFAULT_EPOCHS, eval_every=DEFAULT_EVAL_EVERY, dataset=DEFAULT_DATASET,
                               student=DEFAULT_STUDENT, k=DEFAULT_K, teacher=DEFAULT_TEACHER, sets=sets,
                               real_epochs=DEFAULT_REAL_EPOCHS)
    write_text_if_changed(toml, text)
    return toml


def _pretrain_teacher(out: Path, progress: bool) -> None:
    from ..config import resolve
    from ..engine.pretraining import pretrain

    cfg = resolve("pretrain", overrides=dict(student=DEFAULT_TEACHER, dataset=DEFAULT_DATASET,
                                             epochs=DEFAULT_TEACHER_EPOCHS, eval_every=DEFAULT_TEACHER_EPOCHS))
    pretrain(cfg, out, progress=progress, verbose=False)


def _distill(root: Path, teacher: Path, names: list[str]) -> None:
    """The default sets (rd3fast.distill's functions): a random real subset, RDED's selection, herding and
    k-center on the teacher's penultimate features."""
    from ..data.datasets import BUILTIN
    from ..data.sets import load_real, write_image_folder
    from ..engine.experiment import pick_device
    from ..engine.teacher import load_teachers
    from ..methods.coreset import coreset_select, random_real
    from ..methods.rded import rded_select

    info, real = BUILTIN[DEFAULT_DATASET], load_real(DEFAULT_DATASET, "train")
    device = pick_device("auto")
    for name in names:
        method = DEFAULT_SETS[name]
        if method == "random-real":
            images = random_real(real, DEFAULT_IPC, seed=0)
        else:
            relabel = load_teachers([DEFAULT_TEACHER], [teacher], real.num_classes, info.image_size, device)
            if method == "rded":
                images = rded_select(real, relabel, DEFAULT_IPC, info.mean, info.std, factor=1, device=device,
                                     progress=False)
            else:
                images = coreset_select(real, relabel, DEFAULT_IPC, info.mean, info.std, method=method, seed=0,
                                        device=device, progress=False)
        write_image_folder(images, root / "syn" / name)
