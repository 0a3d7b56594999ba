"""The model for the time you have: `fastrnn train CORPUS --max-time T` with none of --model, --num-layers and
--hidden-size chooses the cell, its size, the batch, the learning rate, warmup, schedule and dropout from the
training characters, the budget and this machine's measured speed; a cosine schedule tied to --max-time gets the
step it ends at (its horizon), predicted once from the measured speed.

    decide(train_chars, vocab_size, budget, speeds, given) -> Choice    pure: the rules below; no clock, no I/O
    measure(shapes, ...) -> Measured                                    training steps timed, cached per machine
    settle(config, given, corpus_path, ...) -> config                   train's hook: both, said and recorded

The quantities, for a candidate of P parameters trained at S chars/s in a budget of B seconds on C training chars:

    chars trained     D = S * (B * TRAIN_SHARE - STARTUP_SECONDS)   (what the budget leaves for training steps)
    epochs            E = D / C
    params per char   p = P / C                     (parameters per training character: the data's limit)
    chars per param   D / P = E / p                 (training characters seen per parameter: the budget's limit)

The rule, in two steps:
1. the largest candidate without dropout (most parameters) within the limits of its cell (LIMITS: p at most, D / P
   at least); if none, the smallest;
2. if that one would train DROPOUT_EPOCHS epochs or more, it trains with dropout (its twin among the candidates).
A larger budget or a faster machine only raises D / P, a larger corpus only lowers p, so either chooses a model at
least as large (with dropout or without). Explicit options override their part (settle passes them as `given`);
with --dropout given, step 1 alone.

The speeds (fastrnn.speeds: training steps of each shape, timed and cached per machine) are measured cell by cell,
the cell whose candidates are all larger first, each cell's smallest shape first (measure_order), and only for shapes
that can fit (a shape over the data's limit, smaller than one that fits, or predicted too slow even at PRUNE_SLACK
times the speed of the one before of its cell, is not timed; one with dropout only if step 2 would choose it). The
first shape worth timing always is (a run needs its kernels anyway); the others only while MEASURE_SHARE of --max-time
lasts, counted from the start of `train`, whose time budget (fastrnn.budget) has the deadline from that start on, so
the measurement is charged to the run, with one grace: the first shape's start-up (its kernels compiled on a fresh
install or loaded from numba's cache after, its kernel plan measured once per machine) moves the deadline on by as
long as it took, being what a run of that shape pays in its first step anyway.
"""

import dataclasses
import math
import os
import time

from fastrnn.cells.lnlstm import LNLSTM
from fastrnn.cells.rnn import RNN
from fastrnn.errors import ConfigError
from fastrnn.speeds import measure

# ---------------------------------------------------------------------------------------------------------------
# the rules: data, each number with the measurement that set it. Every measurement so far: adam at lr 2e-3
# (constant unless said), seq_len 50, xavier init, float32. Sources:
#   [TTQ1] docs/benchmarks/2026-12-02/time_to_quality.json: the novels (gutenberg-novels.txt: 11.0M chars, 154
#          symbols, 9.9M for training), 120 s, 2 threads, batch 64: rnn 1x512 (420k params) 1.665 nats/char (7.29M
#          chars trained), lstm 2x256 (986k) 1.887 (2.65M), lstm 1x512 (1.45M) 1.960 (2.14M).
#   [TTQ2] docs/benchmarks/2026-12-03/time_to_quality.json: the same at 240 s: rnn 1x512 1.550 (15.9M chars),
#          rnn 1x128 (56k params) 1.581 (89.3M), lstm 2x256 1.597 (6.71M), lstm 1x512 1.651 (5.11M), gru 1x512
#          1.851 (6.87M; 1.676 on the NumPy backend: issue #28 suspects its defaults, so no gru is a candidate).
#   [MAKE] the Makefile's `run` comment: rnn 1x256 batch 32 on tiny Shakespeare (1.0M training chars), 120 s:
#          step decay beat a constant rate, dropout and a faster decay.
#   [I28]  issue #28: tiny Shakespeare (val 10%), 300 s, one core: rnn 1x128 batch 32, constant rate, 1.712;
#          rnn 1x256 with make run's step decay, 1.652.
#   [G120] docs/benchmarks/ttq-grid.jsonl: tiny Shakespeare (val 10%, 1.0M training chars), 120 s, one core a run,
#          cosine to 0.1x: lnlstm 1x256 (349k params, 0.35 params/char, 13.9 chars/param) 1.461, rnn 1x256 (99k)
#          1.602, lstm 1x256 (346k) 1.927; at equal steps (3,000) 1.461, 1.783, 1.929: the layer-normalised LSTM
#          learns fastest per step and per second, the plain LSTM slowest (its 1,500-step val matches PyTorch's
#          nn.LSTM trained alike, 1.827 against 1.894: its defaults are not the cause; at lr 8e-3 it reached 1.639,
#          still behind the lnlstm's 1.563 at 2e-3, and an lnlstm at 5e-3 gained 0.01: no candidate changes rate).
#   [G300] the same grid at 300 s: lnlstm 1x512 (1.22M params, p = 1.22, 2.25 chars/param) 1.426, with dropout
#          0.2 1.430 (with it at batch 64, 1.447); lnlstm 2x256 1.438; lnlstm 1x256 with dropout 0.2 1.458,
#          without 1.475 (11.7 epochs; 1.461 at 120 s in 4.85); rnn 1x512 at batch 64 1.632, behind rnn 1x256's
#          1.594 (as at 120 s at batch 32: 1.748 against 1.602), so rnn 1x512 is no candidate
#   [N600], [N1800], [L300] the same grid on the novels at 600 and 1800 s (two threads a run) and on the Linux source
#          (1.2 GB of C: 1.06G training chars, 361 symbols; no run reaches 1% of an epoch) at 300 s (one core a run)

