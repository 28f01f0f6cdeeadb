"""`automl ensemble`: greedy ensemble selection with replacement (Caruana et al., 2004) on out-of-fold
probabilities, with baselines computed on the same OOF images.

Everything streams over images in chunks read from the uint8 .npy files (plain reads, not memmaps, so
read pages do not stay resident): only one chunk is ever float32, and memory does not grow with the
number of images. Multiclass: weighted soft vote. Multilabel and binary:
weighted mean of probabilities, then a threshold per class tuned on the OOF images.

Every decision made on OOF images (members and weights, thresholds, postprocessing) is made K times, each
time on the other folds' images, and scored on the held-out fold: `score` is that cross-validated estimate,
`score_in_sample` the score of the final decision (made on all OOF images, for `predict`) on the images it
was made on. Baselines go through the same protocol, so gains compare like with like.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import pandas as pd
import torch
from pydantic import BaseModel

from automl import store
from automl.promoted import EnsembleResult, PromotePlan, PromotedPaths
from automl.config import load_dataset_spec
from automl.data import formats
from automl.data.cache import ResizeCache
from automl.data.dataset import SegmentationDataset
from automl.errors import UserError, require_at_least
from automl.metrics import SegmentationMeter
from automl.postprocess import (apply_plan, candidate_classes, final_mask, operation_order, to_masks,
                                to_original_size)

THRESHOLDS = np.round(np.arange(0.05, 0.96, 0.05), 2)
CHUNK = 16


def read_rows(read: Callable[[slice], np.ndarray], rows: np.ndarray) -> np.ndarray:
    """read(slice) for each run of consecutive rows, concatenated: row subsets of files that read
    contiguous rows only."""
    if len(rows) == 0:
        return read(slice(0, 0))
    runs = np.split(rows, np.flatnonzero(np.diff(rows) != 1) + 1)
    return np.concatenate([read(slice(int(run[0]), int(run[-1]) + 1)) for run in runs])


class RowsView:
    """Rows `rows` of a row-sliceable source (an array, NpyRows, a label reader), sliced by position."""

    def __init__(self, source, rows: np.ndarray):
        self.source, self.rows = source, rows

    def __getitem__(self, positions: slice) -> np.ndarray:
        read = self.source if callable(self.source) else self.source.__getitem__
        return read_rows(read, self.rows[positions])


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
    folds: np.ndarray | None = None  # the promote fold of each row: the unit of cross-validated decisions
    full_labels: Callable[[int], np.ndarray] | None = None  # row -> label at the image's original size

    def subset(self, rows: np.ndarray) -> "Library":
        """The same library restricted to these rows (sorted), read lazily."""
        rows = np.sort(np.asarray(rows, dtype=np.int64))
        images = None if self.images is None else (lambda row: self.images(int(rows[row])))
        full_labels = None if self.full_labels is None else (lambda row: self.full_labels(int(rows[row])))
        return replace(self, arrays=[RowsView(array, rows) for array in self.arrays],
                       labels=RowsView(self.labels, rows).__getitem__, ids=[self.ids[r] for r in rows],
                       images=images, folds=None if self.folds is None else self.folds[rows], full_labels=full_labels)

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


@dataclass
class Decision:
    """What is decided on OOF images and applied to new ones: a weighted soft vote with per-class thresholds
    (`order` None), or a hard vote of the models in `order` (None: majority, ties to the better-ranked;
    else `min_votes` must agree), each member cut at its own tuned thresholds (`member_thresholds`, member ->
    thresholds; absent: 0.5); then the postprocessing plan."""

    weights: np.ndarray
    thresholds: np.ndarray | None = None
    postprocess: dict | None = None
    order: list[int] | None = None
    min_votes: int | None = None
    member_thresholds: dict[int, np.ndarray | None] | None = None

    def member_cut(self, member: int) -> np.ndarray | None:
        return (self.member_thresholds or {}).get(member)


def raw_masks(library: Library, decision: Decision, rows: slice) -> np.ndarray:
    if decision.order is not None:
        return vote_masks(library, decision, rows)
    return to_masks(library.mean(decision.weights, rows), library.task, decision.thresholds)


def decision_masks(library: Library, decision: Decision, rows: slice) -> np.ndarray:
    """The final masks for these rows: combined, thresholded, then postprocessed."""
    predicted = raw_masks(library, decision, rows)
    if decision.postprocess:
        predicted = np.stack([apply_plan(mask, library.task, decision.postprocess) for mask in predicted])
    return predicted


def ensemble_masks(library: Library, weights: np.ndarray, thresholds: np.ndarray | None, plan: dict | None,
                   rows: slice) -> np.ndarray:
    return decision_masks(library, Decision(weights, thresholds, plan), rows)


def original_size_mask(library: Library, decision: Decision, row: int, size: tuple[int, int]) -> np.ndarray:
    """One image's final mask at its original size, made as `predict` makes it: the combined probabilities
    brought up to the image's size (bilinear), then thresholds and postprocessing."""
    window = slice(row, row + 1)
    if decision.order is None:
        full = to_original_size(torch.from_numpy(library.mean(decision.weights, window)[0]), size).numpy()
        return final_mask(full, library.task, decision.thresholds, decision.postprocess)
    members = {}  # each member decided right after upsampling: one full-size probability map at a time
    for m in decision.order:
        full = to_original_size(torch.from_numpy(library.arrays[m][window][0].astype(np.float32) / 255), size)
        members[m] = to_masks(full.numpy()[None], library.task, decision.member_cut(m))
    voted = vote(members, decision.order, decision.min_votes, library.task, library.num_outputs)[0]
    return apply_plan(voted, library.task, decision.postprocess)


