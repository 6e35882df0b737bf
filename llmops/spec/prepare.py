"""The `prepare:` section of a run spec: from raw text to Megatron indexed datasets.

One small model per step, field docstrings that become the JSON Schema
descriptions. The rules that tie the prepare stage to the pretrain stage
(what pretraining reads, the vocabulary) live in :mod:`llmops.spec.rules`.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Literal

from pydantic import Field, model_validator

from llmops.spec.base import SpecModel, absolute_path
from llmops.spec.hf import PREFIX, tokenizer_reference

# Ids our trained tokenizers give their reserved pieces; `eos` ends every document.
UNK_ID, BOS_ID, EOS_ID, PAD_ID = 0, 1, 2, 3
DEFAULT_SPECIAL_TOKENS = ["<|system|>", "<|user|>", "<|assistant|>", "<|end|>"]
# Settings a resumed run may change: they do not change what finished shards wrote.
RUN_SETTINGS = {"workers": True, "num_shards": True, "max_error_rate": True, "output": {"keep_work"}}


class InputSpec(SpecModel):
    """Where the raw text comes from: files, folders and globs, or the built-in corpus."""

    paths: list[str] = []
    """Files, folders (searched recursively) or glob patterns; .gz and .zst files are decompressed."""
    builtin: Literal["python-docstrings"] | None = None
    """A corpus made at run time instead of `paths`: the docstrings of this Python's standard library."""
    format: Literal["auto", "jsonl", "parquet", "text"] = "auto"
    """auto: by extension (.jsonl/.json/.ndjson, .parquet, .txt/.md/.rst); text: one document per file."""
    text_field: str = "text"
    """The JSONL key or Parquet column that holds the document text."""
    id_field: str | None = "id"
    """The key or column with each document's id; documents without one get `<source>#<position>`."""
    max_document_bytes: int = Field(5_000_000, ge=1, le=2**31)
    """Longer documents are quarantined as `too_large` (they are usually dumps, not prose)."""
    chunk_bytes: int = Field(32 * 2**20, ge=2**16, le=2**31)
    """Uncompressed JSONL files larger than this are read in chunks of this size, in parallel."""
    follow_links: bool = False
    """Read files a folder or a glob reaches through links to elsewhere (a folder of links to a shared store).
    Off: such links are skipped and listed (a data folder from elsewhere may link to /proc/self/environ or a
    credentials file); links that stay inside the folder are always read. /proc, /sys and /dev never are."""

    @model_validator(mode="after")
    def _one_source(self) -> InputSpec:
        if bool(self.paths) == (self.builtin is not None):
            raise ValueError("give exactly one of input.paths (files, folders, globs) or "
                             "input.builtin: python-docstrings")
        return self


class CleanSpec(SpecModel):
    """Text normalisation applied to every document before filtering."""

    unicode_nfc: bool = True
    """Compose characters (NFC), so that the same text always has the same bytes."""
    remove_control_chars: bool = True
    """Drop C0/C1 control characters other than tab and newline."""
    normalize_whitespace: bool = True
    """Unify line ends and exotic spaces, strip trailing spaces, allow at most one blank line in a row (spacing
    inside a line is kept: indentation and tables carry meaning)."""


class FilterSpec(SpecModel):
    """Gopher-style quality rules (Rae et al., 2021). Set a rule to null to switch it off.

    The defaults are language-agnostic: they count whitespace-separated words and
    repeated lines and n-grams, never a word list.
    """

    enabled: bool = True
    """Switch every quality rule off at once."""
    min_words: int | None = Field(50, ge=0, le=10**9)
    """Drop documents with fewer words (reason `too_few_words`)."""
    max_words: int | None = Field(100_000, ge=1, le=10**9)
    """Drop documents with more words (reason `too_many_words`)."""
    min_mean_word_length: float | None = Field(3.0, ge=0, le=1e6)
    """Drop documents whose mean word length is below this (reason `mean_word_length`)."""
    max_mean_word_length: float | None = Field(10.0, ge=0, le=1e6)
    """Drop documents whose mean word length is above this (reason `mean_word_length`)."""
    max_symbol_ratio: float | None = Field(0.5, ge=0, le=1e6)
    """Drop documents with more symbol characters per letter or digit than this (reason `symbol_ratio`)."""
    min_alpha_word_fraction: float | None = Field(0.8, ge=0, le=1)
    """Drop documents where fewer words contain a letter (reason `alpha_words`)."""
    max_duplicate_line_fraction: float | None = Field(0.3, ge=0, le=1)
    """Drop documents whose repeated lines are more than this share of lines (reason `duplicate_lines`)."""
    max_duplicate_line_char_fraction: float | None = Field(0.2, ge=0, le=1)
    """... or more than this share of characters (reason `duplicate_line_chars`)."""
    max_top_ngram_char_fraction: dict[int, float] | None = {2: 0.20, 3: 0.18, 4: 0.16}
    """n -> the largest share of characters the most frequent word n-gram may cover (reason `top_<n>gram`)."""
    max_duplicate_ngram_char_fraction: dict[int, float] | None = {
        5: 0.15, 6: 0.14, 7: 0.13, 8: 0.12, 9: 0.11, 10: 0.10}
    """n -> the largest share of characters repeated word n-grams may cover (reason `duplicate_<n>gram`)."""


