"""Molecular-biology sequence tools on Biopython 1.88, callable from sandbox code.

Names and arguments follow Biomni's biomni/tool/molecular_biology.py where Biomni has the tool
(find_restriction_sites, digest_sequence, find_restriction_enzymes, annotate_open_reading_frames,
pcr_simple); the others (translate_sequence, calculate_melting_temperature, reverse_complement,
gc_content) are this project's. Every tool returns plain dicts/lists/str that print readably.

Coordinates: 0-based positions and half-open [start, end) intervals, except the restriction 'sites'
lists, which are Biopython's 1-based position of the first base after the top-strand cut (so the
0-based cut index, the length of the left piece, is site - 1).
"""

from __future__ import annotations

from Bio import Restriction
from Bio.Seq import Seq
from Bio.SeqUtils import MeltingTemp

_DNA = set("ACGTN")


def _clean_dna(sequence: str, where: str) -> str:
  if not isinstance(sequence, str):
    raise TypeError(f"{where}: expected the DNA sequence as str, found {type(sequence).__name__}")
  seq = "".join(sequence.split()).upper().replace("U", "T")
  bad = sorted(set(seq) - _DNA)
  if bad:
    raise ValueError(f"{where}: expected DNA letters A/C/G/T/N, found {bad}")
  return seq


def _enzyme(name: str, where: str):
  enzyme = getattr(Restriction, str(name).strip(), None)
  if enzyme is None or not hasattr(enzyme, "search"):
    raise ValueError(
        f"{where}: expected a restriction enzyme name known to Biopython, found {name!r}"
    )
  return enzyme


def _as_list(names) -> list[str]:
  if isinstance(names, str):
    return [n.strip() for n in names.replace(";", ",").split(",") if n.strip()]
  return [str(n) for n in names]


def find_restriction_sites(dna_sequence: str, enzymes, is_circular: bool = True) -> dict:
  """Sites of each enzyme: recognition sequence, cut offsets, and 'sites' (1-based base after the cut)."""
  seq = _clean_dna(dna_sequence, "find_restriction_sites")
  result = {
      "sequence_info": {"length": len(seq), "is_circular": is_circular},
      "restriction_sites": {},
  }
  for name in _as_list(enzymes):
    enzyme = _enzyme(name, "find_restriction_sites")
    sites = sorted(enzyme.search(Seq(seq), linear=not is_circular))
    result["restriction_sites"][str(enzyme)] = {
        "recognition_sequence": str(enzyme.site),
        "cut_pattern": enzyme.elucidate(),
        "overhang_type": "blunt"
        if enzyme.is_blunt()
        else ("5'" if enzyme.is_5overhang() else "3'"),
        "sites": sites,
        "number_of_sites": len(sites),
    }
  return result


def _cut_indices(seq: str, enzyme_names: list[str], is_circular: bool, where: str) -> list[int]:
  cuts = set()
  for name in enzyme_names:
    for site in _enzyme(name, where).search(Seq(seq), linear=not is_circular):
      cuts.add((site - 1) % len(seq) if is_circular else site - 1)
  return sorted(c for c in cuts if is_circular or 0 < c < len(seq))


def digest_sequence(dna_sequence: str, enzyme_names, is_circular: bool = True) -> dict:
  """Fragments after cutting with all enzymes together, listed in sequence order.

  'fragment_lengths' is in sequence order (for a circular molecule, starting at the first cut and
  wrapping around); 'sorted_lengths' is the same multiset sorted ascending.
  """
  seq = _clean_dna(dna_sequence, "digest_sequence")
  names = _as_list(enzyme_names)
  cuts = _cut_indices(seq, names, is_circular, "digest_sequence")
  n = len(seq)
  pieces: list[tuple[int, int]] = []
  if not cuts:
    pieces = [(0, n)]
  elif is_circular:
    for i, start in enumerate(cuts):
      end = cuts[i + 1] if i + 1 < len(cuts) else cuts[0] + n
      pieces.append((start, end))
  else:
    bounds = [0] + cuts + [n]
    pieces = [(bounds[i], bounds[i + 1]) for i in range(len(bounds) - 1)]
  fragments = []
  for start, end in pieces:
    text = (seq + seq)[start:end] if end > n else seq[start:end]
    fragments.append(
        {
            "start": start,
            "end": end % n if end > n else end,
            "length": end - start,
            "sequence": text if len(text) <= 60 else text[:30] + "..." + text[-27:],
        }
    )
  lengths = [f["length"] for f in fragments]
  return {
      "sequence_info": {"length": n, "is_circular": is_circular},
      "digestion_info": {
          "enzymes_used": names,
          "cut_positions": cuts,
          "number_of_fragments": len(fragments),
      },
      "fragment_lengths": lengths,
      "sorted_lengths": sorted(lengths),
      "fragments": fragments,
  }


def find_restriction_enzymes(sequence: str, is_circular: bool = False) -> dict:
  """Commercially available enzymes (Biopython CommOnly) that cut the sequence, with their sites."""
  seq = _clean_dna(sequence, "find_restriction_enzymes")
  analysis = Restriction.CommOnly.search(Seq(seq), linear=not is_circular)
  sites = {str(e): sorted(p) for e, p in sorted(analysis.items(), key=lambda kv: str(kv[0])) if p}
  return {"enzyme_sites": sites, "number_of_cutting_enzymes": len(sites)}


