"""The paper's table: one row per task, one column per system, the best system marked per task.

    scores = {"Qwen3-8B": {"lab_bench_seqqa": 0.2, ...}, "SFT": {...}, "RL": {...}}
    print(format_table(scores))

Per task the cell is the system's mean score; the highest cell(s) of a row get a '*' (ties: every system
at the maximum). The "average" row is the unweighted mean over the tasks a system has; "tasks won" counts
the rows a system is best in (ties count for each). A system missing a task shows '-' and is not a
candidate for that row. The paper marks tasks won the same way (7 of 10 for Biomni-R0-32B).
"""

from __future__ import annotations

import html
import math
from typing import Mapping, Sequence

TOLERANCE = 1e-9


def task_rows(
    scores: Mapping[str, Mapping[str, float]], task_order: Sequence[str] = ()
) -> list[str]:
  """Every task any system has: task_order first, then the rest in first-seen order."""
  seen = []
  for per_task in scores.values():
    seen += [t for t in per_task if t not in seen]
  order = [t for t in dict.fromkeys(task_order) if t in seen]
  return order + [t for t in seen if t not in order]


def winners(scores: Mapping[str, Mapping[str, float]], task: str) -> list[str]:
  """Systems with the highest score on `task` (all of them on a tie; none if no system has it)."""
  have = {s: v[task] for s, v in scores.items() if task in v and not math.isnan(v[task])}
  if not have:
    return []
  best = max(have.values())
  return [s for s, v in have.items() if v >= best - TOLERANCE]


def averages(scores: Mapping[str, Mapping[str, float]]) -> dict[str, float]:
  """Unweighted mean over each system's tasks."""
  return {s: (sum(v.values()) / len(v) if v else float("nan")) for s, v in scores.items()}


def tasks_won(
    scores: Mapping[str, Mapping[str, float]], task_order: Sequence[str] = ()
) -> dict[str, int]:
  won = {s: 0 for s in scores}
  for task in task_rows(scores, task_order):
    for s in winners(scores, task):
      won[s] += 1
  return won


def table_cells(
    scores: Mapping[str, Mapping[str, float]], task_order: Sequence[str] = (), digits: int = 3
) -> tuple[list[str], list[list[str]]]:
  """(header, rows) of strings: task rows with '*' on the best, then "average" and "tasks won"."""
  systems = list(scores)
  header = ["task"] + systems
  rows = []
  for task in task_rows(scores, task_order):
    best = set(winners(scores, task))
    row = [task]
    for s in systems:
      v = scores[s].get(task)
      row.append("-" if v is None else f"{v:.{digits}f}{'*' if s in best else ''}")
    rows.append(row)
  avg, won = averages(scores), tasks_won(scores, task_order)
  rows.append(["average"] + [f"{avg[s]:.{digits}f}" for s in systems])
  rows.append(["tasks won"] + [str(won[s]) for s in systems])
  return header, rows


def format_table(
    scores: Mapping[str, Mapping[str, float]], task_order: Sequence[str] = (), digits: int = 3
) -> str:
  """A fixed-width text table (see table_cells)."""
  header, rows = table_cells(scores, task_order, digits)
  widths = [max(len(r[i]) for r in [header] + rows) for i in range(len(header))]
  lines = [
      "  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths)))
      for r in [header] + rows
  ]
  lines.insert(1, "-" * len(lines[0]))
  lines.insert(len(lines) - 2, "-" * len(lines[0]))
  return "\n".join(lines)


def html_table(
    scores: Mapping[str, Mapping[str, float]], task_order: Sequence[str] = (), digits: int = 3
) -> str:
  """An HTML <table>; best cells are <b> with class "best"."""
  header, rows = table_cells(scores, task_order, digits)
  out = [
      '<table class="scores">',
      "<tr>" + "".join(f"<th>{html.escape(h)}</th>" for h in header) + "</tr>",
  ]
  for row in rows:
    cells = [f"<th>{html.escape(row[0])}</th>"]
    for c in row[1:]:
      if c.endswith("*"):
        cells.append(f'<td class="best"><b>{html.escape(c[:-1])}</b></td>')
      else:
        cells.append(f"<td>{html.escape(c)}</td>")
    out.append("<tr>" + "".join(cells) + "</tr>")
  out.append("</table>")
  return "\n".join(out)
