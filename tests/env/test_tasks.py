"""Task families: determinism, disjoint splits, Eval1's exact formats, answers that hold against the data."""

import json
import re
import time

import pytest
from Bio import Restriction
from Bio.Seq import Seq
from Bio.SeqUtils import MeltingTemp

from biomni_jax.env import eval1
from biomni_jax.env.knowledge import get_knowledge_base
from biomni_jax.env.tasks import SPLITS, family_names, get_family, inputs_note, sandbox_setup_code, split_of

EMBEDDED = ["locus_causal_gene", "patient_gene_detection", "rare_disease_diagnosis", "sequence_qa"]
SAMPLE = eval1.sample_path()  # the 50 real Eval1 rows shipped with the package


def test_registry_lists_the_families_and_rejects_unknown_names():
  assert set(EMBEDDED) <= set(family_names())
  with pytest.raises(KeyError, match="unknown task family 'nope'; expected one of"):
    get_family("nope")
  with pytest.raises(ValueError, match="expected split"):
    get_family("sequence_qa").instance("dev", 0)


def test_split_of_is_a_stable_80_10_10_hash():
  keys = [f"OMIM:{i}" for i in range(20_000)]
  counts = {s: sum(split_of(k) == s for k in keys) for s in SPLITS}
  assert abs(counts["train"] / 20_000 - 0.8) < 0.02 and abs(counts["val"] / 20_000 - 0.1) < 0.01
  assert split_of("OMIM:193700") == split_of("OMIM:193700")


@pytest.mark.parametrize("name", EMBEDDED)
def test_instances_are_deterministic_fast_and_well_formed(name):
  family = get_family(name)
  family.instances("val", 5)  # warm the pools
  start = time.perf_counter()
  batch = family.instances("val", 100)
  assert time.perf_counter() - start < 2.0  # generation stays sub-second-ish on a loaded 2-core box
  again = get_family(name).instances("val", 100)
  assert [(x.prompt, x.answer) for x in batch] == [(x.prompt, x.answer) for x in again]
  assert len({x.instance_id for x in batch}) == 100 and all(
      x.split == "val" and x.task_name == name for x in batch
  )
  assert len({x.prompt for x in batch}) == 100
  other_seed = get_family(name, seed=1).instances("val", 10)
  assert [x.prompt for x in other_seed] != [x.prompt for x in batch[:10]]
  for x in batch[:20]:
    assert (
        family.grade(
            x.answer if name != "patient_gene_detection" else repr({"causal_gene": [x.answer]}),
            x.answer,
        )
        == 1.0
    )
    assert family.reward("something else", x.answer) == 0.0


@pytest.mark.parametrize(
    "name,split_key",
    [
        ("rare_disease_diagnosis", lambda x: "OMIM:" + x.metadata["omim_id"]),
        ("patient_gene_detection", lambda x: x.answer),
        ("locus_causal_gene", lambda x: x.metadata["ensembl_id"]),
    ],
)
def test_splits_are_disjoint_by_disease_or_gene(name, split_key):
  family = get_family(name)
  per_split = {s: {split_key(x) for x in family.instances(s, 150)} for s in SPLITS}
  assert not per_split["train"] & per_split["val"] and not per_split["train"] & per_split["test"]
  assert not per_split["val"] & per_split["test"]
  for s in SPLITS:  # the split is the hash of the disease / causal gene
    assert all(split_of(k) == s for k in per_split[s])
  assert len(family.pool("train")) > 2000 and len(family.pool("val")) > 250


def _prompt_skeleton(prompt):
  return re.sub(r"(HP:\d{7}(, )?)+", "<HPO>", re.sub(r"ENSG\d{11}", "<ENSG>", prompt))


@pytest.mark.parametrize("name", ["rare_disease_diagnosis", "patient_gene_detection"])
def test_prompts_match_eval1_rows_exactly_apart_from_the_ids_and_the_inputs_note(name):
  rows = [json.loads(line) for line in SAMPLE.read_text().splitlines() if line.strip()]
  real = {_prompt_skeleton(r["prompt"]) for r in rows if r["task_name"] == name}
  real = {re.sub(r"(<ENSG>(, )?)+", "<GENES>", p) for p in real}
  ours = get_family(name).instances("val", 30)
  for x in ours:
    assert x.inputs and x.prompt.endswith(inputs_note(x.inputs))
    eval1_prompt = x.prompt[: -len(inputs_note(x.inputs))]
    assert re.sub(r"(<ENSG>(, )?)+", "<GENES>", _prompt_skeleton(eval1_prompt)) in real
  if name == "rare_disease_diagnosis":
    truth = [json.loads(r["answer"]) for r in rows if r["task_name"] == name][0]
    assert list(json.loads(ours[0].answer)) == list(truth) and isinstance(
        json.loads(ours[0].answer)["OMIM_ID"], str
    )
  else:
    assert all(re.fullmatch(r"ENSG\d{11}", x.answer) for x in ours)