LIMITS = {  # cell -> (p at most, D / P at least), as the rule predicts them (TRAIN_SHARE, STARTUP_SECONDS)
    RNN.name: (0.40, 10.0),
    # p: with the rnn alone, rnn 1x256 (p = 0.099) beat rnn 1x128 (p = 0.033) on tiny Shakespeare [I28, MAKE]; on
    # the novels rnn 1x512 (p = 0.042) won [TTQ2]. D / P: the models that won on the novels had 17 (rnn 1x512,
    # 120 s [TTQ1]) and 38 (240 s [TTQ2]); those that lost to them 6.8 and 3.5 (lstm 2x256 and 1x512, 240 s), 2.7
    # and 1.5 (120 s): 10 lies between the nearest loser and winner (6.8, 17), near their geometric mean (10.8).
    # With the speeds measured there the rule predicts 14.6 for the winner at 120 s and 5.8 for the lstm 2x256 at
    # 240 s: the same verdicts. (The plain lstm is no candidate, and the lnlstm learns at fewer chars per param.)
    LNLSTM.name: (1.25, 3.5),
    # D / P as the rule predicts it from the speeds each grid's `auto` run measured (where one was not timed, the
    # speed its fixed run trained at), against what the grid measured:
    #   won            lost, and by how much
    #   10.1  [L300]   2.57 (+0.065, lnlstm 2x256: the choice under a limit of 2.2), 1.07 (+0.106)
    #   11.3  [G120]   1.78 (+0.036, lnlstm 2x256: the choice under a limit of 1.8), 0.82 (+0.065)
    #   10.8  [N600]   5.84 (+0.008, lnlstm 1x512, the choice under 2.2; its own run, 1.217: +0.005), 1.00 (+0.363)
    #   2.55  [G300]   4.73 (+0.012, lnlstm 2x256; +0.024 from the grid's best, 1x512 at lr 3e-3)
    # [G300] alone has the winner at fewer chars/param than a loser: there lnlstm 1x256 (27.9 predicted) trained 9.7
    # epochs of a small corpus. A limit between 2.57 and 4.73 keeps every choice within 0.03 of its grid's best (the
    # issue's goal); 3.5 lies near their geometric mean (3.49). [N1800] agrees: it chooses 1x512 there (tied 2x512).
    # p = 1.22 is the largest measured to win (lnlstm 2x512, p = 3.3 at 0.4 chars/param, lost [G300]).
}
DROPOUT = 0.2  # step 2's dropout: the only rate measured
DROPOUT_EPOCHS = 7.5  # step 2 from this many epochs of step 1's choice: on tiny Shakespeare dropout 0.2 cost lnlstm
# 1x256 0.039 nats/char at 120 s (4.85 epochs without it) and gained 0.017 at 300 s (11.7 epochs); it cost lnlstm
# 2x256 0.014 (3.75 epochs) and lnlstm 1x512 0.004 (2.74) at 300 s [G120, G300]. 7.5 lies near the geometric mean
# of 4.85 and 11.7 (the rnn has no dropout twin: no rnn run with dropout was measured to gain)
TRAIN_SHARE = 0.85  # of --max-time, for training steps: the rest is this measurement (MEASURE_SHARE), the auto
# evaluations (about 4%: fastrnn.validation), the kernels' start-up and checkpoints. Counting short, a cosine
# schedule reaches its floor a little before the end rather than not at all.
STARTUP_SECONDS = 1.0  # and this, whatever the budget: a 10 s run of rnn 1x128 on one core here spent 1.5 s outside
# its training steps (opening the corpus, the choice, the kernels' first step, the final evaluation and checkpoint),
# and trained 2,721 steps at the speed measured where 0.85 x 10 s predicted 2,848
LR_FLOOR = 0.1  # the cosine schedule ends at lr x this (--lr-floor): [MAKE] and [I28] say a decaying rate beats a
# constant one on tiny Shakespeare; the floor itself is not measured here (the grid of issue #28 is to set it)
WARMUP_STEPS, WARMUP_SHARE = 100, 0.02  # warmup: 100 steps, at most 2% of the predicted steps (not measured here:
# adam at 2e-3 trained without one in every run above; a short one costs little)


