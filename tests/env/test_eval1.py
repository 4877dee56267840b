"""Eval1: the loader's validation and the 10 official graders, on real rows and on edge cases."""

import json
import sys

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from biomni_jax.env import eval1
from biomni_jax.env.eval1 import Eval1FormatError, format_answer, grade, grade_response
from biomni_jax.env.protocol import ProtocolConfig

SAMPLE = eval1.sample_path()  # the 50 real rows shipped with the package

GOOD = {
    "instance_id": 1,
    "task_instance_id": 7,
    "task_name": "crispr_delivery",
    "split": "val",
    "prompt": "Pick a-f",
    "answer": "b",
}


def write_jsonl(path, records):
  path.write_text("".join(json.dumps(r) + "\n" for r in records))
  return path


# ----------------------------------------------------------------------------- real sample rows


@pytest.fixture(scope="module")
def sample_rows():
  return eval1.load(SAMPLE)


def test_sample_loads_with_all_ten_tasks(sample_rows):
  assert len(sample_rows) == 50
  assert sorted({r.task_name for r in sample_rows}) == sorted(eval1.TASK_NAMES)
  assert all(isinstance(r.instance_id, int) and isinstance(r.answer, str) for r in sample_rows)


def test_every_sample_row_scores_one_with_its_own_answer(sample_rows):
  for row in sample_rows:
    written = format_answer(row.task_name, row.answer)
    assert grade(row.task_name, written, row.answer) == 1.0, (row.task_name, written)
    reply = f"<think>done</think>\n<solution>{written}</solution>"
    assert grade_response(row.task_name, reply, row.answer) == 1.0, (row.task_name, reply)


def test_every_sample_row_scores_zero_with_another_answer_of_its_task(sample_rows):
  by_task = {}
  for row in sample_rows:
    by_task.setdefault(row.task_name, []).append(row)
  for task, rows in by_task.items():
    for row in rows:
      other = next(
          r.answer
          for r in rows
          if eval1.grade(task, format_answer(task, r.answer), row.answer) == 0.0
      )
      assert other != row.answer
      written = format_answer(task, other)
      assert grade(task, written, row.answer) == 0.0, (task, written, row.answer)
      reply = f"<think>t</think><solution>{written}</solution>"
      assert grade_response(task, reply, row.answer) == 0.0


def test_sample_patient_gene_truth_is_bare_id_and_prompt_asks_for_dict(sample_rows):
  rows = [r for r in sample_rows if r.task_name == "patient_gene_detection"]
  assert rows and all(r.answer.startswith("ENSG") for r in rows)
  assert all("{'causal_gene': [gene1]}" in r.prompt for r in rows)
  assert (
      format_answer(rows[0].task_name, rows[0].answer) == f"{{'causal_gene': ['{rows[0].answer}']}}"
  )


# ----------------------------------------------------------------------------- grader rules


@pytest.mark.parametrize(
    "task,prediction,answer,expected",
    [
        # gwas_variant_prioritization: strip, case-sensitive
        ("gwas_variant_prioritization", " rs7542172\n", "rs7542172", 1.0),
        ("gwas_variant_prioritization", "RS7542172", "rs7542172", 0.0),
        # gene symbols: upper/strip
        ("screen_gene_retrieval", "keap1 ", "KEAP1", 1.0),
        ("gwas_causal_gene_pharmaprojects", "Xpo1", "XPO1", 1.0),
        ("gwas_causal_gene_opentargets", "slc2a9", "SLC2A9", 1.0),
        ("gwas_causal_gene_gwas_catalog", "RNF213", "RNF213", 1.0),
        ("gwas_causal_gene_gwas_catalog", "RNF213, BDNF", "RNF213", 0.0),
        ("gwas_causal_gene_gwas_catalog", "{RNF213}", "RNF213", 0.0),
        # crispr_delivery: lower/strip
        ("crispr_delivery", " B ", "b", 1.0),
        ("crispr_delivery", "b. Lentivirus/Retrovirus", "b", 0.0),
        # lab bench: wrapper removed, then upper/strip
        ("lab_bench_seqqa", "[ANSWER]a[/ANSWER]", "A", 1.0),
        ("lab_bench_seqqa", "A", "A", 1.0),
        ("lab_bench_dbqa", "The answer: [ANSWER] E [/ANSWER]", "E", 1.0),
        ("lab_bench_dbqa", "[answer]C[/answer]", "C", 1.0),
        ("lab_bench_dbqa", "[ANSWER]<answer>[/ANSWER] ... [ANSWER]C[/ANSWER]", "C", 1.0),
        ("lab_bench_dbqa", "[ANSWER]B[/ANSWER]", "C", 0.0),
        ("lab_bench_dbqa", "C.", "C", 0.0),
    ],
)
def test_string_graders(task, prediction, answer, expected):
  assert grade(task, prediction, answer) == expected