def annotate_open_reading_frames(
    sequence: str, min_length: int = 30, search_reverse: bool = False, filter_subsets: bool = False
) -> dict:
  """ORFs from each ATG to the first in-frame stop (TAA/TAG/TGA), stop codon included.

  Returns ORFs sorted longest first: start/end 0-based half-open on the given strand's input
  coordinates, length in nucleotides, strand '+'/'-', frame 1..3 (negative on the reverse strand),
  and the protein (translation without the stop).
  """
  seq = _clean_dna(sequence, "annotate_open_reading_frames")
  n = len(seq)
  strands = [("+", seq)] + ([("-", str(Seq(seq).reverse_complement()))] if search_reverse else [])
  orfs = []
  for strand, s in strands:
    for frame in range(3):
      codons = [s[i : i + 3] for i in range(frame, n - 2, 3)]
      for ci, codon in enumerate(codons):
        if codon != "ATG":
          continue
        for cj in range(ci, len(codons)):
          if codons[cj] in ("TAA", "TAG", "TGA"):
            start, end = frame + 3 * ci, frame + 3 * cj + 3
            if end - start >= min_length:
              if strand == "-":
                start, end = n - end, n - start
              orfs.append(
                  {
                      "start": start,
                      "end": end,
                      "length": end - start,
                      "strand": strand,
                      "frame": frame + 1 if strand == "+" else -(frame + 1),
                      "protein": "".join(str(Seq(c).translate()) for c in codons[ci:cj]),
                  }
              )
            break
  if filter_subsets:
    # Drop ORFs nested in a longer ORF on the same strand and frame (internal ATGs).
    kept = []
    for orf in sorted(orfs, key=lambda o: -o["length"]):
      if not any(
          k["strand"] == orf["strand"]
          and k["frame"] == orf["frame"]
          and k["start"] <= orf["start"]
          and orf["end"] <= k["end"]
          for k in kept
      ):
        kept.append(orf)
    orfs = kept
  orfs.sort(key=lambda o: (-o["length"], o["start"]))
  return {
      "summary_stats": {
          "total_orfs": len(orfs),
          "longest_length": orfs[0]["length"] if orfs else 0,
      },
      "orfs": orfs,
  }


def translate_sequence(sequence: str, table: int = 1, to_stop: bool = False, frame: int = 1) -> str:
  """Protein translation of the sequence from reading frame 1..3 (NCBI codon table `table`); stops are '*'."""
  seq = _clean_dna(sequence, "translate_sequence")
  if frame not in (1, 2, 3):
    raise ValueError(f"translate_sequence: expected frame 1, 2 or 3, found {frame!r}")
  coding = seq[frame - 1 :]
  coding = coding[: len(coding) - len(coding) % 3]
  return str(Seq(coding).translate(table=table, to_stop=to_stop))


def calculate_melting_temperature(primer: str, method: str = "nearest_neighbor") -> dict:
  """Primer Tm in °C: 'nearest_neighbor' (Biopython Tm_NN defaults: DNA_NN3, 50 nM oligo, 50 mM Na+),
  'wallace' (2*(A+T) + 4*(G+C)) or 'gc' (Biopython Tm_GC defaults)."""
  seq = _clean_dna(primer, "calculate_melting_temperature")
  methods = {
      "nearest_neighbor": MeltingTemp.Tm_NN,
      "wallace": MeltingTemp.Tm_Wallace,
      "gc": MeltingTemp.Tm_GC,
  }
  if method not in methods:
    raise ValueError(
        f"calculate_melting_temperature: expected method in {sorted(methods)}, found {method!r}"
    )
  return {
      "primer": seq,
      "length": len(seq),
      "method": method,
      "tm_celsius": round(float(methods[method](seq)), 2),
  }


def reverse_complement(sequence: str) -> str:
  """Reverse complement of a DNA sequence."""
  return str(Seq(_clean_dna(sequence, "reverse_complement")).reverse_complement())


def gc_content(sequence: str) -> float:
  """Fraction of G+C among A/C/G/T letters, in [0, 1]."""
  seq = _clean_dna(sequence, "gc_content")
  acgt = sum(seq.count(b) for b in "ACGT")
  return (seq.count("G") + seq.count("C")) / acgt if acgt else 0.0


def pcr_simple(
    sequence: str, forward_primer: str, reverse_primer: str, circular: bool = False
) -> dict:
  """PCR products from exact primer matches: forward primer on the top strand, reverse primer's
  reverse complement downstream. Product size includes both primers."""
  seq = _clean_dna(sequence, "pcr_simple")
  fwd = _clean_dna(forward_primer, "pcr_simple")
  rev_rc = str(Seq(_clean_dna(reverse_primer, "pcr_simple")).reverse_complement())
  template = seq + seq if circular else seq

  def positions(probe: str) -> list[int]:
    found, i = [], template.find(probe)
    while i != -1 and i < len(seq):
      found.append(i)
      i = template.find(probe, i + 1)
    return found

  fwd_sites, rev_sites = positions(fwd), positions(rev_rc)
  products = []
  for f in fwd_sites:
    for r in rev_sites:
      r_end = r + len(rev_rc)
      if circular and r < f:
        r_end += len(seq)
      if r_end - f >= len(fwd) and (circular or r >= f):
        product = template[f:r_end]
        products.append(
            {
                "size": len(product),
                "forward_position": f,
                "reverse_position": r,
                "sequence": product if len(product) <= 60 else product[:30] + "..." + product[-27:],
            }
        )
  products.sort(key=lambda p: p["size"])
  return {
      "success": bool(products),
      "products": products,
      "forward_binding_sites": len(fwd_sites),
      "reverse_binding_sites": len(rev_sites),
  }
