"""OpenMP settings for training on a small shared CPU; import this module before torch.

torch's OpenMP runtime (libgomp) makes idle threads spin-wait for the next parallel
region. On 2 cores shared with other processes, a spinning thread steals the core its
partner needs, and a LoRA training step measured here took 5-10x longer with 2 threads
than with 1 (300 s of CPU for what needs 45 s). ``OMP_WAIT_POLICY=PASSIVE`` makes waiting
threads sleep instead: 2 threads then run ~1.5x faster than 1 even under load.
libgomp reads the variable once, when torch loads it, so this module must be imported
before torch (``training.train`` and ``benchmarks.training_speed`` import it first). A value
already in the environment wins.
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
