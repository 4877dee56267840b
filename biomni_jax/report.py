"""report.html of a pipeline workdir: loss and reward curves (inline SVG), the per-task table, sample episodes.

    write_report(workdir) -> workdir/report.html

Reads workdir/sft/metrics.jsonl (loss, eval_loss), workdir/rl/metrics.jsonl (reward, success, loss),
workdir/eval.json (per task: base, sft, rl) and workdir/eval/<system>/trajectories.jsonl. A missing input
leaves its section saying so. The page is self-contained (no scripts, no external files).
"""

from __future__ import annotations

import html
import json
import os
from typing import Mapping, Sequence

COLORS = ("#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e")
SYSTEM_LABELS = {"base": "base (untrained)", "sft": "after SFT", "rl": "after RL"}


def read_metrics(path: str) -> list[dict]:
  """Rows of a MetricsWriter jsonl (each with "step"); a later row for the same step replaces an earlier one."""
  if not os.path.isfile(path):
    return []
  by_step = {}
  with open(path) as f:
    for line in f:
      if line.strip():
        row = json.loads(line)
        by_step[int(row["step"])] = row
  return [by_step[s] for s in sorted(by_step)]


def series(rows: Sequence[dict], key: str) -> list[tuple[float, float]]:
  return [(float(r["step"]), float(r[key])) for r in rows if key in r and r[key] is not None]


def _ticks(lo: float, hi: float, n: int = 5) -> list[float]:
  if hi <= lo:
    return [lo]
  return [lo + (hi - lo) * i / (n - 1) for i in range(n)]


def svg_line_chart(
    lines: Mapping[str, Sequence[tuple[float, float]]],
    title: str,
    xlabel: str,
    width: int = 460,
    height: int = 260,
) -> str:
  """An SVG chart of named (x, y) series: axes with 5 ticks each, a polyline and dots per series, a legend.

  Coordinates: x in [min x, max x] -> [left, width - right]; y in [min y, max y] -> [height - bottom, top]
  with margins left 52, right 12, top 44 (title and legend), bottom 40.
  """
  points = [p for pts in lines.values() for p in pts]
  left, right, top, bottom = 52, 12, 44, 40
  out = [
      f'<svg xmlns="http://www.w3.org/2000/svg" class="chart" width="{width}" height="{height}" '
      f'viewBox="0 0 {width} {height}" role="img" aria-label="{html.escape(title)}">',
      f'<text x="{width / 2}" y="16" text-anchor="middle" font-size="13" font-weight="bold">'
      f"{html.escape(title)}</text>",
  ]
  if not points:
    out.append(
        f'<text x="{width / 2}" y="{height / 2}" text-anchor="middle" font-size="12">no data</text></svg>'
    )
    return "\n".join(out)
  x0, x1 = min(p[0] for p in points), max(p[0] for p in points)
  y0, y1 = min(p[1] for p in points), max(p[1] for p in points)
  if x1 == x0:
    x0, x1 = x0 - 1, x1 + 1
  if y1 == y0:
    y0, y1 = y0 - 0.5, y1 + 0.5

  def sx(x):
    return left + (x - x0) / (x1 - x0) * (width - left - right)

  def sy(y):
    return height - bottom - (y - y0) / (y1 - y0) * (height - top - bottom)

  out.append(
      f'<rect x="{left}" y="{top}" width="{width - left - right}" height="{height - top - bottom}" '
      f'fill="none" stroke="#999"/>'
  )
  for y in _ticks(y0, y1):
    out.append(
        f'<line x1="{left - 4}" x2="{left}" y1="{sy(y):.1f}" y2="{sy(y):.1f}" stroke="#999"/>'
        f'<text x="{left - 6}" y="{sy(y) + 4:.1f}" text-anchor="end" font-size="10">{y:.3g}</text>'
    )
  for x in _ticks(x0, x1):
    out.append(
        f'<text x="{sx(x):.1f}" y="{height - bottom + 14}" text-anchor="middle" font-size="10">'
        f"{x:.4g}</text>"
    )
  out.append(
      f'<text x="{left + (width - left - right) / 2}" y="{height - 8}" text-anchor="middle" '
      f'font-size="11">{html.escape(xlabel)}</text>'
  )
  legend_x = left
  for i, (name, pts) in enumerate(lines.items()):
    color = COLORS[i % len(COLORS)]
    coords = " ".join(f"{sx(x):.1f},{sy(y):.1f}" for x, y in pts)
    if len(pts) > 1:
      out.append(
          f'<polyline class="series" fill="none" stroke="{color}" stroke-width="1.5" points="{coords}"/>'
      )
    out += [f'<circle cx="{sx(x):.1f}" cy="{sy(y):.1f}" r="2" fill="{color}"/>' for x, y in pts]
    out.append(
        f'<rect x="{legend_x}" y="{top - 15}" width="10" height="3" fill="{color}"/>'
        f'<text x="{legend_x + 14}" y="{top - 10}" font-size="11" fill="{color}">{html.escape(name)}</text>'
    )
    legend_x += 24 + 6.5 * len(name)  # legend entries side by side above the plot
  out.append("</svg>")
  return "\n".join(out)


