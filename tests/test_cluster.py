"""A real Ray cluster of two nodes on this machine (ray.cluster_utils: a head and a second node, one CPU
each): `automl search --address` and `automl promote --address` run their trials on both nodes, and the
run directory holds everything later commands need."""

from __future__ import annotations

import json
import subprocess
import sys

import optuna
import pytest

from automl.data.demo import write_demo


@pytest.fixture
def two_nodes():
    from ray.cluster_utils import Cluster

    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "include_dashboard": False})
    cluster.add_node(num_cpus=1)
    cluster.wait_for_nodes()
    yield cluster
    cluster.shutdown()


def cli(*args) -> str:
    result = subprocess.run([sys.executable, "-m", "automl.cli", *map(str, args)], capture_output=True, text=True,
                            timeout=900)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    return result.stdout


def test_search_and_promote_run_on_both_nodes_of_a_cluster(two_nodes, tmp_path):
    dataset_yaml = write_demo(tmp_path / "data", "binary", n=16, size=64)
    runs = tmp_path / "runs"
    cli("search", "--data", dataset_yaml, "--study", "c", "--runs-dir", runs, "--trials", 4, "--max-epochs", 2,
        "--no-prune", "--wandb", "off", "--address", two_nodes.address, "--set", "model.encoder=tu-test_resnet",
        "--set", "train.min_steps_per_epoch=6")
    study = optuna.load_study(study_name="c", storage=f"sqlite:///{runs / 'c' / 'optuna.db'}")
    assert [t.state.name for t in study.trials] == ["COMPLETE"] * 4
    assert len({t.user_attrs["node_id"] for t in study.trials}) == 2  # both nodes trained trials
    cli("promote", "c", "--runs-dir", runs, "--top", 2, "--folds", 2, "--epochs", 1, "--address", two_nodes.address)
    done = [json.loads(path.read_text()) for path in (runs / "c" / "promoted").glob("*/fold*/done.json")]
    assert len(done) == 4 and len({fold["node_id"] for fold in done}) == 2
    assert all((runs / "c" / "oof" / f"{model}.npy").exists() for model in {fold["model"] for fold in done})
    cli("ensemble", "c", "--runs-dir", runs)
    assert json.loads((runs / "c" / "ensemble.json").read_text())["members"]
