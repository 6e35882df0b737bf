"""What `llmops submit` records from submit.sh's output: the stages' job ids, and nothing a login shell adds.

Over SSH the script runs in the user's login shell, whose profile may print anything; a word of it taken for
a stage or a job id would be asked of squeue (whose error made every stage look ended) and given to scancel.
"""

from __future__ import annotations

from llmops.backends.slurm.backend import _parse_submitted

STAGES = ["prepare", "pretrain", "sft"]


def test_only_the_scripts_own_lines_are_taken() -> None:
    out = "\n".join([
        "Disk quota 1234 of 5000",           # a login profile's notice
        "Welcome to the cluster!",
        "prepare finished",
        "pretrain 4242",
        "pretrain is scheduled on partition gpu",  # a stage name, then words: not the script's line
        "sft 4243 4244",
        "4245",
        "",
    ])
    assert _parse_submitted(out, STAGES) == {"prepare": [], "pretrain": ["4242"], "sft": ["4243", "4244"]}


def test_words_that_are_not_job_ids_never_reach_the_record() -> None:
    assert _parse_submitted("pretrain 12;cluster\nsft finished now\nsft -1", STAGES) == {}
