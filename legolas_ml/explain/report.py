"""Write an explanation report: one self-contained HTML file, the same data as JSON, PNG charts.

The HTML has inline CSS and inline SVG charts and no script, link or remote URL, so it opens
offline and from an e-mail attachment alike.
"""

from __future__ import annotations

import html
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path

from legolas_ml.core.atomic_io import write_json_atomic, write_text_atomic
from legolas_ml.explain.attributions import Explanation, ExplanationSummary

_CSS = """
body{font-family:system-ui,sans-serif;margin:2em;max-width:70em;color:#222}
h1{font-size:1.4em}h2{font-size:1.15em;margin-top:2em}
.text{line-height:2;border:1px solid #ddd;padding:.6em;border-radius:4px;white-space:pre-wrap}
.w{padding:1px 2px;border-radius:3px}
.meta{color:#555;font-size:.9em}.bad{color:#b00}.ok{color:#070}
table{border-collapse:collapse}td,th{padding:2px 8px;border-bottom:1px solid #eee;text-align:left}
"""


def _shade(value: float, scale: float) -> str:
    """Green for evidence for the predicted class, red against it; opacity by magnitude."""
    alpha = min(abs(value) / scale, 1.0) * 0.85 if scale > 0 else 0.0
    color = "0,150,60" if value >= 0 else "210,40,40"
    return f"background:rgba({color},{alpha:.2f})"


def _bars_svg(rows: list[dict], width: int = 420) -> str:
    if not rows:
        return "<p class=meta>no words</p>"
    peak = max(r["mean_abs"] for r in rows) or 1.0
    height = 18 * len(rows) + 4
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width + 160}" height="{height}">']
    for i, r in enumerate(rows):
        length = r["mean_abs"] / peak * width
        color = "#2a9d55" if r["mean"] >= 0 else "#d23c3c"
        y = 2 + 18 * i
        parts.append(f'<text x="150" y="{y + 12}" font-size="12" text-anchor="end">{html.escape(r["word"])} ({r["count"]})</text>')
        parts.append(f'<rect x="156" y="{y}" width="{length:.1f}" height="14" fill="{color}"/>')
    parts.append("</svg>")
    return "".join(parts)


def render_html(explanations: Sequence[Explanation], summary: ExplanationSummary, title: str) -> str:
    out = [f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title><style>{_CSS}</style></head><body>"]
    out.append(f"<h1>{html.escape(title)}</h1>")
    error = f"{summary.mean_completeness_error:.4f}" if summary.mean_completeness_error is not None else "n/a"
    out.append(
        f"<p class=meta>{summary.n_texts} texts explained with Integrated Gradients on the ensemble; "
        f"{summary.share_converged:.0%} converged; mean steps {summary.mean_steps:.0f}; mean relative completeness "
        f"error {error}; {summary.seconds_per_text:.2f} s per text. Green words push towards the predicted class, "
        "red words away from it.</p>"
    )
    out.append("<h2>Top words per predicted class (mean |attribution|, occurrences)</h2>")
    for label, rows in summary.top_words.items():
        out.append(f"<h3>{html.escape(label)}</h3>{_bars_svg(rows)}")
    out.append("<h2>Explained texts</h2>")
    for i, e in enumerate(explanations):
        scale = max((abs(a) for a in e.word_attributions), default=0.0)
        status = "converged" if e.converged else "NOT converged"
        verdict = "ok" if e.true_label in (None, e.predicted) else "bad"
        err = f"{e.completeness_error:.4f}" if e.completeness_error is not None else "n/a (F(x) ~ F(baseline))"
        out.append(
            f"<h3>#{i + 1}: predicted <span class={verdict}>{html.escape(e.predicted)}</span> "
            f"(p={e.probability:.3f}), true {html.escape(str(e.true_label))}</h3>"
            f"<p class=meta>{status}: {e.steps} steps, completeness error {err}</p>"
        )
        spans = "".join(
            f"<span class=w style='{_shade(a, scale)}' title='{a:+.4f}'>{html.escape(w)}</span> "
            for w, a in zip(e.words, e.word_attributions)
        )
        out.append(f"<div class=text>{spans}</div>")
    out.append("</body></html>")
    return "".join(out)


def top_words_png(summary: ExplanationSummary, path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    classes = list(summary.top_words)
    fig, axes = plt.subplots(len(classes), 1, figsize=(6, 2.2 * max(len(classes), 1)), squeeze=False)
    for ax, label in zip(axes[:, 0], classes):
        rows = summary.top_words[label][::-1]
        ax.barh([r["word"] for r in rows], [r["mean_abs"] for r in rows],
                color=["#2a9d55" if r["mean"] >= 0 else "#d23c3c" for r in rows])
        ax.set_title(f"predicted {label}", fontsize=9)
        ax.set_xlabel("mean |attribution|", fontsize=7)
        ax.tick_params(labelsize=7)
    from matplotlib.patches import Patch

    fig.legend(
        handles=[Patch(color="#2a9d55", label="pushes towards the predicted class"), Patch(color="#d23c3c", label="pushes away from it")],
        loc="upper center", ncol=2, fontsize=7, frameon=False,
    )
    fig.tight_layout(rect=(0, 0, 1, 0.96))
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


def write_report(
    explanations: Sequence[Explanation], summary: ExplanationSummary, directory: Path, title: str
) -> dict[str, Path]:
    """Write ``report.html``, ``report.json`` and ``top_words.png`` into ``directory``."""
    directory.mkdir(parents=True, exist_ok=True)
    html_path = write_text_atomic(directory / "report.html", render_html(explanations, summary, title))
    json_path = directory / "report.json"
    write_json_atomic(json_path, {"summary": asdict(summary), "explanations": [e.to_dict() for e in explanations]})
    png_path = top_words_png(summary, directory / "top_words.png")
    return {"html": html_path, "json": json_path, "png": png_path}
