"""The training configuration: one flat, grouped block of options, each declared once.

Each field is declared with `option(...)` (fastrnn.options): its default, help text, range or choices, what
--resume may do with it (fixed: must match the checkpoint; free: may change; allow: may change with --allow-change)
and the optimizers it applies to. `fastrnn train`'s options, `validate` (the same checks for the command line and
the Python API), the resume sets below and README's options table are all made from these declarations.

The resolved configuration is saved into every checkpoint; `--resume` reads it back and refuses changes to the
fields that define the model or the data stream (RESUME_CHANGEABLE, RESUME_CHANGEABLE_WITH_ALLOW).
"""

import dataclasses
import math
import numbers
from dataclasses import dataclass, field

from fastrnn import cells
from fastrnn.errors import ConfigError
from fastrnn.options import check, check_optimizer_options, declared, option

OPTIMIZERS = ("sgd", "adagrad", "rmsprop", "adam", "adamw")
DEFAULT_LR = {"sgd": 0.1, "adagrad": 0.1, "rmsprop": 2e-3, "adam": 2e-3, "adamw": 2e-3}
BACKENDS = ("numba", "numpy")
DTYPES = ("float32", "float64")
PRECISIONS = ("float32", "bf16")  # of the recurrent products (--precision); parameters and state stay --dtype
ON_DIVERGENCE = ("stop", "rollback")
LR_SCHEDULES = ("step", "cosine")
MODELS = cells.names()  # the cells registered at import (the CLI's --model choices); validate asks the registry
INITS = ("auto", "normal", "xavier", "orthogonal")  # see fastrnn.model.Model.init
DURATION_UNITS = {"s": 1, "m": 60, "h": 3600}
EVAL_TOKENS_WORDS = ("auto", "all")


def parse_duration(value):
    """Seconds from a number or a text: "90", "90s", "10m", "2h", "1h30m" (ConfigError otherwise, also for a
    negative or non-finite value)."""
    import re

    if isinstance(value, bool):
        raise ConfigError(f"--max-time must be seconds or a duration such as 90s, 10m or 2h, got {value!r}")
    if isinstance(value, numbers.Real):
        seconds = float(value)
    else:
        text = str(value).strip().lower()
        parts = re.fullmatch(r"((?:\d+(?:\.\d*)?|\.\d+)[hms])+", text)
        try:
            seconds = float(text) if parts is None else sum(
                float(n) * DURATION_UNITS[u] for n, u in re.findall(r"(\d+(?:\.\d*)?|\.\d+)([hms])", text))
        except ValueError:
            raise ConfigError(f"--max-time must be seconds or a duration such as 90s, 10m or 2h, got "
                              f"{value!r}") from None
    if not math.isfinite(seconds):
        raise ConfigError(f"--max-time must be a finite number, got {value}")
    if seconds < 0:
        raise ConfigError(f"--max-time must be >= 0, got {value}")
    return seconds


def parse_eval_tokens(value):
    """--eval-tokens as "auto", "all" or a positive int (0, its old spelling of "all", reads as "all")."""
    if isinstance(value, str) and value.strip().lower() in EVAL_TOKENS_WORDS:
        return value.strip().lower()
    try:
        n = int(value) if not isinstance(value, (bool, float)) else None
    except (TypeError, ValueError):
        n = None
    if isinstance(value, float) and value.is_integer():
        n = int(value)
    if n is None or n < 0:
        raise ConfigError(f"--eval-tokens must be auto, all or a number of tokens >= 1, got {value!r}")
    return "all" if n == 0 else n


def checkpoints_kept(value):
    """--keep-checkpoints: 0 (which the API once took) reads as 1, which it meant: only checkpoint.h5."""
    return 1 if value == 0 and isinstance(value, numbers.Integral) and not isinstance(value, bool) else value


def _lr_by_optimizer():
    """DEFAULT_LR in words: "0.1 for sgd and adagrad, 0.002 for rmsprop and adam"."""
    groups = {}
    for name, lr in DEFAULT_LR.items():
        groups.setdefault(lr, []).append(name)
    return ", ".join(f"{lr:g} for {', '.join(names[:-1]) + ' and ' if len(names) > 1 else ''}{names[-1]}"
                     for lr, names in groups.items())


