"""`automl debug` and `automl train` through the CLI."""

from __future__ import annotations

import json

import pytest

from automl.data.demo import write_demo


@pytest.fixture(scope="module")
def multilabel_yaml(tmp_path_factory):
    return write_demo(tmp_path_factory.mktemp("d") / "ml", "multilabel", n=16, size=64)


def test_debug_prints_one_line_per_check_and_passes(run_cli, multilabel_yaml):
    code, out, err = run_cli("debug", "--data", multilabel_yaml, "--epochs", 10)
    lines = out.strip().splitlines()
    assert code == 0, out + err
    assert [line.split(":")[0] for line in lines[:4]] == ["ok   data", "ok   augmentations", "ok   loss falls",
                                                          "ok   metric rises"]
    assert lines[-1].startswith("debug: 4/4 checks passed")


def test_debug_names_the_failing_check_and_exits_1(run_cli, multilabel_yaml):
    code, out, _ = run_cli("debug", "--data", multilabel_yaml, "--epochs", 1)  # one epoch cannot overfit
    assert code == 1
    assert "FAIL loss falls" in out or "FAIL metric rises" in out


def test_train_writes_config_metrics_and_checkpoint(run_cli, multilabel_yaml, tmp_path):
    config = tmp_path / "trial.yaml"
    config.write_text("model: {arch: fpn, encoder: tu-test_resnet}\ndata: {resize: 64, augment: medium, batch_size: 4}\n"
                      "loss: {terms: {bce: 1.0, dice: 1.0}}\nschedule: {name: onecycle}\ntrain: {epochs: 2}\n")
    code, out, err = run_cli("train", "--config", config, "--data", multilabel_yaml, "--out", tmp_path / "run")
    assert code == 0, err
    assert "epoch   2" in out and "best Dice" in out
    assert json.loads((tmp_path / "run" / "config.json").read_text())["model"]["arch"] == "fpn"
    assert (tmp_path / "run" / "best.pt").stat().st_size > 0


@pytest.mark.parametrize("text, message", [
    ("model: {arch: unet, encoder: resnet181}\n", "unknown encoder 'resnet181'; did you mean 'resnet18'"),
    ("model: {arch: unett}\n", "unknown architecture 'unett'"),
    ("loss: {terms: {ce: 0}}\n", "key 'loss.terms': at least one loss weight must be > 0"),
    ("optim: {nam: sgd}\n", "key 'optim.nam': unknown key (fix: did you mean 'name'?"),
    ("data: {augment: mediun}\n", "unknown augmentation set 'mediun'; did you mean 'medium'"),
    ("train: {epochs: [1\n", "invalid YAML"),
])
def test_bad_trial_config_exits_2(run_cli, multilabel_yaml, tmp_path, text, message):
    config = tmp_path / "trial.yaml"
    config.write_text(text)
    code, out, err = run_cli("train", "--config", config, "--data", multilabel_yaml)
    assert code == 2 and message in err and "trial.yaml" in err and "Traceback" not in out + err
