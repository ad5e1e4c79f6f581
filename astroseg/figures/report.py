"""One self-contained, offline HTML report: metrics beside the baseline's, tables, every figure.

The file references nothing outside itself (figures are base64 data URIs, the CSS is inline, no
fonts, scripts or links), so it can be mailed, archived or opened on an air-gapped machine and
look the same. Text read from files is HTML-escaped, and any "http" in it is broken with a
zero-width space, so the file never holds anything a browser or a mail filter could follow.
"""

from __future__ import annotations

import base64
import html
import json
import os
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from astroseg.atomic import write_text
from astroseg.errors import DataError
from astroseg.figures.curves import wilson_interval

_HTTP = re.compile("http", re.IGNORECASE)

# (group, [(row label, key path into metrics.json / baseline.json)]); absent keys show a dash.
METRIC_ROWS: tuple[tuple[str, tuple[tuple[str, tuple[str, ...]], ...]], ...] = (
    ("Test split", (("images", ("n_images",)), ("threshold", ("threshold",)),
                    ("test-time augmentation", ("tta",)))),
    ("Pixels, mean over images", (("IoU", ("iou",)), ("Dice", ("dice",)),
                                  ("precision", ("precision",)), ("recall", ("recall",)))),
    ("Pixels, pooled over the split", (("IoU", ("pooled", "iou")), ("Dice", ("pooled", "dice")),
                                       ("precision", ("pooled", "precision")),
                                       ("recall", ("pooled", "recall")))),
    ("Objects", (("true objects", ("objects", "n_true")),
                 ("detected objects", ("objects", "n_pred")),
                 ("true objects found", ("objects", "found")),
                 ("completeness", ("objects", "completeness")),
                 ("purity", ("objects", "purity")),
                 ("splits", ("objects", "splits")), ("merges", ("objects", "merges")))),
    ("Calibration", (("ECE", ("calibration", "ece")),
                     ("ECE before temperature scaling", ("calibration", "ece_uncalibrated")),
                     ("temperature", ("calibration", "temperature")))),
    ("MC dropout uncertainty", (("mean std, wrong pixels", ("uncertainty", "std_wrong")),
                                ("mean std, right pixels", ("uncertainty", "std_right")),
                                ("ratio wrong / right", ("uncertainty", "ratio")))),
    ("Images with spiral structure", (("images", ("spiral", "n_images")),
                                      ("IoU", ("spiral", "iou")), ("Dice", ("spiral", "dice")),
                                      ("precision", ("spiral", "precision")),
                                      ("recall", ("spiral", "recall")))),
)

_CSS = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1200px; color: #222;
       padding: 0 1em; }
