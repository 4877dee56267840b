"""report.html of a pipeline workdir: the per-task table and its bar chart, loss and reward curves, sample
episodes.

    write_report(workdir) -> workdir/report.html

Reads workdir/sft/metrics.jsonl (loss, eval_loss), workdir/rl/metrics.jsonl (reward, success, loss),
workdir/eval.json (per task: base, sft, rl) and workdir/eval/<system>/trajectories.jsonl. A missing input
leaves its section with a note saying what is missing. The page is self-contained (no scripts, no external
files): each chart is a matplotlib figure written as SVG text (text kept as <text>, nothing rasterized) and
inlined into the HTML. The same inputs give the same bytes (fixed svg.hashsalt, no date in the metadata).

`chart_data` is the pure part: run metrics -> the series each chart plots; `render_svg` draws one chart.
"""

from __future__ import annotations

import dataclasses
import html
import io
import json
import math
import os
import re
from typing import Mapping, Optional, Sequence, Union

import matplotlib
from matplotlib.backends.backend_svg import FigureCanvasSVG
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from biomni_jax.eval import table
from biomni_jax.train.metrics import read_jsonl_metrics

LINE_COLORS = ("#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e")
SYSTEM_LABELS = {"base": "base (untrained)", "sft": "after SFT", "rl": "after RL"}
SYSTEM_COLORS = {"base": "#8c8c8c", "sft": "#ff7f0e", "rl": "#2ca02c"}
AVERAGE = "average"
MAX_MARKED_POINTS = 60  # longer curves are drawn as lines only: a dot per step would hide the trend
PANEL_SIZE = (4.6, 2.9)  # inches (SVG user units are points: 72 per inch)
SVG_RC = {
    "svg.hashsalt": "biomni_jax.report",  # clip-path and marker ids from content, not from uuid4
    "svg.fonttype": "none",  # text as <text>, not glyph paths: smaller and searchable
    # matplotlib ships DejaVu Sans (the layout is measured with it); a short list keeps each <text> short
    "font.sans-serif": ["DejaVu Sans", "Arial"],
    "font.size": 8,
    "axes.titlesize": 9,
    "axes.spines.top": False,
    "axes.spines.right": False,
}
# No timestamp or version string: the same input gives the same bytes.
SVG_METADATA = {"Date": None, "Creator": None}

Points = list[tuple[float, float]]


# ------------------------------------------------------------------------------------------- the data


def read_metrics(path: str) -> list[dict]:
  """Rows of a MetricsWriter jsonl (each with "step"), ascending by step; a later row for the same step
  replaces an earlier one. A missing file gives []; a row without "step" is an error naming the file.
  """
  if not os.path.isfile(path):
    return []
  by_step = {}
  for i, row in enumerate(read_jsonl_metrics(path), start=1):
    if not isinstance(row, dict) or "step" not in row:
      raise ValueError(f"{path}: record {i} has no 'step': {str(row)[:80]!r}")
    by_step[int(row["step"])] = row
  return [by_step[s] for s in sorted(by_step)]


def series(rows: Sequence[dict], key: str) -> Points:
  """[(step, rows[i][key])] over the rows that have a finite value for key (the writer logs NaN as null)."""
  out = []
  for r in rows:
    value = r.get(key)
    if value is not None and math.isfinite(float(value)):
      out.append((float(r["step"]), float(value)))
  return out


@dataclasses.dataclass(frozen=True)
class LinePanel:
  """One axes of curves: legend label -> [(x, y)] with x ascending."""

  title: str
  xlabel: str
  ylabel: str
  lines: dict[str, Points]

  def has_data(self) -> bool:
    return any(self.lines.values())


@dataclasses.dataclass(frozen=True)
class BarPanel:
  """One axes of grouped bars: one group per category, one bar per system (None: the system lacks it).

  bars: system key ("base", "sft", "rl") -> heights, len(heights) == len(categories).
  """

  title: str
  ylabel: str
  categories: list[str]
  bars: dict[str, list[Optional[float]]]

  def has_data(self) -> bool:
    return any(h is not None for heights in self.bars.values() for h in heights)


Panel = Union[LinePanel, BarPanel]


