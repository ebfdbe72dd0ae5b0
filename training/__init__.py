"""Tune or Prompt: LoRA training of the domain chatbots and its data (see training/dialogs.py, training/datagen)."""
