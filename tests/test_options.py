"""Each option declared once (fastrnn.options): the command line, TrainConfig.validate, the resume sets, serve and
README's table all follow the one declaration, and agree with each other."""

import dataclasses
import json
import math
import re

import click
import pytest
from click.testing import CliRunner

from fastrnn.cli import main
from fastrnn.cli.train import sample as sample_command
from fastrnn.cli.train import train as train_command
from fastrnn.config import (OPTIMIZER_OPTIONS, OPTIONS, RESUME_CHANGEABLE, RESUME_CHANGEABLE_WITH_ALLOW,
                            TrainConfig)
from fastrnn.errors import ConfigError
from fastrnn.options import SAMPLING, check_sampling, choices_of


def _params(command):
    return [p for p in command.params if isinstance(p, click.Option)]


def _probes(opt):
    """Values on and around an option's bounds and choices (Python values: the API's; their str: the CLI's)."""
    if opt.choices:
        return list(choices_of(opt)) + ["bogus", choices_of(opt)[0].upper()]
    if opt.parse is not None and opt.type is not int:
        return ["90s", "10m", "1h30m", "5d", "-1", "0", "7", "all", "auto", "most", "nan", "inf"]
    step = 1 if opt.type is int else 1e-9
    out = {0, 1, 2, 10, -1, 0.5 if opt.type is float else 3}
    for bound in (opt.low, opt.high):
        if bound is not None:
            out |= {bound - step, bound, bound + step}
    values = sorted(out)
    return [int(v) for v in values] if opt.type is int else [float(v) for v in values] + [math.nan, math.inf]


def _context(name):
    """Other options a value of option `name` needs to be tried alone: the optimizer it applies to."""
    applies = OPTIMIZER_OPTIONS.get(name)
    return {"optimizer": applies[0]} if applies else {}


def _api(name, value):
    try:
        return True, getattr(TrainConfig(**dict(_context(name), **{name: value})).validate(), name)
    except ConfigError:
        return False, None


def _cli(param, value):
    try:
        return True, param.type.convert(str(value), param, None)
    except click.BadParameter:
        return False, None


def test_every_config_field_is_one_option_of_train():
    """Every field but `extra` is declared, and is exactly one option of `fastrnn train` with its default."""
    fields = [f.name for f in dataclasses.fields(TrainConfig)]
    assert [name for name in fields if name not in OPTIONS] == ["extra"]
    params = _params(train_command)
    for name, opt in OPTIONS.items():
        mine = [p for p in params if p.name == name]
        assert len(mine) == 1, name
        assert mine[0].default == (None if opt.default_text else opt.default), name
        assert mine[0].is_flag == (opt.type is bool), name


@pytest.mark.parametrize("name", [n for n, o in OPTIONS.items() if o.type is not bool])
def test_the_command_line_takes_what_validate_takes(name):
    """Each option's range on the command line equals validate's (the API's): every probe value is taken by both
    or refused by both, and read as the same value (--keep-checkpoints 0 as 1, --max-time 10m as 600)."""
    opt = OPTIONS[name]
    param = next(p for p in _params(train_command) if p.name == name)
    for value in _probes(opt):
        cli_ok, cli_value = _cli(param, value)
        api_ok, api_value = _api(name, value)
        assert cli_ok == api_ok, (name, value, cli_ok, api_ok)
        if cli_ok:
            assert cli_value == api_value, (name, value, cli_value, api_value)


def test_switches_take_true_and_false_only():
    for name in [n for n, o in OPTIONS.items() if o.type is bool]:
        assert _api(name, True)[0] and _api(name, False)[0]
        with pytest.raises(ConfigError, match=f"--{name.replace('_', '-')} must be true or false"):
            TrainConfig(**{name: "yes"}).validate()


def test_the_resume_sets_are_the_declared_ones():
    assert RESUME_CHANGEABLE == {
        "max_steps", "max_epochs", "max_time", "threads", "log_every", "eval_every", "sample_every", "sample_length",
        "checkpoint_every", "keep_checkpoints", "early_stop_patience", "divergence_factor", "on_divergence",
        "eval_tokens", "max_rollbacks"}
    assert RESUME_CHANGEABLE_WITH_ALLOW >= {"lr", "lr_decay", "lr_decay_every", "lr_decay_after", "lr_schedule",
                                            "warmup_steps", "clip", "max_grad_norm", "momentum"}
    assert not RESUME_CHANGEABLE & RESUME_CHANGEABLE_WITH_ALLOW
    for name in ("model", "num_layers", "hidden_size", "dtype", "optimizer", "seed", "seq_len", "batch_size"):
        assert name not in RESUME_CHANGEABLE | RESUME_CHANGEABLE_WITH_ALLOW


