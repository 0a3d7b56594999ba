"""Options declared once: their help, type, range or choices, what --resume may do with them, and which optimizers
they apply to.

The options of `fastrnn train` are the fields of fastrnn.config.TrainConfig, each declared with `option(...)`; the
sampling options are SAMPLING below. From these declarations come:

    the command line's click options          fastrnn.cli.options (types, ranges, defaults and help)
    the checks of every entry point           check(): TrainConfig.validate for `train` and CharRNN.fit alike;
                                              check_sampling() for `sample`, CharRNN.generate and `serve`
    the resume sets                           fastrnn.config.RESUME_CHANGEABLE, RESUME_CHANGEABLE_WITH_ALLOW
    README's options table                    python -m tools.options_table (tests/test_options.py: it is current)

An option whose range is declared here refuses the same values wherever it is given: the command line says so as a
usage error (exit 2) before anything runs, the others raise ConfigError with the same bounds.
"""

import dataclasses
import math
import numbers

import numpy as np

from fastrnn.errors import ConfigError

RESUME_POLICIES = ("fixed", "free", "allow")


@dataclasses.dataclass(frozen=True)
class Option:
    """One option. `type` and `default` come from the TrainConfig field for training options."""

    help: str
    type: type = None  # int, float, str, bool, or object (parse decides)
    default: object = None
    low: float = None  # range: low <= value (low < value if low_open), likewise high
    high: float = None
    low_open: bool = False
    high_open: bool = False
    choices: object = None  # a tuple, or a callable giving one (the cells registered by then)
    parse: object = None  # callable: another spelling of a value (90s, "all", ...) -> the value; ConfigError if none
    values: str = None  # the values in words, where no range or choices says them (README's table)
    resume: str = "fixed"  # fixed | free: may change on --resume | allow: may change with --allow-change
    optimizers: tuple = None  # the optimizers it applies to (None: all)
    flags: str = None  # a switch's pair of flags, "--on/--off" (default: --name/--no-name)
    default_text: str = None  # the default in words, where it depends on other options
    nullable: bool = False  # None is a value too (a seed: draw a fresh one)


def option(default, help, **declaration):
    """A TrainConfig field declared as an option (see Option for the keywords)."""
    if declaration.get("resume", "fixed") not in RESUME_POLICIES:
        raise ValueError(f"resume policy {declaration['resume']!r}: one of {', '.join(RESUME_POLICIES)}")
    return dataclasses.field(default=default, metadata={"option": Option(help, **declaration)})


def declared(cls):
    """{field name: Option} of a dataclass's declared fields, in order, with each field's type and default."""
    out = {}
    for f in dataclasses.fields(cls):
        if "option" in f.metadata:
            kind = {"int": int, "float": float, "str": str, "bool": bool}.get(f.type, f.type)
            out[f.name] = dataclasses.replace(f.metadata["option"], type=kind, default=f.default)
    return out


def choices_of(opt):
    """The declared choices as a tuple (a callable is asked now), or None."""
    return tuple(opt.choices()) if callable(opt.choices) else opt.choices


def flag(name):
    """The command line's spelling of option `name`: --hidden-size."""
    return "--" + name.replace("_", "-")


def words(items):
    """"a", "a and b", "a, b and c"."""
    items = list(items)
    return items[0] if len(items) == 1 else f"{', '.join(items[:-1])} and {items[-1]}"


def switches(name, opt):
    """A switch's pair of flags: its declared ones, else --name/--no-name ("--greedy": a flag alone)."""
    return opt.flags or f"{flag(name)}/--no-{flag(name)[2:]}"


def _number(x):
    return str(int(x)) if float(x).is_integer() and abs(x) < 1e15 else f"{x:g}"


def describe_range(opt, positive="positive"):
    """The declared range in words ("positive", ">= 1", "in [0, 1)"), or "" for none."""
    lo, hi = opt.low, opt.high
    if lo is not None and hi is not None:
        return f"in {'(' if opt.low_open else '['}{_number(lo)}, {_number(hi)}{')' if opt.high_open else ']'}"
    if lo is not None:
        if opt.low_open:
            return positive if lo == 0 else f"> {_number(lo)}"
        return f">= {_number(lo)}"
    if hi is not None:
        return f"{'<' if opt.high_open else '<='} {_number(hi)}"
    return ""