@dataclasses.dataclass(frozen=True)
class Candidate:
    """A model the rule may choose, with the training settings it was measured with."""

    cell: str
    layers: int
    hidden: int
    batch: int
    seq_len: int
    lr: float
    dropout: float
    source: str  # the measurement it comes from

    def params(self, vocab_size):
        from fastrnn.params import Layout, model_shapes

        return Layout(model_shapes(self.cell, vocab_size, self.hidden, self.layers)).size


# Smallest first: the rule takes the largest that fits. The plain LSTM is no candidate: the layer-normalised one of
# the same size beat it by 0.47 nats/char in 120 s [G120]; nor rnn 1x512 (it lost to rnn 1x256 at 120 and 300 s on
# tiny Shakespeare [G300], and to the lnlstm 1x256, larger by 6%, everywhere). Batch 32: lnlstm 1x512 with dropout
# lost 0.017 at batch 64 [G300]. The candidates with dropout are the twins of those without (step 2).
_FIXED = (
    Candidate(RNN.name, 1, 128, 32, 50, 2e-3, 0.0, "the defaults; 1.712 on tiny Shakespeare in 300 s [I28]"),
    Candidate(RNN.name, 1, 256, 32, 50, 2e-3, 0.0, "make run's model; 1.652 on tiny Shakespeare in 300 s [I28, MAKE]"),
    Candidate(LNLSTM.name, 1, 256, 32, 50, 2e-3, 0.0, "best on tiny Shakespeare in 120 s [G120]"),
    Candidate(LNLSTM.name, 2, 256, 32, 50, 2e-3, 0.0, "second on tiny Shakespeare in 300 s [G300]"),
    Candidate(LNLSTM.name, 1, 512, 32, 50, 2e-3, 0.0, "best on tiny Shakespeare in 300 s [G300]"),
    Candidate(LNLSTM.name, 2, 512, 32, 50, 2e-3, 0.0, "for larger corpora and budgets [G300]"),
)
CANDIDATES = _FIXED + tuple(dataclasses.replace(c, dropout=DROPOUT, source="its twin with dropout, for step 2")
                            for c in _FIXED if c.cell != RNN.name)
MODEL_OPTIONS = ("model", "num_layers", "hidden_size")  # any of them given: no choice (the user chose the model)
STEP_OPTIONS = ("lr_decay", "lr_decay_every", "lr_decay_after")  # given: the user wants the step schedule
CHOICE_FIELDS = ("batch_size", "seq_len", "dropout", "optimizer", "lr", "warmup_steps", "lr_schedule",
                 "lr_floor") + STEP_OPTIONS  # besides the model: what a choice sets, or an explicit option decides
HORIZON_KEY = "lr_horizon"  # config.extra: the step a cosine schedule tied to --max-time ends at
CHECKED_KEY = "lr_horizon_checked"  # config.extra: the run predicted it again from its own steps (horizon.HorizonCheck)
CHOICE_KEY = "choice"  # config.extra: what was chosen and why

