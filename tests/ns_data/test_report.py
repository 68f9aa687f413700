"""ns_data.report: the plots draw the numbers they are given; the label report reads a run."""
from __future__ import annotations

import json

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from ns_data import predictions, report, schema, stats
from ns_data.records import Prediction


def _color_pixels(path, color, rows=slice(None), columns=slice(None)) -> int:
    with Image.open(path) as image:
        pixels = np.asarray(image.convert("RGB"))[rows, columns]
    return int(np.all(pixels == color, axis=-1).sum())


def test_bar_heights_are_proportional_to_values(tmp_path):
    path = str(tmp_path / "bars.png")
    report.bar_chart(path, "t", ["a", "b"], {"above": [40, 10], "written": [20, 20]})
    # 200 px wide: the plot starts at x=60, each category's group is 60 px wide; the bars end
    # at y=270, above the category names and the legend.
    plot, half = slice(0, 272), 120
    first = _color_pixels(path, report._COLORS[0], plot, slice(0, half))
    second = _color_pixels(path, report._COLORS[0], plot, slice(half, None))
    assert first == pytest.approx(4 * second, rel=0.05)
    assert _color_pixels(path, report._COLORS[1], plot, slice(0, half)) == pytest.approx(
        _color_pixels(path, report._COLORS[1], plot, slice(half, None)), rel=0.05)


def test_histogram_bars_and_threshold_marker(tmp_path):
    path = str(tmp_path / "hist.png")
    report.histogram(path, "t", np.array([0.12] * 30 + [0.92] * 10), bins=10, marker=0.3)
    left, plot_w = 60, 560 - 60 - 20
    low_bin = slice(left + plot_w // 10 + 2, left + 2 * plot_w // 10 - 2)
    high_bin = slice(left + 9 * plot_w // 10 + 2, left + plot_w - 2)
    empty_bin = slice(left + 5 * plot_w // 10 + 2, left + 6 * plot_w // 10 - 2)
    low = _color_pixels(path, report._COLORS[0], columns=low_bin)
    assert low == pytest.approx(3 * _color_pixels(path, report._COLORS[0], columns=high_bin),
                                rel=0.05)
    assert _color_pixels(path, report._COLORS[0], columns=empty_bin) == 0
    marker_x = left + int(plot_w * 0.3)
    assert _color_pixels(path, (200, 40, 40), columns=slice(marker_x - 1, marker_x + 2)) > 100


def test_label_report_counts_accuracy_without_copies(tmp_path):
    run_dir, table_dir = tmp_path / "run", tmp_path / "predictions"
    run_dir.mkdir()
    png = tf.io.encode_png(np.full((4, 4, 1), 200, np.uint8)).numpy()
    probs = {b"a": [0.9, 0.1], b"b": [0.2, 0.8], b"c": [0.4, 0.6]}
    with tf.io.TFRecordWriter(str(run_dir / "pseudo_labels-00000-of-00001")) as w:
        for image_id, p in probs.items():
            w.write(schema.pseudo_label_example(image_id, png, np.array(p), "hard"))
        # A duplicate made by balancing is not a second pseudo-label of the same image.
        w.write(schema.pseudo_label_example(b"c", png, np.array(probs[b"c"]), "hard", copy=1))
    rows = [Prediction("in", i, image_id, *predictions.topk(np.float32(p), 2))
            for i, (image_id, p) in enumerate(probs.items())]
    rows.append(Prediction("in", 3, b"failed", stage="decode", message="not counted"))
    metadata = predictions.TableMetadata(input="in", input_format="tfrecord", num_classes=2,
                                         topk=2)
    predictions.write_table_file(predictions.table_file(str(table_dir), "in"), rows, metadata)
    classes = [{"above_threshold": 1, "written": 2, "duplicated": 1},
               {"above_threshold": 2, "written": 2, "duplicated": 0}]
    stats.write_stats(str(run_dir), {"classes": classes, "config": {"min_confidence": 0.3}})

    summary = report.write_label_report(str(run_dir), str(table_dir), str(tmp_path / "report"),
                                        ["zero", "one"], truth={b"a": 0, b"b": 1, b"c": 0})
    assert summary["above_threshold"] == [1, 2]
    assert summary["written"] == [2, 2] and summary["duplicated"] == [1, 0]
    assert summary["pseudo_label_accuracy"] == pytest.approx(2 / 3)
    assert summary["confidence_quantiles"]["0.5"] == pytest.approx(0.8, abs=5e-5)
    for name in ("counts", "confidence", "samples"):
        with Image.open(tmp_path / "report" / f"{name}.png") as image:
            assert image.size[0] > 100
    json.dumps(summary)  # goes into results.json as is
