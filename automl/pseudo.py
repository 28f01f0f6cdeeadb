"""`automl pseudo`: the study's ensemble labels unlabelled images for the next round of training.

The ensemble (its members' checkpoints, TTA, its thresholds and postprocessing) predicts each image at
its original size; a pixel whose call the ensemble is not sure of gets the ignore value, so the loss
leaves it out; an image with too few sure pixels is left out. Masks are <stem>.npy (HxW, or CxHxW for
multilabel, uint8): <out>/masks/all from the whole ensemble (for refit, search, train) and
<out>/masks/fold<k> from the members' fold-k models only, which never saw fold k's labels: promote's fold
k trains on those, so no label of the images it is scored on reaches it through a pseudo-label.
<out>/dataset.yaml is the study's dataset plus a `pseudo:` section: those images are training-only (never
in a validation fold, OOF or search holdout). `automl promote STUDY --data <out>/dataset.yaml` trains the
next round beside the first.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable

import numpy as np

from automl import store
from automl.config import DatasetSpec, load_dataset_spec, read_yaml
from automl.data import formats
from automl.data.splits import fold_fingerprint
from automl.promoted import PromotedPaths
from automl.errors import UserError, require_at_least
from automl.postprocess import final_mask

PSEUDO_IGNORE = 255


@dataclass
class PseudoOptions:
    study: str
    images: str
    out: Path
    runs_dir: Path = Path("runs")
    min_confidence: float = 0.9
    min_confident_fraction: float = 0.5
    tta: str = "flip"
    checkpoints: str = "auto"
    batch: int = 8
    tile: int | None = None  # as predict --tile: resized images larger than this go through in tiles
    overlap: float = 0.25


def confident_mask(probabilities: np.ndarray, task: str, thresholds, postprocess, min_confidence: float,
                   ignore: int = PSEUDO_IGNORE) -> np.ndarray:
    """The ensemble's final mask (thresholds, postprocessing) with `ignore` where its call is not sure:
    multiclass, where the called class is not the top one or has less than `min_confidence`; binary and
    multilabel, where a pixel called 1 has a probability below `min_confidence`, or one called 0 above
    1 - min_confidence (so a tuned threshold or a removed component never makes an unsure call sure)."""
    mask = final_mask(probabilities, task, thresholds, postprocess).astype(np.uint8)
    if task == "multiclass":
        unsure = (probabilities.max(axis=0) < min_confidence) | (mask != probabilities.argmax(axis=0))
        mask[unsure] = ignore
        return mask
    called = mask[None] if task == "binary" else mask
    unsure = np.where(called == 1, probabilities < min_confidence, probabilities > 1 - min_confidence)
    called[unsure] = ignore
    return mask


def pseudo_masks(members, fold_members, originals: list[np.ndarray], spec: DatasetSpec, device, decisions: dict,
                 tta: str, min_confidence: float, ignore: int, tile: int | None = None, overlap: float = 0.25
                 ) -> tuple[list[np.ndarray], list[list[np.ndarray]]]:
    """Each image's mask by the whole ensemble (`members`), and per fold k by the members' fold-k models
    alone (`fold_members`, whose networks are the fold models in fold order)."""
    from automl.predict import predict_batch, to_original_size

    def masks_of(chosen) -> list[np.ndarray]:
        probabilities = predict_batch(chosen, originals, spec, device, tta, (1.0,), decisions["eval_size"], tile,
                                      overlap)
        return [confident_mask(to_original_size(probs, image.shape[:2]).numpy(), spec.task, decisions["thresholds"],
                               decisions["postprocess"], min_confidence, ignore)
                for image, probs in zip(originals, probabilities)]

    folds = len(fold_members[0].networks)
    return masks_of(members), [masks_of([replace(m, networks=[m.networks[k]]) for m in fold_members])
                               for k in range(folds)]


def sure_fraction(mask: np.ndarray, ignore: int = PSEUDO_IGNORE) -> float:
    return float((mask != ignore).mean())


def derived_yaml(spec: DatasetSpec, out: Path, ignore: int, folds_file: Path, folds_fingerprint: str | None
                 ) -> dict:
    """The study's dataset.yaml with absolute paths, named <name>-pseudo, plus the pseudo section."""
    data = read_yaml(Path(spec.source), "dataset.yaml")
    data["name"] = out.name  # promote names the next round's models trialNNNN-<this>
    data["root"] = str(spec.root)
    if spec.exclude:
        data["exclude"] = str(spec.resolve(spec.exclude))
    data["cache_dir"] = str(spec.cache_root)
    masks = (out / "masks").resolve()
    data["pseudo"] = {"images": str((out / "images").resolve() / "*"), "masks": str(masks / "all"),
                      "fold_masks": str(masks / "fold{fold}"), "folds_file": str(folds_file),
                      "folds_fingerprint": folds_fingerprint, "ignore": ignore}
    return data


def trained_folds(paths, members: list[str], folds: int) -> str | None:
    """The fingerprint of the folds the members' fold models were trained on (from their done.json, not
    folds.json, which may have been split again since); None when members disagree: no fold mask is safe."""
    prints = {fold_fingerprint((i, k) for k in range(folds) for i in paths.fold_result(m, k).ids) for m in members}
    return prints.pop() if len(prints) == 1 else None


