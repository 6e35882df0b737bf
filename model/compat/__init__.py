"""Making Megatron-Core run where and how this project needs: CPU mode over gloo (:mod:`.cpu`) and
work-arounds for Megatron-Core bugs (:mod:`.mcore`)."""
