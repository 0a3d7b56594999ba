"""The training configuration: one flat, grouped, commented block of defaults.

The resolved configuration is saved into every checkpoint; `--resume` reads it back and refuses changes to the
fields that define the model or the data stream (see RESUME_CHANGEABLE).
"""

import dataclasses
import math
import numbers
from dataclasses import dataclass, field

from fastrnn.errors import ConfigError
from fastrnn import cells

OPTIMIZERS = ("sgd", "adagrad", "rmsprop", "adam")
DEFAULT_LR = {"sgd": 0.1, "adagrad": 0.1, "rmsprop": 2e-3, "adam": 2e-3}
BACKENDS = ("numba", "numpy")
DTYPES = ("float32", "float64")
PRECISIONS = ("float32", "bf16")  # of the recurrent products (--precision); parameters and state stay --dtype
ON_DIVERGENCE = ("stop", "rollback")
LR_SCHEDULES = ("step", "cosine")
MODELS = cells.names()  # the cells registered at import (the CLI's --model choices); validate asks the registry
INITS = ("auto", "normal", "xavier", "orthogonal")  # see fastrnn.model.Model.init


@dataclass
class TrainConfig:
    # model
    model: str = "rnn"  # rnn (vanilla tanh) | lstm | gru
    num_layers: int = 1  # L stacked layers; layer l reads the output of layer l-1
    hidden_size: int = 128  # H, per layer
    dropout: float = 0.0  # inverted dropout on each layer's output during training (0: off)
    init: str = "auto"  # normal | xavier | orthogonal | auto (xavier for every cell)
    init_scale: float = 0.01  # with init normal: weights ~ N(0, init_scale^2), as min-char-rnn; biases 0
    # data
    seq_len: int = 50  # T: time steps per minibatch (truncated BPTT length)
    batch_size: int = 32  # N: parallel streams over the training split
    reset_hidden: bool = False  # reset the hidden state every minibatch (seed 000) instead of carrying it
    shuffle: bool = False  # windows of seq_len + 1 in an order drawn per epoch (no carried state), not streams
    # optimizer
    optimizer: str = "adam"  # sgd | adagrad | rmsprop | adam
    lr: float = 2e-3  # learning rate (the CLI's default depends on the optimizer: DEFAULT_LR)
    lr_decay: float = 1.0  # multiply lr by this every lr_decay_every steps (1.0: constant)
    lr_decay_every: int = 0  # steps between decays; 0 means one epoch
    lr_decay_after: int = 0  # steps before the first decay
    lr_schedule: str = "step"  # step (lr_decay every lr_decay_every steps) | cosine (to 0 at the step limit)
    warmup_steps: int = 0  # linear warmup from lr / warmup_steps to lr over this many first updates
    momentum: float = 0.0  # sgd momentum
    rmsprop_decay: float = 0.95
    beta1: float = 0.9
    beta2: float = 0.999
    eps: float = 1e-8
    clip: float = 5.0  # elementwise gradient clip to [-clip, clip] (0: off)
    max_grad_norm: float = 0.0  # global-norm clip (0: off), applied before the elementwise clip
    # run length
    max_steps: int = 0  # 0: no limit
    max_epochs: float = 0.0  # 0: no limit
    max_time: float = 0.0  # seconds of wall clock for the whole run, evaluations included (0: no limit); "90s",
    # "10m", "2h" are read as seconds (parse_duration)
    # numerics and execution
    seed: int = 0
    dtype: str = "float32"
    precision: str = "float32"  # bf16: the recurrent products in bf16 with float32 sums, where the CPU has it
    backend: str = "numba"
    threads: int = 0  # 0: all cores
    # monitoring
    log_every: int = 10  # steps between progress lines / log.jsonl rows
    eval_every: int = 500  # steps between validation passes (0: only at the end)
    eval_tokens: object = "auto"  # which val tokens an evaluation scores: "auto" (a fixed share of the val
    # streams sized to eval_every: fastrnn.validation), "all" (the whole split) or N (its first N tokens)
    sample_every: int = 0  # steps between printed samples (0: never)
    sample_length: int = 200
    checkpoint_every: int = 500  # steps between checkpoints (one is always written at the end)
    keep_checkpoints: int = 1  # also keep the last K checkpoints as checkpoint-<step>.h5 (1: only checkpoint.h5)
    early_stop_patience: int = 0  # stop after this many evaluations without a better val loss (0: off)
    divergence_factor: float = 5.0  # stop if the smoothed loss exceeds this multiple of the starting loss (0: off)
    on_divergence: str = "stop"  # stop | rollback: reload the last checkpoint and halve the learning rate
    max_rollbacks: int = 5  # with rollback: give up (stop) after this many
    extra: dict = field(default_factory=dict)  # reserved for forward-compatible fields

    def to_dict(self):
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d):
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})

    def normalize(self):
        """Options given in another form read as their canonical one: a --max-time with a unit as seconds, an
        --eval-tokens of 0 (before "all" existed) as "all", a --keep-checkpoints of 0 (which the API once took) as
        1, which it meant. Raises ConfigError for a value of neither form."""
        self.max_time = parse_duration(self.max_time)
        self.eval_tokens = parse_eval_tokens(self.eval_tokens)
        if self.keep_checkpoints == 0 and not isinstance(self.keep_checkpoints, bool):
            self.keep_checkpoints = 1
        return self

    def _check_types(self):
        """Integer options hold integers (not 32.5, not True) and number options numbers, from any entry point."""
        for f in dataclasses.fields(self):
            value, flag = getattr(self, f.name), f"--{f.name.replace('_', '-')}"
            if f.type in (int, "int") and (isinstance(value, bool) or not isinstance(value, numbers.Integral)):
                raise ConfigError(f"{flag} must be a whole number, got {value!r}")
            if f.type in (float, "float") and (isinstance(value, bool) or not isinstance(value, numbers.Real)):
                raise ConfigError(f"{flag} must be a number, got {value!r}")

    def _check_optimizer_options(self):
        """An option of another optimizer than the one chosen, set away from its default, would do nothing: it is
        refused (the command line refuses it even at its default value)."""
        for name, applies in OPTIMIZER_OPTIONS.items():
            if self.optimizer not in applies and getattr(self, name) != getattr(TrainConfig, name):
                raise ConfigError(f"--{name.replace('_', '-')} has no effect with --optimizer {self.optimizer} "
                                  f"(it applies to {' and '.join(applies)})")

    def validate(self):
        """Raise ConfigError for options that cannot work."""
        self.normalize()
        self._check_types()
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if isinstance(value, numbers.Real) and not math.isfinite(value):
                raise ConfigError(f"--{f.name.replace('_', '-')} must be a finite number, got {value}")
        if isinstance(self.seed, bool) or not isinstance(self.seed, numbers.Integral) or self.seed < 0:
            raise ConfigError(f"--seed must be an integer >= 0, got {self.seed}")
        positive = ["hidden_size", "seq_len", "batch_size"]
        for name in positive:
            if getattr(self, name) <= 0:
                raise ConfigError(f"--{name.replace('_', '-')} must be positive, got {getattr(self, name)}")
        if self.model not in cells.names():
            raise ConfigError(f"unknown model {self.model!r}; choose from {', '.join(cells.names())}")
        if self.num_layers < 1:
            raise ConfigError(f"--num-layers must be >= 1, got {self.num_layers}")
        if not 0 <= self.dropout < 1:
            raise ConfigError(f"--dropout must be in [0, 1), got {self.dropout}")
        if self.init not in INITS:
            raise ConfigError(f"unknown init {self.init!r}; choose from {', '.join(INITS)}")
        if self.optimizer not in OPTIMIZERS:
            raise ConfigError(f"unknown optimizer {self.optimizer!r}; choose from {', '.join(OPTIMIZERS)}")
        self._check_optimizer_options()
        if self.backend not in BACKENDS:
            raise ConfigError(f"unknown backend {self.backend!r}; choose from {', '.join(BACKENDS)}")
        if self.dtype not in DTYPES:
            raise ConfigError(f"unknown dtype {self.dtype!r}; choose from {', '.join(DTYPES)}")
        if self.precision not in PRECISIONS:
            raise ConfigError(f"unknown precision {self.precision!r}; choose from {', '.join(PRECISIONS)}")
        if self.precision == "bf16" and (self.backend != "numba" or self.dtype != "float32"):
            raise ConfigError("--precision bf16 needs --backend numba and --dtype float32 (float32 master weights "
                              "with bf16 products)")
        if not self.lr > 0:
            raise ConfigError(f"--lr must be positive, got {self.lr}")
        if not 0 < self.lr_decay <= 1:
            raise ConfigError(f"--lr-decay must be in (0, 1], got {self.lr_decay}")
        if not 0 <= self.momentum < 1:
            raise ConfigError(f"--momentum must be in [0, 1), got {self.momentum}")
        for name in ("beta1", "beta2", "rmsprop_decay"):
            if not 0 <= getattr(self, name) < 1:
                raise ConfigError(f"--{name.replace('_', '-')} must be in [0, 1), got {getattr(self, name)}")
        if self.lr_schedule not in LR_SCHEDULES:
            raise ConfigError(f"--lr-schedule must be one of {', '.join(LR_SCHEDULES)}, got {self.lr_schedule!r}")
        if self.lr_schedule == "cosine" and self.max_time and not (self.max_steps or self.max_epochs):
            raise ConfigError("--lr-schedule cosine decays to 0 at the step limit: give --max-steps or "
                              "--max-epochs (a --max-time run has no known last step)")
        if not self.eps > 0:
            raise ConfigError(f"--eps must be positive, got {self.eps}")
        if self.clip < 0 or self.max_grad_norm < 0:
            raise ConfigError("--clip and --max-grad-norm must be >= 0")
        if self.init_scale <= 0:
            raise ConfigError(f"--init-scale must be positive, got {self.init_scale}")
        for name in ("max_steps", "max_epochs", "max_time", "eval_every", "sample_every", "checkpoint_every",
                     "early_stop_patience", "lr_decay_every", "lr_decay_after", "warmup_steps", "threads",
                     "divergence_factor"):
            if getattr(self, name) < 0:
                raise ConfigError(f"--{name.replace('_', '-')} must be >= 0, got {getattr(self, name)}")
        if self.keep_checkpoints < 1:
            raise ConfigError(f"--keep-checkpoints must be >= 1, got {self.keep_checkpoints}")
        if self.on_divergence not in ON_DIVERGENCE:
            raise ConfigError(f"--on-divergence must be one of {', '.join(ON_DIVERGENCE)}, got {self.on_divergence!r}")
        if self.max_rollbacks < 0:
            raise ConfigError(f"--max-rollbacks must be >= 0, got {self.max_rollbacks}")
        if self.log_every <= 0:
            raise ConfigError(f"--log-every must be positive, got {self.log_every}")
        if not 0 < self.sample_length <= 1_000_000:  # a sample is held in memory to be printed
            raise ConfigError(f"--sample-length must be in [1, 1000000], got {self.sample_length}")
        self._check_fits_in_memory()
        return self

    def _check_fits_in_memory(self):
        """A model far too large for this machine is an error here, not a failed allocation (or an endless loop
        over 10**20 layers) later: its parameters, gradients and optimizer buffers, without the vocabulary's."""
        import psutil

        size = self.num_layers * cells.get(self.model).gates * self.hidden_size * (2 * self.hidden_size + 1)
        copies = 2 + (2 if self.optimizer == "adam" else 1)
        need = size * copies * (4 if self.dtype == "float32" else 8)
        have = psutil.virtual_memory().total + psutil.swap_memory().total
        if need > have:
            raise ConfigError(f"a {self.model} of {self.num_layers} layer(s) of {self.hidden_size} units needs at "
                              f"least {need / 2**30:,.0f} GB of memory for its parameters, gradients and optimizer "
                              f"state; this machine has {have / 2**30:,.0f} GB")


# The options of one optimizer each, and the optimizers they apply to.
OPTIMIZER_OPTIONS = {"momentum": ("sgd",), "beta1": ("adam",), "beta2": ("adam",), "rmsprop_decay": ("rmsprop",),
                     "eps": ("adagrad", "rmsprop", "adam")}

# Fields a resumed run may change freely. Everything else defines the model, the data stream or the numerics and
# must match the checkpoint; lr and its schedule may change only with --allow-change.
RESUME_CHANGEABLE = {
    "max_steps", "max_epochs", "max_time", "threads", "log_every", "eval_every", "sample_every", "sample_length",
    "checkpoint_every", "keep_checkpoints", "early_stop_patience", "divergence_factor", "on_divergence",
    "eval_tokens",
    "max_rollbacks",
}
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


RESUME_CHANGEABLE_WITH_ALLOW = {"lr", "lr_decay", "lr_decay_every", "lr_decay_after", "lr_schedule", "warmup_steps",
                                "clip", "max_grad_norm", "momentum"}