def test_rare_disease_answers_hold_against_the_knowledge_base():
  kb = get_knowledge_base()
  for x in get_family("rare_disease_diagnosis").instances("test", 40):
    answer = json.loads(x.answer)
    d = kb.disease_index(answer["OMIM_ID"])
    assert answer["disease_name"] == kb.disease_name(d)
    gene = re.search(r"ENSG\d{11}", x.prompt).group(0)
    assert d in kb.gene_diseases(kb.gene_index(gene))
    assert x.metadata["n_candidates"] >= 2
    # Eval1's grader: the int id does not match the string id.
    assert (
        eval1.grade("rare_disease_diagnosis", {"OMIM_ID": int(answer["OMIM_ID"])}, x.answer) == 0.0
    )


def test_patient_gene_and_locus_answers_are_among_the_candidates():
  kb = get_knowledge_base()
  for x in get_family("patient_gene_detection").instances("val", 30):
    candidates = re.findall(r"ENSG\d{11}", x.prompt.split("Candidate genes:")[1])
    assert x.answer in candidates and 10 <= len(candidates) <= 21
  for x in get_family("locus_causal_gene").instances("val", 30):
    chrom, start, end = re.search(r"chr(\w+):(\d+)-(\d+)", x.prompt).groups()
    window = [
        kb.gene_symbol(g) for g in kb.genes_in_region(chrom, int(start), int(end), "protein_coding")
    ]
    assert x.answer in window and x.metadata["n_candidates"] == len(window)


def test_sequence_qa_answers_recomputed_independently_with_biopython():
  family = get_family("sequence_qa")
  batch = family.instances("val", 60)
  assert {x.metadata["kind"] for x in batch} == {
      "digest_fragments",
      "cutting_enzyme",
      "translation",
      "melting_temperature",
      "pcr_product",
      "longest_orf",
  }
  letters = {x.answer for x in batch}
  assert letters <= set("ABCDE") and len(letters) >= 4
  for x in batch:
    options = x.metadata["options"]
    correct = options["ABCDE".index(x.answer)]
    assert len(set(options)) == 5 and "Insufficient information to answer the question." in options
    assert f"[ANSWER] and [/ANSWER]" in x.prompt and x.prompt.startswith(
        "The following is a multiple choice"
    )
    kind = x.metadata["kind"]
    if kind == "digest_fragments":
      seq = re.search(r"sequence ([ACGT]+) with", x.prompt).group(1)
      cuts = sorted(
          {p - 1 for e in x.metadata["enzymes"] for p in getattr(Restriction, e).search(Seq(seq))}
      )
      bounds = [0] + cuts + [len(seq)]
      assert correct == ", ".join(str(b - a) for a, b in zip(bounds, bounds[1:]))
    elif kind == "translation":
      orf = re.search(r"sequence ([ACGT]+) encode", x.prompt).group(1)
      assert correct == str(Seq(orf).translate(to_stop=True))
    elif kind == "melting_temperature":
      primer = re.search(r"primer ([ACGT]+) computed", x.prompt).group(1)
      assert correct == f"{MeltingTemp.Tm_NN(primer):.1f} °C"
    elif kind == "cutting_enzyme":
      seq = re.search(r"sequence ([ACGT]+)\?", x.prompt).group(1)
      cutters = [
          o for o in options if hasattr(Restriction, o) and getattr(Restriction, o).search(Seq(seq))
      ]
      assert cutters == [correct]
    elif kind == "pcr_product":
      template, fwd, rev = re.search(
          r"template ([ACGT]+) with the primers ([ACGT]+), ([ACGT]+)\.", x.prompt
      ).groups()
      start = template.find(fwd)
      end = template.find(str(Seq(rev).reverse_complement())) + len(rev)
      assert correct == f"{end - start} bp"
    assert eval1.grade("lab_bench_seqqa", f"[ANSWER]{x.answer}[/ANSWER]", x.answer) == 1.0


@pytest.mark.parametrize(
    "name", ["rare_disease_diagnosis", "patient_gene_detection", "locus_causal_gene", "sequence_qa"]
)
def test_task_inputs_are_the_prompts_inputs_and_bind_in_a_session(name):
  from biomni_jax.env.experts import InProcessExecutor

  for x in get_family(name).instances("val", 6):
    assert x.inputs and x.prompt.endswith(inputs_note(x.inputs))
    for key, value in x.inputs.items():  # every input is spelled out in the prompt as well
      values = (
          value.values()
          if isinstance(value, dict)
          else value
          if isinstance(value, list)
          else [value]
      )
      assert all(str(v) in x.prompt for v in values), (key, value)
    executor = InProcessExecutor([], sandbox_setup_code(x))
    assert (
        executor.run(
            "print(sorted(task_inputs.items()) == sorted(expected.items()))".replace(
                "expected", repr(x.inputs)
            )
        ).output.strip()
        == "True"
    )


def test_setup_code_decodes_inputs_as_data_never_as_code():
  from biomni_jax.env.experts import InProcessExecutor
  from biomni_jax.env.tasks import TaskInstance, with_inputs

  hostile = '\'); import os; os._exit(3) #"""\n'
  x = with_inputs(TaskInstance("t", "t/0", "p", "a", "val"), {"s": hostile, "n": [1, 2.5]})
  executor = InProcessExecutor([], sandbox_setup_code(x))
  assert executor.namespace["task_inputs"] == {"s": hostile, "n": [1, 2.5]}
  assert sandbox_setup_code(TaskInstance("t", "t/0", "p", "a", "val")) == ""
