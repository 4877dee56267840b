"""Biomni-Eval1: loading the benchmark and grading answers exactly as the official grader does.

The official file is `biomni_eval1_dataset.parquet` (433 rows; columns instance_id,
task_instance_id, task_name, split, prompt, answer). The same columns as JSON lines are also read.
Grading keys on (task_name, task_instance_id); each of the 10 tasks has its own grader returning
1.0 or 0.0, reproduced here rule for rule (biomni/eval/biomni_eval1.py of snap-stanford/Biomni),
including its quirks:
  - gwas_variant_prioritization is case-sensitive; crispr_delivery compares lower-case, the gene
    and letter tasks upper-case; all strip surrounding whitespace.
  - rare_disease_diagnosis parses JSON, else a Python literal, and compares OMIM_ID values with ==,
    so "193700" and 193700 differ; any failure scores 0.
  - patient_gene_detection parses likewise, takes `causal_gene` (a bare value counts as a one-item
    list), and scores 1 iff the list is non-empty and shares an id with the ground truth, split on
    commas (and stripped) only when it holds a comma.
The one addition: for lab_bench tasks an `[ANSWER]x[/ANSWER]` wrapper, which those prompts ask
for, is removed before grading (the official grader expects the bare letter).
"""

from __future__ import annotations

import ast
import dataclasses
import json
import re
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

from biomni_jax.env import protocol
from biomni_jax.registry import Registry

TASK_NAMES: tuple[str, ...] = (
    "gwas_variant_prioritization",
    "screen_gene_retrieval",
    "lab_bench_seqqa",
    "patient_gene_detection",
    "gwas_causal_gene_pharmaprojects",
    "rare_disease_diagnosis",
    "crispr_delivery",
    "lab_bench_dbqa",
    "gwas_causal_gene_opentargets",
    "gwas_causal_gene_gwas_catalog",
)

COLUMNS: tuple[str, ...] = (
    "instance_id",
    "task_instance_id",
    "task_name",
    "split",
    "prompt",
    "answer",
)


class Eval1FormatError(ValueError):
  """An Eval1 file does not have the expected columns, types or task names."""


@dataclasses.dataclass(frozen=True)
class Eval1Row:
  """One benchmark instance. `answer` is the ground truth as stored (always a string)."""

  instance_id: int
  task_instance_id: int
  task_name: str
  split: str
  prompt: str
  answer: str

  @property
  def key(self) -> tuple[str, int]:
    """The official grading key."""
    return (self.task_name, self.task_instance_id)


# ----------------------------------------------------------------------------- loading

_FIELD_TYPES: dict[str, type] = {
    "instance_id": int,
    "task_instance_id": int,
    "task_name": str,
    "split": str,
    "prompt": str,
    "answer": str,
}


def _row_from_record(record: Any, where: str) -> Eval1Row:
  if not isinstance(record, Mapping):
    raise Eval1FormatError(
        f"{where}: expected an object with fields {list(COLUMNS)}, found {type(record).__name__}"
    )
  values = {}
  for field, kind in _FIELD_TYPES.items():
    if field not in record:
      raise Eval1FormatError(
          f"{where}, field {field!r}: missing (expected columns {list(COLUMNS)})"
      )
    value = record[field]
    # bool is an int subclass; an id of True is a broken file, not id 1.
    if not isinstance(value, kind) or isinstance(value, bool):
      raise Eval1FormatError(
          f"{where}, field {field!r}: expected {kind.__name__}, found {type(value).__name__} {value!r:.80}"
      )
    values[field] = value
  if values["task_name"] not in TASK_NAMES:
    raise Eval1FormatError(
        f"{where}, field 'task_name': unknown task {values['task_name']!r}; expected one of {list(TASK_NAMES)}"
    )
  if not values["prompt"].strip():
    raise Eval1FormatError(f"{where}, field 'prompt': empty")
  return Eval1Row(**values)


def rows_from_records(
    records: Iterable[Any], source: str = "<records>", row_label: str = "row"
) -> list[Eval1Row]:
  """Validate records (mappings with COLUMNS) into rows; errors name source, 1-based row and field.

  Raises Eval1FormatError on a missing field, a wrong type, an unknown task name, an empty prompt
  or a repeated (task_name, task_instance_id) key.
  """
  rows: list[Eval1Row] = []
  first_seen: dict[tuple[str, int], int] = {}
  for number, record in enumerate(records, start=1):
    where = f"{source}: {row_label} {number}"
    row = _row_from_record(record, where)
    if row.key in first_seen:
      raise Eval1FormatError(
          f"{where}, fields 'task_name'/'task_instance_id': key {row.key} already used by "
          f"{row_label} {first_seen[row.key]}"
      )
    first_seen[row.key] = number
    rows.append(row)
  return rows


