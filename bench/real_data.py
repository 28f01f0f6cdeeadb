"""The whole automl loop against a plain hand-written loop on the real datasets, at equal compute.

    .venv/bin/python bench/real_data.py [--datasets tgs_salt,fls_sonar,facade,vines] [--seed 0]

For each dataset of ../shared/realdata: a seeded 20 % group test split that neither search nor promote
ever sees (it is the `exclude` list of the training dataset.yaml). automl runs as a user runs it, through
the CLI: `search` (hybrid_loss, Unet/resnet18 at a fixed resize) -> `promote --top T --folds 3` ->
`ensemble` -> `refit` (the ensemble's members once more on every training image) -> `predict --tta flip
--evaluate` on the test images with the refit models. At a small budget this is how the compute is best
spent: short fold models give the out-of-fold predictions the ensemble, thresholds and postprocessing are
chosen on, and most of the budget goes to one long full-data run of what was chosen (SETTINGS holds each
stage's epochs). The plain loop is what a user writes in 30 lines: Unet/resnet18, CE + Dice, Adam at 1e-3,
random horizontal flips, the same resize, trained on all training images for the same number of
image-epochs (images through a training step, counted from every automl trial's, fold's and refit's
metrics.csv), scored on the same test images at their original size with the same metric (predict's
--evaluate code). One plain run is a draw (on tgs_salt's 44 test images, seeds and step counts move it by
+-0.05), so the plain loop runs with 3 seeds and its mean +- sd is the bar; automl runs once. vines (8 huge
images) is timed, not scored.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from automl.data.cache import ResizeCache, resize_image
from automl.store import RunDir
from automl.data.dataset import SegmentationDataset
from automl.data.formats import match_channels, read_image
from automl.data.splits import holdout, strata
from automl.data.stats import label_stats
from automl.predict import Evaluation, to_original_size

REALDATA = Path(__file__).resolve().parents[2] / "shared" / "realdata"
# resize and budget per dataset, sized for a 2-core CPU; `score: False` times the loop only
SMALL = {"trials": 4, "max_epochs": 3, "top": 1, "promote_epochs": 6, "refit_epochs": 40}
SETTINGS = {
    "tgs_salt": {"resize": 64, **SMALL},
    "fls_sonar": {"resize": 96, **SMALL},
    "facade": {"resize": 96, **SMALL},
    "vines": {"resize": 256, "trials": 2, "max_epochs": 1, "top": 1, "promote_epochs": 1, "refit_epochs": 1,
              "folds": 2, "score": False},
}
STAGES = ("search", "promote", "ensemble", "refit", "report", "predict")
PLAIN_SEEDS = 3


def write_yaml(name: str, work: Path, exclude: Path | None) -> Path:
    """A copy of the read-only dataset.yaml that reads the data in shared/ and caches in `work`."""
    source = REALDATA / name
    text = (source / "dataset.yaml").read_text() + f"\nroot: {source}\ncache_dir: {work / 'cache'}\n"
    if exclude is not None:
        text += f"exclude: {exclude}\n"
    path = work / (f"{name}.train.yaml" if exclude else f"{name}.yaml")
    path.write_text(text)
    return path


def test_split(full_yaml: Path, seed: int) -> tuple[list[str], list[Path]]:
    dataset = SegmentationDataset.from_yaml(full_yaml)
    stats = label_stats(dataset)
    is_test = holdout(dataset.groups, strata(stats.pixels, dataset.spec.task), 0.2, seed + 1000)
    return ([dataset.ids[i] for i in np.flatnonzero(is_test)],
            [dataset.records[i].image for i in np.flatnonzero(is_test)])


def automl(*args: str) -> tuple[float, str]:
    """Run `automl ARGS` as a user does; (seconds, what it printed)."""
    start = time.perf_counter()
    result = subprocess.run([sys.executable, "-m", "automl.cli", *map(str, args)], capture_output=True, text=True)
    if result.returncode != 0:
        raise SystemExit(f"automl {' '.join(map(str, args))} failed:\n{result.stdout[-3000:]}{result.stderr[-3000:]}")
    return time.perf_counter() - start, result.stdout


def run_automl(name: str, settings: dict, work: Path, train_yaml: Path, full_yaml: Path, test_images: list[Path],
               seed: int) -> dict:
    runs, study = work / "runs", name
    space = work / "space.yaml"
    space.write_text(f"extends: hybrid_loss\nfixed:\n  model.encoder: resnet18\n  data.resize: {settings['resize']}\n")
    test_dir = work / "test_images"
    test_dir.mkdir()
    for number, path in enumerate(test_images):  # numbered: two folders may hold the same file name
        (test_dir / f"{number:04d}_{path.name}").symlink_to(path)
    seconds = {
        "search": automl("search", "--space", space, "--data", train_yaml, "--study", study, "--runs-dir", runs,
                         "--trials", settings["trials"], "--max-epochs", settings["max_epochs"], "--wandb", "off",
                         "--seed", seed)[0],
        "promote": automl("promote", study, "--runs-dir", runs, "--top", settings["top"], "--folds",
                          settings.get("folds", 3), "--epochs", settings["promote_epochs"])[0],
        "ensemble": automl("ensemble", study, "--runs-dir", runs)[0],
        "refit": automl("refit", study, "--runs-dir", runs, "--epochs", settings["refit_epochs"])[0],
        "report": automl("report", study, "--runs-dir", runs)[0],
    }
    seconds["predict"], printed = automl("predict", study, "--runs-dir", runs, "--images", test_dir, "--out",
                                         work / "submission.csv", "--tta", "flip", "--evaluate", full_yaml)
    evaluation = re.search(r"evaluation on (\d+) labelled images: \w+ ([0-9.]+)", printed)
    assert evaluation and int(evaluation.group(1)) == len(test_images), printed[-2000:]
    assert "refit on all training images" in printed, printed[-2000:]
    # the same ensemble decisions with each member's fold models instead: what the refit changed
    folds_printed = automl("predict", study, "--runs-dir", runs, "--images", test_dir, "--out", work / "folds.csv",
                           "--tta", "flip", "--evaluate", full_yaml, "--checkpoints", "folds")[1]
    folds_score = float(re.search(r"evaluation on \d+ labelled images: \w+ ([0-9.]+)", folds_printed).group(1))
    ensemble = json.loads((runs / study / "ensemble.json").read_text())
    run = RunDir(runs, study)

    def images(pattern: str) -> int:
        return sum(int(pd.read_csv(f)["train_images"].sum()) for f in run.root.glob(pattern))

    by_stage = {"search": images("trials/*/metrics.csv"), "promote": images("promoted/*/fold*/metrics.csv"),
                "refit": images("promoted/*/full/metrics.csv")}
    total = run.images_trained()
    assert sum(by_stage.values()) == total, (by_stage, total)
    return {"score": float(evaluation.group(2)), "folds_score": folds_score, "oof": ensemble["score"],
            "image_epochs": total,
            "image_epochs_by_stage": by_stage,
            "seconds": seconds, "members": ensemble["members"]}


def plain_loop(full_yaml: Path, test_ids: list[str], resize: int, image_budget: int, seed: int) -> dict:
    """What a user writes by hand: one Unet/resnet18, CE + Dice, Adam, random flips, no search."""
    import segmentation_models_pytorch as smp

    start = time.perf_counter()
    torch.manual_seed(seed)
    dataset = SegmentationDataset.from_yaml(full_yaml)
    spec, test = dataset.spec, set(test_ids)
    train_rows = [i for i, image_id in enumerate(dataset.ids) if image_id not in test]
    cache = ResizeCache(dataset, resize)
    cache.ensure(train_rows)
    images = torch.from_numpy(np.stack([match_channels(np.asarray(cache[i].image), 3) for i in train_rows]))
    masks = torch.from_numpy(np.stack([np.asarray(cache[i].mask) for i in train_rows]).astype(np.int64))
    images = images.permute(0, 3, 1, 2).float().div(255).sub(0.45).div(0.225)
    model = smp.Unet("resnet18", encoder_weights=None, classes=spec.num_outputs)
    mode = {"multiclass": "multiclass", "multilabel": "multilabel", "binary": "binary"}[spec.task]
    dice = smp.losses.DiceLoss(mode, ignore_index=spec.effective_ignore_index if mode == "multiclass" else None)
    ce = (torch.nn.CrossEntropyLoss(ignore_index=spec.effective_ignore_index) if mode == "multiclass"
          else torch.nn.BCEWithLogitsLoss())
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    steps = max(1, image_budget // 8)
    model.train()
    for step in range(steps):
        batch = torch.randint(len(train_rows), (8,))
        x, y = images[batch], masks[batch]
        flip = torch.rand(len(batch)) < 0.5  # per image, as albumentations does
        x = torch.where(flip.view(-1, 1, 1, 1), x.flip(-1), x)
        y = torch.where(flip.view(-1, *[1] * (y.dim() - 1)), y.flip(-1), y)  # N x H x W or N x C x H x W
        target = y if mode == "multiclass" else (y.float() if mode == "multilabel" else y[:, None].float())
        logits = model(x)
        loss = ce(logits, target) + dice(logits, target)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    train_seconds = time.perf_counter() - start
    model.eval()
    evaluation = Evaluation(full_yaml)
    for record in dataset.records:
        if record.id not in test:
            continue
        original = read_image(record.image)
        x = torch.from_numpy(resize_image(match_channels(original, 3), (resize, resize))).permute(2, 0, 1)[None]
        with torch.no_grad():
            logits = model(x.float().div(255).sub(0.45).div(0.225))
        probabilities = logits.softmax(1) if mode == "multiclass" else logits.sigmoid()
        full = to_original_size(probabilities[0], original.shape[:2])
        if mode == "multiclass":
            mask = full.argmax(0).numpy().astype(np.uint8)
        else:
            mask = (full > 0.5).numpy()
            mask = mask[0].astype(np.uint8) if mode == "binary" else mask
        evaluation.add(record.image, mask)
    score = evaluation.meter.compute()
    return {"score": score, "image_epochs": steps * 8, "seconds": {"train": train_seconds,
                                                                     "score": time.perf_counter() - start - train_seconds}}


def bench(name: str, seed: int, keep: Path | None) -> dict:
    settings = SETTINGS[name]
    work = Path(tempfile.mkdtemp(prefix=f"bench-{name}-", dir=keep))
    full_yaml = write_yaml(name, work, None)
    test_ids, test_images = test_split(full_yaml, seed)
    exclude = work / "test_ids.txt"
    exclude.write_text("\n".join(test_ids) + "\n")
    train_yaml = write_yaml(name, work, exclude)
    result = {"dataset": name, "test_images": len(test_ids), "resize": settings["resize"]}
    result["automl"] = run_automl(name, settings, work, train_yaml, full_yaml, test_images, seed)
    if settings.get("score", True):
        runs = [plain_loop(full_yaml, test_ids, settings["resize"], result["automl"]["image_epochs"], seed + k)
                for k in range(PLAIN_SEEDS)]
        scores = [run["score"] for run in runs]
        result["plain"] = {"score": float(np.mean(scores)), "sd": float(np.std(scores, ddof=1)), "scores": scores,
                           "image_epochs": runs[0]["image_epochs"],
                           "seconds": {"train": float(np.mean([r["seconds"]["train"] for r in runs])),
                                       "score": float(np.mean([r["seconds"]["score"] for r in runs]))}}
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--datasets", default="tgs_salt,fls_sonar,facade,vines")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--keep", type=Path, default=None, help="keep the work folders here")
    args = parser.parse_args()
    if not REALDATA.is_dir():
        print(f"skipped: no {REALDATA}")
        return
    torch.set_num_threads(os.cpu_count() or 1)
    rows = []
    for name in args.datasets.split(","):
        result = bench(name, args.seed, args.keep)
        rows.append(result)
        print(json.dumps(result), flush=True)
    print(f"\n| dataset (resize) | test images | automl test score (fold models instead of refit; the folds' CV OOF) | plain loop test score, mean +- sd "
          f"of {PLAIN_SEEDS} seeds | automl >= plain | image-epochs: automl (search / promote / refit) vs plain | automl wall time: {' / '.join(STAGES)} | plain loop wall time (one seed) |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        a, p = r["automl"], r.get("plain")
        stages = " / ".join(f"{a['seconds'][k]:.0f} s" for k in STAGES)
        plain = f"{p['score']:.3f} +- {p['sd']:.3f}" if p else "(timed only)"
        verdict = "-"
        if p:
            gap = (a["score"] - p["score"]) / max(p["sd"], 1e-9)
            verdict = f"{'yes' if gap >= 0 else '**no**'} ({gap:+.1f} sd)"
        plain_time = f"{sum(p['seconds'].values()):.0f} s" if p else "-"
        print(f"| {r['dataset']} ({r['resize']} px) | {r['test_images']} | {a['score']:.3f} ({a['folds_score']:.3f}; "
              f"{a['oof']:.3f}) | "
              f"{plain} | {verdict} | {a['image_epochs']} ({' / '.join(str(v) for v in a['image_epochs_by_stage'].values())}) "
              f"vs {p['image_epochs'] if p else '-'} | {stages} | "
              f"{plain_time} |")


if __name__ == "__main__":
    main()
