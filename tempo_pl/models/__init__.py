"""Model building and forward passes: policy and critic builders, LoRA and QLoRA, one shared 4-bit base, the chunked LM head, shared-prompt forwards, hub and local sources, tiny test models."""
