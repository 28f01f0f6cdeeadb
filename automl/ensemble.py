"""`automl ensemble`: greedy ensemble selection with replacement (Caruana et al., 2004) on out-of-fold
probabilities, with baselines computed on the same OOF images.

Everything streams over images in chunks read from the uint8 .npy files (plain reads, not memmaps, so
read pages do not stay resident): only one chunk is ever float32, and memory does not grow with the
number of images. Multiclass: weighted soft vote. Multilabel and binary:
weighted mean of probabilities, then a threshold per class tuned on the OOF images.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import pandas as pd
import torch

from automl import store
from automl.config import load_dataset_spec
from automl.data.cache import ResizeCache
from automl.data.dataset import SegmentationDataset
from automl.errors import UserError, require_at_least
from automl.metrics import SegmentationMeter
from automl.postprocess import apply_plan, candidate_classes, operation_order, to_masks

THRESHOLDS = np.round(np.arange(0.05, 0.96, 0.05), 2)
CHUNK = 16


@dataclass
class Library:
    """The promoted models' OOF probabilities (M arrays of N x C x H x W uint8, read a chunk of rows at a
    time) and the labels they predict."""

    names: list[str]
    arrays: list[np.ndarray]
    labels: Callable[[slice], np.ndarray]
    ids: list[str]
    task: str
    num_outputs: int
    ignore_index: int | None
    images: Callable[[int], np.ndarray] | None = None  # row -> HxWx3 image at the OOF resolution

    @property
    def size(self) -> int:
        return len(self.ids)

    def chunks(self, chunk: int = CHUNK) -> Iterator[slice]:
        for start in range(0, self.size, chunk):
            yield slice(start, min(start + chunk, self.size))

    def meter(self) -> SegmentationMeter:
        return SegmentationMeter(self.task, self.num_outputs, self.ignore_index)

    def target(self, rows: slice) -> torch.Tensor:
        labels = self.labels(rows)
        return torch.from_numpy(labels if self.task != "binary" else labels[:, None])

    def mean(self, weights: np.ndarray, rows: slice) -> np.ndarray:
        """Weighted mean probability of the members for these rows, as float32 in [0, 1]."""
        total = np.zeros(self.arrays[0][rows].shape, np.float32)
        for weight, array in zip(weights, self.arrays):
            if weight:
                total += weight * array[rows].astype(np.float32)
        return total / (255.0 * weights.sum())


def ensemble_masks(library: Library, weights: np.ndarray, thresholds: np.ndarray | None, plan: dict | None,
                   rows: slice) -> np.ndarray:
    """The ensemble's final masks for these rows: weighted mean, thresholds, then the postprocessing plan."""
    predicted = to_masks(library.mean(weights, rows), library.task, thresholds)
    if plan:
        predicted = np.stack([apply_plan(mask, library.task, plan) for mask in predicted])
    return predicted


def plan_scores(library: Library, weights: np.ndarray, thresholds: np.ndarray | None, plan: dict | None
                ) -> tuple[float, np.ndarray]:
    """The ensemble's OOF score and per-class scores with a postprocessing plan applied image by image."""
    meter = library.meter()
    for rows in library.chunks():
        meter.update_predictions(torch.from_numpy(ensemble_masks(library, weights, thresholds, plan, rows)),
                                 library.target(rows))
    return meter.compute(), meter.per_class()


def search_postprocessing(library: Library, weights: np.ndarray, thresholds: np.ndarray | None
                          ) -> tuple[dict | None, float, np.ndarray]:
    """Switch each operation on for a class only if that class's OOF score improves (nnU-Net's rule).
    Returns the plan (None when it does not raise the overall score), the score and per-class scores."""
    classes = candidate_classes(library.task, library.num_outputs)
    plan = {operation: [False] * library.num_outputs for operation in operation_order()}
    score, base = plan_scores(library, weights, thresholds, None)
    plain_score, plain_per_class = score, base
    for operation in operation_order():
        trial = {**plan, operation: [c in classes for c in range(library.num_outputs)]}
        _, per_class = plan_scores(library, weights, thresholds, trial)
        plan[operation] = [bool(c in classes and per_class[c] > base[c] + 1e-9) for c in range(library.num_outputs)]
        score, base = plan_scores(library, weights, thresholds, plan)
    if score > plain_score:
        return plan, score, base
    return None, plain_score, plain_per_class


