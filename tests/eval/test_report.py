"""report.html: the series each chart plots (hand-computed from a small run), the page's content, notes for
missing pieces, byte-for-byte determinism, and a headless-Chromium render."""

import json
import math
import re
import shutil
import struct
import subprocess
import zlib

import pytest

from biomni_jax import report

EVAL_RESULT = {
    "tasks": {
        "sequence_qa": {"base": 0.0, "sft": 0.25, "rl": 0.5},
        "locus_causal_gene": {"base": 0.0, "sft": 0.5, "rl": 0.25},
    },
    "average": {"base": 0.0, "sft": 0.375, "rl": 0.375},
    "stage_seconds": {"sft": 61.4, "rl": None},
}


def _write_lines(path, rows):
  path.parent.mkdir(parents=True, exist_ok=True)
  path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def _fake_workdir(root, rl=True):
  """SFT logs steps 1-4 (step 2 twice: a resumed run rewrote it; step 4's loss was NaN, logged as null)."""
  _write_lines(
      root / "sft" / "metrics.jsonl",
      [
          {"step": 1, "loss": 3.0},
          {"step": 2, "loss": 2.5},
          {"step": 2, "loss": 2.0},
          {"step": 3, "loss": 1.5, "eval_loss": 1.8},
          {"step": 4, "loss": None},
      ],
  )
  result = json.loads(json.dumps(EVAL_RESULT))
  if rl:
    _write_lines(
        root / "rl" / "metrics.jsonl",
        [{"step": s, "reward": 0.5 * s, "success": 0.1 * s, "loss": -0.01 * s} for s in (1, 2, 3)],
    )
  else:
    for row in result["tasks"].values():
      del row["rl"]
    del result["average"]["rl"]
  (root / "eval.json").write_text(json.dumps(result))
  episode = {
      "task_name": "sequence_qa",
      "instance_id": "sequence_qa/0/val/0",
      "sample_index": 0,
      "score": 1.0,
      "format": 1.0,
      "turns": 2,
      "termination": "solution",
      "solution": "[ANSWER]B[/ANSWER]",
      "answer": "B",
      "messages": [
          {"role": "user", "content": "Which enzyme cuts <GAATTC>?"},
          {"role": "assistant", "content": "<think>EcoRI</think><execute>print(1)</execute>"},
          {"role": "user", "content": "<observation>1</observation>"},
          {
              "role": "assistant",
              "content": "<think>ok</think><solution>[ANSWER]B[/ANSWER]</solution>",
          },
      ],
  }
  _write_lines(root / "eval" / ("rl" if rl else "sft") / "trajectories.jsonl", [episode])
  return root


def _charts(root):
  return report.chart_data(
      report.read_metrics(str(root / "sft" / "metrics.jsonl")),
      report.read_metrics(str(root / "rl" / "metrics.jsonl")),
      report.read_eval(str(root / "eval.json")),
  )


def test_read_metrics_keeps_the_last_row_per_step_and_series_skip_nulls(tmp_path):
  rows = report.read_metrics(str(_fake_workdir(tmp_path) / "sft" / "metrics.jsonl"))
  assert [r["step"] for r in rows] == [1, 2, 3, 4] and rows[1]["loss"] == 2.0
  assert report.series(rows, "loss") == [(1.0, 3.0), (2.0, 2.0), (3.0, 1.5)]
  assert report.series(rows, "eval_loss") == [(3.0, 1.8)]
  assert report.read_metrics(str(tmp_path / "absent.jsonl")) == []


def test_chart_data_of_a_small_run(tmp_path):
  held_out, sft, rl = _charts(_fake_workdir(tmp_path))
  assert [c.name for c in (held_out, sft, rl)] == ["eval", "sft", "rl"]
  (bars,) = held_out.panels
  assert bars.categories == ["sequence_qa", "locus_causal_gene", "average"]
  assert bars.bars == {"base": [0.0, 0.0, 0.0], "sft": [0.25, 0.5, 0.375], "rl": [0.5, 0.25, 0.375]}
  assert sft.panels[0].lines == {
      "train loss": [(1.0, 3.0), (2.0, 2.0), (3.0, 1.5)],
      "held-out loss": [(3.0, 1.8)],
  }
  rewards, losses = rl.panels
  assert rewards.lines["reward"] == [(1.0, 0.5), (2.0, 1.0), (3.0, 1.5)]
  assert [y for _, y in rewards.lines["success"]] == pytest.approx([0.1, 0.2, 0.3])
  assert [y for _, y in losses.lines["policy loss"]] == pytest.approx([-0.01, -0.02, -0.03])