RARE_TRUTH = '{"disease_name": "Arthrogryposis, Distal, Type 2A", "OMIM_ID": "193700"}'


@pytest.mark.parametrize(
    "prediction,expected",
    [
        ('{"disease_name": "DA2A", "OMIM_ID": "193700"}', 1.0),
        (
            "{'disease_name': 'anything', 'OMIM_ID': '193700'}",
            1.0,
        ),  # single-quoted dict: literal path
        ('{"OMIM_ID": "193700"}', 1.0),  # disease_name ignored
        (
            '{"disease_name": "Arthrogryposis, Distal, Type 2A", "OMIM_ID": 193700}',
            0.0,
        ),  # int != str
        ('{"disease_name": "x", "OMIM_ID": "OMIM:193700"}', 0.0),
        ('{"disease_name": "x", "OMIM_ID": " 193700"}', 0.0),  # no stripping inside
        ("193700", 0.0),  # parses to an int: no .get -> 0
        ("Arthrogryposis, Distal, Type 2A (OMIM 193700)", 0.0),  # parse failure -> 0
        ("", 0.0),
        ("['193700']", 0.0),
    ],
)
def test_rare_disease_grader(prediction, expected):
  assert grade("rare_disease_diagnosis", prediction, RARE_TRUTH) == expected


def test_rare_disease_grader_accepts_parsed_dict_like_the_official_one():
  assert grade("rare_disease_diagnosis", {"OMIM_ID": "193700"}, RARE_TRUTH) == 1.0
  assert grade("rare_disease_diagnosis", {"OMIM_ID": 193700}, RARE_TRUTH) == 0.0


@pytest.mark.parametrize(
    "prediction,answer,expected",
    [
        ("{'causal_gene': ['ENSG00000039650']}", "ENSG00000039650", 1.0),
        ('{"causal_gene": ["ENSG00000039650"]}', "ENSG00000039650", 1.0),
        (
            "{'causal_gene': 'ENSG00000039650'}",
            "ENSG00000039650",
            1.0,
        ),  # bare string = one-item list
        ("{'causal_gene': ['ENSG1', 'ENSG00000039650']}", "ENSG00000039650", 1.0),  # any overlap
        ("{'causal_gene': ['ENSG2']}", "ENSG1, ENSG2", 1.0),  # comma-separated truth, stripped
        ("{'causal_gene': ['ENSG3']}", "ENSG1, ENSG2", 0.0),
        ("{'causal_gene': []}", "ENSG1", 0.0),  # empty list
        ("{'gene': ['ENSG1']}", "ENSG1", 0.0),  # missing key -> empty
        ("{'causal_gene': [' ENSG1']}", "ENSG1", 0.0),  # predicted ids are not stripped
        ("{'causal_gene': ['ENSG1']}", "ENSG1 ", 0.0),  # a single truth id is not stripped either
        ("{'causal_gene': ['ensg1']}", "ENSG1", 0.0),  # case-sensitive
        ("ENSG1", "ENSG1", 0.0),  # bare id is not a dict -> parse failure -> 0
        ("{'causal_gene': [['ENSG1']]}", "ENSG1", 0.0),  # unhashable items -> 0
        ("not a dict at all", "ENSG1", 0.0),
    ],
)
def test_patient_gene_grader(prediction, answer, expected):
  assert grade("patient_gene_detection", prediction, answer) == expected