def scored_batches(library: Library, decision: Decision, original: bool
                   ) -> Iterator[tuple[slice, torch.Tensor, torch.Tensor]]:
    """(rows, predicted, target) in the meter's layout: chunks at the OOF resolution, or image by image at
    each image's original size (what `predict --evaluate` scores)."""
    if not original:
        for rows in library.chunks():
            yield rows, torch.from_numpy(decision_masks(library, decision, rows)), library.target(rows)
        return
    if library.full_labels is None:
        raise ValueError("this library has no labels at the original size")
    for row in range(library.size):
        label = library.full_labels(row)
        mask = original_size_mask(library, decision, row, label.shape[-2:])
        if library.task == "binary":
            mask, label = mask[None], label[None]
        yield slice(row, row + 1), torch.from_numpy(np.asarray(mask)[None]), torch.from_numpy(np.asarray(label)[None])


def decision_scores(library: Library, decision: Decision, original: bool = False) -> tuple[float, np.ndarray]:
    """The decision's score and per-class scores on the library's images (at the OOF resolution, or at
    each image's original size)."""
    meter = library.meter()
    for _, predicted, target in scored_batches(library, decision, original):
        meter.update_predictions(predicted, target)
    return meter.compute(), meter.per_class()


def plan_scores(library: Library, weights: np.ndarray, thresholds: np.ndarray | None, plan: dict | None
                ) -> tuple[float, np.ndarray]:
    return decision_scores(library, Decision(weights, thresholds, plan))


def with_postprocessing(library: Library, decision: Decision) -> Decision:
    """Switch each operation on for a class only if that class's OOF score improves (nnU-Net's rule); keep
    the plan only when it raises the overall score."""
    classes = candidate_classes(library.task, library.num_outputs)
    plan = {operation: [False] * library.num_outputs for operation in operation_order()}
    plain_score, base = decision_scores(library, replace(decision, postprocess=None))
    score = plain_score
    for operation in operation_order():
        trial = {**plan, operation: [c in classes for c in range(library.num_outputs)]}
        _, per_class = decision_scores(library, replace(decision, postprocess=trial))
        plan[operation] = [bool(c in classes and per_class[c] > base[c] + 1e-9) for c in range(library.num_outputs)]
        score, base = decision_scores(library, replace(decision, postprocess=plan))
    return replace(decision, postprocess=plan if score > plain_score else None)


