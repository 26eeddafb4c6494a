"""CPU smoke tests of the benchmark scripts: each ``--quick`` run in a subprocess, within a time budget,
writing JSON of the shared schema (benchmarks/common.py); plus the reference transform's semantics."""
from __future__ import annotations

import json
import math
import os
import random
import subprocess
import sys
import time
from itertools import product
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
BENCH = ROOT / "benchmarks"
# The scripts aim at < 60 s on two CPU cores; the timeout leaves headroom for a loaded machine.
BUDGET_S = 90
ROW_KEYS = {"variant", "size", "batch", "arch", "img_per_s", "windows_s", "images_per_window", "status", "note"}


def run_quick(script: str, out: Path, *extra: str) -> tuple[subprocess.CompletedProcess, float]:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, str(BENCH / script), "--quick", "--out", str(out), *extra], cwd=ROOT,
                          env=env, capture_output=True, text=True, timeout=BUDGET_S)
    elapsed = time.perf_counter() - t0
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc, elapsed


def check_report(data: dict, benchmark: str) -> None:
    assert data["schema"] == 1 and data["benchmark"] == benchmark and data["quick"] is True
    m = data["machine"]
    assert m["device"] == "cpu" and m["torch"] == torch.__version__ and m["cpu_cores"] >= 1 and m["cpu"]
    assert isinstance(data["settings"], dict) and data["results"]
    for row in data["results"]:
        assert ROW_KEYS <= set(row), row
        assert row["status"] in ("ok", "skipped", "error", "api-missing"), row
        if row["status"] == "ok":
            assert row["img_per_s"] > 0 and row["windows_s"] and all(w > 0 for w in row["windows_s"]), row
            assert row["images_per_window"] > 0


def test_reference_loop_quick_drop_in(tmp_path: Path) -> None:
    out = tmp_path / "ref.json"
    proc, _ = run_quick("reference_loop.py", out, "--rd3fast-loader")
    data = json.loads(out.read_text())
    check_report(data, "reference_loop")
    [row] = data["results"]
    assert row["variant"] == "reference_rd3fast_loader" and row["status"] == "ok"
    assert len(row["windows_s"]) == data["settings"]["epochs"]
    assert "CPU" in proc.stdout.splitlines()[0] and "img/s" in proc.stdout


def test_bench_step_quick(tmp_path: Path) -> None:
    proc, _ = run_quick("bench_step.py", tmp_path)
    data = json.loads((tmp_path / "bench_step.json").read_text())
    check_report(data, "bench_step")
    rows = {r["variant"]: r for r in data["results"]}
    # What runs on a CPU: the eager ceiling, the reference loop (PIL workers), the drop-in swap, rd3fast's
    # torch path and the K-seed pair; graphs and Triton kernels are skipped with a reason.
    for name in ("ceiling_eager", "reference_fp32", "reference_amp", "reference_rd3fast_loader", "rd3fast_torch",
                 "rd3fast_seq3"):
        assert rows[name]["status"] == "ok", rows[name]
    for name in ("ceiling_graph", "rd3fast_kernels", "rd3fast_graph"):
        assert rows[name]["status"] == "skipped", rows[name]
    assert rows["rd3fast_k3"]["status"] in ("ok", "api-missing")
    assert rows["rd3fast_torch"]["x_ceiling"] > 0 and rows["rd3fast_torch"]["ceiling_used"] == "ceiling_eager"
    assert {t["target"].split(",")[0] for t in data["targets"]} == {
        "full step vs ceiling", "full step vs reference", "3 seeds at once vs 3 sequential"}
    assert all(t["meaningful"] is False for t in data["targets"])
    assert (tmp_path / "bench_step.png").stat().st_size > 1000
    assert "Targets" in proc.stdout


def _reference_module():
    sys.path.insert(0, str(BENCH))
    try:
        import reference_loop
    finally:
        sys.path.remove(str(BENCH))
    return reference_loop