class DedupSpec(SpecModel):
    """Global deduplication across every shard: exact, then near-duplicate (MinHash LSH)."""

    exact: bool = True
    """Drop documents whose normalised text (lower-cased words, no punctuation) hashes like an earlier one."""
    near: bool = True
    """Drop near-duplicates found with MinHash LSH (datasketch) over word n-gram shingles."""
    ngram: int = Field(5, ge=1, le=100)
    """Words per shingle."""
    num_perm: int = Field(128, ge=8, le=10_000)
    """MinHash permutations (signature length)."""
    bands: int | None = Field(None, ge=2, le=10_000)
    """LSH bands; with `rows`, overrides the bands that `threshold` implies."""
    rows: int | None = Field(None, ge=1, le=10_000)
    """Rows (signature values) per LSH band."""
    threshold: float = Field(0.7, gt=0, le=1)
    """Candidate pairs whose estimated Jaccard similarity is at least this are duplicates."""
    seed: int = Field(1, ge=0, le=2**32 - 1)
    """Seeds the MinHash permutations; all shards of one run must use the same."""

    @model_validator(mode="after")
    def _bands_rows(self) -> DedupSpec:
        if (self.bands is None) != (self.rows is None):
            raise ValueError("give both dedup.bands and dedup.rows, or neither (to derive them from threshold)")
        if self.bands is not None and self.bands * self.rows > self.num_perm:
            raise ValueError(f"dedup.bands x dedup.rows = {self.bands * self.rows} exceeds "
                             f"dedup.num_perm = {self.num_perm}; lower them or raise num_perm")
        return self

    def lsh_params(self) -> tuple[int, int]:
        """(bands, rows): explicit, or the most bands of `num_perm` whose S-curve passes 0.995 at threshold."""
        if self.bands is not None:
            return self.bands, self.rows
        for rows in range(self.num_perm // 2, 0, -1):
            bands = self.num_perm // rows
            if bands >= 2 and 1 - (1 - self.threshold ** rows) ** bands >= 0.995:
                return bands, rows
        return self.num_perm // 2, 2


class TokenizerSpec(SpecModel):
    """The SentencePiece tokenizer: trained on a sample of the cleaned corpus, or an existing model."""

    model: str | None = None
    """An existing tokenizer; when set, nothing is trained: a SentencePiece `.model` file, or a Hugging Face
    tokenizer folder written `hf:DIR` (its tokenizer.json, e.g. Llama 3's, for continued pre-training of the
    model it came with). `prepare.tokenizer: hf:DIR` is short for this."""
    type: Literal["bpe", "unigram"] = "bpe"
    """SentencePiece model type to train."""
    vocab_size: int = Field(32_000, ge=64, le=10_000_000)
    """Vocabulary size to train, including the reserved and special tokens."""
    byte_fallback: bool = True
    """Encode characters outside the vocabulary as UTF-8 bytes instead of <unk>."""
    character_coverage: float = Field(0.9995, gt=0, le=1)
    """Share of characters the vocabulary must cover (the rest fall back to bytes)."""
    split_digits: bool = True
    """Give every digit its own piece (better arithmetic, as in Llama)."""
    sample_bytes: int = Field(100_000_000, ge=1000, le=2**40)
    """Train on about this many bytes of the deduplicated corpus, sampled by document id."""
    special_tokens: list[str] = list(DEFAULT_SPECIAL_TOKENS)
    """Control tokens reserved for chat and alignment (after <unk>, <s>, </s>, <pad>); text never encodes to them."""


class OutputSpec(SpecModel):
    """What the prepare stage writes."""

    dir: str
    """Output folder: the `.bin`/`.idx` pair, tokenizer, metadata.json, stats.json, documents, quarantine."""
    name: str = Field("corpus", pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
    """Dataset name: the token files are `<dir>/<name>_text_document.bin/.idx`."""
    jsonl: bool = True
    """Also write the cleaned, filtered, deduplicated documents as JSONL (id, text, source)."""
    compression: Literal["zstd", "gzip", "none"] = "zstd"
    """Compression of documents.jsonl."""
    keep_work: bool = False
    """Keep the intermediate shard files in `<dir>/work` after a successful run (markers are always kept)."""


class PrepareSpec(SpecModel):
    """Data preparation: read, clean, filter, deduplicate, train a tokenizer, tokenize into indexed datasets."""

    input: InputSpec
    clean: CleanSpec = CleanSpec()
    filters: FilterSpec = FilterSpec()
    dedup: DedupSpec = DedupSpec()
    tokenizer: TokenizerSpec | None = TokenizerSpec()
    """Null writes only the documents JSONL (no tokenizer, no token files); `hf:DIR` uses that Hugging Face
    tokenizer (short for `tokenizer: {model: hf:DIR}`)."""
    output: OutputSpec
    workers: int | None = Field(None, ge=1, le=4096)
    """Processes on this machine; unset means one per CPU core."""
    num_shards: int | None = Field(None, ge=1, le=1_000_000)
    """Shards per phase for a local run; unset means four per worker (smaller shards balance better)."""
    max_error_rate: float = Field(0.01, ge=0, le=1)
    """Fail the run when more than this share of input records is quarantined (unreadable, empty, too large)."""

    @model_validator(mode="before")
    @classmethod
    def _tokenizer_shorthand(cls, data):
        if isinstance(data, dict) and isinstance(data.get("tokenizer"), str) and data["tokenizer"].startswith(PREFIX):
            return {**data, "tokenizer": {"model": data["tokenizer"]}}
        return data

    @property
    def prefix(self) -> str:
        """The indexed dataset's path prefix (without `.bin`/`.idx`)."""
        return str(Path(self.output.dir) / f"{self.output.name}_text_document")

    def absolutized(self) -> dict[str, object]:
        """Field updates that make every path absolute, so other processes and hosts read the same files."""
        updates: dict[str, object] = {}
        if self.input.paths:
            updates["input"] = self.input.model_copy(update={"paths": [absolute_path(p) for p in self.input.paths]})
        updates["output"] = self.output.model_copy(update={"dir": absolute_path(self.output.dir)})
        if self.tokenizer is not None and self.tokenizer.model is not None:
            updates["tokenizer"] = self.tokenizer.model_copy(update={
                "model": tokenizer_reference(self.tokenizer.model)})
        return updates

    @property
    def pretrained_tokenizer(self) -> bool:
        """Whether the tokenizer is a Hugging Face one (`hf:DIR`), copied rather than trained."""
        return self.tokenizer is not None and (self.tokenizer.model or "").startswith(PREFIX)

    @property
    def tokenizer_path(self) -> str | None:
        """The tokenizer the output folder holds, as a tokenizer reference: `hf:` and the output folder for a
        Hugging Face tokenizer (its tokenizer.json and tokenizer_config.json are copied there), else its
        tokenizer.model; None when prepare writes no tokenizer."""
        if self.tokenizer is None:
            return None
        if self.pretrained_tokenizer:
            return PREFIX + self.output.dir
        return str(Path(self.output.dir) / "tokenizer.model")

    def fingerprint(self) -> str:
        """A hash of everything that changes the output (not how it runs or what may fail it)."""
        return hashlib.sha256(json.dumps(self.output_settings(), sort_keys=True).encode()).hexdigest()[:16]

    def output_settings(self) -> dict:
        """The settings finished shards depend on, by section."""
        return self.model_dump(mode="json", exclude=RUN_SETTINGS)
