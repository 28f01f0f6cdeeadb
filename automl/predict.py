"""`automl predict`: every fold checkpoint (or the refit model) of every ensemble member, TTA undone and averaged in probability
space with the ensemble weights, back to each image's original size, thresholds and postprocessing applied,
written by a submission writer. Images stream through in batches: memory does not grow with their number.
"""

from __future__ import annotations

import glob
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F

from automl import store
from automl.config import DatasetSpec, FlipPolicy, TrialConfig, load_dataset_spec
from automl.data import formats
from automl.data.cache import as_size, resize_image
from automl.data.formats import match_channels
from automl.data.dataset import SegmentationDataset
from automl.promoted import EnsembleResult
from automl.errors import UserError, require_at_least
from automl.metrics import METRIC_NAME, SegmentationMeter
from automl.postprocess import final_mask, to_original_size
from automl.submit import WRITERS, create_writer

TTA_MODES = ("none", "flip", "flip+scale")


@dataclass
class Member:
    name: str
    weight: float
    config: TrialConfig
    networks: list[torch.nn.Module]
    flips: FlipPolicy = field(default_factory=FlipPolicy)  # what it was trained with; TTA keeps to it

    @property
    def size(self) -> tuple[int, int]:
        return as_size(self.config.data.resize)

    @property
    def channels(self) -> int:
        return self.config.model.in_channels


CHECKPOINTS = ("auto", "folds", "refit")


def use_refit(missing: list[str], checkpoints: str) -> bool:
    """auto: the refit models when every member has one (`automl refit`; `missing` lists the members that
    have none), else the fold models."""
    if checkpoints == "refit" and missing:
        raise UserError(f"{', '.join(missing)} has no refit model", key="--checkpoints",
                        fix="run `automl refit STUDY` first, or pass --checkpoints folds")
    return checkpoints == "refit" or (checkpoints == "auto" and not missing)


def load_members(run: store.RunDir, spec: DatasetSpec, device: torch.device, model: str | None,
                 checkpoints: str = "auto") -> tuple[list[Member], dict]:
    """The ensemble (or one promoted model) with its checkpoints loaded on `device`: each member's fold
    models, or its refit model (see use_refit)."""
    from automl.promoted import PromotedPaths
    from trainables.train import build_model, flip_policy, load_checkpoint

    if checkpoints not in CHECKPOINTS:
        raise UserError(f"unknown --checkpoints '{checkpoints}'", key="--checkpoints",
                        fix=f"use one of {', '.join(CHECKPOINTS)}")
    paths = PromotedPaths(run.root)
    plan = paths.require_plan(run.study,
                              fix=f"run `automl promote {run.study}` and `automl ensemble {run.study}` first")
    if model is not None:
        name = plan.name_of(model)
        if name not in plan.models:
            raise UserError(f"no promoted model '{model}'", key="--model",
                            fix=f"use one of {', '.join(plan.models)}")
        chosen, decisions = [(name, 1.0)], {"thresholds": None, "postprocess": None}
    else:
        ensemble_file = run.root / "ensemble.json"
        if not ensemble_file.exists():
            raise UserError(f"study '{run.study}' has no ensemble", key="STUDY",
                            fix=f"run `automl ensemble {run.study}`, or pass --model NAME")
        ensemble = EnsembleResult.load(ensemble_file)
        chosen = list(zip(ensemble.members, ensemble.weights))
        decisions = {"thresholds": ensemble.thresholds, "postprocess": ensemble.postprocess}
    missing = [name for name, _ in chosen if not paths.is_refit(name)]
    refit = use_refit(missing, checkpoints)
    # auto with some members refit and some not: say which hold the rest back
    unrefit = missing if checkpoints == "auto" and 0 < len(missing) < len(chosen) else []
    members = []
    for name, weight in chosen:
        config = TrialConfig(**plan.models[name].config)
        files = [paths.refit_checkpoint(name)] if refit else [paths.checkpoint(name, k) for k in range(plan.folds)]
        networks = [load_checkpoint(build_model(config, spec.num_outputs), f).to(device).eval() for f in files]
        members.append(Member(name, weight, config, networks, flip_policy(config, spec)))
    return members, {**decisions, "eval_size": plan.eval_size, "refit": refit, "unrefit": unrefit}


