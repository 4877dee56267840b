"""report.html: SVG chart geometry by hand, page content from a fake workdir, and a headless-Chromium render."""

import json
import re
import shutil
import struct
import subprocess
import zlib

import pytest

from biomni_jax import report


def test_svg_chart_maps_extremes_to_the_plot_corners():
  svg = report.svg_line_chart({"loss": [(1, 4.0), (3, 2.0)]}, "t", "step", width=200, height=100)
  # plot box: x in [52, 188], y in [44, 60] (left 52, right 12, top 44, bottom 40)
  assert 'points="52.0,44.0 188.0,60.0"' in svg
  assert svg.startswith("<svg") and svg.endswith("</svg>") and ">loss</text>" in svg


def test_svg_chart_without_data_says_so():
  assert "no data" in report.svg_line_chart({"x": []}, "empty", "step")


def _fake_workdir(root):
  (root / "sft").mkdir(parents=True)
  (root / "rl").mkdir()
  with open(root / "sft" / "metrics.jsonl", "w") as f:
    for step, loss in enumerate([3.0, 2.0, 1.5], start=1):
      f.write(
          json.dumps({"step": step, "loss": loss, **({"eval_loss": 1.8} if step == 3 else {})})
          + "\n"
      )
  with open(root / "rl" / "metrics.jsonl", "w") as f:
    for step in (1, 2):
      f.write(
          json.dumps({"step": step, "reward": 0.5 * step, "success": 0.1 * step, "loss": -0.01})
          + "\n"
      )
  (root / "eval.json").write_text(
      json.dumps(
          {
              "tasks": {
                  "sequence_qa": {"base": 0.0, "sft": 0.25, "rl": 0.5},
                  "locus_causal_gene": {"base": 0.0, "sft": 0.5, "rl": 0.25},
              },
              "average": {"base": 0.0, "sft": 0.375, "rl": 0.375},
              "stage_seconds": {"sft": 61.4, "rl": None},
          }
      )
  )
  (root / "eval" / "rl").mkdir(parents=True)
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
  (root / "eval" / "rl" / "trajectories.jsonl").write_text(json.dumps(episode) + "\n")
  return root


def test_report_holds_curves_table_and_escaped_episodes(tmp_path):
  path = report.write_report(str(_fake_workdir(tmp_path)))
  text = open(path).read()
  assert (
      text.count("<svg") == 3 and text.count('class="series"') == 4
  )  # sft loss, rl reward, success, loss
  assert '<td class="best"><b>0.500</b></td>' in text  # rl on sequence_qa, sft on locus_causal_gene
  assert re.search(r"<th>average</th><td>0.000</td><td>0.375</td><td>0.375</td>", text)
  assert "&lt;think&gt;EcoRI&lt;/think&gt;&lt;execute&gt;print(1)&lt;/execute&gt;" in text
  assert "<think>" not in text  # every message is escaped
  assert "<tr><th>sft</th><td>61 s</td></tr>" in text and "<tr><th>rl</th><td>-</td></tr>" in text


def test_report_of_an_empty_workdir_says_what_is_missing(tmp_path):
  text = report.build_report(str(tmp_path))
  assert "eval.json not written yet" in text and text.count("no data") == 3


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
  assert dom.count("<polyline") == 4 and "tasks won" in dom
  width, height, bpp, rows = _png_pixels(shot)
  assert (width, height) == (1100, 1400)
  blue = bytes([0x1F, 0x77, 0xB4])  # the first series' stroke: the plotted curves are on screen
  green = bytes([0xE6, 0xF4, 0xE6])  # the best-cell background: the table is on screen
  pixels = {row[i : i + 3] for row in rows for i in range(0, len(row), bpp)}
  assert blue in pixels and green in pixels and len(pixels) > 50