def search_postprocessing(library: Library, weights: np.ndarray, thresholds: np.ndarray | None
                          ) -> tuple[dict | None, float, np.ndarray]:
    decision = with_postprocessing(library, Decision(weights, thresholds))
    return (decision.postprocess, *decision_scores(library, decision))


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
                     singles: np.ndarray | None = None, first: int | None = None) -> tuple[np.ndarray, list[dict]]:
    """Counts per model: start from `first` (default: the best single model at 0.5), add (with replacement)
    the member that most improves the OOF score, stop when nothing improves or at max_size members."""
    pool = list(range(len(library.names))) if pool is None else pool
    singles = single_scores(library) if singles is None else singles
    first = max(pool, key=lambda m: singles[m]) if first is None else first
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


def vote_masks(library: Library, decision: Decision, rows: slice) -> np.ndarray:
    members = {m: to_masks(library.arrays[m][rows].astype(np.float32) / 255, library.task, decision.member_cut(m))
               for m in decision.order}
    return vote(members, decision.order, decision.min_votes, library.task, library.num_outputs)


def vote(decisions: dict[int, np.ndarray], order: list[int], min_votes: int | None, task: str,
         num_outputs: int) -> np.ndarray:
    """Hard vote of the members' own decisions (member -> its masks, as to_masks makes them). min_votes=None:
    majority, ties to the better-ranked model; otherwise a pixel (multiclass: its majority class) needs at
    least min_votes agreeing models."""
    tie_break = {m: 1 + 2.0 ** -(rank + 1) * 1e-3 for rank, m in enumerate(order)}  # best rank wins ties
    if task == "multiclass":
        votes = np.zeros((len(decisions[order[0]]), num_outputs, *decisions[order[0]].shape[1:]))  # float64: ranks
        plain = np.zeros(votes.shape, np.int16)
        for m in order:
            one_hot = np.eye(num_outputs, dtype=np.float32)[decisions[m]].transpose(0, 3, 1, 2)
            votes += tie_break[m] * one_hot
            plain += one_hot.astype(np.int16)
        label = votes.argmax(axis=1)
        if min_votes is not None:
            label = np.where(np.take_along_axis(plain, label[:, None], 1)[:, 0] >= min_votes, label, 0)
        return label.astype(np.uint8)
    said_yes = {m: decisions[m].astype(bool) for m in order}
    yes = sum(tie_break[m] * said_yes[m] for m in order)
    no = sum(tie_break[m] * ~said_yes[m] for m in order)
    count = sum(said_yes[m].astype(np.int32) for m in order)
    predicted = count >= min_votes if min_votes is not None else yes > no
    return predicted.astype(np.uint8) if task == "binary" else predicted


def vote_score(library: Library, order: list[int], min_votes: int | None) -> float:
    return decision_scores(library, Decision(np.ones(len(library.names)), order=order, min_votes=min_votes))[0]


# ---------------------------------------------------------------- strategies: OOF images -> a Decision

def tuned(library: Library, weights: np.ndarray) -> Decision:
    """Weights as given; thresholds and postprocessing tuned on the library's images."""
    return with_postprocessing(library, Decision(weights, tune_thresholds(library, weights)))


def ranked_singles(library: Library) -> list[tuple[int, float, Decision]]:
    """Each model alone with its own tuned thresholds and postprocessing, and its score on these images, best
    first (ties keep model order). A model whose probabilities are well ranked but badly calibrated is not
    judged at 0.5."""
    decisions = [tuned(library, np.eye(len(library.names))[m]) for m in range(len(library.names))]
    scores = [decision_scores(library, decision)[0] for decision in decisions]
    return [(int(m), scores[m], decisions[m]) for m in np.argsort(-np.asarray(scores), kind="stable")]


def rank(library: Library) -> list[int]:
    return [m for m, _, _ in ranked_singles(library)]


def decide_best_single(library: Library) -> Decision:
    return ranked_singles(library)[0][2]


def decide_uniform(library: Library) -> Decision:
    return tuned(library, np.ones(len(library.names)))


