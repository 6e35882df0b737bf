"""The local backend: a run's stages on this machine (:mod:`.backend`), watched by a detached :mod:`.supervisor`."""
