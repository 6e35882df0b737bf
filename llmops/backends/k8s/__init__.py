"""The Kubernetes backend: a run as Indexed Jobs or a JobSet, through the official client.

* :mod:`.spec` and :mod:`.rules`: the ``k8s:`` section, a profile's, and what the backend refuses;
* :mod:`.objects` and :mod:`.jobs`: the run's objects as typed data;
* :mod:`.api` and :mod:`.preflight`: talking to the cluster, and the checks before anything is created;
* :mod:`.record`: what a run created, kept in its run folder;
* :mod:`.status`: reading a run back; :mod:`.pod`: what runs inside each pod;
* :mod:`.backend`: the :class:`~llmops.backends.base.Backend` that ties them together.
"""
