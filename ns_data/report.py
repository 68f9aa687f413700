"""A human report of one label_and_balance run: PNG plots and a sample grid, no plotting library.

`write_label_report` reads a run's `stats.json`, its predictions table (every scored image's
confidence) and its pseudo-labeled shards, and draws
  counts.png      per class: images above the threshold before balancing vs written after,
  confidence.png  histogram of the teacher's top-1 confidence over all scored images,
  samples.png     a grid of pseudo-labeled images per class with their confidence.
Drawn with Pillow (installed with apache-beam) so the report needs nothing extra.
"""
from __future__ import annotations

import glob
import posixpath
from collections.abc import Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from ns_data import predictions, schema
from ns_data import stats as stats_lib
from ns_data.lazy import tf

_COLORS = ((70, 110, 200), (230, 140, 40), (90, 170, 90))


def _canvas(width: int, height: int, title: str) -> tuple[Image.Image, ImageDraw.ImageDraw]:
    image = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(image)
    draw.font = ImageFont.load_default()
    draw.text((10, 6), title, fill="black")
    return image, draw


def bar_chart(path: str, title: str, categories: Sequence[str],
              series: dict[str, Sequence[float]]) -> None:
    """Grouped vertical bars, one group per category, one colour per series, to a PNG."""
    width, height, left, bottom, top = 80 + 60 * len(categories), 360, 60, 90, 40
    image, draw = _canvas(width, height, title)
    peak = max([max(values, default=0) for values in series.values()] + [1])
    plot_h = height - top - bottom
    group = (width - left - 20) / max(1, len(categories))
    bar = group * 0.8 / max(1, len(series))
    for tick in np.linspace(0, peak, 5):
        y = top + plot_h * (1 - tick / peak)
        draw.line([(left - 4, y), (width - 20, y)], fill=(225, 225, 225))
        draw.text((4, y - 6), f"{tick:,.0f}", fill="black")
    for s, (name, values) in enumerate(series.items()):
        color = _COLORS[s % len(_COLORS)]
        for i, value in enumerate(values):
            if not value:  # a zero-height rectangle would still draw a line
                continue
            x0 = left + i * group + group * 0.1 + s * bar
            draw.rectangle([x0, top + plot_h * (1 - value / peak), x0 + bar - 1, top + plot_h],
                           fill=color)
        draw.rectangle([left + 150 * s, height - 22, left + 150 * s + 10, height - 12],
                       fill=color)
        draw.text((left + 150 * s + 14, height - 24), name, fill="black")
    for i, name in enumerate(categories):
        draw.text((left + i * group + 2, top + plot_h + 6), name[:10], fill="black")
    image.save(path)


def histogram(path: str, title: str, values: np.ndarray, bins: int = 20,
              value_range: tuple[float, float] = (0.0, 1.0), marker: float | None = None) -> None:
    """A histogram of `values` to a PNG, with an optional vertical marker (the threshold)."""
    counts, _ = np.histogram(values, bins=bins, range=value_range)
    _histogram_of_counts(path, title, counts, value_range, marker, bins=bins)


def _histogram_of_counts(path: str, title: str, counts: np.ndarray,
                         value_range: tuple[float, float] = (0.0, 1.0),
                         marker: float | None = None, bins: int = 20) -> None:
    """Draws `counts` (any multiple of `bins` equal-width bins over `value_range`) in `bins`."""
    if len(counts) != bins:
        counts = counts.reshape(bins, -1).sum(axis=1)
    edges = np.linspace(value_range[0], value_range[1], bins + 1)
    width, height, left, bottom, top = 560, 320, 60, 40, 40
    image, draw = _canvas(width, height, title)
    plot_w, plot_h = width - left - 20, height - top - bottom
    peak = max(1, int(counts.max(initial=0)))
    for i, count in enumerate(counts):
        if not count:
            continue
        x0 = left + plot_w * i / bins
        draw.rectangle([x0, top + plot_h * (1 - count / peak), x0 + plot_w / bins - 1,
                        top + plot_h], fill=_COLORS[0])
    for edge in edges[::4]:
        x = left + plot_w * (edge - value_range[0]) / (value_range[1] - value_range[0])
        draw.text((x - 8, top + plot_h + 6), f"{edge:.2f}", fill="black")
    draw.text((4, top - 4), f"{peak:,}", fill="black")
    if marker is not None:
        x = left + plot_w * (marker - value_range[0]) / (value_range[1] - value_range[0])
        draw.line([(x, top), (x, top + plot_h)], fill=(200, 40, 40), width=2)
        draw.text((x + 4, top), f"threshold {marker:.2f}", fill=(200, 40, 40))
    image.save(path)