def _read_jsonl(path: Path) -> list[Eval1Row]:
  def records():
    with path.open(encoding="utf-8") as f:
      for line_number, line in enumerate(f, start=1):
        if not line.strip():
          continue
        try:
          yield json.loads(line)
        except json.JSONDecodeError as e:
          raise Eval1FormatError(f"{path}: line {line_number}: not valid JSON ({e})") from e

  return rows_from_records(records(), str(path), row_label="record")


def _read_parquet(path: Path) -> list[Eval1Row]:
  import pyarrow.parquet as pq

  table = pq.read_table(path)
  missing = [c for c in COLUMNS if c not in table.column_names]
  if missing:
    raise Eval1FormatError(
        f"{path}: row 1, field {missing[0]!r}: missing column(s) {missing}; found columns {table.column_names}"
    )
  return rows_from_records(table.select(list(COLUMNS)).to_pylist(), str(path))


def load(path: str | Path) -> list[Eval1Row]:
  """Read Eval1 rows from the official `.parquet` or from `.jsonl` (one JSON object a line)."""
  path = Path(path)
  if not path.exists():
    raise FileNotFoundError(f"Eval1 file not found: {path}")
  suffix = path.suffix.lower()
  if suffix == ".parquet":
    return _read_parquet(path)
  if suffix in (".jsonl", ".json"):
    return _read_jsonl(path)
  raise Eval1FormatError(f"{path}: expected a .parquet or .jsonl file, found suffix {suffix!r}")


SAMPLE_NAME = "eval1_sample"  # what the evaluation commands accept in place of the sample's path


def sample_path() -> Path:
  """The 50 real Eval1 rows shipped with the package (5 per task; source and licence note in
  biomni_jax/env/data/README.md). Raises FileNotFoundError when the install left the file out."""
  path = Path(__file__).resolve().parent / "data" / "eval1_sample_50.jsonl"
  if not path.is_file():
    raise FileNotFoundError(
        f"the packaged Eval1 sample is missing at {path}; reinstall biomni_jax (setup.py lists "
        f"env/data/*.jsonl as package data)"
    )
  return path


# ----------------------------------------------------------------------------- graders


def _parse_json_else_literal(text: Any) -> Any:
  """The official parser: JSON first, then a Python literal (single-quoted dicts); non-str as is."""
  if not isinstance(text, str):
    return text
  try:
    return json.loads(text)
  except json.JSONDecodeError:
    return ast.literal_eval(text)


def _exact_stripped(prediction: str, answer: str) -> float:
  return float(prediction.strip() == answer.strip())


def _upper_stripped(prediction: str, answer: str) -> float:
  return float(prediction.strip().upper() == answer.strip().upper())


def _lower_stripped(prediction: str, answer: str) -> float:
  return float(prediction.strip().lower() == answer.strip().lower())


_ANSWER_WRAPPER = re.compile(r"\[ANSWER\](.*?)\[/ANSWER\]", re.DOTALL | re.IGNORECASE)


def strip_answer_wrapper(text: str) -> str:
  """Content of the last `[ANSWER]...[/ANSWER]` in text (the LAB-Bench prompt format), else text."""
  matches = _ANSWER_WRAPPER.findall(text)
  return matches[-1] if matches else text


def _lab_bench(prediction: str, answer: str) -> float:
  return _upper_stripped(strip_answer_wrapper(prediction), answer)


def _rare_disease_diagnosis(prediction: Any, answer: Any) -> float:
  try:
    predicted = _parse_json_else_literal(prediction)
    truth = json.loads(answer) if isinstance(answer, str) else answer
    return 1.0 if predicted.get("OMIM_ID") == truth.get("OMIM_ID") else 0.0
  except Exception:  # the official grader scores any parse or shape failure 0
    return 0.0


def _patient_gene_detection(prediction: Any, answer: str) -> float:
  try:
    predicted = _parse_json_else_literal(prediction)
    genes = predicted.get("causal_gene", [])
    if not isinstance(genes, list):
      genes = [genes]
    truth = [g.strip() for g in answer.split(",")] if "," in answer else [answer]
    return 1.0 if genes and set(truth) & set(genes) else 0.0
  except Exception:  # the official grader scores any parse or shape failure 0
    return 0.0