def test_held_out_bars_leave_a_gap_where_a_system_lacks_a_task():
  result = {
      "tasks": {"a": {"base": 0.2, "sft": 0.4}, "b": {"sft": 0.6, "base": float("nan")}},
      "average": {"base": 0.2, "sft": 0.5},
  }
  panel = report.held_out_bars(result)
  assert panel.categories == ["a", "b", "average"]
  assert panel.bars == {"base": [0.2, None, 0.2], "sft": [0.4, 0.6, 0.5]}
  assert not report.held_out_bars({"tasks": {}, "average": {}}).has_data()
  assert not report.held_out_bars(None).has_data()


def _path_vertices(svg, gid):
  """The (x, y) vertices of the first <path> inside <g id=gid>."""
  group = re.search(rf'<g id="{re.escape(gid)}">\s*<path d="([^"]+)"', svg)
  assert group, gid
  numbers = [float(v) for v in re.findall(r"-?\d+(?:\.\d+)?", group.group(1))]
  return list(zip(numbers[0::2], numbers[1::2]))


def _affine(data, drawn):
  """True when drawn = a * data + b for some a != 0 (how an axis maps values to SVG units)."""
  (d0, p0), (d1, p1) = (data[0], drawn[0]), (data[-1], drawn[-1])
  a = (p1 - p0) / (d1 - d0)
  return a != 0 and all(
      math.isclose(p, p0 + a * (d - d0), abs_tol=1e-3) for d, p in zip(data, drawn)
  )


def test_the_svg_draws_the_series_it_was_given(tmp_path):
  held_out, sft, _ = _charts(_fake_workdir(tmp_path))
  svg = report.render_svg(sft)
  assert svg.startswith('<svg class="chart" id="chart-sft"') and svg.endswith("</svg>")
  assert ">train loss</text>" in svg and ">held-out loss</text>" in svg and "<image" not in svg
  drawn = _path_vertices(svg, "sft-series-0-0")  # the train-loss curve, one vertex per step
  assert len(drawn) == 3
  assert _affine([1, 2, 3], [x for x, _ in drawn]) and _affine(
      [3.0, 2.0, 1.5], [y for _, y in drawn]
  )
  svg = report.render_svg(held_out)
  heights = {}  # bar heights in SVG units are proportional to the scores (bars start at 0)
  for system, i in (("sft", 1), ("rl", 2)):
    for k in range(3):
      ys = [y for _, y in _path_vertices(svg, f"eval-series-{i}-bar-{k}")]
      heights[system, k] = max(ys) - min(ys)
  unit = heights["sft", 0] / 0.25
  for (system, k), h in heights.items():
    assert h == pytest.approx(unit * held_out.panels[0].bars[system][k], rel=1e-4)


def test_report_holds_one_svg_per_chart_the_table_and_escaped_episodes(tmp_path):
  path = report.write_report(str(_fake_workdir(tmp_path)))
  text = open(path).read()
  assert text.count("<svg") == 3
  for name in ("eval", "sft", "rl"):
    assert f'id="chart-{name}"' in text
  assert len(re.findall(r'id="sft-series-\d+-\d+"', text)) == 2  # train and held-out loss
  assert len(re.findall(r'id="rl-series-\d+-\d+"', text)) == 3  # reward, success | policy loss
  assert (
      len(re.findall(r'id="eval-series-\d+-bar-\d+"', text)) == 9
  )  # 3 systems x (2 tasks + average)
  ids = re.findall(r'\bid="([^"]+)"', text)
  assert len(ids) == len(set(ids))  # the inlined figures share one document
  assert '<td class="best"><b>0.500</b></td>' in text  # rl on sequence_qa, sft on locus_causal_gene
  assert re.search(r"<th>average</th><td>0.000</td><td>0.375</td><td>0.375</td>", text)
  assert "&lt;think&gt;EcoRI&lt;/think&gt;&lt;execute&gt;print(1)&lt;/execute&gt;" in text
  assert "<think>" not in text  # every message is escaped
  assert "<tr><th>sft</th><td>61 s</td></tr>" in text and "<tr><th>rl</th><td>-</td></tr>" in text
  assert "http" not in re.sub(
      r'xmlns(:\w+)?="[^"]+"|rdf:resource="[^"]+"', "", text
  )  # nothing fetched


def test_the_same_run_gives_the_same_bytes(tmp_path):
  root = str(_fake_workdir(tmp_path))
  assert report.build_report(root) == report.build_report(root)


def test_a_run_without_rl_notes_the_missing_stage(tmp_path):
  root = _fake_workdir(tmp_path, rl=False)
  held_out, _, rl = _charts(root)
  assert list(held_out.panels[0].bars) == ["base", "sft"] and not rl.has_data()
  text = report.build_report(str(root))
  assert text.count("<svg") == 2 and 'id="chart-rl"' not in text
  assert "No RL curves: rl/metrics.jsonl is missing or empty" in text
  assert ">after SFT</text>" in text and ">after RL</text>" not in text


def test_an_empty_workdir_says_what_is_missing(tmp_path):
  text = report.build_report(str(tmp_path))
  assert "<svg" not in text
  assert "eval.json not written yet" in text and "No SFT curves" in text and "No RL curves" in text
  assert "No evaluation episodes yet" in text


