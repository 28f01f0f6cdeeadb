"""The whole loop - search, promote, ensemble, predict, report - on every task, on tiny synthetic data,
and (when ../shared/realdata is there) on the real binary set tgs_salt: 101-pixel tiles, 16-bit and
empty masks. The submission written by predict must score what --evaluate says it scores."""

from __future__ import annotations

import csv
import html
import json
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from automl.data.dataset import SegmentationDataset
from automl.data.demo import write_demo
from automl.ensemble import Decision, choose, load_library, run_ensemble
from automl.metrics import SegmentationMeter
from automl.data.formats import read_image
from automl.postprocess import final_mask, to_original_size
from automl.predict import Evaluation, run_predict
from automl.promote import PromoteOptions, run_promote
from automl.search import SearchOptions, run_search
from automl.submit import rle_decode
from reports.html import SECTIONS, build_report
from tests.conftest import write_mirrored_dataset

REALDATA = Path(__file__).resolve().parents[2] / "shared" / "realdata"
FAST = {"model.encoder": "tu-test_resnet", "data.resize": 64, "train.min_steps_per_epoch": 2}


def run_loop(dataset_yaml: Path, runs: Path, study: str, images: Path) -> dict:
    lines: list[str] = []
    run_search(SearchOptions(data=dataset_yaml, study=study, runs_dir=runs, trials=2, max_epochs=1, prune=False,
                             subsample=1.0, wandb="off", fixed=FAST), echo=lines.append)
    run_promote(PromoteOptions(study=study, runs_dir=runs, top=2, folds=2, epochs=1), echo=lines.append)
    ensemble = run_ensemble(runs, study, echo=lines.append)
    submission = runs / f"{study}.csv"
    predicted = run_predict(runs, study, images, submission, tta="flip", evaluate=dataset_yaml, echo=lines.append)
    report = build_report(runs, study)
    return {"ensemble": ensemble, "predicted": predicted, "submission": submission, "report": report,
            "lines": lines, "runs": runs, "study": study, "data": dataset_yaml}


def rescore_submission(submission: Path, dataset: SegmentationDataset) -> tuple[float, int]:
    """Decode the CSV the way a competition would and score it against the labels."""
    spec = dataset.spec
    names = ["foreground"] if spec.task == "binary" and len(spec.classes) > 1 else spec.class_names
    rows: dict[str, dict[str, str]] = {}
    with open(submission, newline="") as f:
        for row in csv.DictReader(f):
            rows.setdefault(row["image_name"], {})[row["class"]] = row["rle"]
    meter = SegmentationMeter(spec.task, spec.num_outputs, spec.effective_ignore_index)
    for index, record in enumerate(dataset.records):
        sample = dataset.load(index)
        height, width = sample.orig_size
        decoded = {name: rle_decode(rle, (height, width)) for name, rle in rows[record.image.name].items()}
        if spec.task == "multilabel":
            predicted = np.stack([decoded[name] for name in names])[None]
            target = sample.mask[None]
        else:
            predicted = np.zeros((height, width), np.uint8)
            for index_, name in enumerate(names):
                if name in decoded:
                    predicted[decoded[name]] = 1 if spec.task == "binary" else index_
            predicted, target = (predicted[None, None], sample.mask[None, None]) if spec.task == "binary" \
                else (predicted[None], sample.mask[None])
        meter.update_predictions(torch.from_numpy(predicted), torch.from_numpy(np.asarray(target)))
    return meter.compute(), len(rows)


def scored_by_predict(library, dataset_yaml: Path, decision_of_row) -> float:
    """OOF probabilities scored through predict --evaluate's code: each image's combined probabilities
    brought to its original size, thresholded, postprocessed (by the decision given for its row), compared
    with the labels read at that size."""
    dataset = SegmentationDataset.from_yaml(dataset_yaml)
    evaluation = Evaluation(dataset_yaml)
    for row, image_id in enumerate(library.ids):
        decision = decision_of_row(row)
        assert decision.order is None  # the final choice is a weighted soft vote, never a hard vote
        record = dataset.records[dataset.index_of[image_id]]
        mean = library.mean(decision.weights, slice(row, row + 1))[0]
        full = to_original_size(torch.from_numpy(mean), read_image(record.image).shape[:2]).numpy()
        evaluation.add(record.image, final_mask(full, dataset.spec.task, decision.thresholds, decision.postprocess))
    assert evaluation.matched == library.size
    return evaluation.meter.compute()