def decide(probabilities: np.ndarray, task: str, thresholds: np.ndarray | None = None) -> torch.Tensor:
    return torch.from_numpy(to_masks(probabilities, task, thresholds))


def score_weights(library: Library, weights: np.ndarray, thresholds: np.ndarray | None = None) -> float:
    return plan_scores(library, weights, thresholds, None)[0]


def single_scores(library: Library) -> np.ndarray:
    meters = [library.meter() for _ in library.names]
    for rows in library.chunks():
        target = library.target(rows)
        for meter, array in zip(meters, library.arrays):
            meter.update_predictions(decide(array[rows].astype(np.float32) / 255, library.task), target)
    return np.array([meter.compute() for meter in meters])


def greedy_selection(library: Library, max_size: int, pool: list[int] | None = None,
                     singles: np.ndarray | None = None) -> tuple[np.ndarray, list[dict]]:
    """Counts per model: start from the best single model, add (with replacement) the member that most
    improves the OOF score, stop when nothing improves or the ensemble has max_size members."""
    pool = list(range(len(library.names))) if pool is None else pool
    singles = single_scores(library) if singles is None else singles
    first = max(pool, key=lambda m: singles[m])
    counts = np.zeros(len(library.names))
    counts[first] = 1
    best = singles[first]
    history = [{"added": library.names[first], "score": float(best)}]
    while counts.sum() < max_size:
        meters = {m: library.meter() for m in pool}
        for rows in library.chunks():
            target = library.target(rows)
            current = library.mean(counts, rows) * counts.sum()
            for m in pool:
                candidate = (current + library.arrays[m][rows].astype(np.float32) / 255) / (counts.sum() + 1)
                meters[m].update_predictions(decide(candidate, library.task), target)
        scores = {m: meter.compute() for m, meter in meters.items()}
        pick = max(pool, key=lambda m: (scores[m], -m))
        if scores[pick] <= best + 1e-12:
            break
        counts[pick] += 1
        best = scores[pick]
        history.append({"added": library.names[pick], "score": float(best)})
    return counts, history


def tune_thresholds(library: Library, weights: np.ndarray) -> np.ndarray | None:
    """Per class, the threshold on the ensemble's mean probability that scores best on the OOF images."""
    if library.task == "multiclass":
        return None
    meters = [library.meter() for _ in THRESHOLDS]
    for rows in library.chunks():
        probabilities, target = library.mean(weights, rows), library.target(rows)
        for meter, threshold in zip(meters, THRESHOLDS):
            meter.update_predictions(torch.from_numpy(probabilities > threshold), target)
    per_class = np.stack([meter.per_class() for meter in meters])  # thresholds x classes
    per_class = np.where(np.isnan(per_class), -1.0, per_class)
    best = THRESHOLDS[per_class.argmax(axis=0)]
    at_half = per_class[list(THRESHOLDS).index(0.5)]
    return np.where(per_class.max(axis=0) > at_half, best, 0.5)  # keep 0.5 unless tuning helps


