"""Fixtures of the Terraform tests: the terraform binary and its offline provider (llmops_testing.terraform)."""

from __future__ import annotations

from llmops_testing.terraform import aws_plugins, terraform, tf_tree  # noqa: F401  (fixtures)