@pytest.mark.parametrize("factor", [1, 2, 3])
def test_reference_shuffle_patches_is_rded_semantics(factor: int) -> None:
    """The reference's torchvision-style ShufflePatches draws one of the outputs rd3fast.engine.aug.patch_shuffle
    defines (column strips then row strips, remainder dropped) for some pair of strip orders."""
    from rd3fast.engine.aug import patch_shuffle

    ref = _reference_module()
    img = torch.arange(3 * 7 * 8, dtype=torch.float32).view(3, 7, 8)
    perms = [torch.tensor(p) for p in product(range(factor), repeat=factor) if len(set(p)) == factor]
    allowed = [patch_shuffle(img[None], r[None], c[None])[0] for r in perms for c in perms]
    random.seed(0)
    for _ in range(5):
        out = ref.ShufflePatches(factor)(img)
        assert out.shape == (3, 7 // factor * factor, 8 // factor * factor)
        assert any(torch.equal(out, a) for a in allowed)


def test_reference_cutmix_pastes_one_box_in_place() -> None:
    ref = _reference_module()
    x = torch.arange(6, dtype=torch.float32).view(6, 1, 1, 1).expand(6, 2, 10, 10).clone()
    ptr = x.data_ptr()
    import numpy as np

    np.random.seed(3)
    torch.manual_seed(3)
    y = ref.cutmix(x)
    assert y.data_ptr() == ptr  # in place, as upstream: the "images" and "mix_images" are one tensor
    changed = (y != torch.arange(6, dtype=torch.float32).view(6, 1, 1, 1)).any(0).any(0)  # (H, W) mask
    if changed.any():
        rows, cols = changed.any(1).nonzero(), changed.any(0).nonzero()
        box = changed[rows.min():rows.max() + 1, cols.min():cols.max() + 1]
        assert box.all()  # a single rectangle, the same for every sample


def drop_in_block(marker_keep: str) -> str:
    """The diff block of reference_loop's docstring, as code: context lines plus lines marked ``marker_keep``."""
    doc = _reference_module().__doc__.splitlines()
    start = next(i for i, line in enumerate(doc) if line.startswith("    -    loader = DataLoader("))
    lines = []
    for line in doc[start:]:
        if not line.startswith("    "):
            break
        mark, code = line[4], line[5:]
        if mark == " " or mark == marker_keep:
            lines.append(code[4:])  # the block is a function body (4 spaces)
    return "\n".join(lines)


def test_drop_in_lines_run_as_documented() -> None:
    """The '+' lines the README shows run as written (device "cuda" swapped for the CPU) and yield
    finished, relabeled batches."""
    code = drop_in_block("+").replace('device="cuda"', 'device="cpu"')
    assert code.count("\n") <= 10 and "ResidentLoader(" in code and "Relabeler([teacher])" in code
    seen = []
    teacher = torch.nn.Sequential(torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(3, 10))
    env = {"images_uint8": torch.randint(0, 256, (6, 3, 20, 20), dtype=torch.uint8),
           "labels": torch.arange(6) % 10, "teacher": teacher, "epochs": 1, "torch": torch,
           "MEAN": (0.485, 0.456, 0.406), "STD": (0.229, 0.224, 0.225)}
    exec(code.replace("...  #", "seen.append((mix_images, labels, soft))  #"), {**env, "seen": seen})
    [(x, y, soft)] = seen
    assert x.shape == (6, 3, 224, 224) and x.dtype == torch.float32 and soft.shape == (6, 10) and y.shape == (6,)


def test_bench_cpu_quick(tmp_path: Path) -> None:
    """bench_cpu.py --quick: the rd3fast CLI and the plain loop each run once end to end on digits (teacher
    and set prepared with the CLIs into tmp_path); both variants measured, the three targets computed."""
    out = tmp_path / "bench_cpu.json"
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    # Four CLI processes (pretrain, distill, plain loop, rd3fast.run): ~30 s on two idle cores; the timeout
    # leaves room for a loaded machine.
    proc = subprocess.run([sys.executable, str(BENCH / "bench_cpu.py"), "--quick", "--work", str(tmp_path / "work"),
                           "--out", str(out)], cwd=ROOT, env=env, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    data = json.loads(out.read_text())
    check_report(data, "bench_cpu")
    rows = {r["variant"]: r for r in data["results"]}
    assert set(rows) == {"plain", "rd3fast"} and all(r["workload"] == "digits" for r in rows.values())
    for row in rows.values():
        assert row["status"] == "ok" and row["img_per_s"] > 0, row
        assert row["first_step_s"] > 0 and row["wall_s"] > row["first_step_s"], row
        assert row["user_s"] > 0 and 0 <= row["top1"] <= 100, row
    runs = data["runs"]
    assert [r["variant"] for r in runs] == ["plain", "rd3fast"]
    assert all(len(r["epoch_times_s"]) == 2 and r["images_per_epoch"] == 100 for r in runs)
    targets = {t["target"]: t for t in data["targets"]}
    assert len(targets) == 3
    assert all(math.isfinite(t["value"]) and t["status"] in ("PASS", "FAIL") and t["meaningful"] is False
               for t in targets.values())
    ratio = targets["step img/s, rd3fast / plain"]["value"]
    assert ratio == pytest.approx(rows["rd3fast"]["img_per_s"] / rows["plain"]["img_per_s"])
    assert "CPU" in proc.stdout.splitlines()[0] and "step img/s" in proc.stdout
    assert out.with_suffix(".md").read_text().count("| digits |") == 5


def test_bench_cache_quick(tmp_path: Path) -> None:
    """bench_cache.py --quick: digits, a teacher and set made with the CLIs; on-the-fly, same-stream and two
    cache variants (record seed 0, replay seeds 0 and 1) as rd3fast.run processes; sizes, accuracy and checks."""
    out = tmp_path / "bench_cache.json"
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    # Eight CLI processes (pretrain, distill, on-the-fly, same-stream, 2 x record + replay): ~50 s on two idle
    # cores; the timeout leaves room for a loaded machine.
    proc = subprocess.run([sys.executable, str(BENCH / "bench_cache.py"), "--quick", "--work", str(tmp_path / "work"),
                           "--out", str(out)], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    data = json.loads(out.read_text())
    check_report(data, "bench_cache")
    rows = {r["variant"]: r for r in data["results"]}
    assert list(rows) == ["on-the-fly", "same-stream", "all-fp16", "top5-8bit"]
    assert all(len(r["top1"]) == 2 and 0 <= r["top1_mean"] <= 100 for r in rows.values())
    otf, same, full, lossy = rows.values()
    assert otf["top1"][0] == same["top1"][0]  # seed 0 on seed 0's draws either way
    assert (full["topk"], full["bits"]) == (0, 16) and (lossy["topk"], lossy["bits"]) == (5, 8)
    assert full["compression"] == "all logits, fp16" and "(lossy)" in lossy["compression"]
    # 10 classes: the full fp16 logits are 20 B of an image's 31 array bytes; top-5 + tail as codes 15 B.
    assert full["payload_per_img_epoch"] == pytest.approx(31.3, abs=0.5)
    assert lossy["payload_per_img_epoch"] < full["payload_per_img_epoch"] - 4
    assert full["bytes_per_img_epoch"] > full["payload_per_img_epoch"]  # npz headers on top
    assert full["fkd_per_img_epoch"] == 2 * 10 + 17
    for r in (full, lossy):
        assert r["notes_name_compression"] is True and r["record_equals_otf_seed0"] is True, r
        assert r["diff_vs_otf"] == pytest.approx(r["top1_mean"] - otf["top1_mean"])
        assert r["paired_diffs"] == pytest.approx([a - b for a, b in zip(r["top1"], same["top1"])])
    kinds = [(p["variant"], p["kind"]) for p in data["processes"]]
    assert kinds == [("on-the-fly", "on-the-fly"), ("same-stream", "same-stream"), ("all-fp16", "record"),
                     ("all-fp16", "replay"), ("top5-8bit", "record"), ("top5-8bit", "replay")]
    assert not any("--teacher-weights" in p["cmd"] for p in data["processes"] if p["kind"] == "replay")
    assert "CPU" in proc.stdout.splitlines()[0] and "| all-fp16 | all logits, fp16 |" in proc.stdout
    assert out.with_suffix(".md").read_text().count("| top5-8bit |") == 1