def test_empty_metrics_and_an_empty_eval_render_notes(tmp_path):
  for stage in ("sft", "rl"):
    (tmp_path / stage).mkdir()
    (tmp_path / stage / "metrics.jsonl").write_text("")
  (tmp_path / "eval.json").write_text(json.dumps({"tasks": {}, "average": {}}))
  text = report.build_report(str(tmp_path))
  assert "<svg" not in text and "eval.json has no per-task results" in text
  assert "No SFT curves" in text and "No RL curves" in text


def test_bad_inputs_name_the_file(tmp_path):
  _write_lines(tmp_path / "sft" / "metrics.jsonl", [{"step": 1, "loss": 1.0}, {"loss": 2.0}])
  with pytest.raises(ValueError, match=r"sft/metrics.jsonl: record 2 has no 'step'"):
    report.build_report(str(tmp_path))
  (tmp_path / "sft" / "metrics.jsonl").write_text('{"step": 1}\n{not json\n{"step": 2}\n')
  with pytest.raises(ValueError, match=r"sft/metrics.jsonl:2: not a JSON record"):
    report.build_report(str(tmp_path))
  (tmp_path / "sft" / "metrics.jsonl").unlink()
  (tmp_path / "eval.json").write_text("{")
  with pytest.raises(ValueError, match=r"eval.json: not valid JSON"):
    report.build_report(str(tmp_path))


def _png_pixels(path):
  """(width, height, rows of RGB(A) byte tuples) of an 8-bit RGB/RGBA non-interlaced PNG."""
  data = open(path, "rb").read()
  assert data[:8] == b"\x89PNG\r\n\x1a\n"
  pos, idat, header = 8, b"", None
  while pos < len(data):
    length, kind = struct.unpack(">I4s", data[pos : pos + 8])
    body = data[pos + 8 : pos + 8 + length]
    if kind == b"IHDR":
      header = struct.unpack(">IIBBBBB", body)
    elif kind == b"IDAT":
      idat += body
    pos += 12 + length
  width, height, depth, color_type = header[:4]
  assert depth == 8 and color_type in (2, 6)
  bpp = 3 if color_type == 2 else 4
  raw, stride, prev, rows = zlib.decompress(idat), width * bpp, bytearray(width * bpp), []
  for y in range(height):
    f, line = raw[y * (stride + 1)], bytearray(raw[y * (stride + 1) + 1 : (y + 1) * (stride + 1)])
    for i in range(stride):
      a, b = line[i - bpp] if i >= bpp else 0, prev[i]
      c = prev[i - bpp] if i >= bpp else 0
      if f == 1:
        line[i] = (line[i] + a) & 255
      elif f == 2:
        line[i] = (line[i] + b) & 255
      elif f == 3:
        line[i] = (line[i] + (a + b) // 2) & 255
      elif f == 4:
        p = a + b - c
        pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
        line[i] = (line[i] + (a if pa <= pb and pa <= pc else b if pb <= pc else c)) & 255
    rows.append(bytes(line))
    prev = line
  return width, height, bpp, rows


CHROMIUM = (
    shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
)


@pytest.mark.skipif(
    CHROMIUM is None, reason="headless Chromium not installed (apt-get install -y chromium)"
)
def test_report_renders_in_headless_chromium(tmp_path):
  path = report.write_report(str(_fake_workdir(tmp_path / "run")))
  shot = tmp_path / "shot.png"
  flags = [
      CHROMIUM,
      "--headless",
      "--no-sandbox",
      "--disable-gpu",
      "--hide-scrollbars",
      f"--user-data-dir={tmp_path}/p",
  ]
  subprocess.run(
      flags + [f"--screenshot={shot}", "--window-size=1100,1400", f"file://{path}"],
      check=True,
      capture_output=True,
      timeout=120,
  )
  dom = subprocess.run(
      flags + ["--dump-dom", f"file://{path}"],
      check=True,
      capture_output=True,
      text=True,
      timeout=120,
  ).stdout
  assert dom.count("<svg") == 3 and "tasks won" in dom
  assert len(re.findall(r'id="(?:sft|rl)-series-\d+-\d+"', dom)) == 5
  width, height, bpp, rows = _png_pixels(shot)
  assert (width, height) == (1100, 1400)
  blue = bytes([0x1F, 0x77, 0xB4])  # the first curve's stroke: the line charts are on screen
  bar = bytes.fromhex(report.SYSTEM_COLORS["rl"][1:])  # the RL bars: the bar chart is on screen
  green = bytes([0xE6, 0xF4, 0xE6])  # the best-cell background: the table is on screen
  pixels = {row[i : i + 3] for row in rows for i in range(0, len(row), bpp)}
  assert blue in pixels and bar in pixels and green in pixels and len(pixels) > 50