@dataclasses.dataclass(frozen=True)
class Chart:
  """One figure (one <svg>): panels side by side; `missing` is the note shown when none has data."""

  name: str
  panels: list[Panel]
  missing: str

  def has_data(self) -> bool:
    return any(p.has_data() for p in self.panels)


def _score(row: Mapping, system: str) -> Optional[float]:
  value = row.get(system)
  return None if value is None or math.isnan(float(value)) else float(value)


def eval_scores(result: Mapping) -> dict[str, dict[str, float]]:
  """eval.json -> {system: {task: mean score}} for the systems in result["average"], in that order."""
  return {
      s: {t: row[s] for t, row in result.get("tasks", {}).items() if _score(row, s) is not None}
      for s in result.get("average", {})
  }


def held_out_bars(result: Optional[Mapping]) -> BarPanel:
  """The held-out table as bars: categories = the table's task rows, then "average" (the unweighted mean
  over a system's tasks, as eval.json and the table have it); one bar series per evaluated system.
  """
  result = result or {}
  scores = eval_scores(result)
  tasks = table.task_rows(scores)
  bars = {}
  for system in scores:
    heights = [_score(result["tasks"][t], system) for t in tasks]
    heights.append(_score(result.get("average", {}), system) if tasks else None)
    bars[system] = heights
  return BarPanel(
      title="Held-out success per task",
      ylabel="mean official score",
      categories=tasks + [AVERAGE] if tasks else [],
      bars=bars,
  )


def chart_data(
    sft_rows: Sequence[dict], rl_rows: Sequence[dict], eval_result: Optional[Mapping]
) -> list[Chart]:
  """The three charts of the report and the series each plots.

  sft: train loss and held-out loss (eval_loss) vs SFT step.
  rl: mean reward and success rate of each rollout batch vs RL step | the policy loss vs RL step.
  eval: held-out mean score per task and on average, one bar per system (see held_out_bars).
  """
  return [
      Chart(
          "eval",
          [held_out_bars(eval_result)],
          "No held-out scores: eval.json has no per-task results.",
      ),
      Chart(
          "sft",
          [
              LinePanel(
                  "SFT loss",
                  "SFT step",
                  "loss",
                  {
                      "train loss": series(sft_rows, "loss"),
                      "held-out loss": series(sft_rows, "eval_loss"),
                  },
              )
          ],
          "No SFT curves: sft/metrics.jsonl is missing or has no loss (the sft stage has not run).",
      ),
      Chart(
          "rl",
          [
              LinePanel(
                  "RL reward and success (rollout batches)",
                  "RL step",
                  "batch mean",
                  {"reward": series(rl_rows, "reward"), "success": series(rl_rows, "success")},
              ),
              LinePanel(
                  "RL policy loss", "RL step", "loss", {"policy loss": series(rl_rows, "loss")}
              ),
          ],
          "No RL curves: rl/metrics.jsonl is missing or empty (the rl stage has not run or was skipped).",
      ),
  ]


# ------------------------------------------------------------------------------------------- drawing


def _draw_lines(ax, panel: LinePanel, panel_index: int) -> None:
  for i, (label, points) in enumerate(panel.lines.items()):
    if not points:
      continue
    xs, ys = zip(*points)
    marker = "o" if len(points) <= MAX_MARKED_POINTS else None
    (line,) = ax.plot(
        xs, ys, color=LINE_COLORS[i % len(LINE_COLORS)], lw=1.5, marker=marker, ms=3, label=label
    )
    line.set_gid(f"series-{panel_index}-{i}")  # one <g id=...> per plotted series
  ax.set_xlabel(panel.xlabel)
  ax.xaxis.set_major_locator(MaxNLocator(integer=True))


