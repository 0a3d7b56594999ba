"""click options made from the declarations of fastrnn.options: the type, range, default and help of every training
and sampling option come from its one declaration (TrainConfig's fields, fastrnn.options.SAMPLING)."""

import click

from fastrnn.cli.types import Duration, EvalTokens, Finite, ReadAsIntRange
from fastrnn.config import OPTIONS, RESUME_CHANGEABLE_WITH_ALLOW, parse_duration, parse_eval_tokens
from fastrnn.options import SAMPLING, choices_of, flag, help_of, switches, words

PARSED = {parse_duration: Duration, parse_eval_tokens: EvalTokens}  # click types of the options read by a parser


def click_type(opt):
    """The click type of an Option: its choices, or its number type with the declared range."""
    if opt.parse in PARSED:
        return PARSED[opt.parse]()
    if opt.choices is not None:
        return click.Choice(choices_of(opt))
    bounds = dict(min=opt.low, max=opt.high, min_open=opt.low_open, max_open=opt.high_open)
    if opt.type is int:
        return click.IntRange(**bounds) if opt.parse is None else ReadAsIntRange(opt.parse, **bounds)
    if opt.type is float and opt.parse is None:
        return Finite(**bounds)
    raise TypeError(f"no click type for an option of type {opt.type}")


def help_text(opt):
    """The declared help, with the optimizers the option applies to and a default that depends on others."""
    return help_of(opt) + (f" [default: {opt.default_text}]" if opt.default_text else "")


def click_option(name, opt, **overrides):
    """The click option of option `name` declared by `opt`; `overrides`: click settings a command sets otherwise
    (a default of its own)."""
    settings = dict(default=opt.default, help=help_text(opt))
    if opt.type is bool:
        decls = [switches(name, opt)]
        if "/" not in decls[0]:  # a flag alone: --greedy
            settings["is_flag"] = True
    else:
        decls = [flag(name)]
        settings["type"] = click_type(opt)
    if opt.default_text:  # the default depends on other options: left to the library (None: not given)
        settings.update(default=None, show_default=False)
    settings.update(overrides)
    return click.option(*decls, name, **settings)


def train_options(f):
    """Every training option (TrainConfig's declared fields), each mapping to the field of the same name."""
    for name, opt in reversed(OPTIONS.items()):
        f = click_option(name, opt)(f)
    return f


def sampling_option(name, **overrides):
    return click_option(name, SAMPLING[name], **overrides)


def allow_change_help():
    """--allow-change's help: the options it lets a resumed run change."""
    return f"With --resume: allow changing {words(flag(n) for n in OPTIONS if n in RESUME_CHANGEABLE_WITH_ALLOW)}."