def list_prediction_images(images: str | Path) -> list[Path]:
    path = Path(images)
    if path.is_dir():
        found = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in formats.IMAGE_SUFFIXES
                       and p.suffix.lower() != ".json")
    else:
        found = sorted(Path(p) for p in glob.glob(str(images), recursive=True) if Path(p).is_file())
    if not found:
        raise UserError(f"no image found at '{images}'", key="--images", fix="pass a folder or a glob of images")
    return found


def check_tiling(tile: int | None, overlap: float) -> None:
    if tile is not None:
        require_at_least("--tile", tile, 32)
    if not 0 <= overlap < 1:
        raise UserError(f"--overlap must be in [0, 1), got {overlap}", key="--overlap", fix="e.g. --overlap 0.25")


def predict_batch(members: list[Member], images: list[np.ndarray], spec: DatasetSpec, device: torch.device,
                  tta: str, scales: tuple[float, ...], eval_size: tuple[int, int], tile: int | None = None,
                  overlap: float = 0.25) -> torch.Tensor:
    """Weighted mean probabilities of the members (each the mean of its folds) at eval_size: B x C x h x w.
    With `tile`, a resized image larger than it is predicted in Gaussian-blended tiles of that side."""
    from trainables.infer import tiled_probabilities, tta_probabilities
    from trainables.train import Normalizer

    total, weight_sum = None, 0.0
    for member in members:
        normalize = Normalizer(device, channels_last=device.type == "cuda", channels=member.channels)
        batch = np.stack([resize_image(match_channels(image, member.channels), member.size) for image in images])
        x = normalize(torch.from_numpy(np.ascontiguousarray(batch.transpose(0, 3, 1, 2))))
        swaps = member.flips.swaps(spec.class_names)

        def probabilities(net, batch):
            return tta_probabilities(net, batch, spec.task, tta, scales, member.flips.horizontal, swaps)

        side = tile if tile is not None else member.config.data.prediction_tile  # as its OOF was predicted
        tiled = side is not None and max(x.shape[-2:]) > side
        folds = None  # a running sum, not a stack: K full-size maps of a huge image would not fit
        for net in member.networks:
            one = tiled_probabilities(partial(probabilities, net), x, side, overlap) if tiled else probabilities(net, x)
            folds = one if folds is None else folds.add_(one)
        folds = folds / len(member.networks)
        if tuple(folds.shape[-2:]) != eval_size:
            folds = F.interpolate(folds, size=eval_size, mode="bilinear", align_corners=False)
        total = folds * member.weight if total is None else total + folds * member.weight
        weight_sum += member.weight
    return (total / weight_sum).cpu()


def flip_note(flips: FlipPolicy) -> str:
    return "" if flips == FlipPolicy() else f"TTA follows the flip policy: {flips.describe()}"


class Evaluation:
    """--evaluate: score the predictions against the labels of a dataset.yaml, per class."""

    def __init__(self, dataset_yaml: str | Path):
        self.dataset = SegmentationDataset.from_yaml(dataset_yaml, pseudo=False)  # never scored on pseudo-labels
        spec = self.dataset.spec
        self.by_path = {record.image.resolve(): i for i, record in enumerate(self.dataset.records)}
        self.meter = SegmentationMeter(spec.task, spec.num_outputs, spec.effective_ignore_index)
        self.matched = 0

    def add(self, image_path: Path, predicted: np.ndarray) -> None:
        index = self.by_path.get(image_path.resolve())
        if index is None:
            return
        height, width = predicted.shape[-2:]
        mask, _ = self.dataset.read_mask(index, height, width)
        target = mask[None, None] if self.dataset.spec.task == "binary" else mask[None]
        shaped = predicted[None, None] if self.dataset.spec.task == "binary" else predicted[None]
        self.meter.update_predictions(torch.from_numpy(np.asarray(shaped)), torch.from_numpy(np.asarray(target)))
        self.matched += 1

    def report(self, echo) -> dict:
        spec = self.dataset.spec
        per_class = self.meter.per_class()
        score = self.meter.compute()
        metric = METRIC_NAME[spec.task]
        echo(f"evaluation on {self.matched} labelled images: {metric} {score:.4f}")
        names = ["foreground"] if spec.task == "binary" else spec.class_names
        for name, value in zip(names, per_class):
            echo(f"  {name:<20} {value:.4f}" if np.isfinite(value) else f"  {name:<20} -")
        return {"score": score, "per_class": dict(zip(names, map(float, per_class))), "images": self.matched}


