"""Transfer-evaluation datasets in their published layouts (docs/design.md#datasets).

Every loader returns a :class:`Dataset`: the class names, and one :class:`Clip` per audio file with its label,
its cross-validation fold (1-based) and its *group*, the source recording it was cut from. Clips that share a
group are never split between training and testing (see :mod:`soundnet_fast.evaluation.protocols`).

Only the layout is read here (file names and metadata); audio is decoded later, so a broken file is reported
by the evaluation and excluded, while a folder that is not the layout asked for fails here with an error that
says what was expected.
"""

from __future__ import annotations

import csv
import os
import re
from dataclasses import dataclass, field

# docs/design.md#datasets: `meta/esc50.csv` columns.
ESC50_COLUMNS = ("filename", "fold", "target", "category", "esc10", "src_file", "take")
# docs/design.md#datasets: the ten DCASE 2013 scene classes, file names `<class><NN>.wav`.
DCASE2013_CLASSES = (
    "bus", "busystreet", "office", "openairmarket", "park",
    "quietstreet", "restaurant", "supermarket", "tube", "tubestation",
)  # fmt: skip
AUDIO_EXTENSIONS = (".wav", ".flac", ".ogg", ".oga", ".opus", ".mp3", ".m4a", ".aac", ".aif", ".aiff",
                    ".au", ".mp4", ".mkv", ".webm", ".mov")  # fmt: skip
DATASETS = ("esc50", "esc10", "dcase2013", "folder")


class DatasetLayoutError(ValueError):
    """The data folder does not match the layout asked for; the message says what was expected."""


@dataclass(frozen=True)
class Clip:
    path: str  # absolute path of the audio file
    name: str  # path relative to the dataset root, as shown in reports
    label: int  # index into Dataset.classes
    fold: int  # 1-based cross-validation fold; 0 for a held-out test set
    group: str  # source recording: clips sharing it never straddle training and testing


@dataclass
class Dataset:
    name: str
    root: str
    classes: list[str]
    clips: list[Clip]
    fold_scheme: str  # how the folds were made, for the report
    window_seconds: float  # the original `windows` protocol's time window for this dataset
    test_clips: list[Clip] = field(default_factory=list)  # a held-out test set (DCASE 2013 challenge)

    @property
    def num_folds(self) -> int:
        return len({c.fold for c in self.clips})


def load_dataset(
    name: str,
    root: str | os.PathLike[str],
    *,
    num_folds: int = 5,
    test_dir: str | os.PathLike[str] | None = None,
    test_key: str | os.PathLike[str] | None = None,
) -> Dataset:
    """Read dataset ``name`` (one of :data:`DATASETS`) from ``root``."""
    root = os.path.abspath(os.fspath(root))
    if not os.path.isdir(root):
        raise DatasetLayoutError(f"{root}: no such folder (expected the {name} dataset folder)")
    if (test_dir is not None or test_key is not None) and name != "dcase2013":
        raise DatasetLayoutError("--test-dir / --test-key apply to dcase2013 only (the challenge's test set)")
    if name == "esc50":
        return load_esc50(root)
    if name == "esc10":
        return load_esc50(root, esc10=True)
    if name == "dcase2013":
        return load_dcase2013(root, test_dir=test_dir, test_key=test_key)
    if name == "folder":
        return load_folder(root, num_folds=num_folds)
    raise ValueError(f"unknown dataset {name!r}; choose one of {DATASETS}")


