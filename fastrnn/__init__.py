"""fastrnn: fast, dependable character-level RNN language models on the CPU."""

__version__ = "0.1.0"
__all__ = ["CharRNN", "load_model"]


def __getattr__(name):  # the API is imported on first use, so `import fastrnn` stays light
    if name in __all__:
        from fastrnn import api

        return getattr(api, name)
    raise AttributeError(f"module 'fastrnn' has no attribute {name!r}")
