"""Weight averaging (issue 14 item 2): the EMA and SWA arithmetic, BatchNorm statistics recomputed for
SWA, and the saved checkpoint being the averaged model."""

from __future__ import annotations

import copy

import pytest
import torch

from automl.config import TrialConfig
from automl.data.dataset import SegmentationDataset
from automl.data.demo import write_demo
from automl.data.stats import label_stats
from automl.errors import UserError
from automl.space import load_space
from trainables.averaging import WeightAveraging, first_swa_epoch
from trainables.data import TrainData
from trainables.train import build_model, load_checkpoint, train


def linear_with_norm() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.BatchNorm1d(2), torch.nn.Linear(2, 1))


def set_weights(model: torch.nn.Module, value: float) -> None:
    with torch.no_grad():
        model[1].weight.fill_(value)
        model[1].bias.fill_(-value)
        model[0].running_mean.fill_(10 * value)
        model[0].num_batches_tracked.fill_(int(value))


def test_the_ema_is_the_warmed_up_decayed_average_of_weights_and_buffers_after_each_step():
    model = linear_with_norm()
    averaging = WeightAveraging(model, epochs=1, ema=0.9)
    expected = None
    for updates, value in enumerate((1.0, 2.0, 4.0)):
        set_weights(model, value)
        averaging.after_batch(model)
        decay = min(0.9, (1 + updates) / (10 + updates))  # 2/11, then 3/12: recent weights count from the start
        expected = value if expected is None else decay * expected + (1 - decay) * value  # the first update copies
    validated = averaging.model_after_epoch(model, 1, batches=lambda: [])
    assert validated is not model
    assert validated[1].weight[0].tolist() == pytest.approx([expected, expected])
    assert validated[1].bias.item() == pytest.approx(-expected)
    assert validated[0].running_mean.tolist() == pytest.approx([10 * expected] * 2)  # buffers averaged too
    assert validated[0].num_batches_tracked.item() == 4  # an integer buffer is copied, not averaged
    assert model[1].weight[0, 0].item() == 4.0  # the trained model is left alone


@pytest.mark.parametrize("start, epochs, first", [(0.75, 8, 7), (0.75, 4, 4), (0.5, 3, 2), (0.1, 10, 2), (0.99, 3, 3)])
def test_swa_averages_the_last_part_of_the_run(start, epochs, first):
    assert first_swa_epoch(start, epochs) == first


def test_swa_is_the_mean_of_the_averaged_epochs_with_batchnorm_statistics_recomputed():
    model = linear_with_norm()
    averaging = WeightAveraging(model, epochs=4, swa_start=0.5)  # epochs 3 and 4 are averaged
    inputs = [torch.tensor([[1.0, 10.0], [3.0, 30.0]]), torch.tensor([[5.0, 50.0], [7.0, 70.0]])]
    validated = []
    for epoch, value in enumerate((1.0, 2.0, 3.0, 5.0), start=1):
        set_weights(model, value)
        validated.append(averaging.model_after_epoch(model, epoch, batches=lambda: iter(inputs)))
    assert validated[0] is model and validated[1] is model  # before the SWA phase: the trained model
    average = validated[3]
    assert average[1].weight[0].tolist() == pytest.approx([4.0, 4.0])  # mean of epochs 3 and 4: (3 + 5) / 2
    assert average[1].bias.item() == pytest.approx(-4.0)
    # the statistics of the training inputs, not the BatchNorm's initial zeros and ones
    assert average[0].running_mean.tolist() == pytest.approx([4.0, 40.0])
    assert model[0].running_mean.tolist() == pytest.approx([50.0, 50.0])  # the trained model's own, untouched