def holdout_note(dataset) -> str:
    """One line for a search or `train` on a dataset with pseudo-labels: its holdout images are labelled
    images the ensemble that made masks/all trained on, so their labels reach the models through the
    pseudo-labels and the holdout score reads high. Promote's folds train on masks/fold<k> instead."""
    count = int(dataset.training_only.sum())
    if not count:
        return ""
    return (f"note: {count} pseudo-labelled images train here with the whole ensemble's labels, which learned "
            f"the held-out images too: the holdout score is optimistic (out-of-fold scores from `automl promote "
            f"--data` are not)")


def check_options(options: PseudoOptions) -> None:
    if not 0.5 <= options.min_confidence < 1:
        raise UserError(f"--min-confidence must be in [0.5, 1), got {options.min_confidence}",
                        key="--min-confidence", fix="e.g. --min-confidence 0.9")
    if not 0 <= options.min_confident_fraction <= 1:
        raise UserError(f"--min-confident-fraction must be in [0, 1], got {options.min_confident_fraction}",
                        key="--min-confident-fraction", fix="e.g. --min-confident-fraction 0.5")
    require_at_least("--batch", options.batch, 1)
    from automl.predict import check_tiling

    check_tiling(options.tile, options.overlap)
    if options.tta not in ("none", "flip"):
        raise UserError(f"--tta must be none or flip for pseudo-labels, got '{options.tta}'", key="--tta",
                        fix="use --tta flip")
    if Path(options.out).exists() and any(Path(options.out).iterdir()):
        raise UserError(f"{options.out} is not empty", key="--out",
                        fix="pass a new folder: each round of pseudo-labels is its own dataset")


def run_pseudo(options: PseudoOptions, echo: Callable[[str], None] = print) -> dict:
    import shutil

    from automl.data.dataset import SegmentationDataset
    from automl.predict import list_prediction_images, load_members
    from trainables.train import pick_device

    check_options(options)
    run = store.RunDir(options.runs_dir, options.study)
    settings = run.settings()
    spec = load_dataset_spec(settings.dataset)
    labelled = {record.image.resolve() for record in SegmentationDataset(spec).records}
    paths = list_prediction_images(options.images)
    if labelled & {path.resolve() for path in paths}:
        raise UserError("some of these images are labelled images of the study's dataset", key="--images",
                        fix="pass images without labels (e.g. the test images)")
    stems = [path.stem for path in paths]
    if len(set(stems)) != len(stems):
        twice = sorted({stem for stem in stems if stems.count(stem) > 1})
        raise UserError(f"images share a file name without its extension: {twice[:3]}", key="--images",
                        fix="rename them: their masks are named <name>.npy")
    device = pick_device()
    members, decisions = load_members(run, spec, device, None, options.checkpoints)
    # the fold models are what `members` holds unless it took the refit models: load them once
    fold_members = load_members(run, spec, device, None, "folds")[0] if decisions["refit"] else members
    folds = len(fold_members[0].networks)
    ignore = spec.effective_ignore_index if spec.effective_ignore_index is not None else PSEUDO_IGNORE
    out = Path(options.out)
    (out / "images").mkdir(parents=True, exist_ok=True)
    kept, fractions = [], []
    for start in range(0, len(paths), options.batch):
        chunk = paths[start:start + options.batch]
        originals = [formats.read_image(p) for p in chunk]
        whole, by_fold = pseudo_masks(members, fold_members, originals, spec, device, decisions, options.tta,
                                      options.min_confidence, ignore, options.tile, options.overlap)
        for i, (path, mask) in enumerate(zip(chunk, whole)):
            fractions.append(sure_fraction(mask, ignore))
            if fractions[-1] < options.min_confident_fraction:
                continue
            store.save_npy(out / "masks" / "all" / f"{path.stem}.npy", mask)
            for k in range(folds):
                store.save_npy(out / "masks" / f"fold{k}" / f"{path.stem}.npy", by_fold[k][i])
            shutil.copy2(path, out / "images" / path.name)
            kept.append(path.name)
    if not kept:
        raise UserError(f"no image has {options.min_confident_fraction:.0%} of its pixels above "
                        f"{options.min_confidence} confidence (best: {max(fractions):.0%})", key="--min-confidence",
                        fix="lower --min-confidence or --min-confident-fraction")
    yaml_path = out / "dataset.yaml"
    trained_on = trained_folds(PromotedPaths(run.root), [m.name for m in fold_members], folds)
    store.write_yaml(yaml_path, derived_yaml(spec, out, ignore, (run.root / "folds.json").resolve(), trained_on))
    echo(f"pseudo-labelled {len(kept)} of {len(paths)} images, once by the whole ensemble and once per fold by "
         f"the models that never saw that fold's labels (sure pixels: median "
         f"{np.median(fractions):.0%}; left out: {len(paths) - len(kept)} under {options.min_confident_fraction:.0%}"
         f"), unsure pixels set to {ignore} -> {yaml_path}")
    echo(f"next round: automl promote {options.study} --data {yaml_path}"
         + (f" --runs-dir {options.runs_dir}" if Path(options.runs_dir) != Path("runs") else ""))
    return {"images": len(paths), "kept": kept, "dataset": str(yaml_path)}