def oof_scored_by_predict(runs: Path, study: str, dataset_yaml: Path) -> float:
    """The final ensemble of ensemble.json, applied to every OOF image, scored through predict's code."""
    ensemble = json.loads((runs / study / "ensemble.json").read_text())
    library, _ = load_library(runs, study)
    weights = dict(zip(ensemble["members"], ensemble["weights"]))
    thresholds = None if ensemble["thresholds"] is None else np.asarray(ensemble["thresholds"])
    final = Decision(np.array([weights.get(name, 0.0) for name in library.names]), thresholds,
                     ensemble["postprocess"])
    return scored_by_predict(library, dataset_yaml, lambda row: final)


def cross_validated_score_by_predict(runs: Path, study: str, dataset_yaml: Path) -> tuple[float, float]:
    """ensemble.json's cross-validated `score`, made again, and the same held-out decisions scored through
    predict --evaluate's code: each image by the decision made without its fold, at its original size."""
    ensemble = json.loads((runs / study / "ensemble.json").read_text())
    library, _ = load_library(runs, study)
    _, strategy, _ = choose(library, ensemble["max_size"], ensemble["bags"], ensemble["seed"])
    assert ensemble["score"] == pytest.approx(strategy.score, abs=1e-9)
    by_predict = scored_by_predict(library, dataset_yaml, lambda row: strategy.decisions[int(library.folds[row])])
    return strategy.score, by_predict


def check_loop(outcome: dict, dataset: SegmentationDataset, classes_per_image: int,
               flips: str = "plain horizontal flips (from default)") -> None:
    ensemble = outcome["ensemble"]
    runs, study = outcome["runs"], outcome["study"]
    assert ensemble["score_in_sample"] == pytest.approx(oof_scored_by_predict(runs, study, outcome["data"]), abs=1e-6)
    cross_validated, by_predict = cross_validated_score_by_predict(runs, study, outcome["data"])
    assert cross_validated == pytest.approx(by_predict, abs=1e-6)
    assert ensemble["score"] >= ensemble["best_single"] and set(ensemble["members"]) <= set(ensemble["single_scores"])
    assert ensemble["postprocess"] is None or set(ensemble["postprocess"]) == {"largest_component", "fill_holes"}
    evaluation = outcome["predicted"]["evaluation"]
    assert evaluation["images"] == len(dataset) and 0 <= evaluation["score"] <= 1
    score, images = rescore_submission(outcome["submission"], dataset)
    assert images == len(dataset) and score == pytest.approx(evaluation["score"], abs=1e-9)
    rows = outcome["submission"].read_text().strip().splitlines()
    assert len(rows) == 1 + len(dataset) * classes_per_image
    page = outcome["report"].read_text()
    assert all(f'id="{anchor}"' in page for anchor in SECTIONS)
    assert f"<th>horizontal flips</th><td>{html.escape(flips)}</td>" in page


@pytest.mark.parametrize("task, size, classes_per_image", [("multiclass", 64, 3), ("multilabel", 64, 3),
                                                            ("binary", 101, 1)])
def test_the_whole_loop_on_every_task(task, size, classes_per_image, tmp_path, ray_session):
    dataset_yaml = write_demo(tmp_path / "data", task, n=12, size=size)
    outcome = run_loop(dataset_yaml, tmp_path / "runs", task, tmp_path / "data" / "images")
    check_loop(outcome, SegmentationDataset.from_yaml(dataset_yaml), classes_per_image)
    if task == "multiclass":  # the same images in 32-px tiles of the 64-px inputs: close to the whole-image score
        lines: list[str] = []
        tiled = run_predict(tmp_path / "runs", task, tmp_path / "data" / "images", tmp_path / "tiled.csv", tta="flip",
                            evaluate=dataset_yaml, tile=32, overlap=0.5, echo=lines.append)["evaluation"]
        assert "tiles of 32 px overlapping 50%" in lines[0]
        assert tiled["images"] == 12 and abs(tiled["score"] - outcome["predicted"]["evaluation"]["score"]) < 0.15
    if task == "binary":  # 101-pixel images went in at 64 and come back at 101
        run_predict(tmp_path / "runs", task, tmp_path / "data" / "images", tmp_path / "png", format="png",
                    echo=lambda line: None)
        shapes = {cv2.imread(str(path), cv2.IMREAD_UNCHANGED).shape for path in (tmp_path / "png").glob("*.png")}
        assert shapes == {(101, 101)}


