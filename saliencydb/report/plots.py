"""Profile plots (matplotlib's Agg canvas, no pyplot state): per-layer sorted average profiles."""

from __future__ import annotations

import io

import numpy as np
from PIL import Image

RED = "#d1242f"
GREEN = "#1a7f37"
BLUE = "#0969da"
GREY = "#8c959f"


def layer_sorted(values: np.ndarray, layers) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Per layer: x positions spread evenly over [index, index + 1) and the values sorted descending."""
    xs, ys = [], []
    for layer in layers:
        v = np.sort(np.asarray(values[layer.offset:layer.stop], dtype=np.float64))[::-1]
        xs.append(layer.index + (np.arange(len(v)) + 0.5) / len(v))
        ys.append(v)
    return xs, ys


def profile_plot(curves: list[tuple[str, np.ndarray, str, str]], layers, title: str) -> Image.Image:
    """``curves``: (label, mean standardised profile (U,), colour, line style). Layers left to right,
    equal widths, each layer's values sorted in descending order (Levin et al. 2022, figure 2)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6.4, 3.3), dpi=140)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    for label, values, colour, style in curves:
        xs, ys = layer_sorted(values, layers)
        for i, (x, y) in enumerate(zip(xs, ys)):
            ax.plot(x, y, color=colour, linestyle=style, linewidth=1.8, label=label if i == 0 else None)
    for i in range(1, len(layers)):
        ax.axvline(i, color="#d0d7de", linewidth=1)
    ax.axhline(0, color="#8c959f", linewidth=0.8, linestyle=":")
    ax.set_xlim(0, len(layers))
    every = max(1, -(-len(layers) // 16))  # at most ~16 layer names on the axis
    shown = [layer for layer in layers if layer.index % every == 0]
    ax.set_xticks([layer.index + 0.5 for layer in shown])
    ax.set_xticklabels([_short(layer.name) for layer in shown], fontsize=8,
                       rotation=0 if len(layers) <= 6 else 45, ha="center" if len(layers) <= 6 else "right")
    ax.tick_params(axis="x", length=0)
    ax.tick_params(axis="y", labelsize=8)
    ax.set_ylabel("mean z-score per filter", fontsize=9)
    ax.set_title(title, fontsize=10, loc="left")
    for side in ("top", "right"):
        ax.spines[side].set_visible(False)
    ax.legend(fontsize=8, frameon=False, loc="upper right")
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    buf.seek(0)
    with Image.open(buf) as img:
        img.load()
        # RGBA with an opaque background: drop alpha and use a palette to keep the page small
        return img.convert("RGB").quantize(colors=64, method=Image.Quantize.MEDIANCUT)


def _short(name: str, limit: int = 18) -> str:
    return name if len(name) <= limit else "…" + name[-(limit - 1):]