def describe_values(opt):
    """The values an option takes, in words: its declared `values`, its choices, or its type and range."""
    if opt.values:
        return opt.values
    if opt.choices:
        return ", ".join(choices_of(opt))
    if opt.type is bool:
        return "switch"
    kind = {int: "integer", float: "number"}.get(opt.type, "")
    return " ".join(part for part in (kind, describe_range(opt, positive="> 0")) if part)


def help_of(opt):
    """The declared help, with the optimizers the option applies to."""
    if not opt.optimizers:
        return opt.help
    return f"{opt.help.rstrip('.')} ({words(opt.optimizers)} only)."


def _in_range(opt, x):
    lo, hi = opt.low, opt.high
    return ((lo is None or (x > lo if opt.low_open else x >= lo))
            and (hi is None or (x < hi if opt.high_open else x <= hi)))


def check(opt, name, value, label=None):
    """The value of option `name`, canonical (its `parse` applied); ConfigError naming it as `label` (default: its
    flag) if it is of the wrong type, not finite, outside the declared range or not one of the choices."""
    label = label or flag(name)
    if value is None and opt.nullable:
        return None
    if opt.parse is not None:
        value = opt.parse(value)
    if opt.type is bool:
        if not isinstance(value, (bool, np.bool_)):
            raise ConfigError(f"{label} must be true or false, got {value!r}")
        return value
    if opt.type in (int, float):
        if isinstance(value, bool) or not isinstance(value, numbers.Integral if opt.type is int else numbers.Real):
            raise ConfigError(f"{label} must be {'a whole number' if opt.type is int else 'a number'}, got {value!r}")
        try:
            finite = math.isfinite(value)
        except OverflowError:  # (an integer beyond any float)
            if opt.type is float:
                raise ConfigError(f"{label} is out of range") from None
            finite = True
        if not finite:
            raise ConfigError(f"{label} must be a finite number, got {value}")
    if opt.choices is not None and value not in choices_of(opt):
        raise ConfigError(f"{label} must be one of {', '.join(choices_of(opt))}, got {value!r}")
    if (opt.low is not None or opt.high is not None) and not _in_range(opt, value):
        raise ConfigError(f"{label} must be {describe_range(opt)}, got {value}")
    return value


def check_optimizer_options(optimizer, given, options):
    """ConfigError if an option of `given` (names) applies to other optimizers than `optimizer` only: it would do
    nothing. The command line passes the options given on it; TrainConfig.validate those away from their default."""
    for name in given:
        applies = options[name].optimizers if name in options else None
        if applies is not None and optimizer not in applies:
            raise ConfigError(f"{flag(name)} has no effect with --optimizer {optimizer} "
                              f"(it applies to {words(applies)})")


# ---------------------------------------------------------------------------------------------------------------
# sampling: `fastrnn sample`, CharRNN.generate / generate_many / next_probs, and serve's POST /generate

SAMPLING = {
    "length": Option("Characters to generate.", int, 200, low=0),
    "temperature": Option("Divide logits by this before the softmax: < 1 is more conservative, > 1 more varied.",
                          float, 1.0, low=0, low_open=True),
    "top_k": Option("Sample only among the k most probable characters (0: all).", int, 0, low=0),
    "top_p": Option("Sample only among the most probable characters whose probabilities add up to p.", float, 1.0,
                    low=0, high=1, low_open=True),
    "greedy": Option("Always take the most probable character (argmax).", bool, False, flags="--greedy"),
    "beam_width": Option("Beam search with this many beams: the most probable continuation of --length (0: sample).",
                         int, 0, low=0),
    "num_samples": Option("Independent samples, drawn together (sample i is the one --seed SEED+i draws alone).",
                          int, 1, low=1),
    "seed": Option("Random seed (default: a fresh one each time).", int, None, low=0, nullable=True),
}
BEAM_IGNORES = ("top_k", "top_p", "greedy", "temperature")  # what a beam search leaves out: refused beside it


def check_sampling(values, label=flag):
    """`values` (a dict of SAMPLING options) checked and canonical, for every entry point: ConfigError naming the
    option as label(name) (the flag; serve names its JSON fields). A sampling option set beside a beam search,
    which would ignore it, is refused too."""
    out = {name: check(SAMPLING[name], name, value, label(name)) for name, value in values.items()}
    if out.get("beam_width"):
        ignored = [label(name) for name in BEAM_IGNORES if name in out and out[name] != SAMPLING[name].default]
        if ignored:
            raise ConfigError(f"{', '.join(ignored)} {'has' if len(ignored) == 1 else 'have'} no effect with "
                              f"{label('beam_width')} (beam search keeps the most probable continuations)")
    return out
