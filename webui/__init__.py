"""The Gradio page of Tune or Prompt, one module per tab; ui.py assembles them."""
