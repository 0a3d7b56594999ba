"""The evaluations of a run: its validation set scored at --eval-every and at the end, within --max-time, stopped
between minibatches by a signal or the deadline (alike on every rank), and the val tokens a resumed run scores."""

from fastrnn.validation import Scoring, keep_tokens


class Evaluations:
    """The evaluations of one session on `valset` (validation.ValSet), by `backend` on the ranks of `dp`
    (distributed.DataParallel); events go to `emit`."""

    def __init__(self, valset, backend, dp, emit):
        self.valset, self.backend, self.dp, self.emit = valset, backend, dp, emit
        self.plan = None  # the kernels' plan for this rank's rows of a minibatch (None: it has none)
        self.seconds = 0.0  # spent evaluating in this session
        self.skipped = False  # an evaluation was skipped for --max-time (said once a session)
        self.last = None  # {"val_tokens", "eval_seconds"} of the last evaluation
        self.stopped_by = None  # why the last one stopped early: "signal" or "max_time"

    def fits(self, budget, what):
        """An evaluation fits in what --max-time leaves (budget.TimeBudget.eval_fits; any rank's no is every
        rank's); if not, `what` is skipped (the first skip of the session is said)."""
        if not budget.limited:
            return True
        fits = not self.dp.any(not budget.eval_fits(self.valset.batches))
        if not fits and not self.skipped:
            self.skipped, left = True, budget.left()
            self.emit("message", {"text": f"{what} skipped: " + (
                f"it takes about {budget.eval_seconds(self.valset.batches):.1f} s and {left:.1f} s are left "
                f"of --max-time" if left > 0 else "--max-time is used up")})
        return fits

    def load_kernels(self, model):
        """Compile (or load from numba's cache) the evaluation's kernels with one minibatch of this rank's rows, its
        loss unused: called in the first step's start-up, so an evaluation's seconds are scoring alone."""
        if self.valset is None or self.valset.batches == 0:
            return
        stream = self.valset.stream
        lo, hi = self.dp.comm.rows(stream.batch_size)
        if hi > lo:
            x, y = stream.batch(0, 0)
            self.backend.forward_loss(model.P, x, y, model.zero_state(hi - lo), plan=self.plan)

    def score(self, model, state, budget, stop, final=False):
        """The validation loss of `model` at state.step, or None if stop() (called before each minibatch)
        stopped the evaluation: then a message says so, and a periodic one is pending (state.eval_pending: a
        resumed run completes it before its first step)."""
        scoring = Scoring(self.valset, state.step, self.emit)
        val = scoring.score(self.backend, model, self.plan, self.dp.comm, stop)
        self.seconds += scoring.seconds
        if scoring.seconds_per_batch is not None:
            budget.measured("eval_batch", scoring.seconds_per_batch)
        if val is None:
            self.stopped_by, state.eval_pending = scoring.stopped_by, not final
            why = "a signal" if scoring.stopped_by == "signal" else "--max-time"
            self.emit("message", {"text": f"the evaluation at step {state.step:,} was stopped by {why} after "
                                          f"{scoring.done:,} of {self.valset.batches:,} minibatches; " +
                                          ("no val loss for the last step" if final else "a resumed run completes it")})
            return None
        self.last = {"val_tokens": self.valset.tokens, "eval_seconds": scoring.seconds}
        return val

    def fields(self, val):
        """The fields of a log row with a val loss: the loss, the val tokens it was computed on, the seconds."""
        return {"val_loss": val, "val_tokens": self.last["val_tokens"],
                "eval_seconds": round(self.last["eval_seconds"], 4)}

    def stop_reason(self, guard, budget):
        """Why a running evaluation stops before its next minibatch: "signal" (guards.StopFlag `guard` has one),
        "max_time" (only the final checkpoint's time is left), the same on every rank; None: it goes on."""
        guard.check()  # a second signal swallowed by a finalizer
        signum, late = self.dp.agree_stop(guard.signum, budget.past_deadline())
        return "signal" if signum is not None else "max_time" if late else None

    def keep_tokens(self, state, mode):
        """The val tokens the run's evaluations scored so far, recorded in its state (validation.keep_tokens);
        mode: --eval-tokens."""
        if self.valset is not None:
            mode = str(mode)
            change = keep_tokens(self.valset, mode, state.eval_tokens, state.eval_batches)
            if change:
                self.emit("message", {"text": change})
            state.eval_tokens, state.eval_batches = mode, self.valset.batches