def _draw_bars(ax, panel: BarPanel) -> None:
  """Category k spans [k - 0.4, k + 0.4]; system i of n sits at k - 0.4 + (i + 0.5) * 0.8 / n, labelled
  with its value (so a score of 0 is visibly there, not missing)."""
  n = max(len(panel.bars), 1)
  width = 0.8 / n
  for i, (system, heights) in enumerate(panel.bars.items()):
    at = [(k, h) for k, h in enumerate(heights) if h is not None]
    if not at:
      continue
    xs = [k - 0.4 + width * (i + 0.5) for k, _ in at]
    bars = ax.bar(
        xs,
        [h for _, h in at],
        width,
        color=SYSTEM_COLORS.get(system, LINE_COLORS[i % len(LINE_COLORS)]),
        label=SYSTEM_LABELS.get(system, system),
    )
    for (k, _), bar in zip(at, bars):
      bar.set_gid(f"series-{i}-bar-{k}")  # one <g id=...> per (system, category) bar
    ax.bar_label(bars, fmt="%.2f", fontsize=6 if len(panel.categories) > 6 else 7, padding=1)
  ax.set_xticks(range(len(panel.categories)), panel.categories, rotation=25, ha="right")
  top = max(h for heights in panel.bars.values() for h in heights if h is not None)
  ax.set_ylim(0, 1.1 if top <= 1 else top * 1.1)  # scores live in [0, 1]: keep that scale


def _scope_ids(svg: str, prefix: str) -> str:
  """Prefix every id and every reference to one: the report inlines several figures into one document,
  and matplotlib numbers each figure's groups from 1 (figure_1, axes_1, ...) and names defs by content.
  """
  svg = re.sub(r'\bid="([^"]+)"', rf'id="{prefix}-\1"', svg)
  svg = re.sub(r'xlink:href="#([^"]+)"', rf'xlink:href="#{prefix}-\1"', svg)
  return re.sub(r"url\(#([^)]+)\)", rf"url(#{prefix}-\1)", svg)


def _figure_size(chart: Chart) -> tuple[float, float]:
  """(width, height) in inches: a panel per curve chart; bars get two panels' width (up to ~11 groups of
  three) and room below for the slanted task names."""
  if any(isinstance(p, BarPanel) for p in chart.panels):
    return 2 * PANEL_SIZE[0], PANEL_SIZE[1] + 0.5
  return len(chart.panels) * PANEL_SIZE[0], PANEL_SIZE[1]


def render_svg(chart: Chart) -> str:
  """The chart as an <svg> element (no XML prolog), ready to inline into HTML.

  A Figure of its own with an SVG canvas (no pyplot, so nothing is left behind between calls); the rc
  settings apply only inside the rc_context, which covers drawing and writing.
  """
  with matplotlib.rc_context(SVG_RC):
    fig = Figure(figsize=_figure_size(chart))
    FigureCanvasSVG(fig)
    axes = fig.subplots(1, len(chart.panels), squeeze=False)[0]
    for k, (ax, panel) in enumerate(zip(axes, chart.panels)):
      ax.set_title(panel.title)
      ax.set_ylabel(panel.ylabel)
      if not panel.has_data():
        ax.text(0.5, 0.5, "no data", ha="center", va="center", transform=ax.transAxes)
        continue
      if isinstance(panel, BarPanel):
        _draw_bars(ax, panel)
      else:
        _draw_lines(ax, panel, k)
      ax.grid(axis="y", color="#e5e5e5", lw=0.6)
      ax.set_axisbelow(True)
      if isinstance(panel, BarPanel):  # beside the axes: bars of score 1 reach the top
        ax.legend(frameon=False, fontsize=7, loc="upper left", bbox_to_anchor=(1.0, 1.0))
      else:
        ax.legend(frameon=False, fontsize=7)
    fig.tight_layout()
    out = io.StringIO()
    fig.savefig(out, format="svg", metadata=SVG_METADATA)
  text = _scope_ids(out.getvalue(), chart.name)
  text = text[text.index("<svg") :].strip()
  label = html.escape(" | ".join(p.title for p in chart.panels), quote=True)
  return text.replace(
      "<svg ", f'<svg class="chart" id="chart-{chart.name}" role="img" aria-label="{label}" ', 1
  )


def chart_html(chart: Chart) -> str:
  """An inline <svg> of the chart, or a note when it has nothing to plot."""
  if not chart.has_data():
    return f'<p class="note">{html.escape(chart.missing)}</p>'
  return render_svg(chart)


# ------------------------------------------------------------------------------------------- the page


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


