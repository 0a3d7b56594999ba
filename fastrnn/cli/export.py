"""`fastrnn export`: a trained model as plain arrays (npz) or a PyTorch state_dict."""

import os

import click

from fastrnn.errors import CheckpointError, ConfigError


@click.command("export")
@click.argument("model_path", metavar="RUN|CHECKPOINT", type=click.Path())
@click.option("--format", "fmt", type=click.Choice(["npz", "torch"]), default="npz",
              help="npz: one array per parameter (layer0.Wxh, ...), the vocabulary and configuration as JSON; torch: "
                   "state_dicts for torch.nn.RNN/LSTM/GRU and torch.nn.Linear (needs PyTorch).")
@click.option("--output", "-o", type=click.Path(dir_okay=False), required=True, help="The file to write.")
@click.option("--force", is_flag=True, help="Replace an existing output file.")
def export(model_path, fmt, output, force):
    """Write a trained model (a run directory or checkpoint file) for other tools."""
    import numpy as np

    from fastrnn.api import load_model
    from fastrnn.export import export as write

    if os.path.isdir(output):
        raise ConfigError(f"--output {output} is a directory; give a file name")
    if os.path.exists(output) and not force:
        raise ConfigError(f"{output} exists; add --force to replace it")
    if os.path.isfile(output) and _is_hdf5(output):  # --force replaces an export, never a checkpoint or corpus
        raise ConfigError(f"--output {output} is an HDF5 file (a checkpoint or a corpus), which export never "
                          f"replaces; give another file name")
    parent = os.path.dirname(os.path.abspath(output))
    if not os.path.isdir(parent):
        raise ConfigError(f"the directory of --output {output} does not exist")
    model, vocab, ckpt = load_model(model_path)
    if not np.all(np.isfinite(model.flat)):
        raise CheckpointError(f"{ckpt.path} holds non-finite parameters (a diverged run); nothing to export")
    try:
        meta = write(model.P, vocab, ckpt.config, output, fmt)
    except OSError as exc:
        raise ConfigError(f"cannot write {output}: {exc.strerror or exc}") from None
    click.echo(f"wrote {output}: {meta['cell']} x {meta['num_layers']}, hidden {meta['hidden_size']}, "
               f"vocabulary {meta['vocab_size']} ({fmt})")


COMMANDS = [export]


def _is_hdf5(path):
    import h5py

    try:
        return h5py.is_hdf5(path)
    except OSError:
        return False
