"""Shared helpers: tiny datasets written by the tests themselves, CPU only, no network."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest
import yaml

from automl.cli import main


def write_yaml(folder: Path, filename: str = "dataset.yaml", **spec) -> Path:
    path = Path(folder) / filename
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


def write_image(path: Path, image: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    image = image if image.ndim == 2 else cv2.cvtColor(image, cv2.COLOR_RGB2BGR)
    assert cv2.imwrite(str(path), image)
    return path


def random_image(rng: np.random.Generator, height: int = 32, width: int = 40) -> np.ndarray:
    return rng.integers(0, 256, (height, width, 3), dtype=np.uint8)


def write_json(path: Path, data) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data))
    return path


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(0)


@pytest.fixture
def run_cli(capsys):
    """Run `automl ARGS` in-process; returns (exit code, stdout, stderr)."""
    def run(*args: str) -> tuple[int, str, str]:
        code = main([str(a) for a in args])
        out = capsys.readouterr()
        return code, out.out, out.err
    return run


@pytest.fixture(scope="session")
def ray_session():
    """Ray started once for the whole test session, as `automl search` starts it (its workers' settings)."""
    import ray

    from automl.search import SearchOptions, start_ray

    start_ray(SearchOptions(), num_cpus=2)
    yield ray
    ray.shutdown()


MIRRORED_CLASSES = ["background", "left_lung", "right_lung", "heart"]


def write_mirrored_dataset(folder: Path, n: int = 24, size: int = 64, seed: int = 0) -> Path:
    """A chest-X-ray-like multiclass set (mask PNGs): two lungs that look alike, one on each half of the
    image, and a heart in the middle. Only their position tells the lungs apart, so a horizontal flip that
    does not swap their labels teaches the model that they are the same thing."""
    rng = np.random.default_rng(seed)
    folder = Path(folder)
    for i in range(n):
        image = rng.normal(60, 12, (size, size)).astype(np.float32)
        mask = np.zeros((size, size), np.uint8)
        for label, centre_x in ((1, rng.uniform(0.22, 0.32)), (2, rng.uniform(0.68, 0.78))):
            centre = (int(centre_x * size), int(rng.uniform(0.4, 0.6) * size))
            axes = (int(rng.uniform(0.10, 0.14) * size), int(rng.uniform(0.22, 0.28) * size))
            cv2.ellipse(mask, centre, axes, 0, 0, 360, label, -1)
        heart = (int(rng.uniform(0.47, 0.53) * size), int(rng.uniform(0.55, 0.65) * size))
        cv2.circle(mask, heart, int(0.08 * size), 3, -1)
        image[mask == 1] += 90
        image[mask == 2] += 90
        image[mask == 3] += 40
        write_image(folder / "images" / f"cxr{i:03d}.png", np.clip(image, 0, 255).astype(np.uint8))
        write_image(folder / "masks" / f"cxr{i:03d}.png", mask)
    return write_yaml(folder, name="mirrored", task="multiclass", classes=MIRRORED_CLASSES,
                      images="images/*.png", labels={"format": "mask_png", "path": "masks"})


@pytest.fixture(scope="session")
def postgres_url(tmp_path_factory):
    """A real PostgreSQL server for the session: its SQLAlchemy URL."""
    from tests.postgres import PostgresServer, server_bindir

    bindir = server_bindir()
    if bindir is None:
        pytest.skip("no PostgreSQL server binaries (initdb): `apt install postgresql` to run this test")
    folder = Path("/tmp") / f"automl-pg-{os.getpid()}"  # short: the Unix socket path has a length limit
    server = PostgresServer(folder, bindir)
    url = server.start()
    yield url
    server.stop()
    shutil.rmtree(folder, ignore_errors=True)
