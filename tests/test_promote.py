"""`automl promote` + `automl ensemble` on demo data: a promote killed mid-way resumes without retraining
finished folds; every image gets exactly one out-of-fold prediction per model; no group spans two folds."""

from __future__ import annotations

import csv
import hashlib
import json
import subprocess
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest

from automl.data.dataset import SegmentationDataset
from automl.data.demo import write_demo
from automl.ensemble import load_library, rank, run_ensemble
from automl.promote import PromoteOptions, run_promote
from automl.search import SearchOptions, run_search
from tests.processes import kill_session

FOLDS = 3


def digest(path: Path) -> str:
    return hashlib.sha1(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def promoted(tmp_path_factory, ray_session):
    root = tmp_path_factory.mktemp("promote")
    dataset_yaml = write_demo(root / "data", "multilabel", n=24, size=64)
    runs = root / "runs"
    run_search(SearchOptions(data=dataset_yaml, study="p", runs_dir=runs, trials=3, max_epochs=2, prune=False,
                             subsample=1.0, wandb="off",
                             fixed={"model.encoder": "tu-test_resnet", "train.min_steps_per_epoch": 2}),
               echo=lambda line: None)
    command = [sys.executable, "-m", "automl.cli", "promote", "p", "--runs-dir", str(runs), "--top", "2",
               "--folds", str(FOLDS), "--epochs", "2"]
    driver = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.time() + 300
    while not list(runs.glob("p/promoted/*/fold*/done.json")) and time.time() < deadline and driver.poll() is None:
        time.sleep(0.3)
    kill_session(driver.pid)  # the driver and every Ray process it started
    driver.wait()
    done_before = {path.parent: (digest(path), digest(path.parent / "final.pt"))
                   for path in runs.glob("p/promoted/*/fold*/done.json")}
    lines: list[str] = []
    run_promote(PromoteOptions(study="p", runs_dir=runs, top=2, folds=FOLDS, epochs=2), echo=lines.append)
    result = run_ensemble(runs, "p", echo=lines.append)
    return {"root": root, "runs": runs, "dataset": SegmentationDataset.from_yaml(dataset_yaml),
            "done_before": done_before, "lines": lines, "ensemble": result}


def test_a_killed_promote_resumes_and_skips_finished_folds(promoted):
    done_before = promoted["done_before"]
    assert 1 <= len(done_before) < 2 * FOLDS, "the kill should land between the first and the last fold"
    assert f"{len(done_before)} folds already done, {2 * FOLDS - len(done_before)} to train" in promoted["lines"][0]
    for fold_dir, (done, weights) in done_before.items():  # untouched by the rerun
        assert digest(fold_dir / "done.json") == done and digest(fold_dir / "final.pt") == weights


def test_every_image_has_exactly_one_oof_prediction_per_model(promoted):
    runs, dataset = promoted["runs"], promoted["dataset"]
    models = sorted(json.loads((runs / "p" / "promote.json").read_text())["models"])
    assert len(models) == 2
    for model in models:
        seen = []
        for fold in range(FOLDS):
            seen += json.loads((runs / "p" / "promoted" / model / f"fold{fold}" / "done.json").read_text())["ids"]
        assert sorted(seen) == sorted(dataset.ids)  # each image validated once, by the fold that did not train on it
        index = json.loads((runs / "p" / "oof" / f"{model}.json").read_text())
        oof = np.load(runs / "p" / "oof" / f"{model}.npy", mmap_mode="r")
        assert index["ids"] == dataset.ids and oof.shape == (len(dataset), 3, 64, 64) and oof.dtype == np.uint8
        assert oof.reshape(len(dataset), -1).max(axis=1).min() > 0  # no row left unwritten


def test_no_group_spans_two_folds(promoted):
    folds = json.loads((promoted["runs"] / "p" / "folds.json").read_text())
    fold_of_group = {}
    for group, fold in zip(folds["groups"], folds["fold"]):
        assert fold_of_group.setdefault(group, fold) == fold
    assert sorted(set(folds["fold"])) == list(range(FOLDS))


def test_ensemble_json_beats_or_equals_the_best_single_model(promoted):
    result = promoted["ensemble"]
    for key in ("members", "weights", "thresholds", "score", "score_in_sample", "best_single", "uniform", "hard_vote",
                "vote_70", "fell_back_to_best_single"):
        assert key in result
    assert result["score"] >= result["best_single"]
    assert sum(result["weights"]) == pytest.approx(1.0) and len(result["thresholds"]) == 3
    library, _ = load_library(promoted["runs"], "p")
    assert result["best_single_model"] == library.names[rank(library)[0]]  # ranked as tuned, not at 0.5
    saved = json.loads((promoted["runs"] / "p" / "ensemble.json").read_text())
    assert saved["score"] == result["score"]
    per_image = pd.read_csv(promoted["runs"] / "p" / "ensemble_per_image.csv")
    assert len(per_image) == len(promoted["dataset"]) and per_image["score"].is_monotonic_increasing
    assert any(line.startswith("lowest out-of-fold scores") for line in promoted["lines"])


def test_a_rerun_trains_nothing_and_leaves_the_oof_intact(promoted):
    runs = promoted["runs"]
    before = {path.name: digest(path) for path in (runs / "p" / "oof").glob("*.npy")}
    lines: list[str] = []
    run_promote(PromoteOptions(study="p", runs_dir=runs, top=2, folds=FOLDS, epochs=2), echo=lines.append)
    assert f"{2 * FOLDS} folds already done, 0 to train" in lines[0]
    assert {path.name: digest(path) for path in (runs / "p" / "oof").glob("*.npy")} == before


def test_promote_and_ensemble_explain_what_is_missing(run_cli, promoted, tmp_path):
    runs = promoted["runs"]
    code, _, err = run_cli("ensemble", "nope", "--runs-dir", runs)
    assert code == 2 and "no study 'nope'" in err
    code, _, err = run_cli("promote", "p", "--runs-dir", runs, "--trials", "99")
    assert code == 2 and "trials [99] are not COMPLETE" in err
    code, _, err = run_cli("promote", "p", "--runs-dir", runs, "--folds", "4")
    assert code == 2 and "promoted with 3 folds" in err
    code, _, err = run_cli("promote", "p", "--runs-dir", runs, "--trials", "x")
    assert code == 2 and "expected trial numbers" in err


def test_predicting_the_training_images_scores_near_the_oof_score(promoted, tmp_path):
    from automl.predict import run_predict

    runs, dataset = promoted["runs"], promoted["dataset"]
    images = dataset.spec.root / "images"
    outcome = run_predict(runs, "p", images, tmp_path / "sub.csv", tta="flip", evaluate=dataset.spec.source,
                          echo=lambda line: None)
    oof = promoted["ensemble"]["score"]
    assert outcome["evaluation"]["images"] == len(dataset)
    # the folds saw these images in training (2 of 3 folds each), so in-sample can only be close or better
    assert outcome["evaluation"]["score"] >= oof - 0.05, (outcome["evaluation"]["score"], oof)
    rows = list(csv.reader(open(tmp_path / "sub.csv")))
    assert len(rows) == 1 + len(dataset) * 3 and rows[0] == ["image_name", "class", "rle"]


def test_predict_one_model_to_png_and_coco(promoted, tmp_path):
    from pycocotools import mask as coco_mask

    from automl.predict import run_predict

    runs, dataset = promoted["runs"], promoted["dataset"]
    model = promoted["ensemble"]["members"][0]
    images = str(dataset.spec.root / "images" / "g00[01]_*.png")
    run_predict(runs, "p", images, tmp_path / "png", format="png", model=model, echo=lambda line: None)
    assert sorted(p.name for p in (tmp_path / "png" / "disk").iterdir()) == [f"g00{g}_{k}.png" for g in (0, 1)
                                                                              for k in (0, 1)]
    run_predict(runs, "p", images, tmp_path / "coco.json", format="coco", model=model, echo=lambda line: None)
    results = json.loads((tmp_path / "coco.json").read_text())
    assert results and all(0 <= r["score"] <= 1 and coco_mask.decode(r["segmentation"]).any() for r in results)
    written = cv2.imread(str(tmp_path / "png" / "disk" / "g000_0.png"), cv2.IMREAD_GRAYSCALE) > 0
    disk = [r for r in results if r["file_name"].endswith("g000_0.png") and r["category_name"] == "disk"]
    if disk:
        np.testing.assert_array_equal(coco_mask.decode(disk[0]["segmentation"]).astype(bool), written)


def test_predict_explains_bad_input(run_cli, promoted, tmp_path):
    runs = promoted["runs"]
    images = promoted["dataset"].spec.root / "images"
    for args, message in [(["--format", "xml"], "unknown submission format 'xml'"), (["--tta", "rotate"], "unknown TTA"),
                          (["--model", "trial9999"], "no promoted model 'trial9999'"),
                          (["--images", tmp_path / "none"], "no image found")]:
        base = {"--images": images, "--out": tmp_path / "x.csv"}
        extra = dict(zip(args[::2], args[1::2]))
        flat = [str(v) for item in {**base, **extra}.items() for v in item]
        code, _, err = run_cli("predict", "p", "--runs-dir", runs, *flat)
        assert code == 2 and message in err, err


def check_report(path: Path) -> str:
    import re

    from reports.html import SECTIONS

    page = path.read_text()
    for anchor in SECTIONS:
        assert f'<section id="{anchor}">' in page, anchor
    assert not re.search(r'(src|href)="https?://', page)  # viewable offline: nothing from the network
    for reference in re.findall(r'(?:src|href)="([^"#][^"]*)"', page):
        assert reference.startswith("data:image/png;base64,") or (path.parent / reference).exists(), reference
    return page


def test_report_renders_every_section_from_the_finished_study(promoted, run_cli):
    code, out, err = run_cli("report", "p", "--runs-dir", promoted["runs"])
    assert code == 0, err
    page = check_report(promoted["runs"] / "p" / "report" / "index.html")
    assert "No ensemble yet" not in page and "No promote run yet" not in page
    assert page.count("<figure>") == 10  # the worst OOF images as image / label / prediction panels
    assert "trial0" in page and "Per-class" in page


def test_late_gain_flags_fold_models_still_improving(tmp_path):
    from automl.promote import STILL_RISING, late_gain

    rising, flat = tmp_path / "rising.csv", tmp_path / "flat.csv"
    pd.DataFrame({"epoch": range(1, 9), "score": [.1, .2, .3, .4, .5, .6, .7, .8]}).to_csv(rising, index=False)
    pd.DataFrame({"epoch": range(1, 9), "score": [.1, .5, .6, .6, .6, .6, .61, .6]}).to_csv(flat, index=False)
    assert late_gain([rising]) == pytest.approx(0.2)  # epoch 6 -> epoch 8
    assert late_gain([flat]) < STILL_RISING <= late_gain([rising, flat])
    assert late_gain([tmp_path / "missing.csv"]) is None


def test_folds_score_their_oof_with_the_final_epoch_not_the_best_one_on_those_images(promoted):
    from automl.promoted import PromotedPaths

    paths = PromotedPaths(promoted["runs"] / "p")
    for done_file in (promoted["runs"] / "p").glob("promoted/*/fold*/done.json"):
        fold = paths.fold_result(done_file.parent.parent.name, int(done_file.parent.name.removeprefix("fold")))
        history = pd.read_csv(done_file.parent / "metrics.csv")
        assert fold.checkpoint == "final.pt" and fold.epochs == len(history) == 2
        assert fold.score == pytest.approx(history["score"].iloc[-1], abs=1e-9)
        assert fold.best_score == pytest.approx(history["score"].max(), abs=1e-9)
        assert (done_file.parent / "final.pt").exists() and not (done_file.parent / "best.pt").exists()


def test_status_report_and_dashboard_read_files_without_importing_ray_or_torch(promoted):
    """The light driver: a leaderboard or a report on a laptop needs neither Ray nor torch."""
    code = f"""
import sys, time
start = time.perf_counter()
from automl.cli import main
assert main(["status", "p", "--runs-dir", {str(promoted["runs"])!r}]) == 0
status_seconds = time.perf_counter() - start
assert main(["report", "p", "--runs-dir", {str(promoted["runs"])!r}]) == 0
from automl.status import load_study
load_study({str(promoted["runs"])!r}, "p")  # what the dashboard serves
import optuna_dashboard
heavy = sorted(name for name in ("ray", "torch") if name in sys.modules)
print("HEAVY", heavy, "STATUS_SECONDS", round(status_seconds, 2))
"""
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "HEAVY [] STATUS_SECONDS" in result.stdout, result.stdout[-2000:]



@pytest.fixture
def refit_study(promoted, tmp_path):
    """A copy of the promoted study: refitting it changes what predict uses, which other tests rely on."""
    import shutil

    shutil.copytree(promoted["runs"] / "p", tmp_path / "runs" / "p", ignore=shutil.ignore_patterns("ray", "report"))
    return tmp_path / "runs"


def test_refit_trains_each_member_once_on_every_image_and_predict_uses_it(promoted, refit_study, run_cli,
                                                                          tmp_path):
    from automl.predict import run_predict
    from automl.promoted import PromotedPaths
    from automl.refit import RefitOptions, run_refit
    from automl.store import RunDir

    runs, dataset = refit_study, promoted["dataset"]
    paths, members = PromotedPaths(runs / "p"), sorted(set(promoted["ensemble"]["members"]))
    images = dataset.spec.root / "images"
    before = run_predict(runs, "p", images, tmp_path / "folds.csv", evaluate=dataset.spec.source,
                         echo=lambda line: None)
    trained_before = RunDir(runs, "p").images_trained()
    code, _, err = run_cli("predict", "p", "--runs-dir", runs, "--images", images, "--out", tmp_path / "x.csv",
                           "--checkpoints", "refit")
    assert code == 2 and "has no refit model" in err and "automl refit" in err
    lines: list[str] = []
    results = run_refit(RefitOptions(study="p", runs_dir=runs), echo=lines.append)
    assert sorted(results) == members, lines
    refit_images = 0
    for name, result in results.items():
        history = pd.read_csv(paths.refit_dir(name) / "metrics.csv")
        # all 24 images train, none is held out: an epoch is one pass over the 24 (min_steps 2 x batch 8 = 16
        # is less), so a refit on a subset would show fewer images per epoch
        assert result.images == len(dataset) == 24 and result.epochs == result.promote_epochs == len(history) == 2
        assert (history["train_images"] == 24).all() and history["score"].isna().all()
        assert result.steps == history["steps"].iloc[-1] and paths.refit_checkpoint(name).name == "final.pt"
        refit_images += int(history["train_images"].sum())
    assert RunDir(runs, "p").images_trained() == trained_before + refit_images  # the compute counts it
    stamps = {name: digest(paths.refit_checkpoint(name)) for name in results}
    run_refit(RefitOptions(study="p", runs_dir=runs), echo=lines.append)  # done models are not retrained
    assert stamps == {name: digest(paths.refit_checkpoint(name)) for name in results}
    said: list[str] = []
    after = run_predict(runs, "p", images, tmp_path / "refit.csv", evaluate=dataset.spec.source, echo=said.append)
    assert "refit on all training images" in said[0] and f"({len(members)} checkpoints" in said[0]
    assert after["evaluation"]["images"] == before["evaluation"]["images"] == len(dataset)
    assert (tmp_path / "refit.csv").read_text() != (tmp_path / "folds.csv").read_text()
    run_predict(runs, "p", images, tmp_path / "folds2.csv", checkpoints="folds", echo=lambda line: None)
    assert (tmp_path / "folds2.csv").read_text() == (tmp_path / "folds.csv").read_text()
    said.clear()
    run_predict(runs, "p", images, tmp_path / "one.csv", model=members[0], echo=said.append)
    assert "(1 checkpoints: refit" in said[0]
    code, _, err = run_cli("report", "p", "--runs-dir", runs)  # the report says what predict now uses
    page = (runs / "p" / "report" / "index.html").read_text()
    assert code == 0 and "what predict uses by default" in page and "final.pt" in page, err

    # a member without a refit: every member predicts with its fold models, and predict says why
    ensemble_file = runs / "p" / "ensemble.json"
    ensemble = json.loads(ensemble_file.read_text())
    other = next(name for name in paths.load_plan().models if name not in members)
    ensemble["members"], ensemble["weights"] = members + [other], [0.5] * len(members) + [0.5]
    ensemble_file.write_text(json.dumps(ensemble))
    said.clear()
    run_predict(runs, "p", images, tmp_path / "partly.csv", echo=said.append)
    assert f"({3 * (len(members) + 1)} checkpoints: the fold models)" in said[0]
    assert any(f"note: {other} has no refit model" in line for line in said), said


def test_refit_with_other_epochs_retrains_and_a_crash_exits_1(promoted, refit_study, run_cli, monkeypatch):
    from automl.promoted import PromotedPaths
    from automl.refit import RefitOptions, run_refit

    runs = refit_study
    paths, member = PromotedPaths(runs / "p"), promoted["ensemble"]["members"][0]
    lines: list[str] = []
    run_refit(RefitOptions(study="p", runs_dir=runs, models=[member], epochs=1), echo=lines.append)
    assert paths.refit_result(member).epochs == 1
    assert any("other epochs than its fold models" in line for line in lines)  # thresholds came from those
    run_refit(RefitOptions(study="p", runs_dir=runs, models=[member], epochs=3), echo=lines.append)
    assert paths.refit_result(member).epochs == 3 and "done with another config, retrained" in " ".join(lines)
    monkeypatch.setattr("automl.promote.run_jobs", lambda *args, **kwargs: None)  # as if every job crashed
    code, _, err = run_cli("refit", "p", "--runs-dir", runs, "--models", member, "--epochs", "2")
    assert code == 1 and "did not finish" in err and not paths.is_refit(member)  # the stale model is gone


def test_refit_refuses_a_plateau_schedule_unknown_models_and_a_changed_dataset(promoted, refit_study, tmp_path):
    import shutil

    from automl.errors import UserError
    from automl.promoted import PromotedPaths
    from automl.refit import RefitOptions, models_to_refit, refit_config, run_refit
    from automl.store import RunDir

    with pytest.raises(UserError, match="plateau"):
        refit_config({"schedule": {"name": "plateau"}}, None, "trial0001")
    assert refit_config({"train": {"epochs": 3}}, 7, "t")["train"]["epochs"] == 7
    run = RunDir(refit_study, "p")
    with pytest.raises(UserError, match="no promoted model trial0099"):
        models_to_refit(run, PromotedPaths(run.root).load_plan(), ["99"])
    folds = run.root / "folds.json"  # as if an image had been excluded since promote
    data = json.loads(folds.read_text())
    data["ids"][0] = "not/an/image.png"
    folds.write_text(json.dumps(data))
    with pytest.raises(UserError, match="the dataset changed"):
        run_refit(RefitOptions(study="p", runs_dir=refit_study), echo=lambda line: None)