def sample_grid(path: str, title: str, rows: Sequence[tuple[str, Sequence[tuple]]],
                scale: int = 2, max_cell: int = 96) -> None:
    """Rows of (row label, [(uint8 image [H, W, C], caption), ...]) to a PNG grid.

    Small images are enlarged `scale` times (pixelated, as they are); every tile fits a square
    cell of at most `max_cell` pixels, keeping its aspect ratio.
    """
    tallest = max((max(img.shape[:2]) for _, items in rows for img, _ in items), default=28)
    cell = min(tallest * scale, max_cell)
    columns = max((len(items) for _, items in rows), default=1)
    label_w, caption_h = 100, 14
    width, height = label_w + columns * (cell + 6), 30 + len(rows) * (cell + caption_h + 6)
    image, draw = _canvas(width, height, title)
    for r, (label, items) in enumerate(rows):
        y = 30 + r * (cell + caption_h + 6)
        draw.text((4, y + cell // 2 - 6), label[:16], fill="black")
        for c, (pixels, caption) in enumerate(items):
            tile = Image.fromarray(pixels.squeeze(-1) if pixels.shape[-1] == 1 else pixels)
            fit = cell / max(tile.size)
            tile = tile.resize((max(1, round(tile.width * fit)), max(1, round(tile.height * fit))),
                               Image.NEAREST if fit >= 1 else Image.BILINEAR)
            x = label_w + c * (cell + 6)
            image.paste(tile.convert("RGB"), (x, y))
            draw.text((x, y + cell + 1), caption, fill="black")
    image.save(path)


def _records(pattern: str):
    files = sorted(glob.glob(pattern)) or sorted(tf.io.gfile.glob(pattern))
    for serialized in tf.data.TFRecordDataset(files).as_numpy_iterator():
        yield schema.parse_pseudo_label(serialized)


# The confidence histogram is accumulated file by file in this many bins, so a table of any
# size is read one column of one file at a time; its quantiles are exact to 1 / _FINE_BINS.
_FINE_BINS = 10_000


def _confidence_counts(table: str) -> np.ndarray:
    """Counts of the scored images' top-1 confidence in `_FINE_BINS` bins over [0, 1]."""
    pattern = table if any(c in table for c in "*?[") else predictions.table_pattern(table)
    counts = np.zeros(_FINE_BINS, np.int64)
    for path in sorted(tf.io.gfile.glob(pattern)):
        values = predictions.read_table_file(path, [predictions.CONFIDENCE]).column(
            predictions.CONFIDENCE).drop_null().to_numpy()
        counts += np.histogram(values, bins=_FINE_BINS, range=(0.0, 1.0))[0]
    return counts


def _quantile(counts: np.ndarray, q: float) -> float:
    """The value below which a fraction `q` of the counted values lie (its bin's middle)."""
    position = np.searchsorted(np.cumsum(counts), q * counts.sum(), side="left")
    return float((min(position, len(counts) - 1) + 0.5) / len(counts))


def write_label_report(run_dir: str, table: str | None, report_dir: str,
                       class_names: Sequence[str], samples_per_class: int = 8,
                       truth: dict[bytes, int] | None = None) -> dict:
    """Draws the three PNGs of a label_and_balance or rebalance run into `report_dir`.

    Args:
      run_dir: the run's --output_dir (stats.json and pseudo_labels shards).
      table: the run's predictions table (its directory or a glob of its files), for the
        confidence histogram (None: skip it).
      report_dir: where the PNGs go.
      class_names: names of the classes, for axes and rows.
      samples_per_class: images per row of the sample grid (first copies only).
      truth: true label by image id, to report pseudo-label accuracy (optional).

    Returns:
      Per-class counts, the confidence quantiles (to 5e-5) and (with `truth`) pseudo-label
      accuracy.
    """
    tf.io.gfile.makedirs(report_dir)
    run = stats_lib.read_stats(run_dir)
    classes = run["classes"]
    short = [name.split("/")[0] for name in class_names]
    bar_chart(posixpath.join(report_dir, "counts.png"),
              "Images per class: above the threshold (before balancing) vs written (after)",
              short, {"above threshold": [c["above_threshold"] for c in classes],
                      "written": [c["written"] for c in classes]})
    summary: dict = {"above_threshold": [c["above_threshold"] for c in classes],
                     "written": [c["written"] for c in classes],
                     "duplicated": [c["duplicated"] for c in classes]}
    if table:
        counts = _confidence_counts(table)
        _histogram_of_counts(posixpath.join(report_dir, "confidence.png"),
                             f"Teacher top-1 confidence over {int(counts.sum()):,} scored images",
                             counts, marker=float(run["config"]["min_confidence"]))
        summary["confidence_quantiles"] = {q: _quantile(counts, float(q))
                                           for q in ("0.1", "0.5", "0.9")}
    rows: dict[int, list] = {c: [] for c in range(len(class_names))}
    correct = total = 0
    for record in _records(posixpath.join(run_dir, "pseudo_labels-*")):
        if record.copy:
            continue
        if truth is not None and record.image_id in truth:
            total += 1
            correct += truth[record.image_id] == record.label
        elif truth is None and all(len(r) >= samples_per_class for r in rows.values()):
            break  # the grid is full and there is no accuracy to count
        if len(rows.setdefault(record.label, [])) < samples_per_class:
            pixels = tf.io.decode_image(record.encoded, expand_animations=False).numpy()
            rows[record.label].append((pixels, f"{record.confidence:.2f}"))
    names = list(class_names) + [str(c) for c in range(len(class_names), max(rows) + 1)]
    sample_grid(posixpath.join(report_dir, "samples.png"),
                "Pseudo-labeled images per class (teacher confidence)",
                [(names[c], items) for c, items in sorted(rows.items())])
    if total:
        summary["pseudo_label_accuracy"] = correct / total
    return summary
