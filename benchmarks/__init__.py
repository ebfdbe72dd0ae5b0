"""Benchmarks and load tests of Tune or Prompt: measured figures, printed as ratios against a baseline.

    python -m benchmarks.serving        # start-up, time to first token, decode speed per variant
    python -m benchmarks.detector       # the emergency guard's cost per message
    python -m benchmarks.loadtest       # the page under many sessions (clients in their own process)
    python -m benchmarks.api_loadtest   # the OpenAI-compatible API under many clients
    python -m benchmarks.training_speed # our training step against a naive loop

The top layer: these tools import bots, training, webui and ui; nothing imports them.
"""
