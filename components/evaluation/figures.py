"""The grid of example images the evaluation reports draw (boxes for a detector, heat maps for
an anomaly model): one matplotlib setup, so every report's examples look and size alike."""
from __future__ import annotations

import io


def image_grid(n: int, columns: int, cell: tuple[float, float]):
    """(figure, axes) of a grid for ``n`` images, ``columns`` wide at most, each cell ``cell``
    inches (width, height: a little taller than wide leaves room for a title); every axis is
    blank (no ticks or frame) and the axes beyond ``n`` stay empty. Draw on ``axes[:n]``, then
    :func:`figure_png`."""
    import matplotlib

    matplotlib.use("Agg")  # no display on servers and workers
    import matplotlib.pyplot as plt

    if n < 1:
        raise ValueError("no images to draw")
    cols = min(columns, n)
    rows = (n + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(cell[0] * cols, cell[1] * rows), squeeze=False)
    for ax in axes.ravel():
        ax.axis("off")
    return fig, list(axes.ravel())


def figure_png(fig, dpi: int = 80) -> bytes:
    """The figure as PNG bytes; the figure is closed (pyplot keeps every open one alive)."""
    import matplotlib.pyplot as plt

    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi)
    plt.close(fig)
    return buf.getvalue()
