"""The training loop of a session, as commented phases: `Run` is a session set up (fastrnn.train.setup.Setup)
that trains until a limit, early stopping, a signal or an error ends it.

What the loop leans on lives beside it: the evaluations (evaluation.py), the health of the loss and the rollback
(health.py), the run log (runlog.py), the data-parallel step (fastrnn.distributed.DataParallel), the signal guard
(fastrnn.guards.StopFlag) and the checkpoint's schema (fastrnn.checkpoint.RunState). No math here.
"""

import math
import os
import time

import numpy as np

from fastrnn import checkpoint as ckpt_io
from fastrnn.budget import TimeBudget
from fastrnn.dropout import make_masks
from fastrnn.errors import DivergenceError, FastrnnError
from fastrnn.guards import StopFlag
from fastrnn.optim import learning_rate
from fastrnn.sample import generate
from fastrnn.train import health, runlog
from fastrnn.train.runlog import Window, eta
from fastrnn.train.setup import Setup


class Run(Setup):
    """One session of a run (set up by Setup) and the phases of its training loop."""

    # ---------------------------------------------------------------------------------------------- the loop

    def loop(self):
        """Train until a limit, early stopping, a signal or an error ends the run; then the final evaluation and
        checkpoint. Returns the summary (also the 'end' event)."""
        config, stop_reason, val_loss, last = self.config, None, None, None
        self.begin()
        # overflow/NaN warnings of the numpy backend would add lines to the one a divergence ends with
        with StopFlag() as stop, np.errstate(over="ignore", invalid="ignore", divide="ignore"):
            self.stop = stop
            if self.state.eval_pending:  # the evaluation a signal or --max-time stopped, before the next step
                stop_reason, val_loss = self.complete_pending_eval()
            while stop_reason is None:
                # limits: the step, epoch and time limits end the run before the next step
                stop_reason = self.limit_reached()
                if stop_reason:
                    break
                if not self.announced:  # the first step compiles the kernels: seconds of silence, said beforehand
                    self.emit("compiling", {})
                    self.announced = True
                # step: forward, backward, clip and update; a non-finite or diverging loss is a problem
                loss, norm, h_next, problem, started = self.train_step()
                # divergence: roll back to the last checkpoint, or stop with the reason
                if problem is not None:
                    self.recover(problem)
                    continue
                # advance: the carried state, the counters, the compile time
                now = self.advance(h_next, started)
                last = (loss, norm)
                try:
                    # evaluate and sample at their intervals
                    val_loss = self.maybe_evaluate()
                    if self.state.eval_pending:  # stopped: the step's row is written, a resumed run completes it
                        self.write_log_row(loss, norm, None, now)
                        self.state.pending_row, stop_reason = self.last_row, self.evals.stopped_by
                        break
                    self.maybe_sample()
                    # log a progress row, write a checkpoint at their intervals
                    self.maybe_log(loss, norm, val_loss, now)
                    self.maybe_checkpoint()
                except health.NonFinite as exc:  # a checkpoint that would have held NaN/inf was not written
                    self.recover(str(exc))
                    continue
                # early stop and signals end the run after a whole step
                if (config.early_stop_patience and val_loss is not None
                        and self.state.evals_since_best >= config.early_stop_patience):
                    stop_reason = "early_stop"
                    break
                stop.check()  # a second signal swallowed by a finalizer
                if self.agree_signal(stop) is not None:
                    stop_reason = "signal"
                    break
            val_loss = self.finish(stop_reason, val_loss, last)
            signum = self.dp.final_signal(stop.signum)
        summary = self.summary(stop_reason, val_loss, signum)
        self.emit("end", summary)
        return summary

    def begin(self):
        """The session's clocks and --max-time budget; a run that may roll back checkpoints its initial
        parameters first (a healthy point to roll back to before the first checkpoint)."""
        self.session_start, self.elapsed_at_start = time.perf_counter(), self.state.elapsed
        self.wall_at_start = self.state.wall_seconds or self.state.elapsed  # (a checkpoint without it: training's)
        self.budget = TimeBudget(self.config.max_time, self.wall_at_start, self.started,
                                 self.model.flat.nbytes * (1 + len(self.optimizer.state)))
        self.window, self.first_step = Window(), True  # the steps since the last progress row
        self.phases = {}  # the seconds of the checkpoints and samples since the last progress row (its fields)
        self.announced = False  # the "compiling" event was emitted: once, also if the first step is rolled back
        self.logged_step, self.last_row = self.state.step, None  # the last step with a progress row, that row
        if self.state.step == 0 and self.config.on_divergence == "rollback":
            self.save()

    def finish(self, stop_reason, val_loss, last):
        """A last evaluation (unless a signal stopped the run, the last step evaluated or no time is left for it),
        the last step's row in log.jsonl, the final checkpoint. Returns the val loss of the last step."""
        try:
            final_val = None
            if stop_reason != "signal" and self.val_stream is not None and val_loss is None \
                    and not self.state.eval_pending and self.evals.fits(self.budget, "the final evaluation"):
                val_loss = final_val = self.validate(final=True)
            # the last step and the final evaluation always reach log.jsonl (for plots and `info`)
            if last is not None and self.state.step != self.logged_step:
                self.write_log_row(*last, final_val, time.perf_counter())
            elif final_val is not None and self.last_row is not None:  # the last row gains its val loss
                self.log.truncate_after(self.state.step - 1)
                self.log.write(dict(self.last_row, **self.evals.fields(final_val)))
            self.save()
        except health.NonFinite as exc:
            raise DivergenceError(self.divergence_message(str(exc))) from None
        return val_loss

    def summary(self, stop_reason, val_loss, signum):
        state, best = self.state, math.isfinite(self.state.best_val)
        return {"step": state.step, "epoch": state.epoch + state.index / self.spe, "stop_reason": stop_reason,
                "loss": state.smooth_loss, "val_loss": val_loss, "best_val": state.best_val if best else None,
                "best_step": state.best_step if best else None,
                "best_checkpoint": os.path.join(self.run_dir, ckpt_io.BEST_NAME) if best else None,
                "checkpoint": self.ckpt_path, "elapsed": state.elapsed, "eval_seconds": self.evals.seconds,
                "session_seconds": time.perf_counter() - self.started, "signal": signum}

    # ---------------------------------------------------------------------------------------------- phases

    def limit_reached(self):
        """'max_steps', 'max_epochs' or 'max_time' if that limit is reached, else None."""
        if self.state.step >= self.max_steps:
            return "max_steps" if self.config.max_steps and self.state.step >= self.config.max_steps \
                else "max_epochs"
        return "max_time" if self.dp.out_of_time(self.time_up) else None

    def time_up(self):
        """--max-time leaves no time for another step and what may follow it (budget.TimeBudget.time_up)."""
        return self.budget.time_up(self.valset.batches if self.valset else 0, bool(self.config.sample_every))

    def agree_signal(self, stop):
        """The signal that stops the run at this step boundary (or None): this process's, or, with several ranks,
        the one any rank received (DataParallel.at_boundary: they agree on the clock and --max-time too)."""
        signum, self.state.elapsed = self.dp.at_boundary(stop.signum, self.state.elapsed, self.time_up)
        return signum

    def train_step(self):
        """One minibatch: returns (loss, gradient norm, the new carried state, a problem or None, start time).
        The update is skipped when the loss or the norm is not finite. With several ranks each computes its block
        of the streams and the gradients are summed (DataParallel.step), so every rank clips and updates alike."""
        config, state, model = self.config, self.state, self.model
        if state.index == 0 or config.reset_hidden or not self.stream.carries_state:
            self.h[...] = 0  # a new epoch starts every stream afresh
        x = y = failure = None
        try:
            x, y = self.stream.batch(state.epoch, state.index)
        except FastrnnError as exc:  # a damaged corpus: with several ranks, every rank stops at this step
            failure = self.dp.read_failed(exc)
        started = time.perf_counter()
        # the masks of the whole batch, this rank's rows taken: the same numbers whatever the number of ranks
        masks = make_masks(self.rng, config.dropout, model.num_layers, config.seq_len, config.batch_size,
                           model.hidden_size, model.dtype)  # (L, T, N, H) or None
        loss, h_next = self.dp.step(lambda m: self.backend.forward_backward(model.P, self.G, x, y, self.h, m,
                                                                            plan=self.plan), masks, failure)
        norm = self.backend.clip_gradients(self.gflat, config.clip, config.max_grad_norm)
        if not (math.isfinite(loss) and math.isfinite(norm)):
            return loss, norm, h_next, f"loss became {loss:.4g} (gradient norm {norm:.4g}) at step " \
                                       f"{state.step + 1}", started
        lr = state.lr_scale * learning_rate(config, state.step, self.spe, self.lr_steps)
        self.optimizer.update(model.flat, self.gflat, lr)
        total = float(model.flat.sum())  # fast; a float32 overflow of the sum is told apart below
        if not math.isfinite(total) and not np.all(np.isfinite(model.flat)):  # e.g. --lr inf: NaN weights
            return loss, norm, h_next, f"the parameters became non-finite in the update of step " \
                                       f"{state.step + 1} (learning rate too high)", started
        health.track(state, loss)
        return loss, norm, h_next, health.divergence(state, config), started

    def advance(self, h_next, started):
        """After a good step: carry the state, count the step and report the first step's time (JIT compilation,
        not counted in chars/s)."""
        state = self.state
        self.h = h_next
        state.step += 1
        state.index += 1
        if state.index == self.spe:
            state.epoch, state.index = state.epoch + 1, 0
        if self.first_step:  # it compiles, or loads, the kernels: the evaluation's too (evaluations time scoring)
            self.evals.load_kernels(self.model)
        now = time.perf_counter()
        state.elapsed = self.elapsed_at_start + (now - self.session_start)
        if not self.first_step:
            self.step_timed(now - started, now)  # (Setup: the budget's cost of a step, the horizon's check)
        self.window.steps += 1
        if self.first_step:
            self.first_step = False
            self.emit("compiled", {"seconds": now - started})
            self.window.reset()  # the first step (JIT compile) is not timed
            self.dp.new_window()
        return now

    def maybe_evaluate(self):
        """The validation loss if this step is an evaluation step (and --max-time leaves time for it), else None."""
        if self.val_stream is not None and self.config.eval_every and self.state.step % self.config.eval_every == 0 \
                and self.evals.fits(self.budget, f"the evaluation at step {self.state.step:,}"):
            return self.validate()
        return None

    def maybe_sample(self):
        if self.comm.is_root and self.config.sample_every and self.state.step % self.config.sample_every == 0:
            started = time.perf_counter()
            srng = np.random.default_rng([self.config.seed, self.state.step])
            ids = list(generate(self.backend, self.model.P, self.vocab, length=self.config.sample_length, rng=srng,
                                dtype=self.model.dtype, warmup=self.warmup))
            self.emit("sample", {"step": self.state.step, "text": self.vocab.decode(np.array(ids, dtype=np.int32))})
            seconds = time.perf_counter() - started
            self.budget.measured("sample", seconds)
            self.phases["sample_seconds"] = round(self.phases.get("sample_seconds", 0.0) + seconds, 4)

    def maybe_log(self, loss, norm, val_loss, now):
        """A progress row (log.jsonl and the 'log' event) every --log-every steps and at every evaluation."""
        if self.state.step % self.config.log_every == 0 or val_loss is not None:
            self.write_log_row(loss, norm, val_loss, now)

    def write_log_row(self, loss, norm, val_loss, now):
        config, state = self.config, self.state
        seconds, steps, cps = self.window.rate(now, config.batch_size * config.seq_len)
        lr = state.lr_scale * learning_rate(config, state.step - 1, self.spe, self.lr_steps)
        row = runlog.row(state, self.spe, loss, norm, lr, cps)
        if val_loss is not None:
            row.update(self.evals.fields(val_loss))
        row.update(self.dp.row_fields(steps))  # with several ranks: rank 0's time in the Allreduce, per step
        row.update(self.phases)
        self.phases = {}
        row["eta"] = eta(self.max_steps - state.step, seconds / steps if steps else None,
                         self.budget.left() if self.budget.limited else None)
        self.log.write(row)
        self.last_row = row
        self.emit("log", dict(row, max_steps=self.total_steps))
        self.window.reset()
        self.logged_step = state.step
        self.dp.new_window()

    def maybe_checkpoint(self):
        if self.config.checkpoint_every and self.state.step % self.config.checkpoint_every == 0:
            self.save()

    # ---------------------------------------------------------------------------------------------- evaluations

    def validate(self, final=False):
        """The validation loss, or None if a signal or --max-time stopped the evaluation (a periodic one is then
        pending: a resumed run completes it before its first step); keeps best.h5 and the early-stop count."""
        state = self.state
        val = self.evals.score(self.model, state, self.budget, self.eval_stop, final)
        if val is None:
            return None
        if val < state.best_val:
            state.best_val, state.best_step, state.evals_since_best = val, state.step, 0
            self.save(os.path.join(self.run_dir, ckpt_io.BEST_NAME))
        else:
            state.evals_since_best += 1
        self.emit("eval", {"step": state.step, "val_loss": val, "best_val": state.best_val,
                           "val_tokens": self.valset.tokens, "seconds": self.evals.last["eval_seconds"]})
        return val

    def eval_stop(self):
        return self.evals.stop_reason(self.stop, self.budget)

    def complete_pending_eval(self):
        """The evaluation of the checkpoint's step that a signal or --max-time stopped, before the next step, as
        the run would have done uninterrupted: its log row gains the val loss. Returns (a stop reason or None,
        the val loss or None)."""
        state, config = self.state, self.config
        val = self.validate() if self.valset is not None else None
        if val is None and self.valset is not None:
            return self.evals.stopped_by, None
        state.eval_pending = False
        if state.pending_row and val is not None:
            self.log.truncate_after(state.step - 1)
            self.last_row = dict(state.pending_row, **self.evals.fields(val))
            self.log.write(self.last_row)
        state.pending_row = {}
        if config.early_stop_patience and val is not None and state.evals_since_best >= config.early_stop_patience:
            return "early_stop", val
        return None, val

    # ---------------------------------------------------------------------------------------------- rollback

    def recover(self, problem):
        """Roll back to the newest healthy checkpoint of this run with half the learning rate (--on-divergence
        rollback, while rollbacks are left), else raise DivergenceError.

        The numbered checkpoints and best.h5 of the abandoned trajectory (past the rollback point) are removed,
        and checkpoint.h5 is rewritten at the rollback point (with the lowered rate), so the directory holds one
        trajectory; the log loses the rows past it."""
        config, state = self.config, self.state
        target = None
        if config.on_divergence == "rollback" and state.rollbacks < config.max_rollbacks \
                and math.isfinite(state.lr_scale * config.lr):  # halving an infinite rate cannot help
            # rank 0 reads the run directory; every rank rolls back to what it found
            target, newer = self.comm.bcast(self.healthy_checkpoints() if self.comm.is_root else None)
        if target is None:
            raise DivergenceError(self.divergence_message(problem))
        self.restore(target)
        self.state.keep_on_rollback(state)  # the run's clocks, rate scale, rollback count and id
        self.state.lr_scale, self.state.rollbacks = state.lr_scale / 2, state.rollbacks + 1
        health.remove(newer if self.comm.is_root else ())  # first, so that the history pruned is this trajectory's
        self.save()  # checkpoint.h5 at the rollback point: a kill from here on resumes there
        self.log.truncate_after(self.state.step)
        self.emit("message", {"text": f"divergence: {problem}; rolled back to the last healthy checkpoint (step "
                                      f"{self.state.step}, {os.path.basename(target.path)}) and halved the "
                                      f"learning rate (now {self.state.lr_scale:g}x --lr; rollback "
                                      f"{self.state.rollbacks} of {config.max_rollbacks})"})
        self.window.reset()  # the reload is not in chars/s
        self.dp.new_window()

    def healthy_checkpoints(self):
        """(the rollback target or None, the paths of this run's checkpoints past it): health.healthy_checkpoints."""
        return health.healthy_checkpoints(self.run_dir, self.state, self.legacy_id, self.fits)

    def divergence_message(self, problem):
        """The DivergenceError text (rank 0's: the other ranks stop without a word)."""
        target, _ = self.healthy_checkpoints() if self.comm.is_root else (None, [])
        return health.divergence_message(problem, target, self.config, self.state)
