"""SeqQA-style multiple-choice questions computed with Biopython (LAB-Bench SeqQA's prompt format).

Question kinds (one per instance, chosen by the instance's generator):
  digest_fragments   fragment lengths (sequence order) of a linear sequence cut by two enzymes
  cutting_enzyme     which one of four enzymes has a site in the sequence
  translation        protein encoded by an ORF (standard code, frame 1, to the first stop)
  melting_temperature  primer Tm with Biopython's Tm_NN defaults
  pcr_product        product length of a primer pair on a template
  longest_orf        length (nt, stop included) of the longest forward-strand ORF
Options are four computed alternatives plus "Insufficient information to answer the question.",
lettered A-E with the correct letter uniform over positions. Answers are one letter; grading is
Eval1's lab_bench_seqqa grader (the [ANSWER]x[/ANSWER] wrapper removed, case-insensitive equality).
Sequences are random (seeded per instance), so splits never share an instance.
"""

from __future__ import annotations

import numpy as np
from Bio import Restriction
from Bio.Seq import Seq
from Bio.SeqUtils import MeltingTemp

from biomni_jax.env import eval1
from biomni_jax.env.tasks.base import TaskFamily, TaskInstance, with_inputs
from biomni_jax.env.tasks.registry import register
from biomni_jax.env.tools import sequence_tools

# Enzymes with plain A/C/G/T sites that cut once per site (checked against Biopython 1.88).
ENZYMES = (
    "EcoRI",
    "BamHI",
    "HindIII",
    "XhoI",
    "SalI",
    "PstI",
    "SmaI",
    "KpnI",
    "SacI",
    "XbaI",
    "NcoI",
    "NdeI",
    "SpeI",
    "NheI",
    "BglII",
    "ClaI",
    "EcoRV",
    "ApaI",
    "MluI",
    "HpaI",
    "ScaI",
    "PvuII",
    "DraI",
    "SphI",
    "AgeI",
    "AvrII",
    "BsmI",
    "AluI",
    "HaeIII",
    "TaqI",
    "MspI",
    "HhaI",
    "RsaI",
    "NlaIII",
)
KINDS = (
    "digest_fragments",
    "cutting_enzyme",
    "translation",
    "melting_temperature",
    "pcr_product",
    "longest_orf",
)
INSUFFICIENT = "Insufficient information to answer the question."
LETTERS = "ABCDE"

HEADER = (
    "The following is a multiple choice question about biology.\n"
    "Please answer by responding with the letter of the correct answer.\n\n"
)
FOOTER = (
    "\n\nYou MUST include the letter of the correct answer within the following tags:\n"
    "[ANSWER] and [/ANSWER]. For example, '[ANSWER]<answer>[/ANSWER]',\n"
    "where <answer> is the correct letter. Always answer in exactly this format\n"
    "of a single letter between the two tags, even if you are unsure.\n"
    "We require this because we use automatic parsing.\n            "
)
STOPS = ("TAA", "TAG", "TGA")


def _random_dna(rng: np.random.Generator, n: int) -> str:
  return "".join(np.array(list("ACGT"))[rng.integers(0, 4, size=n)])


def _plant(seq: str, site: str, rng: np.random.Generator) -> str:
  at = int(rng.integers(0, len(seq) - len(site)))
  return seq[:at] + site + seq[at + len(site) :]


def _sense_codon(rng: np.random.Generator) -> str:
  while True:
    codon = _random_dna(rng, 3)
    if codon not in STOPS:
      return codon


def _render(question: str, options: list[str]) -> str:
  lines = "\n".join(f"{LETTERS[i]}.{opt}" for i, opt in enumerate(options))
  return f"{HEADER}Question: {question}\nOptions:\n{lines}{FOOTER}"


def _lengths_text(lengths: list[int]) -> str:
  return ", ".join(str(x) for x in lengths)


# Each maker returns (question, correct option text, three distinct wrong option texts, metadata, inputs)
# or None when this draw cannot give four distinct options. `inputs` are the question's inputs as data
# (the sandbox's `task_inputs`; make_instance adds the lettered options).


