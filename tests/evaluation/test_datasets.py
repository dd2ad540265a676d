"""Dataset layouts for the transfer evaluation: ESC-50 / ESC-10, DCASE 2013, class folders (no audio decoding)."""

from __future__ import annotations

import csv
import os

import pytest

from soundnet_fast.evaluation.datasets import DatasetLayoutError, load_dataset
from tests.helpers.evaldata import make_dcase, make_esc50


def _rows(root):
    with open(os.path.join(root, "meta", "esc50.csv"), newline="") as f:
        return list(csv.reader(f))


def _write_rows(root, rows):
    with open(os.path.join(root, "meta", "esc50.csv"), "w", newline="") as f:
        csv.writer(f).writerows(rows)


@pytest.fixture(scope="module")
def esc(tmp_path_factory):
    return make_esc50(tmp_path_factory.mktemp("esc") / "ESC-50-master", seconds=0.05, rate=8000)


def test_esc50_reads_official_folds_groups_and_classes(esc):
    ds = load_dataset("esc50", esc)
    assert ds.classes == ["dog", "rain", "clock_tick"]
    assert len(ds.clips) == 5 * 3 * 2 and ds.num_folds == 5
    for c in ds.clips:
        fold, src, take, target = os.path.basename(c.name)[:-4].split("-")
        assert c.fold == int(fold) and c.label == int(target) and c.group == f"src:{src}"
        assert os.path.isfile(c.path)


def test_esc10_is_the_flagged_subset_relabelled_in_target_order(esc):
    ds = load_dataset("esc10", esc)
    assert ds.classes == ["dog", "clock_tick"]  # rain has esc10 False
    assert {c.label for c in ds.clips} == {0, 1}
    assert all(os.path.basename(c.name).endswith(("-0.wav", "-2.wav")) for c in ds.clips)
    assert ds.name == "esc10" and ds.num_folds == 5


def test_esc50_layout_errors_say_what_was_expected(tmp_path, esc):
    with pytest.raises(DatasetLayoutError, match=r"meta/esc50.csv: not found.*filename,fold,target"):
        load_dataset("esc50", tmp_path)
    broken = make_esc50(tmp_path / "b", num_classes=2, clips_per_fold=1, seconds=0.01, rate=8000)
    rows = _rows(broken)
    _write_rows(broken, [r[:4] + r[5:] for r in rows])  # drop the esc10 column
    with pytest.raises(DatasetLayoutError, match=r"missing column\(s\) \['esc10'\]"):
        load_dataset("esc50", broken)
    _write_rows(broken, [rows[0]] + [r[:4] + ["False"] + r[5:] for r in rows[1:]])
    with pytest.raises(DatasetLayoutError, match="ESC-10 is empty"):
        load_dataset("esc10", broken)
    _write_rows(broken, [rows[0]] + [r[:1] + ["one"] + r[2:] for r in rows[1:]])
    with pytest.raises(DatasetLayoutError, match="line 2: fold and target must be integers"):
        load_dataset("esc50", broken)
    with pytest.raises(DatasetLayoutError, match="no such folder"):
        load_dataset("esc50", tmp_path / "absent")


def test_dcase_fold_split_is_the_documented_one(tmp_path):
    root = make_dcase(
        tmp_path / "dcase", classes=("bus", "busystreet", "tube", "tubestation"), recordings=10, seconds=0.01, rate=8000
    )
    ds = load_dataset("dcase2013", root)
    assert ds.classes == ["bus", "busystreet", "tube", "tubestation"]  # the official order, not alphabetical
    for c in ds.clips:
        number = int(os.path.basename(c.name)[-6:-4])
        assert c.fold == (number + 1) // 2  # recordings 01-02 -> fold 1, ..., 09-10 -> fold 5
        assert ds.classes[c.label] == os.path.basename(c.name)[:-6]
    assert len({c.group for c in ds.clips}) == len(ds.clips)


def test_dcase_accepts_scenes_stereo_and_reports_bad_names(tmp_path):
    root = tmp_path / "dev"
    make_dcase(root / "scenes_stereo", recordings=5, seconds=0.01, rate=8000)
    ds = load_dataset("dcase2013", root)
    assert len(ds.clips) == 15 and sorted({c.fold for c in ds.clips}) == [1, 2, 3, 4, 5]
    assert all(c.name.startswith("scenes_stereo") for c in ds.clips)
    (root / "scenes_stereo" / "car01.wav").write_bytes(b"")
    with pytest.raises(DatasetLayoutError, match=r"car01.wav.*<class><NN>.wav.*busystreet"):
        load_dataset("dcase2013", root)
    with pytest.raises(DatasetLayoutError, match="holds no .wav files"):
        load_dataset("dcase2013", tmp_path)
    few = make_dcase(tmp_path / "few", recordings=4, seconds=0.01, rate=8000)
    with pytest.raises(DatasetLayoutError, match="at least 5 recordings per class"):
        load_dataset("dcase2013", few)


def test_dcase_test_set_from_key_file_or_names(tmp_path):
    dev = make_dcase(tmp_path / "dev", recordings=5, seconds=0.01, rate=8000)
    test = tmp_path / "test"
    test.mkdir()
    for name in ("a.wav", "b.wav"):
        (test / name).write_bytes(b"x")
    key = tmp_path / "key.txt"
    key.write_text("a.wav\tpark\nb.wav bus\n\n")
    ds = load_dataset("dcase2013", dev, test_dir=test, test_key=key)
    assert [(os.path.basename(c.path), ds.classes[c.label], c.fold) for c in ds.test_clips] == [
        ("a.wav", "park", 0),
        ("b.wav", "bus", 0),
    ]
    key.write_text("a.wav kitchen\n")
    with pytest.raises(DatasetLayoutError, match="kitchen"):
        load_dataset("dcase2013", dev, test_dir=test, test_key=key)
    named = make_dcase(tmp_path / "named", recordings=1, seconds=0.01, rate=8000)
    ds = load_dataset("dcase2013", dev, test_dir=named)
    assert len(ds.test_clips) == 3
    with pytest.raises(DatasetLayoutError, match="dcase2013 only"):
        load_dataset("esc50", dev, test_dir=named)


def test_folder_layout_stratified_folds(tmp_path):
    for cls, n in (("cats", 6), ("dogs", 5)):
        for i in range(n):
            sub = tmp_path / "data" / cls / ("nested" if i % 2 else "")
            sub.mkdir(parents=True, exist_ok=True)
            (sub / f"{i}.flac").write_bytes(b"x")
    (tmp_path / "data" / "cats" / "notes.txt").write_text("not audio")
    ds = load_dataset("folder", tmp_path / "data", num_folds=5)
    assert ds.classes == ["cats", "dogs"] and len(ds.clips) == 11
    for label in (0, 1):  # stratified: every fold holds each class once or twice
        per_fold = [sum(1 for c in ds.clips if c.label == label and c.fold == k) for k in range(1, 6)]
        assert min(per_fold) >= 1
    with pytest.raises(DatasetLayoutError, match="at least 6 files per class"):
        load_dataset("folder", tmp_path / "data", num_folds=6)
    (tmp_path / "one" / "only").mkdir(parents=True)
    (tmp_path / "one" / "only" / "a.wav").write_bytes(b"x")
    with pytest.raises(DatasetLayoutError, match="at least two class sub-folders"):
        load_dataset("folder", tmp_path / "one")