# task name -> the official grader (prediction, answer) -> 0.0 | 1.0; several tasks share one.
GRADERS: Registry[Callable[[Any, str], float]] = Registry.from_items(
    "Eval1 grader",
    {
        "gwas_variant_prioritization": _exact_stripped,
        "screen_gene_retrieval": _upper_stripped,
        "lab_bench_seqqa": _lab_bench,
        "patient_gene_detection": _patient_gene_detection,
        "gwas_causal_gene_pharmaprojects": _upper_stripped,
        "rare_disease_diagnosis": _rare_disease_diagnosis,
        "crispr_delivery": _lower_stripped,
        "lab_bench_dbqa": _lab_bench,
        "gwas_causal_gene_opentargets": _upper_stripped,
        "gwas_causal_gene_gwas_catalog": _upper_stripped,
    },
)
assert set(GRADERS) == set(TASK_NAMES)

# Tasks whose official grader also takes an already-parsed dict as the prediction.
_STRUCTURED_TASKS = frozenset({"rare_disease_diagnosis", "patient_gene_detection"})


def _check_task(task_name: str) -> None:
  if task_name not in GRADERS:
    raise ValueError(f"Unknown Eval1 task {task_name!r}; expected one of {list(TASK_NAMES)}")


def grade(task_name: str, prediction: Any, answer: str) -> float:
  """Official Eval1 score (1.0 or 0.0) of `prediction` against the ground truth `answer`.

  prediction: the answer text (what the agent put inside its answer block). The two dict tasks
  also accept an already-parsed object, as the official grader does.
  """
  _check_task(task_name)
  if not isinstance(prediction, str) and task_name not in _STRUCTURED_TASKS:
    raise TypeError(
        f"grade({task_name!r}): expected the prediction as str, found {type(prediction).__name__}"
    )
  if not isinstance(answer, str):
    raise TypeError(
        f"grade({task_name!r}): expected the ground truth as str, found {type(answer).__name__}"
    )
  return float(GRADERS[task_name](prediction, answer))


def grade_response(
    task_name: str,
    response_text: str,
    answer: str,
    cfg: protocol.ProtocolConfig = protocol.DEFAULT_CONFIG,
) -> float:
  """Grade a whole reply: the content of its answer block if it has one, else the whole text."""
  _check_task(task_name)
  solution = protocol.extract_solution(response_text, cfg)
  return grade(task_name, response_text if solution is None else solution, answer)


# ----------------------------------------------------------------------------- answer formats

_FORMAT_HINTS: dict[str, str] = {
    "gwas_variant_prioritization": "the rsID of one listed variant, e.g. rs1800562 (case-sensitive)",
    "screen_gene_retrieval": "one gene symbol, e.g. BRCA1",
    "lab_bench_seqqa": "the option letter wrapped as [ANSWER]A[/ANSWER]",
    "patient_gene_detection": "{'causal_gene': [ENSG id]}",
    "gwas_causal_gene_pharmaprojects": "one gene symbol from the locus",
    "rare_disease_diagnosis": '{"disease_name": name, "OMIM_ID": "6-digit id as a string"}',
    "crispr_delivery": "one letter a-f",
    "lab_bench_dbqa": "the option letter wrapped as [ANSWER]A[/ANSWER]",
    "gwas_causal_gene_opentargets": "one gene symbol from the locus",
    "gwas_causal_gene_gwas_catalog": "one gene symbol from the locus",
}


def answer_format_hint(task_name: str) -> str:
  """A short description of the answer format the task's prompt asks for."""
  _check_task(task_name)
  return _FORMAT_HINTS[task_name]


def format_answer(task_name: str, answer: str) -> str:
  """Write a ground-truth answer the way the task's prompt asks the agent to write it.

  patient_gene_detection -> "{'causal_gene': ['ENSG...']}" (the first id of a comma-separated
  truth); lab_bench_* -> "[ANSWER]X[/ANSWER]"; every other task -> the answer unchanged (for
  rare_disease_diagnosis that is already the JSON object the prompt asks for).
  """
  _check_task(task_name)
  if task_name == "patient_gene_detection":
    first_id = answer.split(",")[0].strip()
    return repr({"causal_gene": [first_id]})
  if task_name.startswith("lab_bench"):
    return f"[ANSWER]{answer.strip()}[/ANSWER]"
  return answer
