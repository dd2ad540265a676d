"""Reporting for the transfer evaluation: per-method fold summaries (:func:`summarize_folds`), plots
(matplotlib, Agg) and the Table-4-style table (rich)."""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import numpy as np

from soundnet_fast.evaluation.protocols import FoldResult

# The paper's reference rows (docs/design.md#transfer-evaluation; arXiv 1610.09001 Tables 3 and 4), in percent.
PAPER_ROWS: dict[str, list[tuple[str, float]]] = {
    "esc50": [
        ("SVM on MFCC (paper)", 39.6),
        ("Conv. autoencoder (paper)", 39.9),
        ("SoundNet, pool5, best teachers (paper)", 74.2),
        ("Human (paper)", 81.3),
    ],
    "esc10": [
        ("SVM on MFCC (paper)", 67.5),
        ("Conv. autoencoder (paper)", 74.3),
        ("SoundNet, pool5 (paper)", 92.2),
        ("Human (paper)", 95.7),
    ],
    "dcase2013": [("SoundNet (paper)", 88.0)],
}
EXCLUDED_SHOWN = 20  # excluded files the printed report names one by one (results.json lists them all)
DATASET_TITLES = {"esc50": "ESC-50", "esc10": "ESC-10", "dcase2013": "DCASE 2013 scenes", "folder": "folder"}


def summarize_folds(
    folds: Sequence[FoldResult], y: np.ndarray, names: Sequence[str], classes: Sequence[str]
) -> dict[str, Any]:
    """One method's cross-validation as results.json records it: mean, standard deviation and per-fold accuracy
    (fractions), pooled accuracy, per-class accuracy (None for a class with no held-out clip), each fold's C,
    sizes and test clips, and the (classes x classes) confusion matrix over every held-out clip.

    ``y``: (N,) labels of the clips ``folds`` index; ``names``: the clips' names, aligned with ``y``.
    """
    from sklearn.metrics import accuracy_score, confusion_matrix

    y = np.asarray(y)
    true = np.concatenate([y[f.test_index] for f in folds])
    pred = np.concatenate([f.y_pred for f in folds])
    fold_acc = [float(accuracy_score(y[f.test_index], f.y_pred)) for f in folds]
    cm = confusion_matrix(true, pred, labels=np.arange(len(classes)))
    support = cm.sum(axis=1)
    return {
        "mean_accuracy": float(np.mean(fold_acc)),
        "std_accuracy": float(np.std(fold_acc)),
        "pooled_accuracy": float(accuracy_score(true, pred)),
        "fold_accuracy": {str(f.fold): a for f, a in zip(folds, fold_acc, strict=True)},
        "per_class_accuracy": {
            c: (float(cm[i, i] / support[i]) if support[i] else None) for i, c in enumerate(classes)
        },
        "folds": [
            {
                "fold": f.fold,
                "C": f.C,
                "num_train": f.num_train,
                "num_test": int(len(f.test_index)),
                "dropped_shared_source": f.num_dropped,
                "convergence_warnings": f.convergence_warnings,
                "test_clips": [names[i] for i in f.test_index],
            }
            for f in folds
        ],
        "confusion_matrix": cm.tolist(),
    }


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt

    return plt