def render_messages(messages: Sequence[dict]) -> str:
  """A conversation as HTML: one block per message, role as a label, text escaped and preformatted."""
  out = []
  for m in messages:
    role = str(m.get("role", "?"))
    out.append(
        f'<div class="msg {html.escape(role)}"><div class="role">{html.escape(role)}</div>'
        f'<pre>{html.escape(str(m.get("content", "")))}</pre></div>'
    )
  return "\n".join(out)


def _samples(path: str, per_task: int = 1) -> list[dict]:
  """Up to per_task episodes per task, successful ones first."""
  if not os.path.isfile(path):
    return []
  with open(path) as f:
    rows = [json.loads(line) for line in f if line.strip()]
  picked: dict[str, list[dict]] = {}
  for row in sorted(rows, key=lambda r: -r["score"]):
    bucket = picked.setdefault(row["task_name"], [])
    if len(bucket) < per_task:
      bucket.append(row)
  return [r for rows_ in picked.values() for r in rows_]


def eval_section(result: dict) -> str:
  from biomni_jax.eval import table

  scores = {
      SYSTEM_LABELS.get(s, s): {t: row[s] for t, row in result["tasks"].items() if s in row}
      for s in result.get("average", {})
  }
  return table.html_table(scores)


STYLE = """
body { font-family: sans-serif; margin: 24px; max-width: 1100px; color: #222; }
h1 { font-size: 22px; } h2 { font-size: 18px; margin-top: 28px; border-bottom: 1px solid #ddd; }
.charts { display: flex; flex-wrap: wrap; gap: 16px; }
table.scores { border-collapse: collapse; } table.scores td, table.scores th { border: 1px solid #ccc;
  padding: 4px 10px; text-align: right; } table.scores th:first-child { text-align: left; }
td.best { background: #e6f4e6; }
details { margin: 8px 0; border: 1px solid #ddd; padding: 6px; } summary { cursor: pointer; }
.msg { margin: 6px 0; } .role { font-size: 11px; font-weight: bold; color: #555; text-transform: uppercase; }
.msg pre { white-space: pre-wrap; word-wrap: break-word; margin: 2px 0; padding: 6px; background: #f7f7f7;
  font-size: 12px; max-height: 300px; overflow: auto; }
.assistant pre { background: #eef4fb; } .system pre { background: #f4f0e6; }
"""


def build_report(workdir: str) -> str:
  """The report's HTML text (see the module docstring)."""
  sft = read_metrics(os.path.join(workdir, "sft", "metrics.jsonl"))
  rl = read_metrics(os.path.join(workdir, "rl", "metrics.jsonl"))
  charts = [
      svg_line_chart(
          {"train loss": series(sft, "loss"), "held-out loss": series(sft, "eval_loss")},
          "SFT loss",
          "step",
      ),
      svg_line_chart(
          {"reward": series(rl, "reward"), "success": series(rl, "success")},
          "RL reward and success (rollout batches)",
          "RL step",
      ),
      svg_line_chart({"policy loss": series(rl, "loss")}, "RL policy loss", "RL step"),
  ]
  parts = [
      f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>biomni_jax report</title>"
      f"<style>{STYLE}</style></head><body>",
      "<h1>biomni_jax pipeline report</h1>",
      f"<p>workdir: <code>{html.escape(os.path.abspath(workdir))}</code></p>",
  ]
  eval_path = os.path.join(workdir, "eval.json")
  parts.append("<h2>Held-out success per task</h2>")
  if os.path.isfile(eval_path):
    with open(eval_path) as f:
      result = json.load(f)
    parts.append(
        "<p>Mean official score over held-out episodes per task; the best system per task in bold; "
        "average = unweighted mean over tasks.</p>"
    )
    parts.append(eval_section(result))
  else:
    parts.append("<p>eval.json not written yet.</p>")
  timings = result.get("stage_seconds", {}) if os.path.isfile(eval_path) else {}
  if timings:
    rows = "".join(
        f"<tr><th>{html.escape(k)}</th><td>{'-' if v is None else f'{v:.0f} s'}</td></tr>"
        for k, v in timings.items()
    )
    parts.append(f'<h2>Stages</h2><table class="scores">{rows}</table>')
  parts += [
      "<h2>Curves</h2>",
      '<div class="charts">',
      *charts,
      "</div>",
      "<h2>Sample episodes</h2>",
  ]
  for system in ("rl", "sft", "base"):
    samples = _samples(os.path.join(workdir, "eval", system, "trajectories.jsonl"))
    if not samples:
      continue
    parts.append(f"<h3>{html.escape(SYSTEM_LABELS.get(system, system))}</h3>")
    for r in samples:
      label = (
          f"{r['task_name']} / {r['instance_id']} - score {r['score']:g}, format {r['format']:g}, "
          f"{r['turns']} turns, {r['termination']}; answer {r['answer']!r}"
      )
      parts.append(
          f"<details{' open' if system == 'rl' else ''}><summary>{html.escape(label)}</summary>"
          f"{render_messages(r['messages'])}</details>"
      )
  parts.append("</body></html>")
  return "\n".join(parts)


def write_report(workdir: str) -> str:
  """Write workdir/report.html atomically; returns its path."""
  path = os.path.join(workdir, "report.html")
  tmp = f"{path}.tmp{os.getpid()}"
  with open(tmp, "w", encoding="utf-8") as f:
    f.write(build_report(workdir))
  os.replace(tmp, path)
  return path
