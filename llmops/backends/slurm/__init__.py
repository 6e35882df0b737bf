"""The Slurm backend: self-requeueing sbatch scripts, submitted on a login node or over SSH.

* :mod:`.spec` and :mod:`.rules`: the ``slurm:`` section, a profile's, and what the backend refuses;
* :mod:`.render`: the batch scripts; :mod:`.fanout`: data preparation as submitit job arrays;
* :mod:`.cluster`: sinfo, squeue and whether a request fits; :mod:`.transport`: local or SSH;
* :mod:`.status`: a run's state from the queue and the run directory;
* :mod:`.backend`: the :class:`~llmops.backends.base.Backend` that ties them together.
"""
