"""Dropout masks, made in one place for every backend so that a seed gives the same masks everywhere.

Inverted dropout between layers: during training, layer l's output (T, N, H) is multiplied by masks[l], whose
entries are 0 with probability p and 1/(1-p) otherwise, before it feeds layer l+1 (or, for the top layer, the
output layer). Evaluation and sampling use no masks. The masks are drawn from the training run's numpy Generator,
whose state every checkpoint saves, so a resumed run draws the same masks as one never stopped.
"""

import numpy as np


def make_masks(rng, p, num_layers, T, N, H, dtype):
    """masks: (L, T, N, H) of dtype with entries 0 (probability p) or 1/(1-p); None when p == 0."""
    if not p:
        return None
    keep = rng.random((num_layers, T, N, H), dtype=np.float32) >= np.float32(p)  # (L, T, N, H) bool
    masks = keep.astype(dtype)
    masks *= masks.dtype.type(1.0 / (1.0 - p))
    return masks