def test_ema_and_swa_are_trial_config_keys_a_space_can_search(tmp_path):
    config = TrialConfig(train={"swa": {"start": 0.6}})
    assert config.train.swa.start == 0.6 and config.train.ema is None
    with pytest.raises(ValueError, match="exclude each other"):
        TrialConfig(train={"ema": 0.99, "swa": {"start": 0.75}})
    with pytest.raises(ValueError):
        TrialConfig(train={"ema": 1.0})
    ema = tmp_path / "ema.yaml"
    ema.write_text("extends: hybrid_loss\nparams:\n  train.ema: {type: categorical, choices: [null, 0.99]}\n")
    assert load_space(ema, median_side=64).trial_config({"train.ema": 0.99}).train.ema == 0.99
    swa = tmp_path / "swa.yaml"
    swa.write_text("extends: hybrid_loss\nparams:\n  train.swa.start: {type: categorical, choices: [null, 0.75]}\n")
    space = load_space(swa, median_side=64)
    assert space.trial_config({"train.swa.start": None}).train.swa is None  # SWA off is a choice
    assert space.trial_config({"train.swa.start": 0.75}).train.swa.start == 0.75
    both = tmp_path / "both.yaml"
    both.write_text("extends: hybrid_loss\nparams:\n  train.ema: {type: categorical, choices: [null, 0.99]}\n"
                    "  train.swa.start: {type: float, low: 0.5, high: 0.9}\n")
    with pytest.raises(UserError, match="exclude each other"):
        load_space(both, median_side=64)


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    dataset = SegmentationDataset.from_yaml(write_demo(tmp_path_factory.mktemp("avg"), "binary", n=16, size=32))
    return TrainData.holdout_split(dataset, label_stats(dataset), val_fraction=0.25, seed=0)


def small_config(**train) -> TrialConfig:
    return TrialConfig(model={"arch": "unet", "encoder": "tu-test_resnet"},
                       data={"resize": 40, "augment": "flip", "batch_size": 4},  # 40: not a multiple of 32
                       train={"epochs": 3, "seed": 0, "min_steps_per_epoch": 2, **train})


def trained_weights_per_epoch(monkeypatch) -> list[dict]:
    """The trained (not averaged) model's parameters at the end of every epoch."""
    recorded, real = [], WeightAveraging.model_after_epoch

    def recording(self, model, epoch, batches):
        recorded.append({k: v.detach().clone() for k, v in model.named_parameters()})
        return real(self, model, epoch, batches)

    monkeypatch.setattr(WeightAveraging, "model_after_epoch", recording)
    return recorded


def test_the_saved_checkpoint_is_the_swa_average(demo, tmp_path, monkeypatch):
    recorded = trained_weights_per_epoch(monkeypatch)
    config = small_config(swa={"start": 0.5})  # 3 epochs: 2 and 3 are averaged
    result = train(config, demo, out_dir=tmp_path, keep="final")
    saved = load_checkpoint(build_model(config, 1), tmp_path / "final.pt")
    for name, value in saved.named_parameters():
        torch.testing.assert_close(value, (recorded[1][name] + recorded[2][name]) / 2)
    assert not torch.equal(dict(saved.named_parameters())["segmentation_head.0.weight"],
                           recorded[2]["segmentation_head.0.weight"])
    # the last epoch's reported score is the average's: the saved model, validated again, gives it exactly
    from automl.metrics import SegmentationMeter
    from trainables.losses import HybridLoss
    from trainables.train import Normalizer, evaluate, make_loaders

    spec = demo.dataset.spec
    _, val_loader = make_loaders(config, demo, torch.device("cpu"))
    score, _, loss = evaluate(saved, val_loader, HybridLoss(config.loss.terms, spec.task, None),
                           Normalizer(torch.device("cpu"), channels_last=False, channels=config.model.in_channels),
                           SegmentationMeter(spec.task, spec.num_outputs, spec.effective_ignore_index), amp=False)
    assert score == pytest.approx(result.history[-1]["score"], abs=1e-6)
    assert loss == pytest.approx(result.history[-1]["val_loss"], rel=1e-5)  # continuous: the average's, not the last


def test_the_saved_checkpoint_is_the_ema_model(demo, tmp_path, monkeypatch):
    recorded = trained_weights_per_epoch(monkeypatch)
    models = []
    real_init = WeightAveraging.__init__

    def keep(self, *args, **kwargs):
        real_init(self, *args, **kwargs)
        models.append(self)

    monkeypatch.setattr(WeightAveraging, "__init__", keep)
    config = small_config(ema=0.9)
    train(config, demo, out_dir=tmp_path, keep="final")
    saved = load_checkpoint(build_model(config, 1), tmp_path / "final.pt")
    ema = models[0].ema.module
    for (name, value), (_, averaged) in zip(saved.state_dict().items(), ema.state_dict().items()):
        torch.testing.assert_close(value, averaged, msg=name)
    head = "segmentation_head.0.weight"
    assert not torch.allclose(dict(saved.named_parameters())[head], recorded[-1][head])