# ---------------------------------------------------------------------------------------------------------------
# measuring

MEASURE_SHARE = 0.05  # of --max-time at most for measuring and choosing (the first shape worth it is timed)
LOAD_SAID = 5.0  # the choice's line says how much of its measurement loading the kernels took from this many seconds
PRUNE_SLACK = 2.0  # a larger shape is predicted at most this much faster per parameter than the last one timed


@dataclasses.dataclass(frozen=True)
class Shape:
    """What a speed is measured for (with the vocabulary, dtype, backend and threads of the run)."""

    cell: str
    layers: int
    hidden: int
    batch: int
    seq_len: int
    dropout: bool

    def __str__(self):
        return f"{self.cell} {self.layers}x{self.hidden} B{self.batch} T{self.seq_len}" + (" dropout" * self.dropout)


def shape_of(candidate, given=None):
    """The Shape a candidate trains at, with the batch, sequence length and dropout `given` explicitly."""
    given = given or {}
    return Shape(candidate.cell, candidate.layers, candidate.hidden, int(given.get("batch_size", candidate.batch)),
                 int(given.get("seq_len", candidate.seq_len)), float(given.get("dropout", candidate.dropout)) > 0)


# ---------------------------------------------------------------------------------------------------------------
# the decision (pure)


@dataclasses.dataclass(frozen=True)
class Fit:
    """The rule's quantities for one candidate."""

    candidate: Candidate
    shape: Shape
    params: int
    speed: float  # chars/s measured
    chars: float  # D: chars the budget trains
    epochs: float  # E
    params_per_char: float  # p
    chars_per_param: float  # D / P

    @property
    def fits(self):
        most_params, least_chars = LIMITS[self.candidate.cell]
        return self.params_per_char <= most_params and self.chars_per_param >= least_chars


def candidates_for(given, candidates=CANDIDATES):
    """The candidates of a choice: with --dropout given, only those without (trained at the dropout given)."""
    return tuple(c for c in candidates if not (c.dropout and "dropout" in given))


def twin(candidate, candidates=CANDIDATES):
    """The candidate with dropout of the same model and batch as `candidate` (None if it has none)."""
    return next((c for c in candidates if c.dropout and
                 (c.cell, c.layers, c.hidden, c.batch) == (candidate.cell, candidate.layers, candidate.hidden,
                                                           candidate.batch)), None)


def smallest(given, vocab_size, candidates=CANDIDATES):
    """The smallest candidate of a choice without dropout: the rule's choice where none fits."""
    return min((c for c in candidates_for(given, candidates) if not c.dropout), key=lambda c: c.params(vocab_size))


def wants_dropout(first):
    """Step 2 of the rule: step 1's choice (a Fit) would train DROPOUT_EPOCHS epochs or more."""
    return bool(first.speed) and first.epochs >= DROPOUT_EPOCHS


def train_seconds(budget):
    """The seconds of training steps a run of `budget` seconds (--max-time) is predicted to hold."""
    return max(0.0, budget * TRAIN_SHARE - STARTUP_SECONDS)


def fit(candidate, shape, train_chars, vocab_size, budget, speed):
    """The rule's quantities of `candidate` trained at `speed` chars/s for `budget` seconds on `train_chars`."""
    params = candidate.params(vocab_size)
    chars = speed * train_seconds(budget)
    return Fit(candidate, shape, params, speed, chars, chars / max(train_chars, 1), params / max(train_chars, 1),
               chars / params)