@dataclass
class TrainConfig:
    # model
    model: str = option("rnn", "Cell: " + ", ".join(f"{name} ({cells.get(name).summary})" for name in cells.names())
                        + ".", choices=cells.names)  # (the cells registered at import: fastrnn.cells)
    num_layers: int = option(1, "Stacked layers L; layer l reads the output of layer l-1.", low=1)
    hidden_size: int = option(128, "Hidden units H per layer.", low=1)
    dropout: float = option(0.0, "Inverted dropout on every layer's output during training (0: off).", low=0, high=1,
                            high_open=True)
    init: str = option("auto", "Weight initialisation: normal (N(0, init-scale^2)), xavier, orthogonal (recurrent "
                       "weights), auto (xavier, which learned best at equal steps; normal is min-char-rnn's).",
                       choices=INITS)
    init_scale: float = option(0.01, "Standard deviation of the initial weights with --init normal.", low=0,
                               low_open=True)
    # data
    seq_len: int = option(50, "Time steps per minibatch (truncated BPTT length) T.", low=1)
    batch_size: int = option(32, "Parallel streams per minibatch N.", low=1)
    reset_hidden: bool = option(False, "Reset the hidden state every minibatch, or carry it (truncated BPTT).",
                                flags="--reset-hidden/--carry-hidden")
    shuffle: bool = option(False, "Minibatches of windows of --seq-len + 1 characters in an order drawn each epoch "
                           "(no state carried between minibatches), instead of contiguous streams.")
    # optimizer
    optimizer: str = option("adam", "The update rule; its own options apply to it alone.", choices=OPTIMIZERS)
    lr: float = option(2e-3, "Learning rate.", low=0, low_open=True, resume="allow", default_text=_lr_by_optimizer())
    lr_decay: float = option(1.0, "Multiply the learning rate by this every --lr-decay-every steps (1: constant).",
                             low=0, high=1, low_open=True, resume="allow")
    lr_decay_every: int = option(0, "Steps between learning-rate decays (0: one epoch).", low=0, resume="allow")
    lr_decay_after: int = option(0, "Steps before the first learning-rate decay.", low=0, resume="allow")
    lr_schedule: str = option("step", "step: --lr-decay every --lr-decay-every steps; cosine: from --lr after the "
                              "warmup down to --lr-floor at the step limit (--max-steps or --max-epochs), else at the "
                              "step --max-time is predicted to end at (from the speed measured when the run starts, "
                              "checked once against the run's own pace).", choices=LR_SCHEDULES, resume="allow")
    lr_floor: float = option(0.0, "Where --lr-schedule cosine ends, as a fraction of --lr (0: down to 0).",
                             low=0, high=1, resume="allow")
    warmup_steps: int = option(0, "Ramp the learning rate linearly up to --lr over this many first updates.", low=0,
                               resume="allow")
    momentum: float = option(0.0, "SGD's (heavy-ball) momentum.", low=0, high=1, high_open=True, resume="allow",
                             optimizers=("sgd",))
    rmsprop_decay: float = option(0.95, "RMSprop's decay of the squared gradient's running mean, char-rnn's "
                                  "-decay_rate.", low=0, high=1, high_open=True, optimizers=("rmsprop",))
    beta1: float = option(0.9, "Adam's decay of the gradient's running mean.", low=0, high=1, high_open=True,
                          optimizers=("adam", "adamw"))
    beta2: float = option(0.999, "Adam's decay of the squared gradient's running mean.", low=0, high=1,
                          high_open=True, optimizers=("adam", "adamw"))
    eps: float = option(1e-8, "The epsilon of the update's denominator.", low=0, low_open=True,
                        optimizers=("adagrad", "rmsprop", "adam", "adamw"))
    weight_decay: float = option(0.01, "Decoupled weight decay (Loshchilov & Hutter 2019): every update first "
                                 "multiplies the weight matrices (not the biases) by 1 - lr * this.",
                                 low=0, resume="allow", optimizers=("adamw",))
    clip: float = option(5.0, "Clip each gradient element to [-clip, clip] (0: off).", low=0, resume="allow")
    max_grad_norm: float = option(0.0, "Rescale gradients whose global L2 norm exceeds this (0: off), before "
                                  "--clip.", low=0, resume="allow")
    # run length
    max_steps: int = option(0, "Stop after this many updates (0: no limit). With no step, epoch or time limit a run "
                            "stops after 10 epochs.", low=0, resume="free")
    max_epochs: float = option(0.0, "Stop after this many passes over the training split (0: no limit).", low=0,
                               resume="free")
    max_time: float = option(0.0, "Stop within this wall-clock time for the whole run, evaluations, checkpoints and "
                             "samples included (a resumed run has what earlier sessions left): seconds, or 90s, 10m, "
                             "2h, 1h30m (0: no limit). An evaluation that no longer fits is skipped or stopped. "
                             "Without --model, --num-layers and --hidden-size, a new run's model, batch, learning "
                             "rate, schedule and dropout are chosen for it (from the corpus size and this machine's "
                             "measured speed; one line says what and why, options given override their part).",
                             low=0, parse=parse_duration, values="seconds >= 0, or 90s, 10m, 2h, 1h30m",
                             resume="free")
    # numerics and execution
    seed: int = option(0, "Random seed (initialisation, dropout masks, samples).", low=0)
    dtype: str = option("float32", "Parameters, state and arithmetic in this precision.", choices=DTYPES)
    precision: str = option("float32", "bf16: the per-step recurrent products in bfloat16 with float32 sums "
                            "(weights, optimizer and checkpoints stay float32), where the CPU has AVX512_BF16; else "
                            "float32, said once. Needs --backend numba and --dtype float32.", choices=PRECISIONS)
    backend: str = option("numba", "numba kernels, or the pure-NumPy reference.", choices=BACKENDS)
    threads: int = option(0, "Threads for kernels and BLAS (0: all cores).", low=0, resume="free")
    # monitoring
    log_every: int = option(10, "Steps between log.jsonl rows (the progress shown on stderr follows them).", low=1,
                            resume="free")
    eval_every: int = option(500, "Steps between evaluations on the val tokens of --eval-tokens (0: only at the "
                             "end).", low=0, resume="free")
    eval_tokens: object = option("auto", "The val tokens every evaluation (and the final one) scores, the same all "
                                 "run long: auto: a fixed set of windows spread over the val split, 8% as many "
                                 "tokens as training reads between evaluations (about 4% of the run's time; for "
                                 "--eval-every 0, as for 500); all: the whole split; N: its first N tokens. "
                                 "log.jsonl's val_tokens says how many; `fastrnn eval` scores a whole split.",
                                 parse=parse_eval_tokens, values="auto, all, or N >= 1", resume="free")
    sample_every: int = option(0, "Steps between printed samples (0: never).", low=0, resume="free")
    sample_length: int = option(200, "Characters per sample printed during training.", low=1, high=1_000_000,
                                resume="free")  # (a sample is held in memory to be printed)
    checkpoint_every: int = option(500, "Steps between checkpoints (one is always written at the end).", low=0,
                                   resume="free")
    keep_checkpoints: int = option(1, "Also keep the last K checkpoints as checkpoint-<step>.h5 (1: only "
                                   "checkpoint.h5).", low=1, parse=checkpoints_kept,
                                   values="integer >= 1 (0 reads as 1)", resume="free")
    early_stop_patience: int = option(0, "Stop after this many evaluations without a better validation loss (0: "
                                      "off).", low=0, resume="free")
    divergence_factor: float = option(5.0, "Stop if the smoothed loss exceeds this multiple of the starting loss "
                                      "(0: off).", low=0, resume="free")
    on_divergence: str = option("stop", "On a NaN/inf or exploding loss: stop, or reload the last healthy "
                                "checkpoint and halve the learning rate.", choices=ON_DIVERGENCE, resume="free")
    max_rollbacks: int = option(5, "With --on-divergence rollback: stop after this many rollbacks.", low=0,
                                resume="free")
    extra: dict = field(default_factory=dict)  # reserved for forward-compatible fields (not an option)

    def to_dict(self):
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d):
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})

    def normalize(self):
        """Options given in another form read as their canonical one (each option's declared `parse`): a
        --max-time with a unit as seconds, an --eval-tokens of 0 (before "all" existed) as "all", a
        --keep-checkpoints of 0 (which the API once took) as 1, which it meant. ConfigError for a value of
        neither form."""
        for name, opt in OPTIONS.items():
            if opt.parse is not None:
                setattr(self, name, opt.parse(getattr(self, name)))
        return self

    def validate(self):
        """Raise ConfigError for options that cannot work: each option against its declaration (type, range,
        choices), an option of another optimizer set away from its default, and the combinations below."""
        self.normalize()
        for name, opt in OPTIONS.items():
            setattr(self, name, check(opt, name, getattr(self, name)))
        check_optimizer_options(self.optimizer, [name for name in OPTIMIZER_OPTIONS
                                                 if getattr(self, name) != OPTIONS[name].default], OPTIONS)
        if self.precision == "bf16" and (self.backend != "numba" or self.dtype != "float32"):
            raise ConfigError("--precision bf16 needs --backend numba and --dtype float32 (float32 master weights "
                              "with bf16 products)")
        self._check_fits_in_memory()
        return self

    def _check_fits_in_memory(self):
        """A model far too large for this machine is an error here, not a failed allocation (or an endless loop
        over 10**20 layers) later: its parameters, gradients and optimizer buffers, without the vocabulary's."""
        import psutil

        from fastrnn.optim import STATE_NAMES

        size = self.num_layers * cells.get(self.model).gates * self.hidden_size * (2 * self.hidden_size + 1)
        copies = 2 + len(STATE_NAMES[self.optimizer])
        need = size * copies * (4 if self.dtype == "float32" else 8)
        have = psutil.virtual_memory().total + psutil.swap_memory().total
        if need > have:
            raise ConfigError(f"a {self.model} of {self.num_layers} layer(s) of {self.hidden_size} units needs at "
                              f"least {need / 2**30:,.0f} GB of memory for its parameters, gradients and optimizer "
                              f"state; this machine has {have / 2**30:,.0f} GB")


OPTIONS = declared(TrainConfig)  # field name -> Option: every field but `extra`
# The options of one optimizer each, and the optimizers they apply to.
OPTIMIZER_OPTIONS = {name: opt.optimizers for name, opt in OPTIONS.items() if opt.optimizers}
# Fields a resumed run may change freely. Everything else defines the model, the data stream or the numerics and
# must match the checkpoint; lr and its schedule may change only with --allow-change.
RESUME_CHANGEABLE = {name for name, opt in OPTIONS.items() if opt.resume == "free"}
RESUME_CHANGEABLE_WITH_ALLOW = {name for name, opt in OPTIONS.items() if opt.resume == "allow"}
