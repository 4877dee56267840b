"""The paper's table: best system marked per task (ties for all), average over tasks, tasks won."""

import math

from biomni_jax.eval import table

SCORES = {
    "base": {"a": 0.1, "b": 0.5, "c": 0.0},
    "sft": {"a": 0.4, "b": 0.5, "c": 0.2},
    "rl": {"a": 0.6, "b": 0.3},
}


def test_winners_ties_and_missing():
  assert table.winners(SCORES, "a") == ["rl"]
  assert table.winners(SCORES, "b") == ["base", "sft"]  # a tie marks both
  assert table.winners(SCORES, "c") == ["sft"]  # rl has no score on c: not a candidate
  assert table.winners(SCORES, "zzz") == []


def test_averages_and_tasks_won_by_hand():
  avg = table.averages(SCORES)
  assert (
      math.isclose(avg["base"], 0.6 / 3)
      and math.isclose(avg["sft"], 1.1 / 3)
      and math.isclose(avg["rl"], 0.45)
  )
  assert table.tasks_won(SCORES) == {"base": 1, "sft": 2, "rl": 1}


def test_text_table_marks_best_and_orders_tasks():
  text = table.format_table(SCORES, task_order=["c", "a"])
  lines = [l for l in text.splitlines() if not set(l) <= {"-"}]
  assert lines[0].split() == ["task", "base", "sft", "rl"]
  assert lines[1].split() == ["c", "0.000", "0.200*", "-"]
  assert lines[2].split() == ["a", "0.100", "0.400", "0.600*"]
  assert lines[3].split() == ["b", "0.500*", "0.500*", "0.300"]
  assert lines[4].split() == ["average", "0.200", "0.367", "0.450"]
  assert lines[5].split() == ["tasks", "won", "1", "2", "1"]


def test_html_table_bolds_best_cells():
  out = table.html_table({"x": {"t<1>": 0.5}, "y": {"t<1>": 0.25}})
  assert '<td class="best"><b>0.500</b></td>' in out and "<td>0.250</td>" in out
  assert "t&lt;1&gt;" in out and "<table" in out and out.endswith("</table>")