def eval_section(result: Mapping) -> str:
  """The held-out table (eval/table.py): a row per task, a column per system, best cells marked."""
  scores = {SYSTEM_LABELS.get(s, s): v for s, v in eval_scores(result).items()}
  return table.html_table(scores)


def read_eval(path: str) -> Optional[dict]:
  """eval.json, or None when it is not written yet."""
  if not os.path.isfile(path):
    return None
  with open(path) as f:
    try:
      result = json.load(f)
    except json.JSONDecodeError as e:
      raise ValueError(f"{path}: not valid JSON ({e})") from None
  if not isinstance(result, dict):
    raise ValueError(f"{path}: expected a JSON object, found {type(result).__name__}")
  return result


STYLE = """
body { font-family: sans-serif; margin: 24px; max-width: 1100px; color: #222; }
h1 { font-size: 22px; } h2 { font-size: 18px; margin-top: 28px; border-bottom: 1px solid #ddd; }
.charts { display: flex; flex-wrap: wrap; gap: 16px; } svg.chart { max-width: 100%; height: auto; }
p.note { color: #8a5a00; font-style: italic; }
table.scores { border-collapse: collapse; } table.scores td, table.scores th { border: 1px solid #ccc;
  padding: 4px 10px; text-align: right; } table.scores th:first-child { text-align: left; }
td.best { background: #e6f4e6; }
details { margin: 8px 0; border: 1px solid #ddd; padding: 6px; } summary { cursor: pointer; }
.msg { margin: 6px 0; } .role { font-size: 11px; font-weight: bold; color: #555; text-transform: uppercase; }
.msg pre { white-space: pre-wrap; word-wrap: break-word; margin: 2px 0; padding: 6px; background: #f7f7f7;
  font-size: 12px; max-height: 300px; overflow: auto; }
.assistant pre { background: #eef4fb; } .system pre { background: #f4f0e6; }
"""


def _held_out_section(result: Optional[dict], chart: Chart) -> list[str]:
  parts = ["<h2>Held-out success per task</h2>"]
  if result is None:
    return parts + ['<p class="note">eval.json not written yet.</p>']
  if chart.has_data():
    parts += [
        "<p>Mean official score over held-out episodes per task; the best system per task in bold; "
        "average = unweighted mean over tasks.</p>",
        eval_section(result),
    ]
  parts.append(chart_html(chart))
  timings = result.get("stage_seconds", {})
  if timings:
    rows = "".join(
        f"<tr><th>{html.escape(k)}</th><td>{'-' if v is None else f'{v:.0f} s'}</td></tr>"
        for k, v in timings.items()
    )
    parts.append(f'<h2>Stages</h2><table class="scores">{rows}</table>')
  return parts


def _episodes_section(workdir: str) -> list[str]:
  parts = ["<h2>Sample episodes</h2>"]
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
  if len(parts) == 1:
    parts.append(
        '<p class="note">No evaluation episodes yet (eval/&lt;system&gt;/trajectories.jsonl).</p>'
    )
  return parts


def build_report(workdir: str) -> str:
  """The report's HTML text (see the module docstring)."""
  result = read_eval(os.path.join(workdir, "eval.json"))
  held_out, sft_chart, rl_chart = chart_data(
      read_metrics(os.path.join(workdir, "sft", "metrics.jsonl")),
      read_metrics(os.path.join(workdir, "rl", "metrics.jsonl")),
      result,
  )
  parts = [
      f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>biomni_jax report</title>"
      f"<style>{STYLE}</style></head><body>",
      "<h1>biomni_jax pipeline report</h1>",
      f"<p>workdir: <code>{html.escape(os.path.abspath(workdir))}</code></p>",
      *_held_out_section(result, held_out),
      "<h2>Curves</h2>",
      '<div class="charts">',
      chart_html(sft_chart),
      chart_html(rl_chart),
      "</div>",
      *_episodes_section(workdir),
      "</body></html>",
  ]
  return "\n".join(parts)


def write_report(workdir: str) -> str:
  """Write workdir/report.html atomically; returns its path."""
  path = os.path.join(workdir, "report.html")
  tmp = f"{path}.tmp{os.getpid()}"
  with open(tmp, "w", encoding="utf-8") as f:
    f.write(build_report(workdir))
  os.replace(tmp, path)
  return path