def test_an_option_of_another_optimizer_is_refused_by_the_api_as_by_the_command_line(small_corpus, tmp_path):
    """CharRNN(optimizer="adam", momentum=0.9).fit(...) raises the error the command line prints, for every option
    of one optimizer given with another."""
    from conftest import make_text
    from fastrnn.api import CharRNN

    for name, applies in OPTIMIZER_OPTIONS.items():
        other = next(o for o in OPTIONS["optimizer"].choices if o not in applies)
        value = 0.5 if name != "eps" else 1e-6
        with pytest.raises(ConfigError) as api:
            CharRNN(hidden_size=8, batch_size=4, seq_len=8, max_steps=1, optimizer=other, **{name: value}).fit(
                text=make_text(1000), run_dir=str(tmp_path / "api"))
        r = CliRunner().invoke(main, ["train", small_corpus, "-o", tmp_path / "cli", "--optimizer", other,
                                      f"--{name.replace('_', '-')}", str(value)])
        assert r.exit_code == 1 and r.stderr.strip() == f"fastrnn: error: {api.value}", (name, r.stderr)
    assert not (tmp_path / "api").exists() and not (tmp_path / "cli").exists()


def test_keep_checkpoints_reads_the_same_from_the_command_line_and_the_api(small_corpus, tmp_path):
    from fastrnn import checkpoint as ckpt_io
    from fastrnn.train import train

    small = ["--hidden-size", "8", "--batch-size", "4", "--seq-len", "8", "--max-steps", "2", "--eval-every", "0"]
    r = CliRunner().invoke(main, ["train", small_corpus, "-o", tmp_path / "cli", *small, "--keep-checkpoints", "0"])
    assert r.exit_code == 0, r.output
    train(small_corpus, tmp_path / "api", dict(hidden_size=8, batch_size=4, seq_len=8, max_steps=2, eval_every=0,
                                               keep_checkpoints=0))
    for run in ("cli", "api"):
        assert ckpt_io.load(tmp_path / run).config["keep_checkpoints"] == 1
    r = CliRunner().invoke(main, ["train", small_corpus, "-o", tmp_path / "bad", *small, "--keep-checkpoints", "-1"])
    assert r.exit_code == 2 and "--keep-checkpoints" in r.stderr
    with pytest.raises(ConfigError, match="--keep-checkpoints must be >= 1, got -1"):
        TrainConfig(keep_checkpoints=-1).validate()


# ------------------------------------------------------------------------------------------------------ sampling

@pytest.fixture(scope="module")
def trained(small_corpus, tmp_path_factory):
    run = tmp_path_factory.mktemp("trained") / "run"
    r = CliRunner().invoke(main, ["train", small_corpus, "-o", run, "--hidden-size", "8", "--batch-size", "4",
                                  "--seq-len", "8", "--max-steps", "2", "--eval-every", "0"])
    assert r.exit_code == 0, r.output
    return str(run)


def _sample_param(name):
    return next(p for p in _params(sample_command) if p.name == name)


@pytest.mark.parametrize("name", [n for n, o in SAMPLING.items() if o.type is not bool])
def test_sample_takes_what_the_sampling_validator_takes(name):
    """`fastrnn sample`'s range of each sampling option equals check_sampling's, which CharRNN.generate and serve
    use too."""
    opt, param = SAMPLING[name], _sample_param(name)
    for value in _probes(opt):
        cli_ok, _ = _cli(param, value)
        try:
            check_sampling({name: value})
            api_ok = True
        except ConfigError:
            api_ok = False
        assert cli_ok == api_ok, (name, value)


def test_sampling_options_are_refused_alike_by_the_api_and_serve():
    """The same values refused by CharRNN.generate's validator and by serve's request parser, for the same reason
    (named --top-k on the command line and in the API, top_k in a request)."""
    from fastrnn import serve

    class Stub:  # a Generator's parse without a model: its limits and vocabulary
        max_length = 10_000
        vocab = type("V", (), {"encode": staticmethod(lambda text: text)})()

    bad = [("temperature", 0), ("temperature", -1.5), ("top_k", -1), ("top_p", 0), ("top_p", 1.5), ("length", -1),
           ("seed", -3)]
    for name, value in bad:
        with pytest.raises(ConfigError) as api:
            check_sampling({name: value})
        with pytest.raises(serve.BadRequest) as server:
            serve.Generator.parse(Stub(), json.dumps({name: value}).encode())
        assert str(api.value).replace(f"--{name.replace('_', '-')}", name) in str(server.value), (name, value)
    assert serve.Generator.parse(Stub(), b'{"temperature": 2, "top_p": 1}')["temperature"] == 2.0


def test_a_beam_with_sampling_options_is_refused_everywhere(trained):
    from fastrnn.api import CharRNN

    with pytest.raises(ConfigError, match=re.escape("--top-p, --greedy have no effect with --beam-width")):
        check_sampling(dict(beam_width=2, top_p=0.5, greedy=True))
    with pytest.raises(ConfigError, match="--temperature has no effect with --beam-width"):
        CharRNN.load(trained).generate("T", 5, temperature=0.5, beam_width=2)
    r = CliRunner().invoke(main, ["sample", trained, "--beam-width", "2", "--temperature", "0.5"])
    assert r.exit_code == 1 and "--temperature has no effect with --beam-width" in r.stderr


# ------------------------------------------------------------------------------------------------------ README

def test_the_readme_options_table_is_current():
    from tools import options_table

    with open(options_table.README, encoding="utf-8") as f:
        text = f.read()
    assert options_table.render(text) == text, "README.md's options table is stale: python -m tools.options_table"
    assert all(f"`--{name.replace('_', '-')}" in text for name in OPTIONS)
