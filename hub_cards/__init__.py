"""Model and dataset cards, and publishing memcomp checkpoints to the Hugging Face Hub."""
