"""Training: the loop (:mod:`.loop`), the optimizer step (:mod:`.optimizer`) and its checkpointed state
(:mod:`.sharded_state`), checkpoints (:mod:`.checkpoint`), data (:mod:`.data`) and metrics (:mod:`.metrics`)."""
