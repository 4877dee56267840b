"""Tokenizers: the embedded byte-level BPE (trained on the project's corpus) and real Qwen3 directories.

The embedded tokenizer imitates Qwen3's layout so that every piece of code written against it
works unchanged with `Qwen/Qwen3-*` tokenizer directories:

* byte-level BPE with Qwen2/3's pre-tokenizer split (single digits, letters runs with one leading
  non-letter, punctuation runs, newline runs) and NFC normalisation, so any UTF-8 text round-trips;
* the trained vocabulary first, then Qwen3's added tokens in Qwen3's order: `<|endoftext|>` (pad),
  `<|im_start|>`, `<|im_end|>` (eos), ..., and `<think>` / `</think>` as non-special added tokens
  (always kept whole, not dropped by `skip_special_tokens`);
* a chat template rendering Qwen3's `<|im_start|>role\\n...<|im_end|>\\n` format (see `chat.py` for why
  assistant content is kept verbatim, thinking included).

Training is deterministic given the corpus: the same texts give a byte-identical `tokenizer.json`.
"""

from __future__ import annotations

import os
from typing import Iterable, List

import tokenizers
from tokenizers import AddedToken, Regex, decoders, models, normalizers, pre_tokenizers, trainers
from transformers import AutoTokenizer, PreTrainedTokenizerBase, PreTrainedTokenizerFast

# Qwen2/Qwen3's pre-tokenizer pattern: contractions, letter runs with at most one leading non-letter,
# single digits, punctuation runs (with trailing newlines), newline runs, other whitespace.
QWEN_SPLIT_PATTERN = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
    r"|\s*[\r\n]+|\s+(?!\S)|\s+"
)

PAD_TOKEN = "<|endoftext|>"
IM_START = "<|im_start|>"
IM_END = "<|im_end|>"
THINK_START = "<think>"
THINK_END = "</think>"

# Qwen3's added tokens in Qwen3's id order; (content, special). The special ones are control tokens
# that `skip_special_tokens` drops; the others are ordinary text that must never be split by BPE.
QWEN3_ADDED_TOKENS = (
    (PAD_TOKEN, True),
    (IM_START, True),
    (IM_END, True),
    ("<|object_ref_start|>", True),
    ("<|object_ref_end|>", True),
    ("<|box_start|>", True),
    ("<|box_end|>", True),
    ("<|quad_start|>", True),
    ("<|quad_end|>", True),
    ("<|vision_start|>", True),
    ("<|vision_end|>", True),
    ("<|vision_pad|>", True),
    ("<|image_pad|>", True),
    ("<|video_pad|>", True),
    ("<tool_call>", False),
    ("</tool_call>", False),
    ("<|fim_prefix|>", False),
    ("<|fim_middle|>", False),
    ("<|fim_suffix|>", False),
    ("<|fim_pad|>", False),
    ("<|repo_name|>", False),
    ("<|file_sep|>", False),
    ("<tool_response>", False),
    ("</tool_response>", False),
    (THINK_START, False),
    (THINK_END, False),
)

# Qwen3's chat format with assistant content kept verbatim (reasoning included, no `<think>` blocks
# inserted or stripped) so that the text of a multi-turn conversation only ever grows by appending.
# `chat.render` is the token-level authority; this template produces the same text.
CHAT_TEMPLATE = (
    "{%- for message in messages %}"
    "{%- if message.role not in ['system', 'user', 'assistant'] %}"
    "{{- raise_exception('unknown role ' + message.role) }}"
    "{%- endif %}"
    "{{- '<|im_start|>' + message.role + '\\n' + message.content + '<|im_end|>\\n' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"
)


def default_corpus() -> List[str]:
  """A small protocol-flavoured corpus (tags, Python snippets, biomedical words); trains in ~1 s.

  Deterministic. The real pipeline passes the environment's own text (system prompts, task
  prompts, expert trajectories) to `train_embedded_tokenizer` instead.
  """
  genes = [
      "BRCA1",
      "BRCA2",
      "TP53",
      "EGFR",
      "KRAS",
      "CFTR",
      "APOE",
      "MTHFR",
      "PCSK9",
      "LDLR",
      "SOD1",
      "HTT",
      "FBN1",
      "DMD",
      "SMN1",
      "GBA",
      "LRRK2",
      "PTEN",
      "RB1",
      "NF1",
  ]
  words = [
      "gene",
      "variant",
      "phenotype",
      "disease",
      "patient",
      "protein",
      "expression",
      "genome",
      "association",
      "locus",
      "allele",
      "mutation",
      "pathway",
      "enzyme",
      "sequence",
      "primer",
      "plasmid",
      "restriction",
      "codon",
      "transcript",
      "exon",
      "intron",
      "promoter",
      "CRISPR",
      "delivery",
      "knockout",
      "screen",
      "assay",
      "ontology",
      "diagnosis",
      "syndrome",
      "inheritance",
      "autosomal",
      "dominant",
      "recessive",
      "heterozygous",
      "homozygous",
      "chromosome",
      "rsID",
      "OMIM",
      "HPO",
      "Ensembl",
      "ENSG",
      "p-value",
      "odds",
      "ratio",
      "GWAS",
      "trait",
      "causal",
  ]
  snippets = [
      "import pandas as pd\ndf = pd.read_csv('variants.tsv', sep='\\t')\nprint(df.head())\n",
      "from Bio.Seq import Seq\nseq = Seq('ATGGCCATTGTAATGGGCCGCTGA')\nprint(seq.translate())\n",
      "genes = [g for g in candidates if g in phenotype_to_genes]\nprint(len(genes))\n",
      "result = query_gwas_catalog(trait='type 2 diabetes', p_value=5e-8)\nprint(result[:10])\n",
      "for rsid, p in sorted(hits.items(), key=lambda kv: kv[1])[:5]:\n    print(rsid, p)\n",
      "def gc_content(s):\n    return (s.count('G') + s.count('C')) / len(s)\n",
      "import numpy as np\nscores = np.array([0.1, 0.7, 0.2])\nprint(int(np.argmax(scores)))\n",
  ]
  texts: List[str] = []
  for i, gene in enumerate(genes):
    w = [words[(i * 7 + k) % len(words)] for k in range(12)]
    plan = "\n".join(f"{k + 1}. [{' ✓✗'[k % 3]}] {w[k]} {w[k + 1]} of {gene}" for k in range(3))
    code = snippets[i % len(snippets)]
    texts.append(
        f"<|im_start|>system\nYou are a helpful biomedical assistant. Use <execute> for code and "
        f"<solution> for the final answer.<|im_end|>\n<|im_start|>user\nWhich {w[0]} of {gene} "
        f"is associated with the {w[1]} {w[2]}? rs{1000 + 37 * i}<|im_end|>\n"
        f"<|im_start|>assistant\n<think>\nThe {w[3]} {w[4]} suggests {gene}. Plan:\n{plan}\n"
        f"</think>\n<execute>\n{code}</execute><|im_end|>\n<|im_start|>user\n<observation>"
        f"{gene}\t{w[5]}\t{0.5 ** (i % 9):.4g}\tchr{i % 22 + 1}:{123456 * (i + 1)}</observation>"
        f"<|im_end|>\n<|im_start|>assistant\n<think>\nThe {w[6]} points to {gene}.\n</think>\n"
        f"<solution>{gene}</solution><|im_end|>\n"
    )
    texts.append(" ".join(w) + f" ENSG{i:011d} OMIM:{100000 + 1234 * i} HP:{i:07d}\n")
  texts.extend(snippets)
  return texts


