"""Pictures of ``[dx, dy, pen]`` handwriting for PNG files and TensorBoard.

Figures are drawn on matplotlib's Agg canvas directly (no pyplot), so plotting
needs no display, keeps no global figure state and is safe in training
callbacks.  A step with ``pen > 0.5`` ends the stroke after the point it
reaches (the convention of :mod:`tfhier.data.strokes`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional, Sequence

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

ROW_HEIGHT_IN = 1.6
FIGURE_WIDTH_IN = 10.0
PREFIX_COLOR = "tab:blue"  # a given prefix, in primed samples (the sampled continuation is black)


def handwriting_figure(seqs: Sequence, offset_scale: float = 1.0,
                       titles: Optional[Sequence[str]] = None, prefix_steps: int = 0) -> Figure:
    """One row per sequence, equal aspect, pen-up gaps left blank.

    Args:
      seqs: ``[T, 3]`` arrays (or tensors) of ``(dx, dy, pen)``.
      offset_scale: multiplies dx, dy back to data units (``info['offset_scale']``).
      titles: optional one title per sequence.
      prefix_steps: the first this many steps of each row are a given prefix (primed sampling): drawn in
        :data:`PREFIX_COLOR`, the continuation in black.
    """
    if len(seqs) == 0:
        raise ValueError("handwriting_figure: no sequences to draw")
    if titles is not None and len(titles) != len(seqs):
        raise ValueError(f"handwriting_figure: {len(titles)} titles for {len(seqs)} sequences")
    fig = Figure(figsize=(FIGURE_WIDTH_IN, ROW_HEIGHT_IN * len(seqs)))
    FigureCanvasAgg(fig)
    for row, seq in enumerate(seqs):
        ax = fig.add_subplot(len(seqs), 1, row + 1)
        _draw(ax, seq, offset_scale, prefix_steps)
        if titles is not None:
            ax.set_title(titles[row], fontsize=9)
    fig.tight_layout()
    return fig


def save_handwriting_png(seqs: Sequence, path, offset_scale: float = 1.0,
                         titles: Optional[Sequence[str]] = None, prefix_steps: int = 0) -> Path:
    """Writes :func:`handwriting_figure` to ``path`` atomically; returns the path.

    The PNG goes to a temporary file in the same folder first and is then
    renamed, so a reader (or a crash) never sees half a file.
    """
    from tfhier.fileio import atomic_write

    path = Path(path)
    fig = handwriting_figure(seqs, offset_scale, titles, prefix_steps)
    atomic_write(path, lambda p: fig.savefig(p, format="png", dpi=100))
    return path


def handwriting_image_batch(seqs: Sequence, offset_scale: float = 1.0, *,
                            width: int = 800, height: int = 160) -> np.ndarray:
    """Renders each sequence to its own RGBA image: uint8 ``[k, height, width, 4]``.

    The layout ``tf.summary.image`` takes.
    """
    if len(seqs) == 0:
        raise ValueError("handwriting_image_batch: no sequences to draw")
    dpi = 100
    images = []
    for seq in seqs:
        fig = Figure(figsize=(width / dpi, height / dpi), dpi=dpi)
        canvas = FigureCanvasAgg(fig)
        ax = fig.add_axes((0.01, 0.02, 0.98, 0.96))
        _draw(ax, seq, offset_scale)
        canvas.draw()
        images.append(np.asarray(canvas.buffer_rgba()).copy())
    return np.stack(images)


def strokes_xy(seq, offset_scale: float = 1.0) -> np.ndarray:
    """Absolute points ``[N+1, 2]`` from ``[N, 3]`` steps, NaN rows after pen-ups.

    Starts at (0, 0).  The NaN rows make one ``plot`` call draw every stroke
    without the jumps between them.
    """
    steps = np.asarray(seq, dtype=np.float64)
    points = np.concatenate([np.zeros((1, 2)), np.cumsum(steps[:, :2] * offset_scale, axis=0)])
    pen_up_after = np.flatnonzero(steps[:, 2] > 0.5) + 1   # index of the point the stroke ends on
    return np.insert(points, pen_up_after + 1, np.nan, axis=0)


def _draw(ax, seq, offset_scale: float, prefix_steps: int = 0) -> None:
    xy = strokes_xy(seq, offset_scale)
    if prefix_steps > 0:
        # The prefix's points are the first len(strokes_xy(prefix)) rows of the whole sequence's; the
        # continuation starts at the prefix's last point, so the line joins where sampling began.
        n = len(strokes_xy(np.asarray(seq)[:prefix_steps], offset_scale))
        ax.plot(xy[:n, 0], xy[:n, 1], color=PREFIX_COLOR, linewidth=1.0, solid_capstyle="round")
        xy = xy[n - 1:]
    ax.plot(xy[:, 0], xy[:, 1], color="black", linewidth=1.0, solid_capstyle="round")
    ax.set_aspect("equal", adjustable="datalim")
    ax.axis("off")


def diagnostics_figure(x, kl_per_step, log_variance, l2_error, title=""):
    """VHRNN Figs. 2-4's panels for one sequence: the data, the KL(q || p) per step, the predicted output
    log-variance per step (mean over dimensions) and the L2 distance of the predicted mean from the data."""
    fig = Figure(figsize=(FIGURE_WIDTH_IN, 7.5))
    FigureCanvasAgg(fig)
    steps = np.arange(len(kl_per_step))
    panels = [("data", x), ("KL per step", kl_per_step), ("output log-var", log_variance),
              ("|mean - x|", l2_error)]
    for i, (label, values) in enumerate(panels):
        ax = fig.add_subplot(len(panels), 1, i + 1)
        values = np.asarray(values)
        if values.ndim == 2:
            for d in range(values.shape[1]):
                ax.plot(steps, values[:, d], linewidth=0.8, label=f"x[{d}]" if values.shape[1] <= 8 else None)
            if values.shape[1] <= 8:
                ax.legend(loc="upper right", fontsize=6)
        else:
            ax.plot(steps, values, linewidth=0.9)
        ax.set_ylabel(label, fontsize=7)
        ax.tick_params(labelsize=7)
    fig.axes[-1].set_xlabel("time step", fontsize=8)
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    return fig


def figure_to_rgba(fig) -> np.ndarray:
    """A drawn figure as a uint8 RGBA image [H, W, 4]."""
    canvas = fig.canvas if isinstance(fig.canvas, FigureCanvasAgg) else FigureCanvasAgg(fig)
    canvas.draw()
    return np.asarray(canvas.buffer_rgba()).copy()


def channels_figure(seqs: Sequence, names: Optional[Sequence[str]] = None, prefix_steps: int = 0,
                    titles: Optional[Sequence[str]] = None) -> Figure:
    """One row per sequence (``[T, D]`` arrays in the data's units), every channel a line over time, named in
    the legend (``names``, else ``channel 0..D-1``); a vertical line where a given prefix ends."""
    if len(seqs) == 0:
        raise ValueError("channels_figure: no sequences to draw")
    fig = Figure(figsize=(FIGURE_WIDTH_IN, 1.3 * ROW_HEIGHT_IN * len(seqs)))
    FigureCanvasAgg(fig)
    for row, seq in enumerate(seqs):
        seq = np.asarray(seq)
        ax = fig.add_subplot(len(seqs), 1, row + 1)
        labels = list(names) if names else [f"channel {d}" for d in range(seq.shape[1])]
        for d in range(seq.shape[1]):
            ax.plot(np.arange(len(seq)), seq[:, d], linewidth=1.0, label=labels[d] if d < len(labels) else None)
        if prefix_steps:
            ax.axvline(prefix_steps - 0.5, color=PREFIX_COLOR, linewidth=1.5)
        if titles is not None:
            ax.set_title(titles[row], fontsize=9)
        ax.margins(x=0)
        if row == 0 and seq.shape[1] <= 12:
            ax.legend(loc="upper right", fontsize=7, ncol=min(6, seq.shape[1]))
        if row == len(seqs) - 1:
            ax.set_xlabel("time step")
    fig.tight_layout()
    return fig