def vote_score(library: Library, order: list[int], min_votes: int | None) -> float:
    """Hard vote of the members' own decisions. min_votes=None: majority, ties to the better-ranked model;
    otherwise a pixel (multiclass: its majority class) needs at least min_votes agreeing models."""
    tie_break = {m: 1 + 2.0 ** -(rank + 1) * 1e-3 for rank, m in enumerate(order)}  # best rank wins ties
    meter = library.meter()
    for rows in library.chunks():
        decisions = {m: decide(library.arrays[m][rows].astype(np.float32) / 255, library.task).numpy() for m in order}
        if library.task == "multiclass":
            votes = np.zeros((len(decisions[order[0]]), library.num_outputs, *decisions[order[0]].shape[1:]))
            plain = np.zeros_like(votes)
            for m in order:
                one_hot = np.eye(library.num_outputs, dtype=np.float32)[decisions[m]].transpose(0, 3, 1, 2)
                votes += tie_break[m] * one_hot
                plain += one_hot
            label = votes.argmax(axis=1)
            if min_votes is not None:
                label = np.where(np.take_along_axis(plain, label[:, None], 1)[:, 0] >= min_votes, label, 0)
            predicted = torch.from_numpy(label)
        else:
            said_yes = {m: decisions[m].astype(bool) for m in order}
            yes = sum(tie_break[m] * said_yes[m] for m in order)
            no = sum(tie_break[m] * ~said_yes[m] for m in order)
            count = sum(said_yes[m].astype(np.int32) for m in order)
            predicted = torch.from_numpy(count >= min_votes if min_votes is not None else yes > no)
        meter.update_predictions(predicted, library.target(rows))
    return meter.compute()


def per_image_scores(library: Library, weights: np.ndarray, thresholds: np.ndarray | None,
                     plan: dict | None = None) -> np.ndarray:
    scores = []
    for rows in library.chunks():
        predicted = torch.from_numpy(ensemble_masks(library, weights, thresholds, plan, rows))
        target = library.target(rows)
        for i in range(len(predicted)):
            meter = library.meter()
            meter.update_predictions(predicted[i:i + 1], target[i:i + 1])
            values = meter.per_class()
            scores.append(float(np.nanmean(values)) if np.isfinite(values).any() else 1.0)
    return np.array(scores)


def save_worst_panels(library: Library, weights: np.ndarray, thresholds, plan, rows: list[int], folder: Path
                      ) -> list[dict]:
    """image | label | ensemble OOF prediction of the lowest-scoring images, as PNGs in the run folder."""
    from automl.overlays import panel, save_png

    if library.images is None:
        return []
    saved = []
    for rank, row in enumerate(rows):
        window = slice(row, row + 1)
        predicted = ensemble_masks(library, weights, thresholds, plan, window)[0]
        label = library.labels(window)[0]
        path = folder / f"{rank:02d}_{Path(library.ids[row]).stem}.png"
        save_png(path, panel(library.images(row), label, predicted, library.task))
        saved.append({"id": library.ids[row], "file": str(path.relative_to(folder.parent))})
    return saved


def load_library(runs_dir: str | Path, study: str) -> tuple[Library, dict]:
    from automl.promote import PromotedPaths

    run = store.RunDir(runs_dir, study)
    settings = run.settings()
    paths = PromotedPaths(run.root)
    if not paths.plan.exists():
        raise UserError(f"study '{study}' has no promoted models", key="STUDY",
                        fix=f"run `automl promote {study}` first")
    plan = store.read_json(paths.plan)
    names = [m for m in plan["models"] if paths.oof(m)[0].exists()]
    if not names:
        raise UserError("no promoted model has all its folds done", key="STUDY",
                        fix=f"rerun `automl promote {study}`: it trains the missing folds")
    indexes = [store.read_json(paths.oof(m)[1]) for m in names]
    ids = indexes[0]["ids"]
    if any(index["ids"] != ids for index in indexes):
        raise UserError("the OOF files of the promoted models cover different images", key="oof",
                        fix="rerun `automl promote` so every model uses the saved folds")
    dataset = SegmentationDataset(load_dataset_spec(settings.dataset))
    spec = dataset.spec
    cache = ResizeCache(dataset, tuple(plan["eval_size"]))
    position = dataset.index_of
    rows_to_index = [position[i] for i in ids]
    cache.ensure(rows_to_index)

    def labels(rows: slice) -> np.ndarray:
        return np.stack([np.asarray(cache[rows_to_index[r]].mask) for r in range(rows.start, rows.stop)])

    library = Library(names, [store.NpyRows(paths.oof(m)[0]) for m in names], labels, ids, spec.task,
                      spec.num_outputs, spec.effective_ignore_index,
                      images=lambda row: np.asarray(cache[rows_to_index[row]].image))
    return library, plan


