"""Alignment after pre-training: supervised fine-tuning (SFT) and Direct Preference Optimization (DPO).

Modules, in the order data flows through them:

* :mod:`~llmops_model.align.chat`: the chat template over the tokenizer's control tokens;
* :mod:`~llmops_model.align.records`: JSONL lines to conversations or preference pairs, or a counted reason;
* :mod:`~llmops_model.align.examples`: tokenizing, truncating, quarantining, splitting (rank 0, cached);
* :mod:`~llmops_model.align.sources`: samples by global index: packed SFT sequences, DPO pairs;
* :mod:`~llmops_model.align.dpo_loss`: the DPO and IPO losses on sequence log-probabilities;
* :mod:`~llmops_model.align.objectives`: Megatron forward steps and loss functions;
* :mod:`~llmops_model.align.reference`: the frozen starting model's log-probabilities, precomputed;
* :mod:`~llmops_model.align.stage`: the stage itself, on the pre-training loop's machinery.
"""