def test_the_whole_loop_on_gray_images_with_a_mirrored_pair(tmp_path, ray_session):
    """One input channel and paired flips, from the audit through promote, ensemble, TTA and the report."""
    dataset_yaml = write_mirrored_dataset(tmp_path / "data", n=12, size=64)
    outcome = run_loop(dataset_yaml, tmp_path / "runs", "lungs", tmp_path / "data" / "images")
    check_loop(outcome, SegmentationDataset.from_yaml(dataset_yaml), 3,
               flips="horizontal flips swap left_lung <-> right_lung (from audit)")
    assert any("'left_lung' and 'right_lung' look mirrored" in line for line in outcome["lines"])
    assert "TTA follows the flip policy: horizontal flips swap left_lung <-> right_lung" in outcome["lines"]
    for fold_config in (tmp_path / "runs" / "lungs" / "promoted").glob("*/fold*/config.json"):
        config = json.loads(fold_config.read_text())
        assert config["model"]["in_channels"] == 1 and config["data"]["flips"]["pairs"] == [["left_lung", "right_lung"]]
    assert list((tmp_path / "runs" / "lungs" / "worst").glob("*.png"))  # review panels from 1-channel images


@pytest.mark.realdata
@pytest.mark.skipif(not (REALDATA / "tgs_salt").is_dir(), reason="no ../shared/realdata/tgs_salt")
def test_the_whole_loop_on_real_binary_data(tmp_path, ray_session):
    source = REALDATA / "tgs_salt"
    dataset_yaml = tmp_path / "tgs_salt.yaml"  # shared/ is read-only: the data is read there, cached here
    dataset_yaml.write_text((source / "dataset.yaml").read_text() + f"\nroot: {source}\ncache_dir: {tmp_path / 'cache'}\n")
    outcome = run_loop(dataset_yaml, tmp_path / "runs", "tgs", source / "images")
    dataset = SegmentationDataset.from_yaml(dataset_yaml)
    check_loop(outcome, dataset, 1)
    assert len(dataset) == 217 and outcome["ensemble"]["eval_size"] == [64, 64]


def test_the_oof_estimate_predicts_the_score_on_held_out_images(tmp_path, ray_session):
    """The number ensemble prints is what predict --evaluate then measures on images no model has seen
    (new images of the same distribution), within a few points."""
    dataset_yaml = write_demo(tmp_path / "data", "multiclass", n=32, size=80)  # trained at 64, scored at 80
    held_out_yaml = write_demo(tmp_path / "held_out", "multiclass", n=24, size=80, seed=1)
    runs = tmp_path / "runs"
    fast = {**FAST, "train.min_steps_per_epoch": 10}
    run_search(SearchOptions(data=dataset_yaml, study="h", runs_dir=runs, trials=2, max_epochs=2, prune=False,
                             subsample=1.0, wandb="off", fixed=fast), echo=lambda line: None)
    run_promote(PromoteOptions(study="h", runs_dir=runs, top=2, folds=3, epochs=4), echo=lambda line: None)
    ensemble = run_ensemble(runs, "h", echo=lambda line: None)
    held_out = run_predict(runs, "h", tmp_path / "held_out" / "images", tmp_path / "s.csv", evaluate=held_out_yaml,
                           echo=lambda line: None)["evaluation"]
    print(f"OOF {ensemble['score']:.4f} (in sample {ensemble['score_in_sample']:.4f}), held out {held_out['score']:.4f}")
    assert held_out["images"] == 24 and ensemble["score"] > 0.5
    assert abs(ensemble["score"] - held_out["score"]) < 0.05