def test_unknown_task_is_an_error():
  with pytest.raises(ValueError, match="Unknown Eval1 task 'hle'"):
    grade("hle", "A", "A")
  with pytest.raises(ValueError, match="Unknown Eval1 task"):
    grade_response("screen_design", "<solution>A</solution>", "A")
  with pytest.raises(ValueError, match="Unknown Eval1 task"):
    format_answer("nope", "A")


def test_non_string_prediction_for_a_string_task_is_an_error():
  with pytest.raises(TypeError, match="crispr_delivery"):
    grade("crispr_delivery", None, "b")


def test_grade_response_prefers_the_solution_block():
  assert (
      grade_response("screen_gene_retrieval", "I think KEAP1.\n<solution>FLCN</solution>", "FLCN")
      == 1.0
  )
  assert grade_response("screen_gene_retrieval", "<solution>KEAP1</solution>", "FLCN") == 0.0
  # without a block the whole text is graded
  assert grade_response("screen_gene_retrieval", " flcn ", "FLCN") == 1.0
  assert grade_response("lab_bench_dbqa", "So: [ANSWER]C[/ANSWER]", "C") == 1.0
  cfg = ProtocolConfig(answer_tag="answer")
  assert grade_response("crispr_delivery", "<think>t</think><answer>b</answer>", "b", cfg) == 1.0


def test_format_answer_per_task():
  assert format_answer("patient_gene_detection", "ENSG1") == "{'causal_gene': ['ENSG1']}"
  assert format_answer("patient_gene_detection", "ENSG1, ENSG2") == "{'causal_gene': ['ENSG1']}"
  assert format_answer("lab_bench_seqqa", "D") == "[ANSWER]D[/ANSWER]"
  assert format_answer("rare_disease_diagnosis", RARE_TRUTH) == RARE_TRUTH
  assert format_answer("crispr_delivery", "e") == "e"
  assert all(eval1.answer_format_hint(t) for t in eval1.TASK_NAMES)


# ----------------------------------------------------------------------------- loading and malformed files


def test_load_jsonl_roundtrip(tmp_path):
  rows = eval1.load(
      write_jsonl(tmp_path / "e.jsonl", [GOOD, {**GOOD, "instance_id": 2, "task_instance_id": 8}])
  )
  assert rows[0] == eval1.Eval1Row(**GOOD)
  assert rows[1].key == ("crispr_delivery", 8)


def test_load_parquet_roundtrip(tmp_path):
  records = [
      GOOD,
      {
          **GOOD,
          "instance_id": 2,
          "task_instance_id": 8,
          "task_name": "lab_bench_dbqa",
          "answer": "C",
      },
  ]
  path = tmp_path / "e.parquet"
  pq.write_table(pa.Table.from_pylist(records), path)
  assert eval1.load(path) == [eval1.Eval1Row(**r) for r in records]


def test_missing_field_names_row_and_field(tmp_path):
  bad = {k: v for k, v in GOOD.items() if k != "answer"}
  path = write_jsonl(tmp_path / "e.jsonl", [GOOD, {**GOOD, "task_instance_id": 8}, bad])
  with pytest.raises(Eval1FormatError, match=r"record 3, field 'answer': missing"):
    eval1.load(path)


def test_missing_parquet_column_names_field(tmp_path):
  path = tmp_path / "e.parquet"
  pq.write_table(pa.Table.from_pylist([{k: v for k, v in GOOD.items() if k != "split"}]), path)
  with pytest.raises(Eval1FormatError, match=r"row 1, field 'split': missing column"):
    eval1.load(path)


def test_unknown_task_name_names_row_and_field(tmp_path):
  path = write_jsonl(
      tmp_path / "e.jsonl", [GOOD, {**GOOD, "task_instance_id": 9, "task_name": "hle"}]
  )
  with pytest.raises(Eval1FormatError, match=r"record 2, field 'task_name': unknown task 'hle'"):
    eval1.load(path)


