"""Population backends: the pure-PyTorch reference and vLLM (per-request LoRA adapters)."""