def _bpe_tokenizer() -> tokenizers.Tokenizer:
  tok = tokenizers.Tokenizer(models.BPE(unk_token=None, fuse_unk=False, byte_fallback=False))
  tok.normalizer = normalizers.NFC()
  tok.pre_tokenizer = pre_tokenizers.Sequence(
      [
          pre_tokenizers.Split(Regex(QWEN_SPLIT_PATTERN), behavior="isolated", invert=False),
          pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
      ]
  )
  tok.decoder = decoders.ByteLevel()
  return tok


def train_embedded_tokenizer(
    texts: Iterable[str], vocab_size: int, out_dir: str | os.PathLike
) -> PreTrainedTokenizerFast:
  """Train a byte-level BPE on `texts`, save it as a transformers tokenizer directory, return it.

  `vocab_size` bounds the total vocabulary (256 byte tokens + merges + the len(QWEN3_ADDED_TOKENS)
  added tokens); a small corpus may stop earlier, so `len(tokenizer) <= vocab_size`.
  The result loads with `AutoTokenizer.from_pretrained(out_dir)`.
  """
  n_added = len(QWEN3_ADDED_TOKENS)
  min_size = 256 + n_added
  if vocab_size < min_size:
    raise ValueError(
        f"train_embedded_tokenizer: vocab_size must be >= {min_size} (256 bytes + "
        f"{n_added} added tokens), found {vocab_size}"
    )
  texts = list(texts)
  if not texts:
    raise ValueError("train_embedded_tokenizer: expected a non-empty corpus, found no texts")
  tok = _bpe_tokenizer()
  trainer = trainers.BpeTrainer(
      vocab_size=vocab_size - n_added,
      min_frequency=2,
      show_progress=False,
      initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
      special_tokens=[],
  )
  # The control strings in the corpus must not become BPE merges: strip them before training.
  texts = [_strip_added(t) for t in texts]
  tok.train_from_iterator(texts, trainer=trainer)
  for content, special in QWEN3_ADDED_TOKENS:
    added = AddedToken(
        content, special=special, normalized=False, lstrip=False, rstrip=False, single_word=False
    )
    if special:
      tok.add_special_tokens([added])
    else:
      tok.add_tokens([added])
  fast = PreTrainedTokenizerFast(
      tokenizer_object=tok,
      eos_token=IM_END,
      pad_token=PAD_TOKEN,
      bos_token=None,
      unk_token=None,
      clean_up_tokenization_spaces=False,
      model_max_length=1 << 20,
  )
  fast.chat_template = CHAT_TEMPLATE
  os.makedirs(out_dir, exist_ok=True)
  fast.save_pretrained(os.fspath(out_dir))
  return load_tokenizer(out_dir)


def _strip_added(text: str) -> str:
  for content, _ in QWEN3_ADDED_TOKENS:
    text = text.replace(content, "\n")
  return text


def load_tokenizer(path: str | os.PathLike) -> PreTrainedTokenizerBase:
  """Load a tokenizer directory (a real Qwen3 one or an embedded one) and check Qwen3's tokens.

  Raises ValueError naming the directory and the missing token when `<|im_start|>`,
  `<|im_end|>`, `<|endoftext|>`, `<think>` or `</think>` is not a single token.
  """
  tok = AutoTokenizer.from_pretrained(os.fspath(path))
  for content in (PAD_TOKEN, IM_START, IM_END, THINK_START, THINK_END):
    ids = tok.encode(content, add_special_tokens=False)
    if len(ids) != 1:
      raise ValueError(
          f"load_tokenizer({path}): expected {content!r} to be one token, " f"found ids {ids}"
      )
  if tok.pad_token is None:
    tok.pad_token = PAD_TOKEN
  return tok