h1 { font-size: 1.6em; } h2 { font-size: 1.25em; margin-top: 2em; border-bottom: 1px solid #ccc; }
table { border-collapse: collapse; margin: 0.5em 0 1em; font-size: 0.92em; }
th, td { border: 1px solid #ccc; padding: 0.25em 0.7em; text-align: right; }
th:first-child, td:first-child { text-align: left; }
tr.group th { background: #eef2f7; text-align: left; }
td.none { color: #999; text-align: center; } td.best { font-weight: bold; }
figure { margin: 1.5em 0; } figure img { max-width: 100%; border: 1px solid #ddd; }
figcaption { color: #555; font-size: 0.9em; }
pre { background: #f6f6f6; padding: 0.8em; overflow-x: auto; font-size: 0.85em; }
.note { color: #555; }
"""


def _text(value: Any) -> str:
    """Escaped text, with "http" broken by a zero-width space (it still reads the same)."""
    return _HTTP.sub(lambda m: m.group()[:2] + "&#8203;" + m.group()[2:], html.escape(str(value)))


def _lookup(obj: Any, keys: Sequence[str]) -> Any:
    for key in keys:
        if not isinstance(obj, dict) or key not in obj:
            return None
        obj = obj[key]
    return obj


def _cell(value: Any, digits: str = ".4f") -> str:
    if value is None or (isinstance(value, float) and not np.isfinite(value)):
        return '<td class="none">&mdash;</td>'
    if isinstance(value, bool):
        text = "yes" if value else "no"
    elif isinstance(value, (int, np.integer)):
        text = str(int(value))
    elif isinstance(value, (float, np.floating)):
        text = f"{value:{digits}}" if abs(value) < 1e4 else f"{value:.4g}"
    elif isinstance(value, str):
        text = value
    else:
        text = json.dumps(value, sort_keys=True)
    return f"<td>{_text(text)}</td>"


def metrics_table(model: dict[str, Any], baseline: dict[str, Any] | None) -> str:
    """Model beside baseline, one row per metric in METRIC_ROWS, grouped."""
    rows = ["<table>", "<tr><th>metric</th><th>model</th><th>photutils baseline</th></tr>"]
    for group, items in METRIC_ROWS:
        rows.append(f'<tr class="group"><th colspan="3">{_text(group)}</th></tr>')
        for label, keys in items:
            rows.append(f"<tr><td>{_text(label)}</td>{_cell(_lookup(model, keys))}"
                        f"{_cell(_lookup(baseline, keys))}</tr>")
    rows.append("</table>")
    return "\n".join(rows)


def _bins(table: dict[str, np.ndarray] | None) -> dict[tuple[float, float], dict[str, float]]:
    if table is None:
        return {}
    lo, hi = wilson_interval(table["found"], table["n"])
    return {(float(a), float(b)): {"snr": s, "n": n, "found": f, "c": c, "lo": low, "hi": high}
            for a, b, s, n, f, c, low, high in zip(table["snr_lo"], table["snr_hi"], table["snr"],
                                              table["n"], table["found"], table["completeness"],
                                              lo, hi)}


def _completeness_cells(row: dict[str, float] | None) -> str:
    if row is None:
        return '<td class="none">&mdash;</td>' * 3
    band = (f"{row['c']:.3f} [{row['lo']:.3f}, {row['hi']:.3f}]" if np.isfinite(row["lo"])
            else f"{row['c']:.3f}")
    return f"<td>{int(row['n'])}</td><td>{int(row['found'])}</td><td>{_text(band)}</td>"


def completeness_table(model: dict[str, np.ndarray] | None,
                       baseline: dict[str, np.ndarray] | None) -> str:
    """Completeness per S/N bin, model beside baseline, with the Wilson 68% interval."""
    ours, theirs = _bins(model), _bins(baseline)
    keys = sorted(set(ours) | set(theirs))
    if not keys:
        return ('<p class="note">No completeness bins: the test data has no per-object truth '
                "(e.g. FITS masks without an object catalogue).</p>")
    rows = ["<table>", '<tr><th rowspan="2">S/N bin</th><th rowspan="2">S/N</th>'
            '<th colspan="3">model</th><th colspan="3">photutils baseline</th></tr>',
            "<tr>" + "<th>objects</th><th>found</th><th>completeness [68%]</th>" * 2 + "</tr>"]
    for key in keys:
        snr = (ours.get(key) or theirs[key])["snr"]
        rows.append(f"<tr><td>{_text(f'{key[0]:g} to {key[1]:g}')}</td><td>{_text(f'{snr:.3g}')}"
                    f"</td>{_completeness_cells(ours.get(key))}"
                    f"{_completeness_cells(theirs.get(key))}</tr>")
    rows.append("</table>")
    return "\n".join(rows)


def _is_records(value: Any) -> bool:
    return (isinstance(value, list) and bool(value) and all(isinstance(v, dict) for v in value)
            and all(v.keys() == value[0].keys() for v in value))


def grid_table(records: list[dict[str, Any]]) -> str:
    """A list of like dicts as a table; (a, b, score) records as a grid of a x b, best in bold."""
    keys = list(records[0])
    scores = [r[keys[-1]] for r in records]
    if len(keys) != 3 or not all(isinstance(s, (int, float)) for s in scores):
        rows = ["<table>", "<tr>" + "".join(f"<th>{_text(k)}</th>" for k in keys) + "</tr>"]
        rows += ["<tr>" + "".join(_cell(r[k]) for k in keys) + "</tr>" for r in records]
        return "\n".join(rows + ["</table>"])
    a, b, score = keys
    rows_a = list(dict.fromkeys(r[a] for r in records))
    cols_b = list(dict.fromkeys(r[b] for r in records))
    cells = {(r[a], r[b]): r[score] for r in records}
    best = max(scores)
    out = ["<table>", f"<tr><th>{_text(score)}: {_text(a)} \\ {_text(b)}</th>"
           + "".join(f"<th>{_text(c)}</th>" for c in cols_b) + "</tr>"]
    for ra in rows_a:
        tds = []
        for cb in cols_b:
            cell = _cell(cells.get((ra, cb)))
            tds.append(cell.replace("<td>", '<td class="best">')
                       if cells.get((ra, cb)) == best else cell)
        out.append(f"<tr><td>{_text(ra)}</td>{''.join(tds)}</tr>")
    return "\n".join(out + ["</table>"])


def settings_table(settings: dict[str, Any] | None) -> str:
    """The baseline's tuned settings as key/value rows; a list of records (the grid) below."""
    if not settings:
        return '<p class="note">The baseline records no tuned settings.</p>'
    rows = ["<table>", "<tr><th>setting</th><th>value</th></tr>"]
    rows += [f"<tr><td>{_text(key)}</td>{_cell(value, 'g')}</tr>"
             for key, value in settings.items() if not _is_records(value)]
    rows.append("</table>")
    for key, value in settings.items():
        if _is_records(value):
            rows += [f'<p class="note">{_text(key)} (best in bold):</p>', grid_table(value)]
    return "\n".join(rows)


def _baseline_settings(baseline: dict[str, Any] | None) -> dict[str, Any] | None:
    tuned = _lookup(baseline, ("tuned",))
    if not isinstance(tuned, dict):
        return None
    # deblend is a param, not tuned, but it changes what the tuned setting means.
    return {**tuned, **({"deblend": baseline["deblend"]} if "deblend" in baseline else {})}


def _data_uri(path: Path) -> str:
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise DataError(f"{path}: cannot embed the figure in the report ({exc})") from None
    if not data.startswith(b"\x89PNG\r\n\x1a\n"):
        raise DataError(f"{path}: not a PNG file, cannot embed it in the report")
    b64 = base64.b64encode(data).decode("ascii")
    # Base64 can spell "http" by chance (about once in 30 reports); URL parsing drops newlines
    # inside a data URI, so a newline breaks the word without changing the image.
    return "data:image/png;base64," + _HTTP.sub(lambda m: m.group()[:2] + "\n" + m.group()[2:], b64)


def render_report(figures: Sequence[tuple[str, str | os.PathLike]], metrics: dict[str, Any],
                  baseline: dict[str, Any] | None,
                  completeness: dict[str, np.ndarray] | None,
                  baseline_completeness: dict[str, np.ndarray] | None,
                  params_yaml: str | None = None, title: str = "astroseg report") -> str:
    """The report's HTML: metrics, completeness, tuned baseline settings, figures, params."""
    parts = [
        "<!DOCTYPE html>", '<html lang="en">', "<head>", '<meta charset="utf-8">',
        f"<title>{_text(title)}</title>", f"<style>{_CSS}</style>", "</head>", "<body>",
        f"<h1>{_text(title)}</h1>",
        '<p class="note">Test-split scores of the model and of the classic photutils baseline. '
        "This file is self-contained: it needs no network and no other file. A dash marks a "
        "score that was not computed.</p>",
        "<h2>Metrics</h2>", metrics_table(metrics, baseline),
        "<h2>Completeness against S/N</h2>",
        completeness_table(completeness, baseline_completeness),
        "<h2>Tuned baseline settings</h2>",
        settings_table(_baseline_settings(baseline)),
        "<h2>Figures</h2>",
    ]
    for caption, path in figures:
        path = Path(path)
        parts.append(f'<figure><img alt="{_text(path.name)}" src="{_data_uri(path)}">'
                     f"<figcaption>{_text(path.name)}: {_text(caption)}</figcaption></figure>")
    if params_yaml is not None:
        parts += ["<h2>Parameters</h2>", f"<pre>{_text(params_yaml)}</pre>"]
    parts += ["</body>", "</html>", ""]
    return "\n".join(parts)


def write_report(path: str | os.PathLike, figures: Sequence[tuple[str, str | os.PathLike]],
                 metrics: dict[str, Any], baseline: dict[str, Any] | None,
                 completeness: dict[str, np.ndarray] | None,
                 baseline_completeness: dict[str, np.ndarray] | None,
                 params_yaml: str | None = None) -> None:
    """Atomically write render_report's HTML to `path`."""
    write_text(path, render_report(figures, metrics, baseline, completeness,
                                   baseline_completeness, params_yaml))
