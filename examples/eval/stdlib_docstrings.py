"""The data of the stdlib_docstrings task (`custom_dataset` in stdlib_docstrings.yaml), read by lm-evaluation-harness.

It runs inside lm-eval's interpreter, which has `datasets`; the JSONL lies beside this file.
"""

import json
from pathlib import Path

import datasets

DATA = Path(__file__).with_name("stdlib_docstrings.jsonl")


def load(**_metadata) -> datasets.DatasetDict:
    rows = [json.loads(line) for line in DATA.read_text(encoding="utf-8").splitlines() if line.strip()]
    return datasets.DatasetDict({split: datasets.Dataset.from_list([r for r in rows if r["split"] == split])
                                 for split in ("validation", "test")})