def test_unknown_task_name_in_parquet_names_row(tmp_path):
  path = tmp_path / "e.parquet"
  pq.write_table(
      pa.Table.from_pylist(
          [GOOD, GOOD | {"task_instance_id": 2}, GOOD | {"task_name": "x", "task_instance_id": 3}]
      ),
      path,
  )
  with pytest.raises(Eval1FormatError, match=r"row 3, field 'task_name'"):
    eval1.load(path)


@pytest.mark.parametrize(
    "field,value,expected",
    [
        ("task_instance_id", "7", "int"),
        ("instance_id", True, "int"),
        ("answer", 3, "str"),
        ("prompt", None, "str"),
    ],
)
def test_bad_type_names_row_field_and_types(tmp_path, field, value, expected):
  path = write_jsonl(tmp_path / "e.jsonl", [{**GOOD, field: value}])
  with pytest.raises(Eval1FormatError, match=rf"record 1, field '{field}': expected {expected}"):
    eval1.load(path)


def test_duplicate_grading_key_is_an_error(tmp_path):
  path = write_jsonl(tmp_path / "e.jsonl", [GOOD, {**GOOD, "instance_id": 99}])
  with pytest.raises(Eval1FormatError, match=r"record 2.*already used by record 1"):
    eval1.load(path)


def test_bad_json_line_and_bad_suffix(tmp_path):
  path = tmp_path / "e.jsonl"
  path.write_text(json.dumps(GOOD) + "\n{not json\n")
  with pytest.raises(Eval1FormatError, match="line 2: not valid JSON"):
    eval1.load(path)
  other = tmp_path / "e.csv"
  other.write_text("x")
  with pytest.raises(Eval1FormatError, match="suffix '.csv'"):
    eval1.load(other)
  with pytest.raises(FileNotFoundError):
    eval1.load(tmp_path / "absent.parquet")


# ----------------------------------------------------------------------------- tfds (array_record, no TensorFlow)


def test_tfds_builder_roundtrip_from_jsonl(tmp_path):
  from biomni_jax.env import eval1_tfds

  records = [
      GOOD,
      {**GOOD, "instance_id": 2, "task_instance_id": 8, "split": "train", "answer": "a"},
      {
          **GOOD,
          "instance_id": 3,
          "task_instance_id": 9,
          "task_name": "rare_disease_diagnosis",
          "answer": RARE_TRUTH,
      },
  ]
  source = write_jsonl(tmp_path / "e.jsonl", records)
  builder = eval1_tfds.build(source, tmp_path / "tfds")
  assert {name: split.num_examples for name, split in builder.info.splits.items()} == {
      "val": 2,
      "train": 1,
  }
  assert list((tmp_path / "tfds").rglob("*.array_record*")), "expected array_record shards on disk"
  val = eval1_tfds.read_rows(tmp_path / "tfds", "val")
  assert sorted(val, key=lambda r: r.instance_id) == [
      eval1.Eval1Row(**records[0]),
      eval1.Eval1Row(**records[2]),
  ]
  assert eval1_tfds.read_rows(tmp_path / "tfds", "train") == [eval1.Eval1Row(**records[1])]
  assert "tensorflow" not in sys.modules, "building and reading Eval1 must not import TensorFlow"


def test_tfds_builder_roundtrip_of_the_real_sample(tmp_path, sample_rows):
  from biomni_jax.env import eval1_tfds

  eval1_tfds.build(SAMPLE, tmp_path)
  back = eval1_tfds.read_rows(tmp_path, "val")
  assert sorted(back, key=lambda r: r.instance_id) == sorted(
      sample_rows, key=lambda r: r.instance_id
  )


def test_tfds_builder_needs_a_source_to_prepare(tmp_path):
  from biomni_jax.env import eval1_tfds

  with pytest.raises(ValueError, match="source_path"):
    eval1_tfds.BiomniEval1(data_dir=str(tmp_path)).download_and_prepare(file_format="array_record")
