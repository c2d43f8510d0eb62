"""Pictures of a training run: the loss and the dev Spearman (cosine) curves from metrics.csv.

fit (training.py) appends a row to metrics.csv at every evaluation: the step, the mean training
loss since the previous row and the evaluator's scores. `plot_training_curves` draws the loss and
spearman_cosine against the step. matplotlib is an optional extra (`pip install "minisbert[plot]"`);
`figure()` is the one place that imports it, and explain.py draws its heatmap through it too.
Read next: explain.py.
"""

import csv
import math
import os
from pathlib import Path

INSTALL_HINT = 'pip install "minisbert[plot]" (or pip install matplotlib)'


def figure(**kwargs):
    """A matplotlib Figure (kwargs as for Figure, e.g. figsize); ImportError with the install
    command when matplotlib is missing. A bare Figure, not pyplot: no window, no global state."""
    try:
        from matplotlib.figure import Figure
    except ImportError:
        raise ImportError(f"drawing needs matplotlib, an optional extra: {INSTALL_HINT}") from None
    return Figure(**kwargs)


def require_matplotlib() -> None:
    """Fail now, not after hours of training, when a picture is asked for and cannot be drawn."""
    figure()


def read_metrics(path: str | os.PathLike) -> dict[str, list[float]]:
    """metrics.csv -> {"step": [...], "loss": [...], "spearman_cosine": [...]} (the last only
    when an evaluator ran); an empty cell (an evaluation that returned NaN) becomes NaN."""
    path = Path(path)
    with open(path, newline="", encoding="utf-8-sig") as f:  # -sig: as re-saved by a spreadsheet
        rows = list(csv.DictReader(f))
    if not rows:
        raise ValueError(f"{path}: no rows (fit writes one per evaluation)")
    columns = [c for c in ("step", "loss", "spearman_cosine") if c in rows[0]]
    if columns[:2] != ["step", "loss"]:
        raise ValueError(f"{path}: expected the columns step and loss, got {list(rows[0])}")
    return {c: [float(r[c]) if r[c] not in ("", None) else math.nan for r in rows] for c in columns}


def plot_training_curves(metrics_csv: str | os.PathLike, png: str | os.PathLike) -> Path:
    """Draw the training loss and the dev Spearman (cosine) against the step; returns the PNG path."""
    metrics = read_metrics(metrics_csv)
    fig = figure(figsize=(10, 4))
    loss_ax, dev_ax = fig.subplots(1, 2)
    loss_ax.plot(metrics["step"], metrics["loss"], marker="o")
    loss_ax.set(title="Training loss", xlabel="step", ylabel="mean loss since the previous row")
    if "spearman_cosine" in metrics:
        dev_ax.plot(metrics["step"], metrics["spearman_cosine"], marker="o", color="tab:green")
        dev_ax.set(title="Dev Spearman (cosine)", xlabel="step", ylabel="Spearman's rho")
    else:
        dev_ax.set_axis_off()
        dev_ax.text(0.5, 0.5, "no evaluator: no dev scores", ha="center", va="center")
    for ax in (loss_ax, dev_ax):
        ax.locator_params(axis="x", integer=True)  # steps are whole numbers
    fig.suptitle(str(Path(metrics_csv).parent.name or metrics_csv))
    fig.tight_layout()
    png = Path(png)
    png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(png, dpi=120)
    return png
