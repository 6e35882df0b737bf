"""Backends: where a run executes. :mod:`.base` is the interface, :mod:`.registry` finds one by name,
and each backend is a subpackage (:mod:`.local`, :mod:`.slurm`, :mod:`.k8s`) with files named by role."""