def _digest_fragments(rng):
  seq = _random_dna(rng, int(rng.integers(300, 900)))
  e1, e2 = (str(e) for e in rng.choice(ENZYMES[:27], size=2, replace=False))
  for name in (e1, e2):
    for _ in range(int(rng.integers(1, 3))):
      seq = _plant(seq, str(getattr(Restriction, name).site), rng)
  both = sequence_tools.digest_sequence(seq, [e1, e2], is_circular=False)["fragment_lengths"]
  if not 3 <= len(both) <= 8:
    return None
  wrong = [
      sequence_tools.digest_sequence(seq, [e1, e2], is_circular=True)["fragment_lengths"],
      sequence_tools.digest_sequence(seq, [e1], is_circular=False)["fragment_lengths"],
      sequence_tools.digest_sequence(seq, [e2], is_circular=False)["fragment_lengths"],
  ]
  shift = int(rng.integers(3, 40))
  i = int(rng.integers(len(both) - 1))
  shifted = list(both)
  shifted[i] += shift
  shifted[i + 1] -= shift
  if shifted[i + 1] > 0:
    wrong.append(shifted)
  distinct, seen = [], {tuple(sorted(both))}
  for w in wrong:
    if tuple(sorted(w)) not in seen:
      seen.add(tuple(sorted(w)))
      distinct.append(w)
  if len(distinct) < 3:
    return None
  question = (
      f"What fragment lengths should I expect to see after digesting the sequence {seq} "
      f"with the following enzymes: {e1}, {e2}?"
  )
  return (
      question,
      _lengths_text(both),
      [_lengths_text(w) for w in distinct[:3]],
      {"enzymes": [e1, e2]},
      {"sequence": seq, "enzymes": [e1, e2]},
  )


def _cutting_enzyme(rng):
  seq = _random_dna(rng, int(rng.integers(200, 600)))
  names = [str(e) for e in rng.choice(ENZYMES[:27], size=4, replace=False)]
  seq = _plant(seq, str(getattr(Restriction, names[0]).site), rng)
  cuts = {n: len(getattr(Restriction, n).search(Seq(seq), linear=True)) for n in names}
  if cuts[names[0]] == 0 or any(cuts[n] for n in names[1:]):
    return None
  question = f"Which of the following restriction enzymes cuts the linear sequence {seq}?"
  return question, names[0], names[1:], {"enzyme": names[0]}, {"sequence": seq}


