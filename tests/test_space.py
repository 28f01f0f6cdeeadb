"""Search-space YAMLs: the shipped ones load and merge; bad ones exit 2 with one line, before Ray starts."""

from __future__ import annotations

import pytest

from automl.data.demo import write_demo
from automl.space import SPACES_DIR, load_space, unflatten


@pytest.mark.parametrize("name", sorted(p.stem for p in SPACES_DIR.glob("*.yaml")))
def test_every_shipped_space_loads_and_makes_valid_configs(name):
    space = load_space(name, median_side=96)
    assert space.params, name
    low_corner = {key: (spec.choices[0] if spec.type == "categorical" else spec.low)
                  for key, spec in space.params.items()}
    low_corner = {k: (0.5 if k.startswith("loss.terms.") and v == 0 else v) for k, v in low_corner.items()}
    config = space.trial_config(low_corner)
    assert config.train.epochs >= 1


def test_sizes_scale_with_the_dataset():
    assert load_space("resize", median_side=512).params["data.resize"].choices == [256, 384, 512, 640]
    assert load_space("resize", median_side=64).params["data.resize"].choices == [32, 64]
    assert load_space("hybrid_loss", median_side=100).fixed["data.resize"] == 96


def test_full_extends_every_space_and_searched_keys_win_over_pinned_ones():
    full = load_space("full", median_side=64)
    assert {"model.arch", "model.encoder", "data.resize", "data.augment", "loss.terms.dice", "schedule.name",
            "optim.weight_decay"} <= set(full.params)
    assert not set(full.params) & set(full.fixed)
    assert full.fidelity.subsample == 0.25


def test_set_pins_a_searched_key():
    space = load_space("architecture", median_side=64, fixed_overrides={"model.arch": "fpn"})
    assert "model.arch" not in space.params and space.fixed["model.arch"] == "fpn"


def test_unflatten():
    assert unflatten({"loss.terms.ce": 0.3, "optim.lr": 0.1}) == {"loss": {"terms": {"ce": 0.3}}, "optim": {"lr": 0.1}}


BAD_SPACES = {
    "unknown key": ("params:\n  optim.lrr: {type: float, low: 0.1, high: 1}\n", "key 'params.optim.lrr': not a TrialConfig key"),
    "unknown type": ("params:\n  optim.lr: {type: floaty, low: 0.1, high: 1}\n", "key 'params.optim.lr.type'"),
    "low above high": ("params:\n  optim.lr: {type: float, low: 1.0, high: 0.1}\n", "low 1.0 is greater than high 0.1"),
    "log with low 0": ("params:\n  optim.lr: {type: float, low: 0.0, high: 0.1, log: true}\n", "log scale needs low > 0"),
    "unknown arch": ("params:\n  model.arch: {type: categorical, choices: [unet, unetplusplusplus]}\n",
                     "key 'params.model.arch': unknown architecture 'unetplusplusplus'"),
    "unknown encoder": ("params:\n  model.encoder: {type: categorical, choices: [resnet34, resnet43]}\n",
                        "unknown encoder 'resnet43'"),
    "unknown augment": ("params:\n  data.augment: {type: categorical, choices: [light, heavyy]}\n",
                        "unknown augmentation set 'heavyy'; did you mean 'heavy'"),
    "unknown section": ("parms:\n  optim.lr: {type: float, low: 0.1, high: 1}\n", "key 'parms': unknown key (fix: did you mean 'params'?"),
    "broken yaml": ("params: {optim.lr: [\n", "invalid YAML"),
    "bad fidelity": ("fidelity: {max_epochs: 0}\n", "key 'fidelity.max_epochs'"),
    "missing choices": ("params:\n  data.augment: {type: categorical}\n", "needs a non-empty 'choices' list"),
}


@pytest.fixture(scope="module")
def dataset_yaml(tmp_path_factory):
    return write_demo(tmp_path_factory.mktemp("d") / "data", "binary", n=8, size=32)


@pytest.mark.parametrize("case", sorted(BAD_SPACES))
def test_bad_space_exits_2_with_one_line_and_creates_nothing(case, run_cli, tmp_path, dataset_yaml):
    text, message = BAD_SPACES[case]
    space = tmp_path / "my_space.yaml"
    space.write_text(text)
    code, out, err = run_cli("search", "--space", space, "--data", dataset_yaml, "--runs-dir", tmp_path / "runs",
                             "--wandb", "off")
    assert code == 2, out + err
    assert message in err and "my_space.yaml" in err, err
    assert "Traceback" not in out + err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "runs").exists()


def test_unknown_space_name_lists_the_shipped_ones(run_cli, dataset_yaml, tmp_path):
    code, _, err = run_cli("search", "--space", "hybrid_los", "--data", dataset_yaml, "--runs-dir", tmp_path)
    assert code == 2 and "unknown search space 'hybrid_los'; did you mean 'hybrid_loss'" in err


@pytest.mark.parametrize("args, message", [(["--trials", "0"], "--trials must be at least 1"),
                                           (["--wandb", "cloud"], "--wandb must be offline, online or off"),
                                           (["--set", "model.encoder"], "expected KEY=VALUE"),
                                           (["--resume"], "no study 'hybrid_loss' to resume")])
def test_bad_search_options_exit_2(run_cli, dataset_yaml, tmp_path, args, message):
    code, _, err = run_cli("search", "--data", dataset_yaml, "--runs-dir", tmp_path / "runs", *args)
    assert code == 2 and message in err, err
