"""Fixtures of the Kubernetes tests: a fake API server (llmops_testing.k8s_api) and kubeconfigs for it."""

from __future__ import annotations

import pytest

from llmops_testing.k8s_api import FakeCluster, serve, write_kubeconfig


@pytest.fixture
def fake_cluster(tmp_path, monkeypatch):
    """A running fake API server and a kubeconfig (context `fake`) that points at it."""
    cluster = FakeCluster()
    server = serve(cluster)
    cluster.kubeconfig = write_kubeconfig(tmp_path / "kubeconfig", cluster.url)
    monkeypatch.setenv("KUBECONFIG", str(cluster.kubeconfig))
    yield cluster
    server.shutdown()
    server.server_close()


@pytest.fixture
def kubeconfig_for():
    """Write a kubeconfig whose context `fake` points at a given server address."""
    return write_kubeconfig
