"""Zero or negative budgets, counts and sizes, and architecture x encoder pairs smp cannot build, are
refused before anything runs: exit code 2, one line naming the option or key, no traceback."""

from __future__ import annotations

import pytest

from automl.data.demo import write_demo


@pytest.fixture(scope="module")
def demo_yaml(tmp_path_factory):
    return write_demo(tmp_path_factory.mktemp("v") / "data", "binary", n=8, size=32)


CASES = {
    "search --time-budget -5": (["search", "--time-budget", "-5"], "--time-budget"),
    "search --time-budget 0": (["search", "--time-budget", "0"], "--time-budget"),
    "search --trials 0": (["search", "--trials", "0"], "--trials"),
    "search --max-epochs 0": (["search", "--max-epochs", "0"], "--max-epochs"),
    "search --max-concurrent 0": (["search", "--max-concurrent", "0"], "--max-concurrent"),
    "search --cpus-per-trial 0": (["search", "--cpus-per-trial", "0"], "--cpus-per-trial"),
    "search --subsample 0": (["search", "--subsample", "0"], "--subsample"),
    "promote --top 0": (["promote", "s", "--top", "0"], "--top"),
    "promote --epochs -1": (["promote", "s", "--epochs", "-1"], "--epochs"),
    "promote --folds 1": (["promote", "s", "--folds", "1"], "--folds"),
    "promote --max-concurrent 0": (["promote", "s", "--max-concurrent", "0"], "--max-concurrent"),
    "ensemble --max-size 0": (["ensemble", "s", "--max-size", "0"], "--max-size"),
    "ensemble --bags -2": (["ensemble", "s", "--bags", "-2"], "--bags"),
    "predict --batch 0": (["predict", "s", "--images", "x", "--out", "o.csv", "--batch", "0"], "--batch"),
    "predict --scales": (["predict", "s", "--images", "x", "--out", "o.csv", "--tta", "flip+scale", "--scales",
                          "0,1"], "--scales"),
    "audit --z 0": (["data", "audit", "{data}", "--z", "0"], "--z"),
    "debug --epochs 0": (["debug", "--data", "{data}", "--epochs", "0"], "--epochs"),
    "debug --images 0": (["debug", "--data", "{data}", "--images", "0"], "--images"),
    "train --val-fraction 1": (["train", "--config", "{config}", "--data", "{data}", "--val-fraction", "1"],
                               "--val-fraction"),
    "dashboard --port 0": (["dashboard", "s", "--port", "0"], "--port"),
    "demo --n 1": (["data", "demo", "{tmp}/d", "--n", "1"], "--n"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_bad_numbers_are_refused_in_one_line(case, demo_yaml, tmp_path, run_cli):
    args, key = CASES[case]
    config = tmp_path / "trial.yaml"
    config.write_text("model: {encoder: tu-test_resnet}\n")
    if args[0] == "search":
        args = [*args, "--data", str(demo_yaml), "--runs-dir", str(tmp_path / "runs")]
    args = [a.format(data=demo_yaml, config=config, tmp=tmp_path) for a in args]
    code, _, err = run_cli(*args)
    assert code == 2, (case, err)
    assert key in err and len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
    assert not (tmp_path / "runs").exists()  # refused before anything was written


def test_a_pair_smp_cannot_build_stops_train_in_one_line(demo_yaml, tmp_path, run_cli):
    config = tmp_path / "trial.yaml"
    config.write_text("model: {arch: unetplusplus, encoder: mit_b0}\n")
    code, _, err = run_cli("train", "--config", config, "--data", demo_yaml, "--out", tmp_path / "run")
    assert code == 2 and "smp cannot build unetplusplus with encoder mit_b0" in err and str(config) in err
    assert len(err.strip().splitlines()) == 1 and not (tmp_path / "run").exists()


def test_a_space_that_can_sample_an_unbuildable_pair_is_refused_before_ray(demo_yaml, tmp_path, run_cli):
    space = tmp_path / "pairs.yaml"
    space.write_text("params:\n  model.arch: {type: categorical, choices: [unet, linknet]}\n"
                     "  model.encoder: {type: categorical, choices: [tu-test_resnet, mit_b1]}\n"
                     "fixed: {data.resize: 32}\n")
    code, _, err = run_cli("search", "--space", space, "--data", demo_yaml, "--runs-dir", tmp_path / "runs")
    assert code == 2 and "smp cannot build linknet with encoder mit_b1" in err and "params.model.encoder" in err
    assert len(err.strip().splitlines()) == 1 and not (tmp_path / "runs").exists()


def test_every_shipped_space_samples_only_buildable_pairs():
    from automl.space import SPACES_DIR, load_space

    for path in sorted(SPACES_DIR.glob("*.yaml")):
        load_space(path.stem, median_side=128)  # raises UserError on a pair smp refuses


@pytest.mark.parametrize("command", ["status", "promote", "ensemble", "report"])
def test_a_study_given_as_a_path_says_how_to_name_it(command, tmp_path, run_cli):
    code, _, err = run_cli(command, tmp_path / "runs" / "hybrid_loss")
    assert code == 2 and len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
    assert f"hybrid_loss --runs-dir {tmp_path / 'runs'}" in err


def test_a_study_missing_from_its_storage_is_one_line(tmp_path, run_cli):
    import yaml
    from automl.config import StudySettings

    settings = StudySettings(study="mine", dataset=str(tmp_path / "dataset.yaml"), task="binary", metric="iou",
                             space={"params": {}}, trials=1, seed=0, storage=f"sqlite:///{tmp_path / 'other.db'}",
                             val_fraction=0.2, cpus_per_trial=1, gpus_per_trial=0)
    import optuna

    optuna.create_study(study_name="theirs", storage=settings.storage)
    (tmp_path / "runs" / "mine").mkdir(parents=True)
    (tmp_path / "runs" / "mine" / "study.yaml").write_text(yaml.safe_dump(settings.model_dump(mode="json")))
    code, _, err = run_cli("status", "mine", "--runs-dir", tmp_path / "runs")
    assert code == 2 and "holds no study 'mine'" in err and "key 'storage'" in err, err
