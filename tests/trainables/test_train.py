"""Training on demo data learns (numbers asserted per task); NaN stops the run; checkpoints reload."""

from __future__ import annotations

import gc
import math

import pytest
import torch

from automl.config import TrialConfig, parse_trial_config
from automl.data.dataset import SegmentationDataset
from automl.data.demo import write_demo
from automl.data.stats import label_stats
from automl.errors import UserError
from trainables import losses
from trainables.data import TrainData
from trainables.optim import Schedule
from trainables.train import NonFiniteLossError, build_model, evaluate, load_checkpoint, make_loaders, train

# Chance level of each metric on this demo data: the best of "all background" and "everything foreground"
# scores about 0.21 mIoU (multiclass: background IoU ~0.85 / 4 classes), 0.11 Dice and 0.15 IoU.
CHANCE = {"multiclass": 0.25, "multilabel": 0.15, "binary": 0.2}


def tiny_config(epochs: int = 3, **overrides) -> TrialConfig:
    config = {"model": {"arch": "unet", "encoder": "tu-test_resnet"},
              "data": {"resize": 64, "augment": "flip", "batch_size": 8},
              "loss": {"terms": {"ce": 0.5, "dice": 0.5}}, "optim": {"lr": 3e-3},
              "train": {"epochs": epochs, "seed": 0}}
    for key, value in overrides.items():
        config[key] = {**config.get(key, {}), **value}
    return TrialConfig(**config)


@pytest.fixture(scope="module")
def demo_data(tmp_path_factory):
    root = tmp_path_factory.mktemp("demo")
    out = {}
    for task in ("multiclass", "multilabel", "binary"):
        dataset = SegmentationDataset.from_yaml(write_demo(root / task, task, n=32, size=64))
        out[task] = TrainData.holdout_split(dataset, label_stats(dataset), val_fraction=0.25, seed=0)
    return out


@pytest.mark.parametrize("task", ["multiclass", "multilabel", "binary"])
def test_three_epochs_learn_well_above_chance(task, demo_data, tmp_path):
    data = demo_data[task]
    reported = []
    result = train(tiny_config(3), data, report=lambda epoch, metrics: reported.append((epoch, metrics["score"])),
                   out_dir=tmp_path)
    assert [epoch for epoch, _ in reported] == [1, 2, 3]
    assert result.best_score > CHANCE[task] + 0.3, (task, reported)
    assert result.history[-1]["train_loss"] < result.history[0]["train_loss"]
    # the best checkpoint is a plain state_dict that reloads with weights_only and scores the best score
    model = load_checkpoint(build_model(tiny_config(), data.dataset.spec.num_outputs), tmp_path / "best.pt")
    from automl.metrics import SegmentationMeter
    from trainables.losses import HybridLoss
    from trainables.train import Normalizer

    spec = data.dataset.spec
    _, val_loader = make_loaders(tiny_config(), data, torch.device("cpu"))
    score, _, _ = evaluate(model, val_loader, HybridLoss({"ce": 1.0}, spec.task, spec.effective_ignore_index),
                           Normalizer(torch.device("cpu"), False),
                           SegmentationMeter(spec.task, spec.num_outputs, spec.effective_ignore_index), False)
    assert score == pytest.approx(result.best_score, abs=1e-6)
    assert len((tmp_path / "metrics.csv").read_text().strip().splitlines()) == 4
    assert parse_trial_config(__import__("json").loads((tmp_path / "config.json").read_text())) == tiny_config(3)


def test_same_seed_same_run(demo_data):
    first = train(tiny_config(1), demo_data["binary"]).history[0]
    second = train(tiny_config(1), demo_data["binary"]).history[0]
    assert first["train_loss"] == pytest.approx(second["train_loss"], rel=1e-5)
    assert first["score"] == pytest.approx(second["score"], rel=1e-5)


def test_a_nan_loss_raises_the_distinct_error_naming_epoch_and_step(demo_data, monkeypatch):
    real_forward, calls = losses.HybridLoss.forward, []

    def poisoned(self, logits, target):
        calls.append(1)
        value = real_forward(self, logits, target)
        return value * float("nan") if len(calls) == 2 else value

    monkeypatch.setattr(losses.HybridLoss, "forward", poisoned)
    with pytest.raises(NonFiniteLossError) as info:
        train(tiny_config(2), demo_data["multiclass"])
    assert (info.value.epoch, info.value.step) == (1, 1)
    assert "epoch 1, step 1" in str(info.value)


