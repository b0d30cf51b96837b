"""Training: augmentations, the S4P and MDF losses, the Accelerate loop (checkpoints, resume, publishing), LoRA."""
