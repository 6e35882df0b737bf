"""Fixtures of the provisioning tests: the terraform binary and its offline provider (llmops_testing.terraform)."""

from __future__ import annotations

from llmops_testing.terraform import aws_plugins, terraform  # noqa: F401  (fixtures)
