"""Sliding-window inference (issue 14 item 4): Gaussian-blended tiles give a pointwise model's output
exactly, cover every pixel, and keep the model's memory flat in the image size."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch

from trainables.infer import gaussian_weights, tile_starts, tiled_probabilities, tta_probabilities

REALDATA = Path(__file__).resolve().parents[3] / "shared" / "realdata"


@pytest.mark.parametrize("length, tile, step", [(100, 32, 24), (64, 32, 32), (33, 32, 8), (20, 32, 24), (1000, 512, 384)])
def test_tiles_cover_the_side_evenly_from_border_to_border(length, tile, step):
    starts = tile_starts(length, tile, step)
    assert starts[0] == 0 and starts[-1] == max(0, length - tile)
    assert all(0 < b - a <= step for a, b in zip(starts, starts[1:]))


def test_gaussian_weights_peak_in_the_centre_and_never_vanish():
    weights = gaussian_weights(32, 48)
    assert weights.shape == (32, 48) and weights.max() == 1.0 and weights.min() > 0
    assert weights[15:17, 23:25].min() > 0.9 and weights[0, 0] < 0.01
    torch.testing.assert_close(weights, weights.flip(0).flip(1))


@pytest.mark.parametrize("tta", ["none", "flip"])
def test_a_pointwise_model_gives_the_same_output_tiled_and_whole(tta):
    torch.manual_seed(0)
    model = torch.nn.Conv2d(3, 4, kernel_size=1)  # each pixel alone: tiling cannot change it
    x = torch.randn(2, 3, 100, 150)
    whole = tta_probabilities(model, x, "multiclass", tta)

    def forward(tiles):
        return tta_probabilities(model, tiles, "multiclass", tta)

    tiled = tiled_probabilities(forward, x, tile=32, overlap=0.25, batch=3)
    assert tiled.shape == whole.shape == (2, 4, 100, 150)
    torch.testing.assert_close(tiled, whole, atol=1e-6, rtol=1e-5)


def test_tta_at_scale_1_pads_a_side_that_is_not_a_multiple_of_32_instead_of_resampling_it():
    from trainables.models import segment

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 2, 3, padding=1), torch.nn.AvgPool2d(2), torch.nn.Upsample(scale_factor=2))
    x = torch.randn(1, 3, 101, 101)
    expected = segment(model, x).sigmoid()
    torch.testing.assert_close(tta_probabilities(model, x, "binary", "none"), expected)
    flipped = segment(model, x.flip(-1)).sigmoid().flip(-1)
    torch.testing.assert_close(tta_probabilities(model, x, "binary", "flip"), (expected + flipped) / 2)


def test_a_model_with_context_blends_tiles_without_seams():
    """A 5x5 smoothing conv sees across tile borders: tiled and whole differ only near tile borders, and
    the Gaussian blend keeps the difference small; overlap 0 shows what blending avoids."""
    model = torch.nn.Conv2d(1, 1, 5, padding=2, bias=False)
    torch.nn.init.constant_(model.weight, 1 / 25)
    x = torch.rand(1, 1, 96, 96)

    def forward(tiles):
        return model(tiles)

    whole = model(x)
    blended = tiled_probabilities(forward, x, tile=32, overlap=0.5)
    seams = tiled_probabilities(forward, x, tile=32, overlap=0.0)
    assert (blended - whole).abs().mean() < 0.5 * (seams - whole).abs().mean()


HWM = """
def hwm():  # VmHWM of this process (ru_maxrss would carry the parent's peak across exec)
    return int(next(l for l in open("/proc/self/status") if l.startswith("VmHWM:")).split()[1]) / 1024
"""

PEAK = HWM + """
import sys, torch, segmentation_models_pytorch as smp
from trainables.infer import tiled_probabilities

torch.set_num_threads(2)
side, tile = int(sys.argv[1]), int(sys.argv[2])
model = smp.Unet("resnet18", encoder_weights=None, classes=4).eval()
x = torch.randn(1, 3, side, side)
before = hwm()
with torch.no_grad():
    out = tiled_probabilities(lambda t: model(t).softmax(1), x, tile) if tile else model(x).softmax(1)
