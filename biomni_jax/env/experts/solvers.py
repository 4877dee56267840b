"""Per-family solvers used by the scripted experts: read the prompt, write tool-calling code, read the output.

A solver is stateless. For one task prompt it gives:
  parse(prompt) -> inputs dict, or None if the prompt is not this family's
  explore_code(inputs) -> an optional first look (e.g. names of the HPO terms)
  main_code(inputs) -> code that calls the tools and prints a `RESULT_MARKER` line followed by JSON
  ranked(inputs, result) -> candidate answers, best first (the expert answers ranked[0])
The code reads the task's inputs from the sandbox variable `task_inputs` (tasks/base.py) rather than
retyping them, and does the comparison work itself (e.g. matching a computed value to the options),
printing the top candidate last, on the line after an `answer ->` line (ANSWER_MARKER), exactly as the
solution spells it: the answer then sits at a fixed distance before the solution block, tokenizes the same
in both places, and follows the same token in both (the BPE's `>\n`, as after `<solution>`), so an
induction head finds its first token by the one before it: the easiest layout we found for a small model
that has to copy it (experiments/README.md, "Answers the demo model can copy").
  answer_text(inputs, choice) -> the solution text, exactly as the task asks for it
  sloppy_text(inputs, choice) -> a plausible but mis-formatted answer (graded 0)
  candidates(inputs) -> the candidate set a tool-less guesser would pick from (for the baseline)
"""

from __future__ import annotations

import json
import re

from biomni_jax.env.knowledge import get_knowledge_base
from biomni_jax.env.tasks.base import INPUTS_VARIABLE
from biomni_jax.registry import Registry

RESULT_MARKER = "== RESULT =="
ANSWER_MARKER = "answer ->"
_HPO = re.compile(r"HP:\d{7}")
_ENSG = re.compile(r"ENSG\d{11}")


def result_from_observation(text: str):
  """The JSON printed after RESULT_MARKER in an observation, or None."""
  if not text or RESULT_MARKER not in text:
    return None
  tail = text.split(RESULT_MARKER, 1)[1].strip().split("\n", 1)[0]
  try:
    return json.loads(tail)
  except json.JSONDecodeError:
    return None


def _print_result(expr: str) -> str:
  """The machine-readable result line of main_code (which starts with `import json`)."""
  return f"print({RESULT_MARKER!r}, json.dumps({expr}))"


def _print_answer(expr: str, nonempty: str) -> str:
  """The last lines of main_code: ANSWER_MARKER, then the answer in the task's format, if `nonempty` is."""
  return f"if {nonempty}:\n    print({ANSWER_MARKER!r})\n    print({expr})"


def _line(prompt: str, label: str) -> str:
  for line in prompt.splitlines():
    if line.startswith(label):
      return line[len(label) :]
  return ""


_TI = INPUTS_VARIABLE


class RareDiseaseSolver:
  family = "rare_disease_diagnosis"

  def parse(self, prompt):
    terms = _HPO.findall(_line(prompt, "Phenotypes:"))
    genes = _ENSG.findall(_line(prompt, "Candidate genes:"))
    return {"terms": terms, "genes": genes} if terms and genes else None

  def explore_code(self, x):
    return f"for t, n in zip({_TI}['phenotypes'], get_hpo_names({_TI}['phenotypes'])):\n    print(t, n)"

  def main_code(self, x):
    return (
        "import json\n"
        f"ranking = rank_diseases_by_phenotypes({_TI}['phenotypes'], "
        f"candidate_genes={_TI}['candidate_genes'], top_k=5)['ranking']\n"
        "for row in ranking:\n    print(row['rank'], row['omim_id'], row['score'], row['disease_name'])\n"
        + _print_result("[[r['omim_id'], r['disease_name']] for r in ranking]")
        + "\n"
        + _print_answer("json.dumps({'OMIM_ID': str(ranking[0]['omim_id'])})", "ranking")
    )

  def ranked(self, x, result):
    return [tuple(r) for r in result] if result else None

  def answer_text(self, x, choice):
    # The id alone: the official grader reads only OMIM_ID, and a small model copying a 20-90
    # character disease name derails (experiments/README.md, "Answers the demo model can copy").
    return json.dumps({"OMIM_ID": str(choice[0])})

  def sloppy_text(self, x, choice):
    # The official grader compares OMIM ids with ==, so an int id scores 0.
    return json.dumps({"OMIM_ID": int(choice[0])})

  def candidates(self, x):
    kb = get_knowledge_base()
    out = []
    for gene in x["genes"]:
      g = kb.gene_index(gene)
      for d in kb.gene_diseases(g) if g is not None else ():
        out.append((kb.disease_ids[d].split(":")[1], kb.disease_name(d)))
    return out


