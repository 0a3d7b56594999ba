"""The health of a run: the smoothed losses each step updates, when the loss diverges, whether a checkpoint is a
point to roll back to, and which one a rollback (--on-divergence rollback) returns to.

A checkpoint is healthy while the smoothed loss is finite and within HEALTHY_RISE of its lowest so far, and the
loss of the last ~10 steps (RECENT_SMOOTHING) within RECENT_RISE of it: a checkpoint written while the loss climbs
is no point to roll back to. The run diverges when a loss or the parameters become non-finite, when the smoothed
loss exceeds --divergence-factor x the first loss, or (with rollback) when it stays above STUCK_RISE x its lowest
for STUCK_STEPS steps in a row (well above the noise of the smoothed loss of tiny batches).
"""

import math
import os

from fastrnn import checkpoint as ckpt_io
from fastrnn.corpus import Vocab
from fastrnn.errors import CheckpointError
from fastrnn.params import Layout, model_shapes

SMOOTHING = 0.99  # train loss shown = exponential moving average, as min-char-rnn's smooth_loss
HEALTHY_RISE = 1.1  # a checkpoint is healthy while the smoothed loss is within this factor of its lowest so far,
RECENT_RISE = 1.25  # and the loss of the last ~10 steps (RECENT_SMOOTHING) within this one
RECENT_SMOOTHING = 0.9
STUCK_RISE, STUCK_STEPS = 1.5, 100  # with --on-divergence rollback, a smoothed loss above STUCK_RISE x its lowest
# for STUCK_STEPS steps in a row is a divergence too


class NonFinite(Exception):
    """Inside the loop: the state is not finite, so no checkpoint was written (a divergence problem)."""


def track(state, loss):
    """After an update with a finite loss: the smoothed loss, the first and the recent loss, the lowest smoothed
    loss and the steps in a row it has been above STUCK_RISE x that (fastrnn.checkpoint.RunState)."""
    if math.isnan(state.smooth_loss):
        state.smooth_loss = loss
    else:
        state.smooth_loss = SMOOTHING * state.smooth_loss + (1 - SMOOTHING) * loss
    if math.isnan(state.first_loss):
        state.first_loss = loss
    state.recent_loss = loss if math.isnan(state.recent_loss) else \
        RECENT_SMOOTHING * state.recent_loss + (1 - RECENT_SMOOTHING) * loss
    if not state.smooth_loss >= state.low_loss:  # also when low_loss is still NaN
        state.low_loss = state.smooth_loss
    state.stuck_steps = state.stuck_steps + 1 if state.smooth_loss > STUCK_RISE * state.low_loss else 0


def divergence(state, config):
    """What diverged at this step (a sentence), or None."""
    if config.divergence_factor and state.smooth_loss > config.divergence_factor * state.first_loss:
        return (f"smoothed loss {state.smooth_loss:.4f} exceeds {config.divergence_factor}x the starting "
                f"loss {state.first_loss:.4f} at step {state.step + 1}")
    if config.divergence_factor and config.on_divergence == "rollback" \
            and state.stuck_steps >= STUCK_STEPS:  # climbed and stayed up, below the factor
        return (f"smoothed loss {state.smooth_loss:.4f} stayed above {STUCK_RISE}x its lowest "
                f"({state.low_loss:.4f}) for {STUCK_STEPS} steps at step {state.step + 1}")
    return None


def is_healthy(state):
    """The run is healthy now (module docstring): a checkpoint written now is a point to roll back to."""
    if math.isnan(state.smooth_loss):
        return True  # no step yet: the initial parameters
    if not (math.isfinite(state.smooth_loss) and math.isfinite(state.low_loss)):
        return False
    recent = state.smooth_loss if math.isnan(state.recent_loss) else state.recent_loss  # older checkpoints
    return state.smooth_loss <= HEALTHY_RISE * state.low_loss and recent <= RECENT_RISE * state.low_loss


def check_resumable(saved, config, vocab, train_tokens, corpus_path):
    """The checkpoint fits this corpus and configuration (else CheckpointError)."""
    if Vocab.from_dict(saved.vocab) != vocab:
        raise CheckpointError(f"the checkpoint's vocabulary ({len(saved.vocab.get('symbols', []))} "
                              f"symbols) does not match the corpus {corpus_path} ({vocab.size} symbols)")
    if saved.params.size != Layout(model_shapes(config.model, vocab.size, config.hidden_size,
                                                config.num_layers)).size:
        raise CheckpointError(f"the checkpoint's parameters ({saved.params.size} values) do not fit its "
                              f"configuration ({config.model}, {config.num_layers} layers, hidden "
                              f"{config.hidden_size}); it is damaged or from another program")
    if saved.state.train_tokens != len(train_tokens):
        raise CheckpointError(f"the corpus {corpus_path} is not the one this run was trained on "
                              f"(train split {len(train_tokens)} tokens, the run had "
                              f"{saved.state.train_tokens})")


def healthy_checkpoints(run_dir, state, legacy, fits):
    """(the newest healthy checkpoint of this run at or before state.step, or None; the paths of this run's
    checkpoints past it, besides checkpoint.h5). Candidates: checkpoint.h5, last-good.h5, best.h5 and the numbered
    history; a checkpoint of another run (another run id; with `legacy`, one without an id is this run's), one
    that does not fit this run (fits(ckpt) raises CheckpointError), or one that cannot be read is skipped."""
    ckpt_path = os.path.join(run_dir, ckpt_io.CHECKPOINT_NAME)
    paths = [ckpt_path] + [os.path.join(run_dir, name) for name in (ckpt_io.LAST_GOOD_NAME, ckpt_io.BEST_NAME)]
    paths += [path for _, path in ckpt_io.history(run_dir)]
    found = []
    for path in paths:
        if not os.path.exists(path):
            continue
        try:
            ckpt = ckpt_io.load(path)
            fits(ckpt)
        except CheckpointError:
            continue
        if (ckpt.state.run_id or (state.run_id if legacy else "")) != state.run_id:
            continue
        found.append(ckpt)
    good = [c for c in found if ckpt_io.is_healthy(c) and c.state.step <= state.step]
    target = max(good, key=lambda c: c.state.step, default=None)
    if target is None:
        return None, []
    step = target.state.step
    newer = {c.path for c in found if c.state.step > step and c.path != ckpt_path}
    newer.update(path for s, path in ckpt_io.history(run_dir) if s > step)  # also unreadable ones
    return target, sorted(newer)


def remove(paths):
    """Delete the checkpoints of an abandoned trajectory (those a rollback went back past)."""
    for path in paths:
        try:
            os.unlink(path)
        except OSError:
            pass


def divergence_message(problem, target, config, state):
    """The DivergenceError text: the problem, where the last good checkpoint (`target`) is, what to try."""
    where = (f"the last good checkpoint is step {target.state.step} in {target.path}" if target is not None
             else "no good checkpoint was written yet")
    if config.on_divergence == "rollback":
        hint = (f"gave up after {state.rollbacks} rollback(s) (--max-rollbacks)"
                if state.rollbacks >= config.max_rollbacks
                else "no rollback can help an infinite --lr" if not math.isfinite(config.lr)
                else "nothing healthy to roll back to")
        return f"{problem}; {where}; {hint}; try a lower --lr or --max-grad-norm"
    return f"{problem}; {where}; try a lower --lr or --max-grad-norm, or --on-divergence rollback"