print(hwm() - before)
"""


def peak_mb(side: int, tile: int) -> float:
    result = subprocess.run([sys.executable, "-c", PEAK, str(side), str(tile)], capture_output=True, text=True,
                            timeout=600)
    assert result.returncode == 0, result.stderr[-2000:]
    return float(result.stdout.split()[-1])


def test_tiles_keep_the_models_memory_flat_in_the_image_size():
    """Unet/resnet18: a whole 1024 x 1024 forward grows the peak memory by ~550 MB and would grow it 4x
    at 2048; with 256-px tiles, doubling the side adds only the input and the blended map (8 floats a pixel)."""
    whole = peak_mb(1024, 0)
    tiled_1024, tiled_2048 = peak_mb(1024, 256), peak_mb(2048, 256)
    print(f"peak memory growth: whole 1024 px {whole:.0f} MB; tiles of 256: 1024 px {tiled_1024:.0f} MB, "
          f"2048 px {tiled_2048:.0f} MB")
    assert tiled_1024 < 0.6 * whole, (whole, tiled_1024)
    extra_pixels = 2048 ** 2 - 1024 ** 2
    # per extra pixel: the input (3 floats), the blended map (4) and its weights (1), and as much again in slack
    assert tiled_2048 - tiled_1024 < extra_pixels * 4 * 8 * 2 / 2 ** 20, (tiled_1024, tiled_2048)


VINES_PEAK = HWM + """
import glob, sys, numpy as np, torch, segmentation_models_pytorch as smp
from automl.data.formats import read_image
from trainables.infer import tiled_probabilities
from trainables.train import Normalizer
torch.set_num_threads(2)
image = read_image(sorted(glob.glob(sys.argv[1] + "/images/*"))[0])
model = smp.Unet("resnet18", encoder_weights=None, classes=5).eval()
before = hwm()
x = Normalizer(torch.device("cpu"), False)(torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1)))[None])
with torch.no_grad():
    out = tiled_probabilities(lambda tiles: model(tiles).softmax(1), x, 512, 0.25, batch=4)
print(image.shape, hwm() - before)
"""


@pytest.mark.realdata
@pytest.mark.skipif(not (REALDATA / "vines").is_dir(), reason="no ../shared/realdata/vines")
def test_a_4608_x_3456_vines_photo_in_512_px_tiles_stays_under_1_5_gb():
    """At full resolution: the float input (190 MB), the blended 5-class map (320 MB) and its weights
    (64 MB), plus 4 tiles of activations at a time; a whole-image forward would need ~16x the 1024-px one."""
    result = subprocess.run([sys.executable, "-c", VINES_PEAK, str(REALDATA / "vines")], capture_output=True,
                            text=True, timeout=900)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "(3456, 4608, 3)" in result.stdout
    assert float(result.stdout.split()[-1]) < 1536, result.stdout


def test_promote_predicts_oof_in_tiles_of_the_training_crop():
    """A fold trained on crops of a larger resize predicts its OOF images in crop-sized tiles (what it saw in
    training): for a pointwise model the result equals the whole image's; without crops nothing tiles."""
    import numpy as np

    from automl.config import TrialConfig
    from trainables.infer import predict_probabilities

    assert TrialConfig(**{"data": {"resize": 128, "crop": 64}}).data.prediction_tile == 64
    assert TrialConfig(**{"data": {"resize": 128}}).data.prediction_tile is None
    assert TrialConfig(**{"data": {"resize": 64, "crop": 64}}).data.prediction_tile is None
    torch.manual_seed(0)
    model = torch.nn.Conv2d(3, 4, kernel_size=1)
    images = np.random.default_rng(0).integers(0, 256, (3, 96, 130, 3), dtype=np.uint8)
    whole = predict_probabilities(model, images, "multiclass", torch.device("cpu"), (48, 65))
    tiled = predict_probabilities(model, images, "multiclass", torch.device("cpu"), (48, 65), tile=32)
    assert tiled.shape == whole.shape == (3, 4, 48, 65)
    np.testing.assert_allclose(tiled, whole, atol=1e-5)
    seen = []
    recorder = torch.nn.Conv2d(3, 4, kernel_size=1)
    recorder.register_forward_hook(lambda module, inputs, output: seen.append(tuple(inputs[0].shape[-2:])))
    predict_probabilities(recorder, images, "multiclass", torch.device("cpu"), tile=64)
    assert seen and max(max(shape) for shape in seen) == 64  # the model never saw more than a tile


def test_predict_tiles_a_crop_trained_member_like_its_oof_without_being_asked():
    """The ensemble's decisions are made on OOF predicted in crop tiles: predict must predict the same way."""
    import numpy as np

    from automl.config import TrialConfig
    from automl.data.demo import write_demo
    from automl.config import load_dataset_spec
    from automl.predict import Member, predict_batch

    seen = []
    recorder = torch.nn.Conv2d(3, 2, kernel_size=1)
    recorder.register_forward_hook(lambda module, inputs, output: seen.append(max(inputs[0].shape[-2:])))
    import tempfile
    spec = load_dataset_spec(write_demo(Path(tempfile.mkdtemp()) / "d", "binary", n=2, size=32))
    images = [np.zeros((70, 90, 3), np.uint8)]
    cropped = Member("m", 1.0, TrialConfig(**{"data": {"resize": 96, "crop": 32}}), [recorder])
    out = predict_batch([cropped], images, spec, torch.device("cpu"), "none", (1.0,), (96, 96))
    assert out.shape == (1, 2, 96, 96) and seen and max(seen) == 32
    seen.clear()
    whole = Member("m", 1.0, TrialConfig(**{"data": {"resize": 96}}), [recorder])
    predict_batch([whole], images, spec, torch.device("cpu"), "none", (1.0,), (96, 96))
    assert seen == [96]
