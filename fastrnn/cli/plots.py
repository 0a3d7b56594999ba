"""`fastrnn plot`, `plot-hidden`, `plot-gradients`: PNG pictures (matplotlib, an optional extra)."""

import os

import click

from fastrnn.errors import ConfigError
from fastrnn.plots import FEATURES


def _check_output(path):
    """The PNG's directory exists (checked before any work, so a typo costs nothing)."""
    directory = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(directory):
        what = "is not a directory" if os.path.exists(directory) else "does not exist"
        raise ConfigError(f"cannot write {path}: the directory {directory} {what}")


def _beside(path, name):
    """The default output of a picture of `path` (a run directory, or a file in one: a checkpoint or log.jsonl):
    `name` in that directory, as for every plot command."""
    directory = path if os.path.isdir(path) else os.path.dirname(os.path.abspath(path))
    return os.path.join(directory, name)


@click.command()
@click.argument("run_dirs", nargs=-1, required=True, type=click.Path())
@click.option("-o", "--output", default=None, type=click.Path(dir_okay=False),
              help="PNG to write [default: RUN_DIR/loss.png].")
def plot(run_dirs, output):
    """Training and validation loss against steps and wall time, and chars/s, for one or more runs."""
    from fastrnn.plots import plot_losses

    if output is not None:
        _check_output(output)
    out = output or _beside(run_dirs[0], "loss.png")
    plot_losses([(os.path.basename(os.path.normpath(d)), d) for d in run_dirs], out)
    click.echo(out)


@click.command("plot-hidden")
@click.argument("checkpoint", type=click.Path())
@click.option("--text", default="To be or not to be", help="Text to read through the network.")
@click.option("--feature", type=click.Choice(["auto", *FEATURES]), default="auto",
              help="Find the hidden units most correlated with this per-character feature (auto: quote if the "
                   "text has double quotes, else line_position if it has several lines, else vowel).")
@click.option("--units", type=click.IntRange(min=1), default=64, help="Hidden units shown in the heatmap.")
@click.option("--top", type=click.IntRange(min=1), default=5, help="Most correlated units to show.")
@click.option("--layer", type=int, default=-1, help="Layer whose h to show (0 is the bottom; -1 the top).")
@click.option("-o", "--output", default=None, type=click.Path(dir_okay=False),
              help="PNG to write [default: hidden.png beside the checkpoint, in its run directory].")
def plot_hidden_cmd(checkpoint, text, feature, units, top, layer, output):
    """Heatmap of hidden-unit activations per character, and the units most correlated with a feature."""
    from fastrnn.api import load_model
    from fastrnn.plots import plot_hidden

    output = output or _beside(checkpoint, "hidden.png")
    _check_output(output)
    if not text:
        raise ConfigError("--text must not be empty")
    if feature == "auto":
        feature = "quote" if '"' in text else "line_position" if "\n" in text.rstrip("\n") else "vowel"
    model, vocab, _ = load_model(checkpoint)
    _, top_units = plot_hidden(model.P, vocab, text, output, feature=feature, units=units, top=top,
                               layer=layer)
    click.echo(output)
    for unit, r in top_units:
        click.echo(f"unit {unit}: r = {r:+.3f} with {FEATURES[feature]}", err=True)


@click.command("plot-gradients")
@click.argument("checkpoints", nargs=-1, required=True, type=click.Path())
@click.option("--text", default=None,
              help="The loss of predicting this text's last character is differentiated through time "
                   "[default: 80 characters sampled from the first model, seed 0].")
@click.option("-o", "--output", default=None, type=click.Path(dir_okay=False),
              help="PNG to write [default: gradients.png beside the first checkpoint, in its run directory].")
def plot_gradients_cmd(checkpoints, text, output):
    """Gradient magnitude |dL/dh_t| through time steps (log scale); several checkpoints side by side."""
    from fastrnn.api import load_model
    from fastrnn.plots import plot_gradients

    output = output or _beside(checkpoints[0], "gradients.png")
    _check_output(output)
    models = []
    for path in checkpoints:
        model, vocab, ckpt = load_model(path)
        layers = f" L={model.num_layers}" if model.num_layers > 1 else ""
        label = f"{model.model}{layers} H={model.hidden_size} ({os.path.basename(os.path.normpath(path))})"
        models.append((label, model.P, vocab))
    if text is None:
        import numpy as np

        from fastrnn import reference
        from fastrnn.sample import generate

        _, P, vocab = models[0]
        ids = list(generate(reference, P, vocab, length=80, rng=np.random.default_rng(0), dtype=P["Whh"].dtype))
        text = vocab.decode(np.array(ids, dtype=np.int32))
    plot_gradients(models, text, output)
    click.echo(output)
    click.echo(f"text ({len(text)} characters, the last one predicted): {text!r}", err=True)


COMMANDS = [plot, plot_hidden_cmd, plot_gradients_cmd]
