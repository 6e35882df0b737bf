"""What a run put on the cluster, kept in its run folder (``k8s.json``), so that llmops touches only that.

A name does not say whose an object is: two runs of one spec submitted in the
same second from two runs folders get one run id, and ``base_name`` gives
``7b-sft-...`` and ``r7b-sft-...`` one name. So a submit labels every object
(and its pods) with a uid of the run's own, kept across resumes, and status,
cancel, resume and clean-up select by that label. The record also keeps what
was resolved at submit that the spec does not hold (the cluster profile's
section and environment: a resume builds the same objects without reading
the profile again), whether every object was applied (an interrupted submit
is never taken for a running one), and whether the run's Secret is there
(it can be deleted by name only: submitters may not read secrets).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

from llmops.errors import UserError
from llmops.files import atomic_write

FILE = "k8s.json"


@dataclass
class Record:
    uid: str
    """The value of the run's OWNER_LABEL on everything it created."""
    profile: dict = field(default_factory=dict)
    profile_env: dict[str, str] = field(default_factory=dict)
    applied: bool = False
    """Every object of the submit was applied."""
    secret: bool = False
    """The run's Secret was created and not deleted since."""


def read(run_path: Path) -> Record | None:
    """The run's record; None for a run not submitted yet, or submitted by an llmops that kept none."""
    path = run_path / FILE
    try:
        data = json.loads(path.read_text())
        return Record(**data)
    except FileNotFoundError:
        return None
    except (OSError, ValueError, TypeError) as exc:
        raise UserError(f"{path} is damaged ({exc})", "llmops writes it whole: restore the run folder from where "
                        "it was copied; the run's objects carry the label llmops.dev/run-uid") from None


def write(run_path: Path, record: Record) -> None:
    atomic_write(run_path / FILE, json.dumps(asdict(record), indent=1))