def run_predict(runs_dir: str | Path, study: str, images: str | Path, out: str | Path, format: str = "rle_csv",
                tta: str = "none", scales: tuple[float, ...] = (0.75, 1.0, 1.25, 1.5), batch: int = 8,
                model: str | None = None, evaluate: str | Path | None = None, single_polygon: bool = False,
                rle_order: str = "row", tile: int | None = None, overlap: float = 0.25,
                checkpoints: str = "auto", echo: Callable[[str], None] = print) -> dict:
    from trainables.train import pick_device

    try:
        WRITERS.check(format)
    except ValueError as e:
        raise UserError(str(e), key="--format", fix=f"use one of {', '.join(WRITERS.names())}") from None
    if tta not in TTA_MODES:
        raise UserError(f"unknown TTA '{tta}'", key="--tta", fix=f"use one of {', '.join(TTA_MODES)}")
    if rle_order not in ("row", "column"):
        raise UserError(f"--rle-order must be row or column, got '{rle_order}'", key="--rle-order")
    require_at_least("--batch", batch, 1)
    check_tiling(tile, overlap)
    if tta == "flip+scale" and (not scales or min(scales) <= 0):
        raise UserError(f"--scales must be positive factors, got {','.join(map(str, scales))}", key="--scales",
                        fix="e.g. --scales 0.75,1,1.25")
    run = store.RunDir(runs_dir, study)
    settings = run.settings()
    spec = load_dataset_spec(settings.dataset)
    paths = list_prediction_images(images)
    device = pick_device()
    members, decisions = load_members(run, spec, device, model, checkpoints)
    evaluation = Evaluation(evaluate) if evaluate else None
    class_names = ["foreground"] if spec.task == "binary" and len(spec.classes) > 1 else spec.class_names
    writer = create_writer(format, Path(out), spec.task, class_names, single_polygon=single_polygon,
                           rle_order=rle_order)
    echo(f"predicting {len(paths)} images with {', '.join(f'{m.name} x{m.weight:.2f}' for m in members)} "
         f"({sum(len(m.networks) for m in members)} checkpoints: "
         f"{'refit on all training images' if decisions['refit'] else 'the fold models'}), TTA {tta}"
         + (f", tiles of {tile} px overlapping {overlap:.0%}" if tile else ""))
    if decisions["unrefit"]:
        echo(f"note: {', '.join(decisions['unrefit'])} has no refit model, so every member predicts with its fold "
             f"models (`automl refit {study}` refits the rest)")
    if tta != "none":
        for line in sorted({flip_note(member.flips) for member in members} - {""}):
            echo(line)
    for start in range(0, len(paths), batch):
        chunk = paths[start:start + batch]
        originals = [formats.read_image(p) for p in chunk]
        probabilities = predict_batch(members, originals, spec, device, tta, tuple(scales), decisions["eval_size"],
                                      tile, overlap)
        for path, image, probs in zip(chunk, originals, probabilities):
            full = to_original_size(probs, image.shape[:2])
            mask = final_mask(full.numpy(), spec.task, decisions["thresholds"], decisions["postprocess"])
            writer.add(path, formats.relative_id(spec, path), mask, full.numpy())
            if evaluation:
                evaluation.add(path, mask)
    writer.close()
    echo(f"wrote {out} ({format})")
    return {"images": len(paths), "out": str(out),
            "evaluation": evaluation.report(echo) if evaluation else None}