class PatientGeneSolver:
  family = "patient_gene_detection"

  def parse(self, prompt):
    terms = _HPO.findall(_line(prompt, "Phenotypes:"))
    genes = _ENSG.findall(_line(prompt, "Candidate genes:"))
    return {"terms": terms, "genes": genes} if terms and genes else None

  def explore_code(self, x):
    return f"print(ensembl_to_gene_symbol({_TI}['candidate_genes']))"

  def main_code(self, x):
    return (
        "import json\n"
        f"ranking = rank_genes_by_phenotypes({_TI}['phenotypes'], {_TI}['candidate_genes'], top_k=5)"
        "['ranking']\n"
        "for row in ranking:\n    print(row['rank'], row['ensembl_id'], row['symbol'], row['score'])\n"
        + _print_result("[r['ensembl_id'] for r in ranking]")
        + "\n"
        + _print_answer("{'causal_gene': [ranking[0]['ensembl_id']]}", "ranking")
    )

  def ranked(self, x, result):
    return list(result) if result else None

  def answer_text(self, x, choice):
    return repr({"causal_gene": [choice]})

  def sloppy_text(self, x, choice):
    return f"The causal gene is {choice}"

  def candidates(self, x):
    return list(x["genes"])


class LocusGeneSolver:
  family = "locus_causal_gene"
  _LOCUS = re.compile(r"Locus:\s*chr([0-9XYMT]+):(\d+)-(\d+)")

  def parse(self, prompt):
    terms = _HPO.findall(_line(prompt, "Phenotypes:"))
    m = self._LOCUS.search(prompt)
    return (
        {"terms": terms, "chrom": m.group(1), "start": int(m.group(2)), "end": int(m.group(3))}
        if terms and m
        else None
    )

  def explore_code(self, x):
    return f"print(get_hpo_names({_TI}['phenotypes']))"

  def main_code(self, x):
    return (
        "import json\n"
        f"genes = get_genes_in_region({_TI}['chromosome'], {_TI}['start'], {_TI}['end'])\n"
        "print('protein-coding genes in locus:', [g['symbol'] for g in genes])\n"
        f"ranking = rank_genes_by_phenotypes({_TI}['phenotypes'], [g['ensembl_id'] for g in genes], "
        "top_k=5)['ranking']\n"
        "for row in ranking:\n    print(row['rank'], row['symbol'], row['score'], row['best_disease'])\n"
        + _print_result("[r['symbol'] for r in ranking]")
        + "\n"
        + _print_answer("ranking[0]['symbol']", "ranking")
    )

  def ranked(self, x, result):
    return list(result) if result else None

  def answer_text(self, x, choice):
    return choice

  def sloppy_text(self, x, choice):
    return f"{choice} (most likely causal gene)"

  def candidates(self, x):
    kb = get_knowledge_base()
    return [
        kb.gene_symbol(g)
        for g in kb.genes_in_region(x["chrom"], x["start"], x["end"], "protein_coding")
    ]