def predicted_steps(speed, budget, batch, seq_len):
    """The training steps `budget` seconds of a run are predicted to hold at `speed` chars/s (train_seconds)."""
    return max(1, int(speed * train_seconds(budget) // (batch * seq_len)))


@dataclasses.dataclass(frozen=True)
class Choice:
    """The decision: the options it sets (`values`, explicit ones left out) and why (`fit`, `reason`)."""

    values: dict  # TrainConfig field -> value: what the choice sets (never an option given explicitly)
    fit: Fit  # the chosen candidate's quantities (speed 0: nothing was measured)
    reason: str
    horizon: int  # the step a cosine schedule ends at (0: none, the schedule is not cosine or has a step limit)
    budget: float
    given: tuple  # the options given explicitly that are part of a choice

    def line(self, settings):
        """The one line said at the start: `settings` are the run's final options (given ones included)."""
        s, f = settings, self.fit
        lr = f"lr {s['lr']:g}"
        if s["lr_schedule"] == "cosine":
            end = f"at step {self.horizon:,}" if self.horizon else "at the step limit"
            lr += f" cosine to {s['lr'] * s['lr_floor']:g} {end}"
        elif s.get("lr_decay", 1.0) != 1.0:
            lr += " with step decay"
        else:
            lr += " constant"
        head = (f"choice: {s['model']} {s['num_layers']}x{s['hidden_size']} B{s['batch_size']} T{s['seq_len']}, "
                f"{s['optimizer']} {lr}, warmup {s['warmup_steps']}, dropout {s['dropout']:g}")
        if not f.speed:
            why = "; nothing was measured: the smallest candidate"
        else:
            why = (f"; {f.params:,} params, ~{_num(f.epochs)} epochs in {self.budget:g} s at {f.speed:,.0f} "
                   f"chars/s measured ({f.params_per_char:.3g} params/char, {_num(f.chars_per_param)} chars/param): "
                   f"{self.reason}")
        given = f" ({', '.join('--' + n.replace('_', '-') for n in self.given)} given)" if self.given else ""
        return head + why + given


def _num(x):
    """Three significant digits, never an exponent: 0.0123, 4.56, 78.9, 1,234."""
    return f"{x:,.0f}" if abs(x) >= 100 else f"{x:.3g}"


def decide(train_chars, vocab_size, budget, speeds, given=None, candidates=CANDIDATES):
    """The Choice for a corpus of `train_chars` training characters and `vocab_size` symbols, `budget` seconds
    (--max-time) and `speeds` {Shape: chars/s measured} (a candidate without one is not eligible), the options
    `given` explicitly {field: value} overriding their part. Deterministic: the same arguments, the same Choice."""
    given = dict(given or {})
    fits = {c: fit(c, shape_of(c, given), train_chars, vocab_size, budget, speeds[shape_of(c, given)])
            for c in candidates_for(given, candidates) if speeds.get(shape_of(c, given), 0) > 0}
    plain = [f for c, f in fits.items() if not c.dropout]
    good = [f for f in plain if f.fits]
    if good:
        chosen = max(good, key=lambda f: f.params)  # (candidates differ in size)
        most_params, least_chars = LIMITS[chosen.candidate.cell]
        reason = (f"the largest candidate within its cell's limits ({most_params:g} params/char, {least_chars:g} "
                  f"chars/param)")
    elif plain:
        chosen = min(plain, key=lambda f: f.params)
        reason = "no candidate is within the limits of its cell: the smallest"
    else:
        c = smallest(given, vocab_size, candidates)
        chosen = Fit(c, shape_of(c, given), c.params(vocab_size), 0.0, 0.0, 0.0, 0.0, 0.0)
        reason = "nothing was measured: the smallest"
    other = twin(chosen.candidate, candidates)
    if wants_dropout(chosen) and other in fits:
        reason += (f"; it would train {_num(chosen.epochs)} epochs without dropout (>= {DROPOUT_EPOCHS:g}): "
                   f"with dropout {other.dropout:g}")
        chosen = fits[other]
    c, shape = chosen.candidate, chosen.shape
    values = {"model": c.cell, "num_layers": c.layers, "hidden_size": c.hidden, "batch_size": shape.batch,
              "seq_len": shape.seq_len, "dropout": c.dropout}
    if given.get("optimizer", "adam") in ("adam", "adamw"):  # the candidates' rates are adam's
        values["lr"] = c.lr
    steps = predicted_steps(chosen.speed, budget, shape.batch, shape.seq_len) if chosen.speed else 0
    # cosine to the end of the budget (its steps predicted), unless the step schedule's options were given
    schedule = given.get("lr_schedule") or \
        ("step" if any(name in given for name in STEP_OPTIONS) or not steps else "cosine")
    values["lr_schedule"] = schedule
    if schedule == "cosine":
        values["lr_floor"] = LR_FLOOR
    values["warmup_steps"] = min(WARMUP_STEPS, int(steps * WARMUP_SHARE))
    values = {k: v for k, v in values.items() if k not in given}
    limited = given.get("max_steps") or given.get("max_epochs")
    horizon = steps if schedule == "cosine" and not limited else 0
    return Choice(values, chosen, reason, horizon, budget, tuple(n for n in CHOICE_FIELDS if n in given))


def horizon(speed, budget, batch, seq_len, step=0):
    """The step a cosine schedule tied to --max-time ends at: `step` (done already) plus the steps predicted for
    `budget` more seconds at `speed` chars/s."""
    return step + predicted_steps(speed, budget, batch, seq_len)


def measure_order(given, vocab_size, candidates=CANDIDATES):
    """The candidates of a choice in the order their speeds are measured: cell by cell, the cell whose smallest
    candidate is largest first (the lnlstm: every one of its candidates is larger than every rnn, so once one fits,
    no rnn can be chosen and none is timed, nor its kernels loaded), each cell's smallest first, those with dropout
    last."""
    cands = candidates_for(given, candidates)
    smallest = {}
    for c in cands:
        smallest[c.cell] = min(smallest.get(c.cell, math.inf), c.params(vocab_size))
    return sorted(cands, key=lambda c: (c.dropout, -smallest[c.cell], c.params(vocab_size)))


def worth_timing(train_chars, vocab_size, budget, given):
    """measure's `worth` for the choice (its shapes: those of measure_order, in order): a candidate over its cell's
    limit of params per char is not timed (False), nor one smaller than a candidate timed already that fits (the
    rule takes the largest that fits), nor one that even at PRUNE_SLACK times the per-parameter speed of the last
    shape of its cell timed would train too few chars per parameter. A candidate with dropout (they come last) is
    timed only if the speeds timed so far make its twin step 1's choice, and step 2 applies."""
    cands = candidates_for(given)
    by_shape = {shape_of(c, given): c for c in cands}

    def worth(shape, speeds):
        c = by_shape[shape]
        params = c.params(vocab_size)
        most_params, least_chars = LIMITS[c.cell]
        if params / max(train_chars, 1) > most_params:
            return False
        if c.dropout:
            first = decide(train_chars, vocab_size, budget, speeds, given, candidates=cands).fit
            return twin(first.candidate, cands) == c and wants_dropout(first)
        timed = [(by_shape[s], v) for s, v in speeds.items() if not by_shape[s].dropout]
        if any(o.params(vocab_size) > params and fit(o, shape_of(o, given), train_chars, vocab_size, budget, v).fits
               for o, v in timed):
            return False
        same = [(o, v) for o, v in timed if o.cell == c.cell]
        if same:
            last, speed = same[-1]
            best = speed * last.params(vocab_size) / params * PRUNE_SLACK
            return fit(c, shape, train_chars, vocab_size, budget, best).chars_per_param >= least_chars
        return True

    return worth


# ---------------------------------------------------------------------------------------------------------------
# train's hook


def wanted(config, given, resumed, fine_tuning):
    """A new run of one process given --max-time and none of MODEL_OPTIONS gets a model chosen for its budget."""
    return bool(config.max_time) and not resumed and not fine_tuning and not any(n in given for n in MODEL_OPTIONS)


def needs_horizon(config):
    """A cosine schedule with --max-time and no step or epoch limit ends at a predicted step."""
    return config.lr_schedule == "cosine" and bool(config.max_time) and not (config.max_steps or config.max_epochs)


def settle(config, given, corpus_path, saved_state=None, fine_tuning=False, ranks=1, started=None, emit=None):
    """The run's configuration with the choice for its budget (a new run: `wanted`) and the horizon of a cosine
    schedule tied to --max-time (`needs_horizon`), each said in one line (emit "message") and recorded in
    config.extra (CHOICE_KEY, HORIZON_KEY). A resumed run (saved_state: its checkpoint's state) keeps what it
    recorded: it never chooses again, and its horizon stays. `given`: the options given explicitly."""
    emit = emit or (lambda kind, data: None)
    started = time.perf_counter() if started is None else started
    extra = dict(config.extra)
    choose = wanted(config, given, saved_state is not None, fine_tuning)
    if not choose and not (needs_horizon(config) and HORIZON_KEY not in extra):
        return config
    if ranks > 1:
        if choose:
            emit("message", {"text": f"no model is chosen for --max-time with {ranks} MPI ranks: the options given "
                                     f"(and the defaults) stand"})
        if needs_horizon(config) and HORIZON_KEY not in extra:
            raise ConfigError("--lr-schedule cosine with --max-time over several MPI ranks needs --max-steps or "
                              "--max-epochs (its last step is predicted by one process)")
        return config
    from fastrnn.backend import cores
    from fastrnn.corpus import open_corpus
    from fastrnn.model import get_backend

    with open_corpus(corpus_path) as corpus:
        train_chars, vocab_size = len(corpus.split("train")), corpus.vocab.size
    with get_backend(config.backend).threads(config.threads or cores()) as threads:  # as the run will have them
        return _settled(config, given, saved_state, extra, choose, train_chars, vocab_size, threads, started, emit)


def _settled(config, given, saved_state, extra, choose, train_chars, vocab_size, threads, started, emit):
    """settle's measurement and choice, on the run's threads."""
    deadline = started + MEASURE_SHARE * config.max_time
    if choose:
        shapes = [shape_of(c, given) for c in measure_order(given, vocab_size)]
        measured = measure(shapes, vocab_size, config.dtype, config.backend, threads, deadline,
                           worth=worth_timing(train_chars, vocab_size, config.max_time, given),
                           on_timing=lambda: emit("message", {"text": (
                               f"choosing the model for --max-time {config.max_time:g}: timing a few training "
                               f"steps of each candidate this machine has not timed yet (at most "
                               f"{deadline - time.perf_counter():.0f} s, part of the budget)...")}))
        if not measured.speeds:  # none within the data's limits: the choice is the smallest, timed for its horizon
            shape = shape_of(smallest(given, vocab_size), given)
            measured = measure([shape], vocab_size, config.dtype, config.backend, threads, deadline)
        choice = decide(train_chars, vocab_size, config.max_time, measured.speeds, given)
        config = dataclasses.replace(config, **choice.values)
        if choice.horizon and needs_horizon(config):
            extra[HORIZON_KEY] = choice.horizon
        line = choice.line(config.to_dict())
        took = time.perf_counter() - started
        line += f"; measured in {measured.seconds:.1f} s" if measured.seconds else "; speeds measured earlier"
        if measured.load >= LOAD_SAID:
            line += f" ({measured.load:.1f} s of it compiling or loading kernels a run of that cell needs at its start)"
        extra[CHOICE_KEY] = {
            "line": line, "model": config.model, "num_layers": config.num_layers, "hidden_size": config.hidden_size,
            "batch_size": config.batch_size, "seq_len": config.seq_len, "lr": config.lr,
            "lr_schedule": config.lr_schedule, "lr_floor": config.lr_floor, "warmup_steps": config.warmup_steps,
            "dropout": config.dropout, "params": choice.fit.params, "chars_per_sec": choice.fit.speed,
            "epochs": choice.fit.epochs, "params_per_char": choice.fit.params_per_char,
            "chars_per_param": choice.fit.chars_per_param, "budget": config.max_time, "train_chars": train_chars,
            "horizon": extra.get(HORIZON_KEY, 0), "given": list(choice.given), "reason": choice.reason,
            "speeds": {str(s): v for s, v in measured.speeds.items()}, "measure_seconds": measured.seconds,
            "load_seconds": measured.load,
            "seconds": took}
        emit("message", {"text": line})
    elif needs_horizon(config):  # cosine by hand (or switched to it on resume): the run's own shape's speed
        shape = Shape(config.model, config.num_layers, config.hidden_size, config.batch_size, config.seq_len,
                      config.dropout > 0)
        measured = measure([shape], vocab_size, config.dtype, config.backend, threads, deadline)
        step = saved_state.step if saved_state is not None else 0
        spent = float(saved_state.wall_seconds or saved_state.elapsed) if saved_state is not None else 0.0
        left = max(0.0, config.max_time - spent)
        speed, when = measured.speeds[shape], "" if measured.seconds else " earlier"
        extra[HORIZON_KEY] = horizon(speed, left, config.batch_size, config.seq_len, step)
        emit("message", {"text": f"cosine schedule: lr {config.lr:g} down to {config.lr * config.lr_floor:g} at step "
                                 f"{extra[HORIZON_KEY]:,}, where --max-time is predicted to end ("
                                 f"{speed:,.0f} chars/s measured{when}"
                                 f"; checked once against the run's own steps)"})
    if needs_horizon(config) and HORIZON_KEY not in extra:  # (nothing could be timed)
        raise ConfigError("--lr-schedule cosine with --max-time: no speed could be measured to predict its last "
                          "step; give --max-steps or --max-epochs")
    config = dataclasses.replace(config, extra=extra)
    return config.validate()
