"""Model building and forward passes: policy and critic builders, the forward passes of the step, LoRA and QLoRA, one
shared 4-bit base, the chunked LM head, shared-prompt forwards, FSDP2 sharding, hub and local sources, tiny models."""