def plot_confusion(cm: np.ndarray | list, classes: Sequence[str], path: str, title: str) -> str:
    """Write the (classes x classes) confusion matrix ``cm`` (rows: true class) as a PNG at ``path``; return it."""
    from sklearn.metrics import ConfusionMatrixDisplay

    plt = _pyplot()
    n = len(classes)
    size = max(5.0, 0.28 * n + 3)
    fig, ax = plt.subplots(figsize=(size, size))
    ConfusionMatrixDisplay(np.asarray(cm), display_labels=list(classes)).plot(
        ax=ax, xticks_rotation="vertical", include_values=n <= 20, colorbar=False, cmap="Blues"
    )
    ax.set_title(title)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def plot_tsne(X: np.ndarray, y: np.ndarray, classes: Sequence[str], path: str, title: str, seed: int = 0) -> str:
    """2-D t-SNE of standardised features coloured by class (the paper's Figure-style analysis)."""
    from sklearn.manifold import TSNE
    from sklearn.preprocessing import StandardScaler

    plt = _pyplot()
    X = StandardScaler().fit_transform(np.asarray(X, dtype=np.float64))
    # perplexity must stay below the number of points; 30 is scikit-learn's default for large sets.
    perplexity = float(min(30.0, max(2.0, (len(X) - 1) / 3)))
    # Exact gradients are faster than Barnes-Hut for a few hundred points and identical in purpose.
    method = "exact" if len(X) < 300 else "barnes_hut"
    emb = TSNE(n_components=2, perplexity=perplexity, init="pca", method=method, random_state=seed).fit_transform(X)
    fig, ax = plt.subplots(figsize=(8, 7))
    cmap = plt.get_cmap("tab20" if len(classes) > 10 else "tab10")
    for i, c in enumerate(classes):
        sel = np.asarray(y) == i
        if sel.any():
            ax.scatter(emb[sel, 0], emb[sel, 1], s=12, color=cmap(i % cmap.N), label=c)
    if len(classes) <= 20:
        ax.legend(fontsize=7, markerscale=1.5, loc="best")
    ax.set_title(title)
    ax.set_xticks([])
    ax.set_yticks([])
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def print_table(results: dict, console: Any = None) -> None:
    """Accuracy per method, as in the paper's Table 4, with the paper's rows for reference, then one line per
    excluded file (name, fold, reason; the first :data:`EXCLUDED_SHOWN`); ``console``: a rich Console (default:
    stdout)."""
    from rich.table import Table

    from soundnet_fast.console import stdout_console

    console = console or stdout_console()
    name = results["dataset"]
    title = (
        f"{DATASET_TITLES.get(name, name)}: layer {results['layer']}, {results['protocol']} protocol, "
        f"input x{results['input_scale']:g}, {results['num_folds']} folds, {results['num_clips']} clips "
        f"({results['num_excluded']} excluded)"
    )
    table = Table(title=title)
    table.add_column("Method")
    table.add_column("Accuracy (%)", justify="right")
    table.add_column("Per fold (%)")
    has_test = any("test_set" in m for m in results["methods"].values())
    if has_test:
        table.add_column("Test set (%)", justify="right")
    for m in results["methods"].values():
        row = [
            m["label"],
            f"{100 * m['mean_accuracy']:.1f} ± {100 * m['std_accuracy']:.1f}",
            " ".join(f"{100 * a:.0f}" for a in m["fold_accuracy"].values()),
        ]
        if has_test:
            row.append(f"{100 * m['test_set']['accuracy']:.1f}" if "test_set" in m else "")
        table.add_row(*row)
    if PAPER_ROWS.get(name):
        table.add_section()
    for label, acc in PAPER_ROWS.get(name, []):
        table.add_row(f"[dim]{label}[/dim]", f"[dim]{acc:.1f}[/dim]", "", *([""] if has_test else []))
    console.print(table)
    excluded = results.get("excluded", [])
    for e in excluded[:EXCLUDED_SHOWN]:  # left out of every method; their folds scored on the clips left
        where = "test set" if e.get("fold") == 0 else f"fold {e['fold']}" if "fold" in e else ""
        console.print(f"excluded {e['file']}" + (f" ({where})" if where else "") + f": {e['reason']}", markup=False)
    if len(excluded) > EXCLUDED_SHOWN:
        console.print(f"... and {len(excluded) - EXCLUDED_SHOWN} more excluded file(s): see results.json")


def output_path(out_dir: str, kind: str, method: str) -> str:
    """``out_dir/<kind>-<method>.png`` (kind: confusion or tsne)."""
    return os.path.join(out_dir, f"{kind}-{method}.png")