def _translation(rng):
  n_codons = int(rng.integers(12, 40))
  orf = "ATG" + "".join(_sense_codon(rng) for _ in range(n_codons)) + str(rng.choice(STOPS))
  protein = str(Seq(orf).translate(to_stop=True))
  frame2 = str(Seq(orf[1 : 1 + 3 * ((len(orf) - 1) // 3)]).translate()).split("*")[0]
  reverse = str(Seq(orf).reverse_complement().translate()).split("*")[0]
  pos = int(rng.integers(1, len(protein)))
  substitutes = [a for a in "ACDEFGHIKLMNPQRSTVWY" if a != protein[pos]]
  mutated = protein[:pos] + str(rng.choice(substitutes)) + protein[pos + 1 :]
  wrong = [frame2 or "M", reverse or "M", mutated]
  if len({protein, *wrong}) < 4:
    return None
  question = (
      f"What protein does the coding sequence {orf} encode (standard genetic code, reading frame 1, "
      "translated up to the first stop codon)?"
  )
  return question, protein, wrong, {}, {"sequence": orf}


def _melting_temperature(rng):
  primer = _random_dna(rng, int(rng.integers(18, 28)))
  tm = round(float(MeltingTemp.Tm_NN(primer)), 1)
  offsets = rng.choice([o for o in range(-12, 13) if abs(o) >= 3], size=3, replace=False)
  offsets = sorted(int(o) for o in offsets)
  if any(b - a < 3 for a, b in zip(offsets, offsets[1:])):
    return None
  question = (
      f"What is the melting temperature of the primer {primer} computed with the nearest-neighbor "
      "method (Biopython Tm_NN defaults: DNA_NN3 table, 50 nM primer, 50 mM Na+)?"
  )
  return (
      question,
      f"{tm:.1f} °C",
      [f"{tm + o:.1f} °C" for o in offsets],
      {"tm": tm},
      {"sequence": primer},
  )


def _pcr_product(rng):
  template = _random_dna(rng, int(rng.integers(400, 900)))
  f_len, r_len = int(rng.integers(18, 25)), int(rng.integers(18, 25))
  a = int(rng.integers(0, len(template) // 3))
  b = int(rng.integers(2 * len(template) // 3, len(template)))
  forward = template[a : a + f_len]
  reverse = str(Seq(template[b - r_len : b]).reverse_complement())
  products = sequence_tools.pcr_simple(template, forward, reverse)["products"]
  if len(products) != 1 or products[0]["size"] != b - a:
    return None
  size = b - a
  wrong = {size - f_len - r_len, size - r_len, size + f_len, size + int(rng.integers(5, 60))} - {
      size
  }
  wrong = sorted(wrong)
  picked = [wrong[i] for i in rng.choice(len(wrong), size=3, replace=False)]
  question = (
      f"I amplify the template {template} with the primers {forward}, {reverse}. "
      "How long is the PCR product, in base pairs?"
  )
  return (
      question,
      f"{size} bp",
      [f"{w} bp" for w in picked],
      {"size": size},
      {"sequence": template, "forward_primer": forward, "reverse_primer": reverse},
  )


def _longest_orf(rng):
  seq = _random_dna(rng, int(rng.integers(150, 400)))
  orf = (
      "ATG"
      + "".join(_sense_codon(rng) for _ in range(int(rng.integers(20, 45))))
      + str(rng.choice(STOPS))
  )
  at = int(rng.integers(0, len(seq) - len(orf))) if len(seq) > len(orf) else 0
  seq = seq[:at] + orf + seq[at + len(orf) :]
  orfs = sequence_tools.annotate_open_reading_frames(seq, min_length=3)["orfs"]
  lengths = sorted({o["length"] for o in orfs}, reverse=True)
  longest = lengths[0]
  wrong = {longest - 3, longest + 3, longest + 6 * int(rng.integers(1, 4))} | set(lengths[1:3])
  wrong = sorted(w for w in wrong if w > 0 and w != longest)
  picked = [wrong[i] for i in rng.choice(len(wrong), size=3, replace=False)]
  question = (
      f"What is the length, in nucleotides and including the stop codon, of the longest open reading "
      f"frame (ATG to the first in-frame stop codon) on the forward strand of {seq}?"
  )
  return (
      question,
      f"{longest} nt",
      [f"{w} nt" for w in picked],
      {"length": longest},
      {"sequence": seq},
  )


MAKERS = {
    "digest_fragments": _digest_fragments,
    "cutting_enzyme": _cutting_enzyme,
    "translation": _translation,
    "melting_temperature": _melting_temperature,
    "pcr_product": _pcr_product,
    "longest_orf": _longest_orf,
}


@register("sequence_qa")
class SequenceQA(TaskFamily):
  """LAB-Bench-SeqQA-style questions; `kinds` restricts the question kinds (default: all)."""

  tools = (
      "digest_sequence",
      "find_restriction_sites",
      "translate_sequence",
      "calculate_melting_temperature",
      "pcr_simple",
      "annotate_open_reading_frames",
  )

  def __init__(self, seed: int = 0, kinds: tuple[str, ...] = KINDS):
    super().__init__(seed)
    unknown = [k for k in kinds if k not in MAKERS]
    if unknown or not kinds:
      raise ValueError(f"sequence_qa: expected kinds from {KINDS}, found {list(kinds)}")
    self.kinds = tuple(kinds)

  def make_instance(self, split: str, index: int) -> TaskInstance:
    kind = self.kinds[index % len(self.kinds)]
    for attempt in range(100):
      rng = self.rng(split, index, attempt)
      made = MAKERS[kind](rng)
      if made is None:
        continue
      question, correct, wrong, meta, inputs = made
      options = [correct] + list(wrong)
      order = list(rng.permutation(4))
      options = [options[i] for i in order]
      options.insert(int(rng.integers(0, 5)), INSUFFICIENT)
      letter = LETTERS[options.index(correct)]
      instance = TaskInstance(
          self.name,
          self.instance_id(split, index),
          _render(question, options),
          letter,
          split,
          {"kind": kind, "options": options, "attempt": attempt, **meta},
      )
      return with_inputs(instance, {**inputs, "options": dict(zip(LETTERS, options))})
    raise RuntimeError(f"sequence_qa: no valid {kind} question for split={split!r} index={index}")

  def grade(self, prediction, answer: str) -> float:
    return eval1.grade("lab_bench_seqqa", prediction, answer)
