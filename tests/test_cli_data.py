"""`automl data ...` through the CLI: the happy path with numbers, and bad input -> exit 2, one line."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

from automl.data.demo import write_demo
from automl.data.summary import inspect_dataset
from tests.conftest import random_image, write_image, write_json, write_yaml

SQUARE = [[4, 4], [20, 4], [20, 20], [4, 20]]


def test_demo_inspect_audit_for_every_task(run_cli, tmp_path):
    for task in ("multiclass", "multilabel", "binary"):
        code, out, _ = run_cli("data", "demo", tmp_path / task, "--task", task, "--n", 12, "--size", 48)
        assert code == 0 and "wrote 12" in out
        code, out, _ = run_cli("data", "inspect", tmp_path / task / "dataset.yaml")
        assert code == 0 and "12 labelled images in 6 groups" in out
        code, out, _ = run_cli("data", "audit", tmp_path / task / "dataset.yaml", "--z", "3")
        assert code == 0 and (tmp_path / task / "audit.csv").exists()


def test_inspect_numbers(tmp_path):
    summary = inspect_dataset(write_demo(tmp_path / "d", "multiclass", n=10, size=32))
    assert summary["images"] == 10 and summary["groups"] == 5 and summary["sizes"] == [("32x32", 10)]
    assert [c["name"] for c in summary["classes"]] == ["background", "circle", "square", "triangle"]
    assert sum(c["pixel_share"] for c in summary["classes"]) == pytest.approx(1.0)
    assert summary["classes"][0]["images"] == 10


def test_audit_flags_each_kind_of_problem(run_cli, tmp_path, rng):
    areas = {f"ok{i}": 6 + i % 3 for i in range(12)}  # similar squares...
    areas["huge"] = 30  # ...and one far larger: an area outlier
    for stem, side in areas.items():
        write_image(tmp_path / "im" / f"{stem}.png", random_image(rng, 32, 32))
        write_json(tmp_path / "js" / f"{stem}.json",
                   {"annotations": [{"label": "a", "points": [[1, 1], [side, 1], [side, side], [1, side]]}]})
    write_image(tmp_path / "im" / "nolabel.png", random_image(rng, 32, 32))
    write_json(tmp_path / "js" / "noimage.json", {"annotations": []})
    write_image(tmp_path / "im" / "empty.png", random_image(rng, 32, 32))
    write_json(tmp_path / "js" / "empty.json", {"annotations": []})
    write_image(tmp_path / "im" / "outside.png", random_image(rng, 32, 32))
    write_json(tmp_path / "js" / "outside.json", {"annotations": [{"label": "a", "points": [[20, 20], [40, 20], [40, 28]]}]})
    write_image(tmp_path / "im" / "unknown.png", random_image(rng, 32, 32))
    write_json(tmp_path / "js" / "unknown.json", {"annotations": [{"label": "zebra", "points": SQUARE}]})
    (tmp_path / "im" / "broken.png").write_bytes(write_image(tmp_path / "x.png", random_image(rng, 32, 32))
                                                .read_bytes()[:60])  # a truncated PNG
    write_json(tmp_path / "js" / "broken.json", {"annotations": [{"label": "a", "points": SQUARE}]})
    path = write_yaml(tmp_path, name="x", task="multilabel", classes=["a"], images="im/*.png",
                      labels={"format": "polygon_json", "path": "js"})
    code, out, err = run_cli("data", "audit", path, "--z", "2.5", "--csv", tmp_path / "flags.csv")
    assert code == 0, err
    flags = pd.read_csv(tmp_path / "flags.csv")
    found = {(row.id, row.reason) for row in flags.itertuples()}
    assert ("im/nolabel.png", "no_label") in found
    assert ("js/noimage.json", "no_image") in found
    assert ("im/empty.png", "empty_mask") in found
    assert ("im/outside.png", "outside_image") in found
    assert ("im/unknown.png", "unknown_class") in found
    assert ("im/broken.png", "unreadable_image") in found
    assert ("im/huge.png", "area_outlier") in found
    assert not any(reason == "area_outlier" for image_id, reason in found if image_id.startswith("im/ok"))
    assert "flagged" in out


@pytest.fixture
def good_dataset(tmp_path, rng):
    write_image(tmp_path / "im" / "a.png", random_image(rng, 32, 32))
    write_json(tmp_path / "js" / "a.json", {"annotations": [{"label": "a", "points": SQUARE}]})
    return dict(name="x", task="multilabel", classes=["a"], images="im/*.png",
                labels={"format": "polygon_json", "path": "js"})


def bad(tmp_path, good, **changes):
    spec = {**good, **changes}
    return write_yaml(tmp_path, filename="bad.yaml", **{k: v for k, v in spec.items() if v is not None})


BAD_INPUTS = {
    "missing file": (lambda tmp, good: tmp / "nope.yaml", "nope.yaml: dataset.yaml not found"),
    "broken yaml": (lambda tmp, good: _text(tmp, "name: x\ntask: [multiclass\n"), "invalid YAML at line"),
    "not a mapping": (lambda tmp, good: _text(tmp, "- a\n- b\n"), "must be a YAML mapping"),
    "missing key": (lambda tmp, good: bad(tmp, good, task=None), "key 'task': required key is missing"),
    "unknown key": (lambda tmp, good: bad(tmp, good, clases=["a"]), "did you mean 'classes'"),
    "unknown task": (lambda tmp, good: bad(tmp, good, task="semantic"), "key 'task'"),
    "unknown format": (lambda tmp, good: bad(tmp, good, labels={"format": "cocoo", "path": "js"}),
                       "unknown label format 'cocoo'; did you mean 'coco'? (fix: valid formats: coco, mask_png"),
    "glob matches nothing": (lambda tmp, good: bad(tmp, good, images="nothing/*.png"),
                             "key 'images': the glob 'nothing/*.png' matches no image"),
    "labels path missing": (lambda tmp, good: bad(tmp, good, labels={"format": "polygon_json", "path": "nope"}),
                            "key 'labels.path'"),
    "class not in classes": (lambda tmp, good: bad(tmp, good, classes=["b"]), "label 'a' is not in classes"),
    "bad regex": (lambda tmp, good: bad(tmp, good, groups="(ID"), "key 'groups': not a valid regular expression"),
    "duplicate classes": (lambda tmp, good: bad(tmp, good, classes=["a", "a"]), "must be unique"),
    "ignore index is a class": (lambda tmp, good: bad(tmp, good, task="multiclass", ignore_index=1),
                                "ignore_index 1 is a class index"),
}


def _text(tmp, text):
    path = tmp / "bad.yaml"
    path.write_text(text)
    return path


@pytest.mark.parametrize("case", sorted(BAD_INPUTS))
def test_bad_dataset_yaml_exits_2_with_one_line(case, run_cli, tmp_path, good_dataset):
    make, message = BAD_INPUTS[case]
    path = make(tmp_path, good_dataset)
    for command in ("inspect", "audit"):
        if case == "class not in classes" and command == "audit":
            continue  # audit lists it instead (tested above)
        code, out, err = run_cli("data", command, path)
        assert code == 2, (case, command, out, err)
        assert message in err, err
        assert "bad.yaml" in err or "nope.yaml" in err or "a.json" in err
        assert "Traceback" not in err + out and len(err.strip().splitlines()) == 1


def test_demo_refuses_a_non_empty_folder(run_cli, tmp_path):
    (tmp_path / "keep.txt").write_text("precious")
    code, _, err = run_cli("data", "demo", tmp_path)
    assert code == 2 and "not empty" in err
    assert (tmp_path / "keep.txt").read_text() == "precious"


def test_console_script_prints_no_traceback(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("name: x\ntask: multiclass\nclasses: [a]\nimages: nothing/*.png\n"
                    "labels: {format: mask_png, path: nope}\n")
    result = subprocess.run([sys.executable, "-m", "automl.cli", "data", "inspect", str(path)],
                            capture_output=True, text=True)
    assert result.returncode == 2
    assert "Traceback" not in result.stderr and result.stderr.startswith("error: ")


def test_help_lists_the_commands(run_cli):
    code, out, _ = run_cli("data", "--help")
    assert code == 0 and all(name in out for name in ("demo", "inspect", "audit"))


def squares_dataset(tmp_path, rng, sides: dict[str, int], exclude: str | None = None):
    for stem, side in sides.items():
        write_image(tmp_path / "im" / f"{stem}.png", random_image(rng, 32, 32))
        write_json(tmp_path / "js" / f"{stem}.json",
                   {"annotations": [{"label": "a", "points": [[1, 1], [side, 1], [side, side], [1, side]]}]})
    extra = {"exclude": exclude} if exclude else {}
    return write_yaml(tmp_path, name="x", task="multilabel", classes=["a"], images="im/*.png",
                      labels={"format": "polygon_json", "path": "js"}, **extra)


def test_audit_drop_writes_an_exclusion_list_that_the_dataset_honours(run_cli, tmp_path, rng):
    """Hair-team rule: a mask whose area z-score exceeds 1.2 is label noise. 12 squares of side 6-8 and
    two of side 30 (z about +2.3): exactly the two big ones go, and the dataset then leaves them out."""
    from automl.data.dataset import SegmentationDataset

    sides = {f"ok{i:02d}": 6 + i % 3 for i in range(12)} | {"huge1": 30, "huge2": 30}
    path = squares_dataset(tmp_path, rng, sides)
    code, out, err = run_cli("data", "audit", path, "--drop", "area_z>1.2")
    assert code == 0, err
    listed = [line for line in (tmp_path / "exclude.txt").read_text().splitlines() if not line.startswith("#")]
    assert listed == ["im/huge1.png", "im/huge2.png"]
    assert "2 of 14 images dropped" in out and "set `exclude: exclude.txt`" in out
    assert len(SegmentationDataset.from_yaml(path).ids) == 14  # nothing changes until the yaml names the list
    with open(path, "a") as f:
        f.write("exclude: exclude.txt\n")
    dataset = SegmentationDataset.from_yaml(path)
    assert len(dataset.ids) == 12 and dataset.excluded == ["im/huge1.png", "im/huge2.png"]
    # a second rule keeps what the list already held: the small squares (z below -0.9 now) join the big ones
    code, out, err = run_cli("data", "audit", path, "--drop", "area_z<-0.9", "--out", tmp_path / "exclude2.txt")
    assert code == 0, err
    listed = [line for line in (tmp_path / "exclude2.txt").read_text().splitlines() if not line.startswith("#")]
    assert listed == ["im/huge1.png", "im/huge2.png", "im/ok00.png", "im/ok03.png", "im/ok06.png", "im/ok09.png"]


def test_audit_drop_by_out_of_fold_score_reads_the_studys_per_image_scores(run_cli, tmp_path, rng):
    path = squares_dataset(tmp_path, rng, {f"ok{i:02d}": 6 + i % 3 for i in range(6)})
    study = tmp_path / "runs" / "s"
    study.mkdir(parents=True)
    pd.DataFrame({"id": ["im/ok01.png", "im/ok04.png", "im/ok00.png", "im/gone.png"],
                  "score": [0.05, 0.19, 0.2, 0.0]}).to_csv(study / "ensemble_per_image.csv", index=False)
    code, out, err = run_cli("data", "audit", path, "--drop", "oof<0.2", "--study", "s", "--runs-dir", tmp_path / "runs")
    assert code == 0, err
    listed = [line for line in (tmp_path / "exclude.txt").read_text().splitlines() if not line.startswith("#")]
    assert listed == ["im/ok01.png", "im/ok04.png"]  # 0.2 is not below 0.2; an id not in the dataset is ignored


@pytest.mark.parametrize("rule, args, expected", [
    ("area_z>>1", [], "cannot read the drop rule"),
    ("area_z>1.2.3", [], "cannot read the drop rule"),
    ("area>1.2", [], "did you mean 'area_z'"),
    ("oof<0.2", [], "no per-image OOF scores"),
    ("oof<0.2", ["--study", "absent"], "ensemble_per_image.csv"),
])
def test_a_bad_drop_rule_exits_2_in_one_line_and_writes_nothing(rule, args, expected, run_cli, tmp_path, rng):
    path = squares_dataset(tmp_path, rng, {f"ok{i}": 6 for i in range(4)})
    code, out, err = run_cli("data", "audit", path, "--drop", rule, *args, "--runs-dir", tmp_path / "runs")
    assert code == 2 and expected in err and "--drop" in err, err
    assert not (tmp_path / "exclude.txt").exists()


def test_audit_drop_names_the_list_relative_to_the_datasets_root(run_cli, tmp_path, rng):
    """`exclude:` is read relative to `root:`: the printed line must work where the yaml sits elsewhere."""
    from automl.data.dataset import SegmentationDataset

    sides = {f"ok{i:02d}": 6 + i % 3 for i in range(12)} | {"huge1": 30}
    squares_dataset(tmp_path / "data", rng, sides)
    config = tmp_path / "configs" / "x.yaml"
    config.parent.mkdir()
    config.write_text((tmp_path / "data" / "dataset.yaml").read_text() + f"root: {tmp_path / 'data'}\n")
    code, out, err = run_cli("data", "audit", config, "--drop", "area_z>1.2")
    assert code == 0, err
    line = out.split("set `exclude: ")[1].split("`")[0]
    with open(config, "a") as f:
        f.write(f"exclude: {line}\n")
    assert SegmentationDataset.from_yaml(config).excluded == ["im/huge1.png"]


def test_area_z_never_scores_the_multiclass_background():
    """An image whose one object covers 1 % of it has 99 % background: against images with 20 % objects that
    background is a z outlier, but only the object's own area may drop an image (fls_sonar's small debris)."""
    from automl.data.audit import DropRule, area_outliers, dropped_by_area
    from automl.data.stats import LabelStats

    object_share = [0.20, 0.21, 0.19, 0.20, 0.22, 0.18, 0.01]
    pixels = np.array([[round((1 - s) * 10_000), round(s * 10_000)] for s in object_share])
    stats = LabelStats([f"im{i}" for i in range(7)], [f"im{i}" for i in range(7)], np.full((7, 2), 100), pixels,
                       [[] for _ in range(7)])
    rule = DropRule.parse("area_z>1.2")
    assert dropped_by_area(rule, stats, "multiclass") == []  # the small object is z -2.4, not > 1.2
    assert dropped_by_area(DropRule.parse("area_z<-1.2"), stats, "multiclass") == ["im6"]
    assert dropped_by_area(rule, stats, "multilabel") == ["im6"]  # a multilabel column 0 is a class: scored
    flagged = area_outliers(stats, ["background", "debris"], 1.2, "multiclass")
    assert [f["id"] for f in flagged] == ["im6"] and "'debris'" in flagged[0]["detail"]
