"""automl pseudo: the ensemble labels unlabelled images, unsure pixels ignored by the loss; the next round
trains on them and never validates or scores on them."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from automl.data.dataset import SegmentationDataset
from automl.data.demo import write_demo
from automl.data.splits import Splits
from automl.ensemble import run_ensemble
from automl.promote import PromoteOptions, run_promote
from automl.pseudo import PseudoOptions, confident_mask, run_pseudo
from automl.refit import RefitOptions, run_refit
from automl.search import SearchOptions, make_search_split, run_search
from automl.data.stats import label_stats
from trainables.losses import HybridLoss

# one pass per epoch (min 1 step): metrics.csv's train_images is the size of each fold's training set
FAST = {"model.encoder": "tu-test_resnet", "data.resize": 32, "train.min_steps_per_epoch": 1}


def test_unsure_pixels_get_the_ignore_value_for_every_task():
    multiclass = np.array([[[0.95, 0.5]], [[0.03, 0.3]], [[0.02, 0.2]]])  # 3 classes x 1 x 2
    assert confident_mask(multiclass, "multiclass", None, None, 0.9).tolist() == [[0, 255]]
    binary = np.array([[[0.97, 0.6, 0.02]]])
    assert confident_mask(binary, "binary", None, None, 0.9).tolist() == [[1, 255, 0]]
    multilabel = np.array([[[0.97, 0.5]], [[0.05, 0.95]]])
    assert confident_mask(multilabel, "multilabel", None, None, 0.9).tolist() == [[[1, 255]], [[0, 1]]]
    # a tuned threshold never turns an unsure call into a sure one: 0.95 called 0 by a 0.99 threshold is
    # unsure, 0.95 called 1 by a 0.3 threshold is sure, 0.5 called 1 by it is not
    assert confident_mask(np.array([[[0.95]]]), "binary", [0.99], None, 0.9).tolist() == [[255]]
    assert confident_mask(np.array([[[0.95, 0.5, 0.05]]]), "binary", [0.3], None, 0.9).tolist() == [[1, 255, 0]]


@pytest.mark.parametrize("task", ["binary", "multilabel", "multiclass"])
def test_the_loss_leaves_ignored_pseudo_pixels_out(task):
    channels = 1 if task == "binary" else 3
    logits = torch.randn(2, channels, 8, 8)
    if task == "multiclass":
        target = torch.randint(0, 3, (2, 8, 8))
        target[:, :4] = 255
        ignored = (target == 255)[:, None].expand(-1, channels, -1, -1)
    else:
        target = torch.randint(0, 2, (2, channels, 8, 8)).float()
        target[:, :, :4] = 255
        ignored = target == 255
    loss = HybridLoss({"ce": 0.3, "dice": 0.3, "focal": 0.2, "jaccard": 0.2}, task, 255)
    moved = logits.clone()
    moved[ignored] = torch.randn(int(ignored.sum())) * 10
    assert torch.isfinite(loss(logits, target))
    assert torch.isclose(loss(logits, target), loss(moved, target))  # what the ignored pixels say is not heard


@pytest.fixture(scope="module")
def rounds(tmp_path_factory, ray_session):
    root = tmp_path_factory.mktemp("pseudo")
    dataset_yaml = write_demo(root / "data", "multilabel", n=16, size=32)
    unlabelled = write_demo(root / "unlabelled", "multilabel", n=6, size=32, seed=7).parent / "images"
    runs, lines = root / "runs", []
    run_search(SearchOptions(data=dataset_yaml, study="s", runs_dir=runs, trials=1, max_epochs=1, prune=False,
                             subsample=1.0, wandb="off", fixed=FAST), echo=lines.append)
    # 12 epochs of 1 step: enough for calls the ensemble is sure of (after 1 step every pixel is unsure)
    run_promote(PromoteOptions(study="s", runs_dir=runs, top=1, folds=2, epochs=12), echo=lines.append)
    first = run_ensemble(runs, "s", echo=lines.append)
    pseudo = run_pseudo(PseudoOptions(study="s", images=str(unlabelled), out=root / "round2", runs_dir=runs,
                                      min_confidence=0.6, min_confident_fraction=0.0), echo=lines.append)
    # the first promote of a study made on a dataset with pseudo-labels: folds.json of the labelled images
    other = root / "other"
    run_search(SearchOptions(data=Path(pseudo["dataset"]), study="p", runs_dir=other, trials=1, max_epochs=1,
                             prune=False, subsample=1.0, wandb="off", fixed=FAST), echo=lines.append)
    run_promote(PromoteOptions(study="p", runs_dir=other, top=1, folds=2, epochs=1), echo=lines.append)
    run_promote(PromoteOptions(study="s", runs_dir=runs, top=1, folds=2, epochs=1, data=Path(pseudo["dataset"])),
                echo=lines.append)
    second = run_ensemble(runs, "s", echo=lines.append)
    return {"root": root, "runs": runs, "data": dataset_yaml, "pseudo": pseudo, "lines": lines,
            "first": first, "second": second, "unlabelled": unlabelled, "other": other}


def test_pseudo_writes_masks_and_a_training_only_dataset(rounds):
    pseudo = rounds["pseudo"]
    assert len(pseudo["kept"]) == 6  # min_confident_fraction 0: every image kept
    derived = SegmentationDataset.from_yaml(pseudo["dataset"])
    original = SegmentationDataset.from_yaml(rounds["data"])
    assert derived.labelled_ids == original.ids
    pseudo_ids = [r.id for r in derived.records if r.training_only]
    assert pseudo_ids == [f"pseudo/{name}" for name in sorted(pseudo["kept"])]
    assert derived.spec.training_ignore_index == 255 and original.spec.training_ignore_index is None
    sample = derived.load(derived.index_of[pseudo_ids[0]])
    assert sample.mask.dtype == np.uint8 and sample.mask.shape == (3, 32, 32)
    assert set(np.unique(sample.mask)) <= {0, 1, 255}
    labels = np.stack([derived.load(derived.index_of[i]).mask for i in pseudo_ids])
    assert 0.05 < np.mean(labels != 255) < 1  # real calls go through, and unsure pixels are left out
    assert any(line.startswith("pseudo-labelled 6 of 6 images") for line in rounds["lines"])
    masks = Path(pseudo["dataset"]).parent / "masks"
    assert sorted(p.name for p in masks.iterdir()) == ["all", "fold0", "fold1"]
    for folder in ("all", "fold0", "fold1"):  # every kept image has its mask in each
        assert sorted(p.stem for p in (masks / folder).iterdir()) == sorted(Path(n).stem for n in pseudo["kept"])
    fold0 = SegmentationDataset(derived.spec.for_fold(0))
    assert fold0.records[fold0.index_of[pseudo_ids[0]]].label == masks / "fold0" / f"{Path(pseudo_ids[0]).stem}.npy"
    assert len(SegmentationDataset.from_yaml(pseudo["dataset"], pseudo=False)) == 16  # inspect, audit, evaluate


def test_no_pseudo_image_is_ever_validated_or_scored(rounds):
    runs, pseudo = rounds["runs"], rounds["pseudo"]
    study = runs / "s"
    assert not any(i.startswith("pseudo/") for i in Splits(**json.loads((study / "folds.json").read_text())).ids)
    for done in study.glob("promoted/*/fold*/done.json"):  # what each fold validated on
        assert not any(i.startswith("pseudo/") for i in json.loads(done.read_text())["ids"])
    indexes = [json.loads(p.read_text()) for p in study.glob("oof/*.json")]
    assert len(indexes) == 2 and indexes[0]["ids"] == indexes[1]["ids"]  # both rounds: the same labelled images
    assert not any(i.startswith("pseudo/") for i in indexes[0]["ids"])
    derived = SegmentationDataset.from_yaml(pseudo["dataset"])
    split = make_search_split(derived, label_stats(derived), 1.0, 0.2, seed=0)
    assert not any(i.startswith("pseudo/") for i in split["val"])
    assert {f"pseudo/{name}" for name in pseudo["kept"]} <= set(split["train"])
    original = SegmentationDataset.from_yaml(rounds["data"])  # the labelled images' holdout does not move
    assert split["val"] == make_search_split(original, label_stats(original), 1.0, 0.2, seed=0)["val"]
    other = rounds["other"] / "p"  # a study made on the derived dataset: its folds and OOF hold no pseudo id
    assert Splits(**json.loads((other / "folds.json").read_text())).ids == original.ids
    assert not any(i.startswith("pseudo/") for p in other.glob("oof/*.json") for i in json.loads(p.read_text())["ids"])
    assert not any(i.startswith("pseudo/") for i in json.loads((other / "search_split.json").read_text())["val"])
    # study p's search held out labelled images the ensemble behind masks/all had learned: it says so
    assert sum(line.startswith("note: 6 pseudo-labelled images train here") for line in rounds["lines"]) == 1
    notes = [line for line in rounds["lines"] if line.startswith("note: these pseudo-labels were not made by this")]
    assert len(notes) == 1  # study p's promote says its OOF is optimistic; study s's second round does not


def test_the_next_round_trains_on_the_pseudo_images_beside_the_first(rounds):
    study = rounds["runs"] / "s"
    plan = json.loads((study / "promote.json").read_text())
    assert set(plan["models"]) == {"trial0000", "trial0000-round2"}
    assert plan["models"]["trial0000-round2"]["data"] == rounds["pseudo"]["dataset"]
    line = next(line for line in rounds["lines"] if "trial0000-round2 x 2 folds" in line)
    assert "16 images + 6 pseudo-labelled (training only)" in line
    for fold in (0, 1):
        first = pd.read_csv(study / "promoted" / "trial0000" / f"fold{fold}" / "metrics.csv")
        second = pd.read_csv(study / "promoted" / "trial0000-round2" / f"fold{fold}" / "metrics.csv")
        assert int(second["train_images"].iloc[0]) == int(first["train_images"].iloc[0]) + 6  # one pass each
    assert set(rounds["second"]["single_scores"]) == {"trial0000", "trial0000-round2"}


def test_refit_of_a_pseudo_round_model_trains_on_its_pseudo_images(rounds):
    results = run_refit(RefitOptions(study="s", runs_dir=rounds["runs"], models=["trial0000-round2"],
                                     epochs=1), echo=lambda line: None)
    assert results["trial0000-round2"].images == 16 + 6


def test_bad_pseudo_requests_are_one_line(rounds, run_cli):
    code, _, err = run_cli("pseudo", "s", "--images", rounds["data"].parent / "images", "--out",
                           rounds["root"] / "again", "--runs-dir", rounds["runs"])
    assert code == 2 and "labelled images of the study's dataset" in err and len(err.strip().splitlines()) == 1
    code, _, err = run_cli("pseudo", "s", "--images", rounds["unlabelled"], "--out", rounds["root"] / "round2",
                           "--runs-dir", rounds["runs"])
    assert code == 2 and "is not empty" in err  # the first round's pseudo-labels are never written over
    code, _, err = run_cli("pseudo", "s", "--images", rounds["unlabelled"], "--out", rounds["root"] / "x",
                           "--runs-dir", rounds["runs"], "--min-confidence", "1.5")
    assert code == 2 and "--min-confidence" in err
    code, _, err = run_cli("pseudo", "s", "--images", rounds["unlabelled"], "--out", rounds["root"] / "x",
                           "--runs-dir", rounds["runs"], "--tile", "8")
    assert code == 2 and "--tile" in err and len(err.strip().splitlines()) == 1
    code, _, err = run_cli("pseudo", "s", "--images", rounds["unlabelled"], "--out", rounds["root"] / "strict",
                           "--runs-dir", rounds["runs"], "--min-confidence", "0.999", "--min-confident-fraction", "1")
    assert code == 2 and "no image has 100% of its pixels above 0.999 confidence" in err, err
    assert not (rounds["root"] / "strict" / "dataset.yaml").exists()


def test_predict_after_the_second_round(rounds):
    from automl.predict import run_predict

    out = rounds["root"] / "submission.csv"
    result = run_predict(rounds["runs"], "s", rounds["data"].parent / "images", out, tta="flip",
                         evaluate=rounds["data"], echo=lambda line: None)
    assert result["images"] == 16 and result["evaluation"]["images"] == 16
    assert 0.05 < result["evaluation"]["score"] <= 1  # the two rounds' ensemble finds the demo's shapes


class Constant(torch.nn.Module):
    """A 'fold model' that says the same logit everywhere."""

    def __init__(self, logit: float):
        super().__init__()
        self.logit = logit

    def forward(self, x):
        return torch.full((x.shape[0], 1, *x.shape[-2:]), self.logit)


def test_fold_k_masks_come_from_the_fold_k_models_alone(tmp_path):
    from automl.config import TrialConfig, load_dataset_spec
    from automl.predict import Member
    from automl.pseudo import pseudo_masks

    spec = load_dataset_spec(write_demo(tmp_path / "d", "binary", n=2, size=32))
    config = TrialConfig(**{"data": {"resize": 32}})
    sure_fold0, sure_fold1 = Constant(5.0), Constant(-5.0)  # p = 0.993 and 0.007: the average, 0.5, is unsure
    members = [Member("m", 1.0, config, [sure_fold0, sure_fold1])]
    image = np.zeros((20, 24, 3), np.uint8)
    decisions = {"eval_size": (32, 32), "thresholds": None, "postprocess": None}
    whole, by_fold = pseudo_masks(members, members, [image], spec, torch.device("cpu"), decisions, "flip", 0.9, 255)
    assert (whole[0] == 255).all() and whole[0].shape == (20, 24)  # the ensemble is not sure anywhere
    assert (by_fold[0][0] == 1).all() and (by_fold[1][0] == 0).all()  # each fold's models alone are


def test_fold_k_trains_on_the_masks_made_without_its_labels_and_only_for_these_folds(rounds):
    """The leak guard: promote's fold job reads masks/fold<k> when the folds are the ones the masks were made
    for; a folds.json split again (other folds at the same path) gets the whole ensemble's masks and a note."""
    from automl.promote import FoldContext, fold_dataset, pseudo_fold_masks
    from automl.promoted import PromotedPaths

    derived = SegmentationDataset.from_yaml(rounds["pseudo"]["dataset"])
    paths = PromotedPaths(rounds["runs"] / "s")
    splits = Splits.load(paths.folds)
    masks = Path(rounds["pseudo"]["dataset"]).parent / "masks"
    for fold, expected in ((0, "fold0"), (1, "fold1")):
        context = FoldContext(str(paths.root), rounds["pseudo"]["dataset"], {}, splits.__dict__, (32, 32), 1, True)
        dataset = fold_dataset(context, fold)
        labels = {r.label.parent for r in dataset.records if r.training_only}
        assert labels == {masks / expected}
    from automl.pseudo import trained_folds

    # the fingerprint pseudo wrote is the folds the fold models trained on (their done.json), here folds.json's
    assert derived.spec.pseudo.folds_fingerprint == trained_folds(paths, ["trial0000"], 2) == splits.fingerprint
    lines = []
    assert pseudo_fold_masks(derived.spec, paths, splits, lines.append) and not lines
    resplit = Splits(splits.ids, splits.groups, [1 - f for f in splits.fold], splits.seed, splits.method)
    assert resplit.fingerprint != splits.fingerprint
    assert not pseudo_fold_masks(derived.spec, paths, resplit, lines.append)
    assert len(lines) == 1 and "optimistic" in lines[0]
