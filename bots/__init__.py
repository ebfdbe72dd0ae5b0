"""Domain chatbots: one shared base model, four variants (LoRA adapter or prompt template)."""