# Per question kind: code computing the answer from `task_inputs` and the letters of the matching options.
_SEQQA_CODE = {
    "digest_fragments": (
        f"r = digest_sequence({_TI}['sequence'], {_TI}['enzymes'], is_circular=False)\n"
        "print('fragments in order:', r['fragment_lengths'])\n"
        "target = sorted(r['fragment_lengths'])\n"
        "matches = [k for k, v in options.items() if re.findall(r'\\d+', v) "
        "and sorted(int(n) for n in re.findall(r'\\d+', v)) == target]\n"
    ),
    "cutting_enzyme": (
        "names = [v for v in options.values() if ' ' not in v]\n"
        f"sites = find_restriction_sites({_TI}['sequence'], names, is_circular=False)['restriction_sites']\n"
        "counts = {e: s['number_of_sites'] for e, s in sites.items()}\nprint('sites per enzyme:', counts)\n"
        "matches = [k for k, v in options.items() if counts.get(v, 0) > 0]\n"
    ),
    "translation": (
        f"protein = translate_sequence({_TI}['sequence'], to_stop=True)\nprint('protein:', protein)\n"
        "matches = [k for k, v in options.items() if v == protein]\n"
    ),
    "melting_temperature": (
        f"tm = calculate_melting_temperature({_TI}['sequence'])['tm_celsius']\nprint('Tm:', tm)\n"
        "values = {k: float(re.match(r'-?\\d+(?:\\.\\d+)?', v).group()) for k, v in options.items() "
        "if re.match(r'-?\\d', v)}\n"
        "matches = sorted(values, key=lambda k: abs(values[k] - tm))\n"
    ),
    "pcr_product": (
        f"r = pcr_simple({_TI}['sequence'], {_TI}['forward_primer'], {_TI}['reverse_primer'])\n"
        "sizes = [p['size'] for p in r['products']]\nprint('product sizes:', sizes)\n"
        "matches = [k for k, v in options.items() if len(sizes) == 1 and v == f'{sizes[0]} bp']\n"
    ),
    "longest_orf": (
        f"orfs = annotate_open_reading_frames({_TI}['sequence'], min_length=3)['orfs']\n"
        "longest = orfs[0]['length'] if orfs else 0\nprint('longest ORF:', longest)\n"
        "matches = [k for k, v in options.items() if v == f'{longest} nt']\n"
    ),
}


class SequenceQASolver:
  family = "sequence_qa"
  _OPTION = re.compile(r"^([A-F])\.(.*)$")
  _PATTERNS = {
      "digest_fragments": re.compile(
          r"digesting the sequence ([ACGT]+) with the following enzymes: (.+)\?"
      ),
      "cutting_enzyme": re.compile(r"enzymes cuts the linear sequence ([ACGT]+)\?"),
      "translation": re.compile(r"the coding sequence ([ACGT]+) encode"),
      "melting_temperature": re.compile(r"temperature of the primer ([ACGT]+) computed"),
      "pcr_product": re.compile(
          r"amplify the template ([ACGT]+) with the primers ([ACGT]+), ([ACGT]+)\."
      ),
      "longest_orf": re.compile(r"on the forward strand of ([ACGT]+)\?"),
  }

  def parse(self, prompt):
    options = {}
    for line in prompt.split("Options:", 1)[-1].splitlines():
      m = self._OPTION.match(line.strip())
      if m:
        options[m.group(1)] = m.group(2).strip()
    for kind, pattern in self._PATTERNS.items():
      m = pattern.search(prompt)
      if m and options:
        return {"kind": kind, "args": m.groups(), "options": options}
    return None

  def explore_code(self, x):
    return f"seq = {_TI}['sequence']\nprint(len(seq), 'nt; GC fraction', round(gc_content(seq), 3))"

  def main_code(self, x):
    return "import json, re\n" f"options = {_TI}['options']\n" + _SEQQA_CODE[
        x["kind"]
    ] + "print('matching options:', matches)\n" + _print_result("matches") + "\n" + _print_answer(
        "f'[ANSWER]{matches[0]}[/ANSWER]'", "matches"
    )

  def ranked(self, x, result):
    """The option letters the code matched, best first."""
    return [k for k in result if k in x["options"]] if result else None

  def answer_text(self, x, choice):
    return f"[ANSWER]{choice}[/ANSWER]"

  def sloppy_text(self, x, choice):
    # The option's text instead of its letter: the grader compares letters, so this scores 0.
    return f"[ANSWER]{x['options'][choice]}[/ANSWER]"

  def candidates(self, x):
    return list(x["options"])


# family name -> its solver (one stateless instance each)
SOLVERS = Registry.from_items(
    "scripted solver",
    {
        s.family: s
        for s in (RareDiseaseSolver(), PatientGeneSolver(), LocusGeneSolver(), SequenceQASolver())
    },
)
