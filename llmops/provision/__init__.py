"""`llmops provision`: a GPU cluster from infra/terraform, handed back as a kubeconfig and a cluster profile.

* :mod:`~llmops.provision.request`: the command line as a validated request;
* :mod:`~llmops.provision.checks`: what is checked before Terraform starts;
* :mod:`~llmops.provision.terraform`: the cluster's folder and the Terraform runs;
* :mod:`~llmops.provision.outputs`: kubeconfig, profile and shared volume from Terraform's outputs.
"""