def decide_vote(library: Library, fraction: float | None) -> Decision:
    """A hard vote of every model, each deciding at its own tuned thresholds (a vote is a baseline: tuned the
    way the ensemble is, so the ensemble's gain over it is not threshold tuning)."""
    ranked = ranked_singles(library)
    order = [m for m, _, _ in ranked]
    min_votes = None if fraction is None else max(1, int(fraction * len(order)))
    cuts = {m: decision.thresholds for m, _, decision in ranked}
    return with_postprocessing(library, Decision(np.ones(len(library.names)), order=order, min_votes=min_votes,
                                                 member_thresholds=cuts))


@dataclass
class Selection:
    decision: Decision
    history: list[dict] = field(default_factory=list)
    fell_back: bool = False  # bagging did not beat the best single model, which is used instead


def decide_ensemble(library: Library, max_size: int, bags: int, seed: int) -> Selection:
    singles = single_scores(library)
    ranked = ranked_singles(library)
    order = [m for m, _, _ in ranked]  # greedy starts from the best model as tuned, not as scored at 0.5
    counts, history = np.zeros(len(library.names)), []
    rng = np.random.default_rng(seed)
    for bag in range(bags):
        pool = order if bags == 1 else sorted(rng.choice(order, max(1, len(order) // 2), replace=False).tolist())
        bag_counts, bag_history = greedy_selection(library, max_size, pool, singles, first=min(pool, key=order.index))
        counts += bag_counts / bag_counts.sum()
        history += [{"bag": bag, **step} for step in bag_history] if bags > 1 else bag_history
    decision = tuned(library, counts / counts.sum())
    if bags > 1:  # a bag may have left the best model out: never worse than it on these images
        _, single_score, single = ranked[0]
        if single_score > decision_scores(library, decision)[0]:
            return Selection(single, history, fell_back=True)
    return Selection(decision, history)


@dataclass
class CrossValidated:
    score: float
    per_class: np.ndarray
    per_image: np.ndarray  # each image scored by the decision made without its fold
    decisions: dict[int, Decision]  # fold -> the decision made on the other folds


def cross_validate(library: Library, strategy: Callable[[Library], Decision], per_image: bool = False,
                   original: bool | None = None) -> CrossValidated:
    """Make the decision on all folds but one (at the OOF resolution), apply it to the held-out fold; the
    pooled held-out score, at each image's original size when the library has those labels."""
    folds = np.zeros(library.size, int) if library.folds is None else np.asarray(library.folds)
    meter, image_scores, decisions = library.meter(), np.full(library.size, np.nan), {}
    if len(np.unique(folds)) < 2:
        raise ValueError("cross-validated decisions need OOF predictions from at least 2 folds")
    for fold in np.unique(folds).tolist():
        held_rows = np.flatnonzero(folds == fold)
        decisions[fold] = strategy(library.subset(np.flatnonzero(folds != fold)))
        held = library.subset(held_rows)
        at_original = library.full_labels is not None if original is None else original
        for rows, predicted, target in scored_batches(held, decisions[fold], at_original):
            meter.update_predictions(predicted, target)
            if per_image:
                image_scores[held_rows[rows]] = [image_score(library, predicted[i:i + 1], target[i:i + 1])
                                                 for i in range(len(predicted))]
    return CrossValidated(meter.compute(), meter.per_class(), image_scores, decisions)


def image_score(library: Library, predicted: torch.Tensor, target: torch.Tensor) -> float:
    meter = library.meter()
    meter.update_predictions(predicted, target)
    values = meter.per_class()
    return float(np.nanmean(values)) if np.isfinite(values).any() else 1.0


def save_worst_panels(library: Library, decision_of: Callable[[int], Decision], rows: list[int], folder: Path
                      ) -> list[dict]:
    """image | label | held-out ensemble prediction of the lowest-scoring images, as PNGs in the run folder."""
    from automl.overlays import panel, save_png

    if library.images is None:
        return []
    saved = []
    for place, row in enumerate(rows):
        window = slice(row, row + 1)
        predicted = decision_masks(library, decision_of(row), window)[0]
        label = library.labels(window)[0]
        path = folder / f"{place:02d}_{Path(library.ids[row]).stem}.png"
        save_png(path, panel(library.images(row), label, predicted, library.task))
        saved.append({"id": library.ids[row], "file": str(path.relative_to(folder.parent))})
    return saved


def load_library(runs_dir: str | Path, study: str) -> tuple[Library, PromotePlan]:
    run = store.RunDir(runs_dir, study)
    settings = run.settings()
    paths = PromotedPaths(run.root)
    plan = paths.require_plan(study)
    names = [m for m in plan.models if paths.oof(m)[0].exists()]
    if not names:
        raise UserError("no promoted model has all its folds done", key="STUDY",
                        fix=f"rerun `automl promote {study}`: it trains the missing folds")
    indexes = [store.read_json(paths.oof(m)[1]) for m in names]
    ids, folds = indexes[0]["ids"], np.asarray(indexes[0]["fold"])
    if any(index["ids"] != ids for index in indexes):
        raise UserError("the OOF files of the promoted models cover different images", key="oof",
                        fix="rerun `automl promote` so every model uses the saved folds")
    dataset = SegmentationDataset(load_dataset_spec(settings.dataset))
    spec = dataset.spec
    cache = ResizeCache(dataset, plan.eval_size)
    position = dataset.index_of
    rows_to_index = [position[i] for i in ids]
    cache.ensure(rows_to_index)

    def labels(rows: slice) -> np.ndarray:
        return np.stack([np.asarray(cache[rows_to_index[r]].mask) for r in range(rows.start, rows.stop)])

    def full_labels(row: int) -> np.ndarray:
        index = rows_to_index[row]
        return dataset.read_mask(index, *formats.image_size(dataset.records[index].image))[0]

    library = Library(names, [store.NpyRows(paths.oof(m)[0]) for m in names], labels, ids, spec.task,
                      spec.num_outputs, spec.effective_ignore_index,
                      images=lambda row: np.asarray(cache[rows_to_index[row]].image), folds=folds,
                      full_labels=full_labels)
    return library, plan


def decide_selection(library: Library, max_size: int, bags: int, seed: int) -> Selection:
    """The greedy ensemble, unless the best single model scores better when both are cross-validated over
    this library's own folds (at the OOF resolution): a selection that fits noise, or bags that left the
    best model out, fall back to it. A strategy like any other, so it is itself cross-validated."""
    selection = decide_ensemble(library, max_size, bags, seed)
    folds = np.unique(library.folds) if library.folds is not None else []
    if len(folds) >= 2:
        ensemble = cross_validate(library, lambda part: decide_ensemble(part, max_size, bags, seed).decision,
                                  original=False).score
        single = cross_validate(library, decide_best_single, original=False).score
    else:  # one fold left: compare on these images
        ensemble = decision_scores(library, selection.decision)[0]
        single = ranked_singles(library)[0][1]
    if single > ensemble:
        return Selection(decide_best_single(library), [], fell_back=True)
    return selection


def choose(library: Library, max_size: int, bags: int, seed: int
           ) -> tuple[Selection, CrossValidated, CrossValidated]:
    """The final selection (made on all OOF images), the cross-validated score of what it stands for
    and the cross-validated score of the best single model. The selection strategy is cross-validated
    nested (each outer fold's selection compares ensemble and best single on the other folds only); if it
    still scores below the best single model, the best single model is the final choice and its score the
    reported one, so the score never falls below best_single. Taking the larger of two held-out scores
    is slightly optimistic, by at most the gap between them (ensemble.json keeps `fell_back_to_best_single`)."""
    strategy = cross_validate(library, lambda part: decide_selection(part, max_size, bags, seed).decision,
                              per_image=True)
    best_single = cross_validate(library, decide_best_single, per_image=True)
    if strategy.score < best_single.score:
        return Selection(decide_best_single(library), [], fell_back=True), best_single, best_single
    return decide_selection(library, max_size, bags, seed), strategy, best_single


def run_ensemble(runs_dir: str | Path, study: str, max_size: int = 10, bags: int = 1, seed: int = 0,
                 echo: Callable[[str], None] = print) -> dict:
    require_at_least("--max-size", max_size, 1)
    require_at_least("--bags", bags, 1)
    library, plan = load_library(runs_dir, study)
    run = store.RunDir(runs_dir, study)
    paths = PromotedPaths(run.root)
    best_epoch = sorted({m for m in library.names for k in range(plan.folds)
                         if paths.fold_result(m, k).checkpoint != "final.pt"})
    if best_epoch:
        echo(f"note: the OOF of {', '.join(best_epoch)} comes from folds that kept the epoch scoring best on those "
             f"same images (promoted by an older version): its score is optimistic; remove promoted/<model> and "
             f"oof/<model>.* and rerun `automl promote` to retrain with final checkpoints")
    selection, ensemble, best_single = choose(library, max_size, bags, seed)
    baselines = {"uniform": cross_validate(library, decide_uniform).score,
                 "hard_vote": cross_validate(library, lambda part: decide_vote(part, None)).score,
                 "vote_70": cross_validate(library, lambda part: decide_vote(part, 0.7)).score}
    final = selection.decision
    in_sample, _ = decision_scores(library, final, original=True)
    singles = single_scores(library)
    best_model = rank(library)[0]  # the model behind best_single: ranked with its tuned thresholds, as scored
    table = pd.DataFrame({"id": library.ids, "score": ensemble.per_image}).sort_values("score", kind="stable")
    with store.atomic_path(run.root / "ensemble_per_image.csv") as tmp:
        table.to_csv(tmp, index=False)
    folds = np.asarray(library.folds)
    worst = save_worst_panels(library, lambda row: ensemble.decisions[int(folds[row])], table.index[:10].tolist(),
                              run.root / "worst")
    members = [i for i in range(len(library.names)) if final.weights[i] > 0]
    weights = final.weights / final.weights.sum()
    result = EnsembleResult(
        members=[library.names[i] for i in members], weights=[float(weights[i]) for i in members],
        thresholds=None if final.thresholds is None else [float(t) for t in final.thresholds],
        postprocess=final.postprocess, score=float(ensemble.score), score_in_sample=float(in_sample),
        best_single=float(best_single.score), best_single_model=library.names[best_model],
        **{name: float(value) for name, value in baselines.items()},
        single_scores=dict(zip(library.names, map(float, singles))), fell_back_to_best_single=selection.fell_back,
        per_class=[None if np.isnan(v) else float(v) for v in ensemble.per_class],
        class_names=plan.class_names, worst=worst, metric=plan.metric, task=library.task,
        eval_size=list(plan.eval_size), folds=len(ensemble.decisions), max_size=max_size, bags=bags, seed=seed,
        history=selection.history, per_image_csv=str(run.root / "ensemble_per_image.csv"))
    store.write_json(run.root / "ensemble.json", result.model_dump())
    if final.postprocess:
        switched = {op: [c for c, on in enumerate(flags) if on] for op, flags in final.postprocess.items()}
        echo(f"postprocessing that helps on OOF (class indices): {switched}")
    if selection.fell_back:
        echo("the selected ensemble did not beat the best single model out of fold: using that model alone")
    echo(f"ensemble of {len(members)} models ({', '.join(f'{library.names[i]} x{weights[i]:.2f}' for i in members)}): "
         f"OOF {plan.metric} {result.score:.4f} at the images' original size, cross-validated over {result.folds} "
         f"folds (each fold scored by "
         f"weights, thresholds and postprocessing chosen on the others; {in_sample:.4f} in sample). Baselines, "
         f"tuned the same way: best single {result.best_single:.4f}, uniform {result.uniform:.4f}, hard vote "
         f"{result.hard_vote:.4f}, 70% vote {result.vote_70:.4f}")
    echo("lowest out-of-fold scores (label noise or hard images):")
    for row in table.head(10).itertuples():
        echo(f"  {row.score:.4f}  {row.id}")
    echo(f"all images: {run.root / 'ensemble_per_image.csv'}")
    return result.model_dump()