# ------------------------------------------------------------------------------------------ ESC-50
def load_esc50(root: str, *, esc10: bool = False) -> Dataset:
    """ESC-50 (or its ESC-10 subset): `meta/esc50.csv` + `audio/`, the 5 official folds.

    The official folds keep all clips cut from one Freesound recording (``src_file``) in one fold;
    ``src_file`` is the clip's group, so that holds here even for an edited metadata file.
    """
    expected = (
        f"ESC-50 layout expected: {root}/meta/esc50.csv with columns {','.join(ESC50_COLUMNS)} "
        f"and the clips in {root}/audio/"
    )
    meta = os.path.join(root, "meta", "esc50.csv")
    audio_dir = os.path.join(root, "audio")
    if not os.path.isfile(meta):
        raise DatasetLayoutError(f"{meta}: not found. {expected}")
    if not os.path.isdir(audio_dir):
        raise DatasetLayoutError(f"{audio_dir}: not found. {expected}")
    with open(meta, newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        missing = [c for c in ESC50_COLUMNS if c not in (reader.fieldnames or [])]
        if missing:
            raise DatasetLayoutError(f"{meta}: missing column(s) {missing}. {expected}")
        rows = list(reader)
    if not rows:
        raise DatasetLayoutError(f"{meta}: holds no clips. {expected}")
    parsed = []
    seen: set[str] = set()
    for line, row in enumerate(rows, start=2):  # line 1 is the header
        try:
            fold, target = int(row["fold"]), int(row["target"])
        except ValueError as e:
            raise DatasetLayoutError(f"{meta}, line {line}: fold and target must be integers ({e})") from e
        flag = row["esc10"].strip().lower()
        if flag not in ("true", "false", "1", "0"):
            raise DatasetLayoutError(f"{meta}, line {line}: esc10 must be True or False, got {row['esc10']!r}")
        name = row["filename"].strip()
        if not name or name in seen:
            raise DatasetLayoutError(f"{meta}, line {line}: empty or repeated filename {name!r}")
        seen.add(name)
        if esc10 and flag not in ("true", "1"):
            continue
        parsed.append((name, fold, target, row["category"].strip(), row["src_file"].strip()))
    if not parsed:
        raise DatasetLayoutError(f"{meta}: no row has esc10 True, so ESC-10 is empty. {expected}")
    if any(p[1] < 1 for p in parsed):
        raise DatasetLayoutError(f"{meta}: folds must be numbered from 1 (ESC-50 uses 1..5)")
    names: dict[int, str] = {}
    for _, _, target, category, _ in parsed:
        if names.setdefault(target, category) != category:
            raise DatasetLayoutError(f"{meta}: target {target} is both {names[target]!r} and {category!r}")
    targets = sorted(names)  # ESC-10 keeps its ESC-50 targets; labels are re-indexed 0..9 in target order
    index = {t: i for i, t in enumerate(targets)}
    clips = [
        Clip(os.path.join(audio_dir, name), f"audio/{name}", index[target], fold, f"src:{src or name}")
        for name, fold, target, _, src in parsed
    ]
    folds = sorted({c.fold for c in clips})
    return Dataset(
        name="esc10" if esc10 else "esc50",
        root=root,
        classes=[names[t] for t in targets],
        clips=clips,
        fold_scheme=f"official ESC-50 folds {folds} from meta/esc50.csv; groups = src_file",
        window_seconds=1.0,  # eval_esc50.lua: -timewindow 1
    )


# ------------------------------------------------------------------------------------- DCASE 2013
_DCASE_NAME = re.compile(r"^([a-z]+)(\d+)\.wav$")


def _dcase_files(folder: str, what: str) -> list[tuple[str, str, int]]:
    """(file name, class, number) for every `<class><NN>.wav` in ``folder``; errors name any other .wav."""
    expected = (
        f"DCASE 2013 scenes layout expected: {what} holding `<class><NN>.wav` files "
        f"(e.g. bus01.wav), class one of {', '.join(DCASE2013_CLASSES)}"
    )
    found, bad = [], []
    for entry in sorted(os.listdir(folder)):
        if not entry.lower().endswith(".wav"):
            continue  # README, checksums, .DS_Store: not part of the layout
        m = _DCASE_NAME.match(entry)
        if m is None or m.group(1) not in DCASE2013_CLASSES:
            bad.append(entry)
        else:
            found.append((entry, m.group(1), int(m.group(2))))
    if bad:
        raise DatasetLayoutError(f"{folder}: unexpected file name(s) {bad[:5]}. {expected}")
    if not found:
        raise DatasetLayoutError(f"{folder}: holds no .wav files. {expected}")
    return found


def load_dcase2013(
    root: str,
    *,
    test_dir: str | os.PathLike[str] | None = None,
    test_key: str | os.PathLike[str] | None = None,
) -> Dataset:
    """DCASE 2013 scene classification: labels from file names, 5-fold stratified cross-validation.

    The split is fixed: recordings sorted by (class, number) go through scikit-learn's
    ``StratifiedKFold(5)`` without shuffling, so with the official 10 recordings per class,
    recordings 01-02 of every class form fold 1, 03-04 fold 2, ..., 09-10 fold 5.
    The files may sit in ``root`` or in ``root/scenes_stereo`` (the development archive's folder).
    ``test_dir`` adds the challenge's test set; its labels come from ``test_key`` (lines
    ``<file> <class>``, separated by whitespace, a tab or a comma) or, without a key, from the file names.
    """
    from sklearn.model_selection import StratifiedKFold

    folder = root
    if os.path.isdir(os.path.join(root, "scenes_stereo")):
        folder = os.path.join(root, "scenes_stereo")
    files = _dcase_files(folder, folder)
    files.sort(key=lambda f: (DCASE2013_CLASSES.index(f[1]), f[2], f[0]))
    classes = [c for c in DCASE2013_CLASSES if any(f[1] == c for f in files)]
    labels = [classes.index(f[1]) for f in files]
    counts = {c: labels.count(i) for i, c in enumerate(classes)}
    if min(counts.values()) < 5:
        raise DatasetLayoutError(
            f"{folder}: 5-fold cross-validation needs at least 5 recordings per class, found {counts}"
        )
    folds = [0] * len(files)
    for k, (_, test) in enumerate(StratifiedKFold(n_splits=5).split(files, labels), start=1):
        for i in test:
            folds[i] = k
    rel = os.path.relpath(folder, root)
    clips = [
        Clip(os.path.join(folder, f), os.path.normpath(os.path.join(rel, f)), lab, fold, f"rec:{f}")
        for (f, _, _), lab, fold in zip(files, labels, folds, strict=True)
    ]
    if test_key is not None and test_dir is None:
        raise DatasetLayoutError("--test-key needs --test-dir (the folder with the challenge's test files)")
    test_clips = _dcase_test_set(test_dir, test_key, classes) if test_dir is not None else []
    return Dataset(
        name="dcase2013",
        root=root,
        classes=classes,
        clips=clips,
        fold_scheme="StratifiedKFold(5), no shuffle, recordings sorted by (class, number); groups = recording",
        window_seconds=5.0,  # eval_dcase.lua: -timewindow 5
        test_clips=test_clips,
    )


def _dcase_test_set(
    test_dir: str | os.PathLike[str], test_key: str | os.PathLike[str] | None, classes: list[str]
) -> list[Clip]:
    test_dir = os.path.abspath(os.fspath(test_dir))
    if not os.path.isdir(test_dir):
        raise DatasetLayoutError(f"{test_dir}: no such folder (expected the DCASE 2013 test set)")
    if test_key is None:
        pairs = [(f, c) for f, c, _ in _dcase_files(test_dir, f"{test_dir} (or pass --test-key)")]
    else:
        key = os.fspath(test_key)
        if not os.path.isfile(key):
            raise DatasetLayoutError(f"{key}: no such key file")
        pairs = []
        with open(key, encoding="utf-8") as f:
            for n, line in enumerate(f, start=1):
                parts = [p for p in re.split(r"[\s,]+", line.strip()) if p]
                if not parts:
                    continue
                if len(parts) != 2:
                    raise DatasetLayoutError(f"{key}, line {n}: expected `<file> <class>`, got {line.strip()!r}")
                pairs.append((os.path.basename(parts[0]), parts[1]))
        if not pairs:
            raise DatasetLayoutError(f"{key}: holds no `<file> <class>` lines")
    unknown = sorted({c for _, c in pairs if c not in classes})
    if unknown:
        raise DatasetLayoutError(f"test set class(es) {unknown} are not among the development classes {classes}")
    return [Clip(os.path.join(test_dir, f), f"test/{f}", classes.index(c), 0, f"test:{f}") for f, c in pairs]


# ----------------------------------------------------------------------------------------- folder
def load_folder(root: str, *, num_folds: int = 5, seed: int = 0) -> Dataset:
    """Any tree of class sub-folders: ``root/<class>/**/<audio file>``.

    Folds come from scikit-learn's ``StratifiedKFold(num_folds, shuffle=True, random_state=seed)`` over
    the files sorted by path; each file is its own group.
    """
    from sklearn.model_selection import StratifiedKFold

    expected = (
        f"folder layout expected: {root}/<class>/... with audio files "
        f"({', '.join(AUDIO_EXTENSIONS)}) in at least two class sub-folders"
    )
    if num_folds < 2:
        raise ValueError(f"num_folds must be >= 2, got {num_folds}")
    per_class: dict[str, list[str]] = {}
    for entry in sorted(os.listdir(root)):
        sub = os.path.join(root, entry)
        if not os.path.isdir(sub) or entry.startswith("."):
            continue
        files = [
            os.path.join(d, f)
            for d, _, names in os.walk(sub)
            for f in names
            if f.lower().endswith(AUDIO_EXTENSIONS) and not f.startswith(".")
        ]
        if files:
            per_class[entry] = sorted(files)
    if len(per_class) < 2:
        raise DatasetLayoutError(f"{root}: found {len(per_class)} class sub-folder(s) with audio. {expected}")
    small = {c: len(f) for c, f in per_class.items() if len(f) < num_folds}
    if small:
        raise DatasetLayoutError(
            f"{root}: {num_folds}-fold cross-validation needs at least {num_folds} files per class; too few in {small}"
        )
    classes = sorted(per_class)
    items = [(path, classes.index(c)) for c in classes for path in per_class[c]]
    labels = [lab for _, lab in items]
    folds = [0] * len(items)
    cv = StratifiedKFold(n_splits=num_folds, shuffle=True, random_state=seed)
    for k, (_, test) in enumerate(cv.split(items, labels), start=1):
        for i in test:
            folds[i] = k
    clips = [
        Clip(path, os.path.relpath(path, root), lab, fold, f"file:{os.path.relpath(path, root)}")
        for (path, lab), fold in zip(items, folds, strict=True)
    ]
    return Dataset(
        name="folder",
        root=root,
        classes=classes,
        clips=clips,
        fold_scheme=f"StratifiedKFold({num_folds}, shuffle=True, random_state={seed}); groups = file",
        window_seconds=1.0,
    )


__all__ = [
    "DATASETS",
    "DCASE2013_CLASSES",
    "Clip",
    "Dataset",
    "DatasetLayoutError",
    "load_dataset",
    "load_dcase2013",
    "load_esc50",
    "load_folder",
]
