"""The options the benchmarks and tools share, defined once as click decorators, and the command decorator itself.

    @options.command()                    # click.command with -h/--help and every default shown in --help
    @options.quick()                      # --quick
    @options.repeats(default=5)           # --repeats R
    @options.threads(default=[1, 2])      # --threads 1,2 (a list) or --threads N (one count, `default=1`)
    @options.dtype(default=["float32"])   # --dtype float32,float64 (a list) or --dtype float32
    @options.numba_module()               # --numba-module MODULE
    @options.train_shape()                # --model --layers --hidden-size --batch-size --seq-len of a launched train
    @options.json_output()                # --json FILE (the function's `json_path`)
    def main(quick, repeats, threads, dtype, numba_module, json_path): ...

A list default makes a comma-separated list option; a scalar default makes a single-value one. The body of a
command runs under `user_errors`, so that a bad file, a bad value or a failed contender ends as one
`Error: ...` line and a non-zero exit, never a traceback.
"""

import contextlib
import functools

import click

DTYPES = ("float32", "float64")


class CommaList(click.ParamType):
    """'64,128' -> [64, 128]: comma-separated values, each converted by `item` (an int > 0, or one of `choices`)."""

    name = "LIST"

    def __init__(self, item=int, choices=None, minimum=1):
        self.item, self.choices, self.minimum = item, choices, minimum

    def convert(self, value, param, ctx):
        if isinstance(value, list):
            return value
        values = []
        for text in str(value).split(","):
            text = text.strip()
            if not text:
                continue
            if self.choices is not None:
                if text not in self.choices:
                    self.fail(f"{text!r} is not one of {', '.join(self.choices)}", param, ctx)
                values.append(text)
                continue
            try:
                v = self.item(text)
            except ValueError:
                self.fail(f"{text!r} is not a number", param, ctx)
            if v < self.minimum:
                self.fail(f"{text!r} is not a positive number" if self.minimum == 1 else
                          f"{text!r} is below {self.minimum}", param, ctx)
            values.append(v)
        if not values:
            self.fail(f"expected a comma-separated list, got {value!r}", param, ctx)
        return values

    def get_metavar(self, param, ctx=None):
        return "A,B,..." if self.choices is None else "[" + "|".join(self.choices) + "],..."


def _text(default):
    """A list default as the text a user would type ([1, 2] -> '1,2'); click converts it like typed input."""
    return ",".join(str(v) for v in default) if isinstance(default, list) else default


def command(**kwargs):
    """click.command with -h/--help and show_default=True."""
    settings = dict(help_option_names=["-h", "--help"], show_default=True, max_content_width=110)
    settings.update(kwargs.pop("context_settings", {}))
    return click.command(context_settings=settings, **kwargs)


def quick(help="Only the quickest settings (the target rows)."):
    return click.option("--quick", is_flag=True, default=False, help=help)


def repeats(default, help="Timed repeats; the median is reported."):
    return click.option("--repeats", type=click.IntRange(min=1), default=default, help=help)


def threads(default, help=None):
    """--threads: a comma-separated list of counts when default is a list, else one count."""
    if isinstance(default, list):
        return click.option("--threads", type=CommaList(int), default=_text(default),
                            help=help or "Thread counts (numba and BLAS), comma-separated.")
    return click.option("--threads", type=click.IntRange(min=1), default=default,
                        help=help or "Threads for numba and BLAS.")


def dtype(default, help=None):
    """--dtype: a comma-separated list of float types when default is a list, else one."""
    if isinstance(default, list):
        return click.option("--dtype", type=CommaList(str, DTYPES), default=_text(default),
                            help=help or "Floating-point types, comma-separated.")
    return click.option("--dtype", type=click.Choice(DTYPES), default=default, help=help or "Floating-point type.")


def int_list(name, default, help, minimum=1):
    """A comma-separated list of integers from `minimum` (positive by default), e.g. --hidden 64,128."""
    return click.option(name, type=CommaList(int, minimum=minimum), default=_text(default), help=help)


def train_shape(model="lstm", layers=2, hidden_size=512):
    """--model, --layers, --hidden-size, --batch-size, --seq-len: the shape of a `fastrnn train` a benchmark launches
    (batch size and sequence length default to train's own)."""
    from fastrnn.config import MODELS

    shape = [
        click.option("--model", type=click.Choice(MODELS), default=model, help="The cell."),
        click.option("--layers", type=click.IntRange(min=1), default=layers,
                     help="Stacked layers (train's --num-layers)."),
        click.option("--hidden-size", type=click.IntRange(min=1), default=hidden_size, help="Hidden units per layer."),
        click.option("--batch-size", type=click.IntRange(min=1), default=None, show_default="train's",
                     help="Streams per minibatch."),
        click.option("--seq-len", type=click.IntRange(min=1), default=None, show_default="train's",
                     help="Time steps per minibatch."),
    ]
    return lambda fn: functools.reduce(lambda f, option: option(f), reversed(shape), fn)


def numba_module(help="Module for the numba contender (a variant under test, or fastrnn.reference to dry-run)."):
    return click.option("--numba-module", default="fastrnn.kernels", help=help)


def json_output(help="Write the results to this JSON file (what benchmarks.report reads)."):
    return click.option("--json", "json_path", type=click.Path(dir_okay=False), default=None, help=help)


@contextlib.contextmanager
def user_errors():
    """Turn a user-caused error (fastrnn's typed errors, a missing or unreadable file, a bad value, a contender that
    failed) into click.ClickException: one `Error: ...` line on stderr, exit status 1."""
    from fastrnn.errors import FastrnnError

    try:
        yield
    except click.ClickException:
        raise
    except (FastrnnError, OSError, ValueError, RuntimeError) as exc:
        raise click.ClickException(str(exc)) from exc


def catch_user_errors(fn):
    """Decorator: run fn under user_errors()."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        with user_errors():
            return fn(*args, **kwargs)

    return wrapper
