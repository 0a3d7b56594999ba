"""A small Python API for notebooks, over the same code paths as the CLI."""

import numpy as np

from fastrnn import checkpoint as ckpt_io
from fastrnn.config import TrainConfig
from fastrnn.corpus import Vocab
from fastrnn.errors import CheckpointError
from fastrnn.model import Model


def load_model(path):
    """Load a trained model from a checkpoint file or run directory. Returns (Model, Vocab, Checkpoint)."""
    ckpt = ckpt_io.load(path)
    try:
        config = TrainConfig.from_dict(ckpt.config)
        vocab = Vocab.from_dict(ckpt.vocab)
        model = Model(vocab.size, config.hidden_size, config.dtype, config.model)
        model.load_flat(np.asarray(ckpt.params, dtype=model.dtype))
    except (KeyError, TypeError, ValueError) as exc:
        raise CheckpointError(f"{ckpt.path} does not describe a model this fastrnn can load ({exc})") from exc
    return model, vocab, ckpt