def run_ensemble(runs_dir: str | Path, study: str, max_size: int = 10, bags: int = 1, seed: int = 0,
                 echo: Callable[[str], None] = print) -> dict:
    require_at_least("--max-size", max_size, 1)
    require_at_least("--bags", bags, 1)
    library, plan = load_library(runs_dir, study)
    run = store.RunDir(runs_dir, study)
    singles = single_scores(library)
    order = list(np.argsort(-singles, kind="stable"))
    counts = np.zeros(len(library.names))
    history: list[dict] = []
    rng = np.random.default_rng(seed)
    for bag in range(bags):
        pool = order if bags == 1 else sorted(rng.choice(order, max(1, len(order) // 2), replace=False).tolist())
        bag_counts, bag_history = greedy_selection(library, max_size, pool, singles)
        counts += bag_counts / bag_counts.sum()
        history += [{"bag": bag, **step} for step in bag_history]
    weights = counts / counts.sum()
    thresholds = tune_thresholds(library, weights)
    postprocess, score, per_class = search_postprocessing(library, weights, thresholds)
    uniform = score_weights(library, np.ones(len(library.names)))
    hard_vote = vote_score(library, order, None)
    vote_70 = vote_score(library, order, max(1, int(0.7 * len(order))))
    per_image = per_image_scores(library, weights, thresholds, postprocess)
    table = pd.DataFrame({"id": library.ids, "score": per_image}).sort_values("score", kind="stable")
    with store.atomic_path(run.root / "ensemble_per_image.csv") as tmp:
        table.to_csv(tmp, index=False)
    members = [i for i in range(len(library.names)) if weights[i] > 0]
    worst = save_worst_panels(library, weights, thresholds, postprocess, table.index[:10].tolist(),
                              run.root / "worst")
    result = {
        "members": [library.names[i] for i in members],
        "weights": [float(weights[i]) for i in members],
        "thresholds": None if thresholds is None else [float(t) for t in thresholds],
        "postprocess": postprocess,
        "score": float(score),
        "best_single": float(singles.max()),
        "best_single_model": library.names[int(singles.argmax())],
        "uniform": float(uniform),
        "hard_vote": float(hard_vote),
        "vote_70": float(vote_70),
        "single_scores": dict(zip(library.names, map(float, singles))),
        "per_class": [None if np.isnan(v) else float(v) for v in per_class],
        "class_names": plan.get("class_names"),
        "worst": worst,
        "metric": plan["metric"], "task": library.task, "eval_size": plan["eval_size"],
        "max_size": max_size, "bags": bags, "history": history,
        "per_image_csv": str(run.root / "ensemble_per_image.csv"),
    }
    store.write_json(run.root / "ensemble.json", result)
    if postprocess:
        switched = {op: [c for c, on in enumerate(flags) if on] for op, flags in postprocess.items()}
        echo(f"postprocessing that helps on OOF (class indices): {switched}")
    echo(f"ensemble of {len(members)} models ({', '.join(f'{library.names[i]} x{weights[i]:.2f}' for i in members)}): "
         f"OOF {plan['metric']} {score:.4f}; best single {singles.max():.4f}, uniform {uniform:.4f}, "
         f"hard vote {hard_vote:.4f}, 70% vote {vote_70:.4f}")
    echo("lowest out-of-fold scores (label noise or hard images):")
    for row in table.head(10).itertuples():
        echo(f"  {row.score:.4f}  {row.id}")
    echo(f"all images: {run.root / 'ensemble_per_image.csv'}")
    return result
