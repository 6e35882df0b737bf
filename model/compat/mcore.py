"""Work-arounds for Megatron-Core bugs this project hits, each small and self-checking.

Every fix names the symptom and the release it was seen in, and steps aside
when the upstream code no longer needs it.
"""

from __future__ import annotations


def apply() -> None:
    _keep_adam_step_on_reshardable_load()


def _keep_adam_step_on_reshardable_load() -> None:
    """megatron-core 0.16.1, DistributedOptimizer, 'fully_reshardable' checkpoints, torch AdamW.

    Symptom: resuming raises ``KeyError: 'step'`` in
    ``_set_main_param_and_optimizer_states``. The loader skips torch AdamW's
    per-parameter ``step`` (it restores it separately, through the inner
    optimizer's ``load_state_dict``) but then copies every key of the
    destination state, ``step`` included, from the source. Supplying the
    destination's own ``step`` makes that copy a no-op and keeps the value
    the inner optimizer already restored.
    """
    from megatron.core.optimizer.distrib_optimizer import DistributedOptimizer

    original = DistributedOptimizer._set_main_param_and_optimizer_states
    if getattr(original, "_llmops_fix", False):
        return

    def set_states(self, model_param, tensors):
        if "step" not in tensors and not self.config.use_precision_aware_optimizer_no_fp8_or_ds_fp8:
            group_index, group_order = self.model_param_group_index_map[model_param]
            main_param = self.optimizer.param_groups[group_index]["params"][group_order]
            step = self.optimizer.state.get(main_param, {}).get("step")
            if step is not None:
                tensors = {**tensors, "step": step}
        return original(self, model_param, tensors)

    set_states._llmops_fix = True
    DistributedOptimizer._set_main_param_and_optimizer_states = set_states
