"""Reading lm-eval's results JSON into the scores `llmops eval`, the report and the trackers show."""

from __future__ import annotations

from llmops.runs import evaluations

RESULTS = {
    "results": {"stdlib_docstrings": {"alias": "stdlib_docstrings", "acc,none": 0.0, "acc_stderr,none": 0.0,
                                      "acc_norm,none": 0.5, "acc_norm_stderr,none": 0.25,
                                      "exact_match,strict-match": 1, "bleu,none": "N/A", "flag,none": True}},
    "n-shot": {"stdlib_docstrings": 1},
    "n-samples": {"stdlib_docstrings": {"original": 300, "effective": 40}},
}


def test_every_metric_is_read_a_score_of_zero_included():
    got = [(s.metric, s.value, s.stderr, s.shots, s.questions) for s in evaluations.scores(RESULTS)]
    assert got == [("acc", 0.0, 0.0, 1, 40), ("acc_norm", 0.5, 0.25, 1, 40),
                   ("exact_match (strict-match)", 1.0, None, 1, 40)]
    assert evaluations.metrics(RESULTS) == {"stdlib_docstrings/acc": 0.0, "stdlib_docstrings/acc_norm": 0.5,
                                            "stdlib_docstrings/exact_match (strict-match)": 1.0}