@pytest.mark.parametrize("schedule, averaging", [("cosine", {}), ("plateau", {"ema": 0.9}),
                                                 ("onecycle", {"swa": {"start": 0.5}})])
def test_a_finished_training_leaves_no_tensor_in_a_reference_cycle(schedule, averaging, demo_data):
    """A reused Ray worker holds ~600k long-lived objects, so Python's full collection runs rarely there: a
    model or optimizer caught in a cycle stayed in memory trial after trial (on a GPU, its CUDA memory)."""
    gc.collect()
    train(tiny_config(2, schedule={"name": schedule}, train=averaging), demo_data["binary"])
    gc.set_debug(gc.DEBUG_SAVEALL)
    try:
        gc.collect()
        in_cycles = [o for o in gc.garbage if isinstance(o, (torch.Tensor, torch.nn.Module, torch.optim.Optimizer))]
    finally:
        gc.set_debug(0)
        gc.garbage.clear()
    assert in_cycles == []


@pytest.mark.parametrize("name", ["cosine", "poly", "step", "plateau", "onecycle", "constant"])
def test_schedules_warm_up_linearly_and_run_to_the_end(name):
    parameter = torch.nn.Parameter(torch.zeros(1))
    optimizer = torch.optim.SGD([parameter], lr=1.0)
    schedule = Schedule(optimizer, name, epochs=6, steps_per_epoch=10, warmup_epochs=1)
    lrs = []
    for epoch in range(6):
        for _ in range(10):
            lrs.append(optimizer.param_groups[0]["lr"])
            optimizer.step()
            schedule.after_batch()
        schedule.after_epoch(0.5)  # a stalled score
    if name != "onecycle":  # OneCycleLR warms up on its own curve
        assert lrs[:10] == pytest.approx([(i + 1) / 10 for i in range(10)])
    progress = 49 / 50  # of the last step, after 10 warmup steps of 60
    expected_end = {"cosine": 0.5 * (1 + math.cos(math.pi * progress)), "poly": (1 - progress) ** 0.9,
                    "step": 0.01, "constant": 1.0, "plateau": 0.1}
    if name in expected_end:
        assert lrs[-1] == pytest.approx(expected_end[name], rel=1e-9)
    else:
        assert max(lrs) == pytest.approx(1.0, rel=0.01) and lrs[-1] < 0.01


@pytest.mark.parametrize("config, key", [({"model": {"arch": "unet", "encodr": "x"}}, "model.encodr"),
                                         ({"data": {"augment": "mediun"}}, "data.augment"),
                                         ({"optim": {"name": "lion"}}, "optim.name"),
                                         ({"schedule": {"name": "cosin"}}, "schedule.name"),
                                         ({"trian": {}}, "trian")])
def test_trial_config_rejects_unknown_keys_and_names(config, key):
    with pytest.raises(UserError) as info:
        parse_trial_config(config, "trial.yaml")
    assert f"key '{key}'" in info.value.line()


def test_an_epoch_is_at_least_min_steps_and_whole_passes_come_first(demo_data, tmp_path):
    data = demo_data["binary"]
    n = len(data.train_indices)
    assert math.ceil(n / 4) < 10  # one pass is fewer steps than the minimum
    config = tiny_config(2, data={"batch_size": 4}, train={"min_steps_per_epoch": 10})
    train_loader, _ = make_loaders(config, data, torch.device("cpu"))
    assert len(train_loader) == 10
    order = list(train_loader.sampler)
    assert len(order) == 40 and sorted(order[:n]) == list(range(n))  # every image once before any twice
    assert len(set(order[n:])) == len(order[n:])  # the rest is the start of a second shuffled pass
    train(config, data, out_dir=tmp_path)
    rows = (tmp_path / "metrics.csv").read_text().splitlines()
    header = rows[0].split(",")
    values = [dict(zip(header, row.split(","))) for row in rows[1:]]
    assert [int(v["steps"]) for v in values] == [10, 20]
    assert {(int(v["steps_per_epoch"]), int(v["train_images"])) for v in values} == {(10, 40)}
    one_pass = tiny_config(1, data={"batch_size": 4}, train={"min_steps_per_epoch": 1})
    assert len(make_loaders(one_pass, data, torch.device("cpu"))[0]) == math.ceil(n / 4)  # a pass when longer
