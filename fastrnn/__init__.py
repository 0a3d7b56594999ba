"""fastrnn: fast, dependable character-level RNN language models on the CPU."""

__version__ = "0.1.0"
