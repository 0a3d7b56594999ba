"""Synchronous data-parallel training over MPI (mpi4py): one Allreduce of the flat gradient per step.

`world()` says how this process was started. Alone (no MPI launcher, or a launcher of one process) it is `SINGLE`,
whose collectives do nothing, and mpi4py is never imported. Under `mpiexec -n K` (or `srun`) it is an `MPIWorld`
of K ranks: the global batch of N streams is split among them in contiguous blocks (`rows`), each rank computes
the loss and gradients of its block scaled by its share of the batch, and the gradients are summed in place, so
every rank applies the same update to the same parameters. Every decision that ends or changes the run (a signal,
the time limit, an error on one rank) goes through `agree`, at a step boundary, so all ranks take it at the same
step. Rank 0 alone writes files and prints.

A launcher that started K > 1 processes is recognised from its environment (MPICH/Hydra and Intel MPI: PMI_SIZE;
Open MPI: OMPI_COMM_WORLD_SIZE; MVAPICH: MV2_COMM_WORLD_SIZE; SLURM's srun: SLURM_STEP_NUM_TASKS). Then mpi4py must
be importable and must see that many processes; otherwise the run stops with one line (from the launcher's rank 0),
never K independent runs writing one directory.
"""

import os
import time
import warnings
import zlib

import numpy as np

from fastrnn.errors import ConfigError, FastrnnError

_SIZE_VARS = ("PMI_SIZE", "OMPI_COMM_WORLD_SIZE", "MV2_COMM_WORLD_SIZE", "SLURM_STEP_NUM_TASKS")
_RANK_VARS = ("PMI_RANK", "OMPI_COMM_WORLD_RANK", "MV2_COMM_WORLD_RANK", "SLURM_PROCID")
TURN_POLL = 0.005  # seconds between looks of a rank waiting for its turn (in_turns)


class DistributedError(FastrnnError):
    """Ranks that cannot train together (a launcher mpi4py does not match, ranks that disagree). `silent`: this
    rank exits without printing, another rank prints the line."""

    def __init__(self, message, silent=False, exit_code=1):
        super().__init__(message)
        self.silent, self.exit_code = silent, exit_code


def _env_int(environ, names):
    for name in names:
        try:
            return int(environ[name])
        except (KeyError, ValueError):
            continue
    return None


def launched_size(environ=os.environ):
    """The number of processes an MPI launcher started with this one (1 when none did)."""
    return _env_int(environ, _SIZE_VARS) or 1


def world(environ=os.environ):
    """SINGLE, or the MPIWorld of this process's MPI job (DistributedError when the launch cannot work)."""
    n = launched_size(environ)
    if n <= 1:
        return SINGLE
    silent = (_env_int(environ, _RANK_VARS) or 0) != 0  # one line from the job, not one per process
    try:
        with warnings.catch_warnings():  # mpi4py's own warning of a foreign launcher: the error below says it
            warnings.simplefilter("ignore", RuntimeWarning)
            from mpi4py import MPI
    except ImportError:
        raise DistributedError(f"started by an MPI launcher as one of {n} processes, but mpi4py is not installed: "
                               f"pip install 'fastrnn[mpi]' (or mpi4py built for this cluster's MPI)",
                               silent) from None
    size = MPI.COMM_WORLD.Get_size()
    if size != n:
        version = MPI.Get_library_version().strip().splitlines()[0]
        raise DistributedError(f"the MPI launcher started {n} processes but mpi4py sees a world of {size}: this "
                               f"mpiexec belongs to another MPI than mpi4py's ({version}); launch with that MPI's "
                               f"mpiexec", silent)
    return MPIWorld(MPI.COMM_WORLD)


def block(n, size, rank):
    """(lo, hi): the contiguous block of n items that `rank` of `size` takes (the first n % size take one more)."""
    base, extra = divmod(int(n), int(size))
    lo = rank * base + min(rank, extra)
    return lo, lo + base + (1 if rank < extra else 0)


def digest(arrays):
    """A cheap fingerprint (CRC-32) of arrays' bytes: equal across ranks when they hold the same bits."""
    crc = 0
    for a in arrays:
        crc = zlib.crc32(np.ascontiguousarray(a).view(np.uint8), crc)
    return crc


class Single:
    """One process: every collective is the identity."""

    size, rank, is_root, local_size = 1, 0, True, 1

    def rows(self, n):
        return 0, int(n)

    def allreduce(self, buf):
        """Sum `buf` (a contiguous float array) over the ranks, in place."""

    def agree(self, values):
        """The element-wise maximum of `values` (float64) over the ranks."""
        return np.asarray(values, dtype=np.float64)

    def bcast(self, obj):
        """Rank 0's `obj`, on every rank."""
        return obj

    def allgather(self, obj):
        """Every rank's `obj`, a list by rank, on every rank."""
        return [obj]

    def gather_rows(self, local, n):
        """The (n, ...) array of every rank's rows (its block of `rows(n)`), on rank 0 (None elsewhere)."""
        return local

    def in_turns(self, work):
        """work() on every rank, one rank of each machine at a time (for a measurement that another rank's
        work would disturb); its value."""
        return work()

    def first_error(self, exc):
        """The first rank's FastrnnError (or None) after a phase every rank ran: raised on every rank, printed by
        one."""
        if exc is not None:
            raise exc

    def check_same(self, what, value):
        """Stop with one line unless every rank holds the same `value` (a str or int)."""

    def check_data(self, corpus, batch_size):
        """Every rank opened the same corpus and has streams of the batch to train on (ConfigError otherwise)."""

    def default_threads(self):
        """Threads when --threads is not given: every core."""
        return os.cpu_count() or 1

    def abort(self, code=1):
        raise SystemExit(code)


SINGLE = Single()


class MPIWorld(Single):
    """The ranks of an MPI job (mpi4py's COMM_WORLD)."""

    def __init__(self, comm):
        from mpi4py import MPI

        self.MPI, self.comm = MPI, comm
        self.size, self.rank = comm.Get_size(), comm.Get_rank()
        self.is_root = self.rank == 0
        self.node = comm.Split_type(MPI.COMM_TYPE_SHARED)  # the ranks that share this machine's cores
        self.local_size, self.local_rank = self.node.Get_size(), self.node.Get_rank()

    def rows(self, n):
        return block(n, self.size, self.rank)

    def default_threads(self):
        """Threads per rank when --threads is not given: this machine's cores shared among its ranks."""
        try:
            cores = len(os.sched_getaffinity(0))
        except AttributeError:
            cores = os.cpu_count() or 1
        return max(1, cores // self.local_size)

    def allreduce(self, buf):
        self.comm.Allreduce(self.MPI.IN_PLACE, buf, op=self.MPI.SUM)

    def agree(self, values):
        buf = np.array(values, dtype=np.float64)
        self.comm.Allreduce(self.MPI.IN_PLACE, buf, op=self.MPI.MAX)
        return buf

    def bcast(self, obj):
        return self.comm.bcast(obj, root=0)

    def allgather(self, obj):
        return self.comm.allgather(obj)

    def gather_rows(self, local, n):
        local = np.ascontiguousarray(local)
        counts = [(hi - lo) * int(np.prod(local.shape[1:], dtype=np.int64)) for lo, hi in
                  (block(n, self.size, r) for r in range(self.size))]
        out = np.empty((n,) + local.shape[1:], dtype=local.dtype) if self.is_root else None
        self.comm.Gatherv(local, (out, counts) if self.is_root else None, root=0)
        return out

    def in_turns(self, work):
        """work() on every rank, the ranks of a machine one after another, the others waiting asleep: a barrier of
        MPI spins (mpich polls), and a rank measuring kernel plans while another spins, or measures too, sees a
        busy machine and throws its measurement away (kernels.calibrate), every launch. An error is raised once
        every turn has passed, so no rank is left waiting."""
        value = error = None
        for turn in range(self.local_size):
            if turn == self.local_rank:
                try:
                    value = work()
                except BaseException as exc:  # (re-raised below: the other ranks must not wait for ever)
                    error = exc
            request = self.node.Ibarrier()
            while not request.Test():
                time.sleep(TURN_POLL)
        if error is not None:
            raise error
        return value

    def first_error(self, exc):
        messages = self.comm.allgather(None if exc is None else (str(exc), getattr(exc, "exit_code", 1)))
        failed = [(r, m) for r, m in enumerate(messages) if m is not None]
        if not failed:
            return
        rank, (message, code) = failed[0]
        suffix = "" if rank == 0 else f" (MPI rank {rank})"
        raise DistributedError(message + suffix, silent=not self.is_root, exit_code=code) from exc

    def check_data(self, corpus, batch_size):
        self.check_same("the corpus they opened (its size and metadata checksum)", corpus.fingerprint())
        if batch_size < self.size:
            raise ConfigError(f"--batch-size {batch_size} is smaller than the {self.size} ranks; each rank needs at "
                              f"least one stream")

    def check_same(self, what, value):
        values = self.comm.allgather(value)
        if any(v != values[0] for v in values):
            differ = [r for r, v in enumerate(values) if v != values[0]]
            raise DistributedError(f"the ranks disagree on {what}: rank {differ[0]} has {values[differ[0]]!r}, "
                                   f"rank 0 {values[0]!r}", silent=not self.is_root)

    def abort(self, code=1):
        self.comm.Abort(code)


class DataParallel:
    """The data-parallel part of a training run on `comm` (SINGLE or an MPIWorld): this rank's block of the N
    streams, the flat gradient buffer, the step's Allreduce, and the decisions every rank takes at the same step (a
    signal, --max-time, a non-finite state, whether an evaluation fits). With one process every collective is
    skipped and the step is forward_backward alone; the training loop reads the same either way."""

    def __init__(self, comm, batch_size):
        self.comm, self.batch_size = comm, int(batch_size)
        self.several = comm.size > 1
        self.rows = comm.rows(batch_size)  # (lo, hi): this rank's block of the N streams
        self.stream_rows = self.rows if self.several else None  # what a BatchStream reads (None: every row)
        self.allreduce_seconds = 0.0  # in the gradient Allreduce since new_window()
        self.signum = None  # the signal the ranks agreed to stop at
        self.late = False  # the ranks agreed that --max-time leaves no time for another step

    def gradients(self, size, dtype):
        """The (size,) gradient buffer, a view of (size + 2,) whose two more slots are summed with it over the
        ranks: this rank's share of the loss, and 1 if this rank failed to read its rows."""
        self.buf = np.zeros(size + 2, dtype=dtype)
        self.grads = self.buf[:-2]
        self.share = self.buf.dtype.type((self.rows[1] - self.rows[0]) / self.batch_size)
        return self.grads

    def read_failed(self, exc):
        """A minibatch this rank could not read: raised here with one process; with several kept, and raised by
        every rank after the step's Allreduce (step)."""
        if not self.several:
            raise exc
        return exc

    def step(self, forward_backward, masks, failure=None):
        """(the loss of the whole batch, this rank's new carried state). forward_backward(masks) computes the loss
        and gradients of this rank's rows (into `gradients`); with several ranks they are scaled by the rank's
        share of the batch and summed over the ranks with the loss (one Allreduce), so every rank clips and
        updates alike, and a rank's failure to read its rows stops every rank. masks: (L, T, N, H) of the whole
        batch (the same numbers whatever the number of ranks), or None."""
        if not self.several:
            return forward_backward(masks)
        lo, hi = self.rows
        h_next = None
        if failure is None:
            if masks is not None:
                masks = np.ascontiguousarray(masks[:, :, lo:hi])
            loss, h_next = forward_backward(masks)
            self.grads *= self.share
            self.buf[-2:] = loss * self.share, 0
        else:
            self.buf[:] = 0
            self.buf[-1] = 1
        t0 = time.perf_counter()
        self.comm.allreduce(self.buf)
        self.allreduce_seconds += time.perf_counter() - t0
        if self.buf[-1]:
            self.comm.first_error(failure)
        return float(self.buf[-2]), h_next

    def any(self, flag):
        """Whether `flag` holds on any rank."""
        return bool(self.comm.agree([bool(flag)])[0]) if self.several else bool(flag)

    def at_boundary(self, signum, elapsed, time_up):
        """At a step boundary: (the signal that stops the run, or None; the seconds of training so far). One
        process: its own. Several ranks: the signal any rank received and the slowest clock; they agree too on
        whether --max-time leaves time for another step (any rank's time_up()), kept for `out_of_time`, so that
        it ends them all at the same step."""
        if not self.several:
            return signum, elapsed
        signum, elapsed, late = self.comm.agree([signum or 0, elapsed, time_up()])
        self.late, self.signum = bool(late), int(signum) or None
        return self.signum, float(elapsed)

    def out_of_time(self, time_up):
        """--max-time leaves no time for another step: time_up() now (one process), or what the ranks agreed at
        the last step boundary."""
        return self.late if self.several else time_up()

    def agree_stop(self, signum, late):
        """(a signal, past the deadline) as every rank sees them (an evaluation stops between minibatches)."""
        if not self.several:
            return signum, late
        signum, late = self.comm.agree([signum or 0, late])
        self.signum = int(signum) or None
        return self.signum, late

    def final_signal(self, signum):
        """The signal that stopped the run: this process's `signum`, or the one the ranks agreed on."""
        return self.signum if self.several else signum

    def gather_state(self, params, h):
        """The carried state of all N streams for a checkpoint, after checking that every rank holds the same
        parameters: on rank 0 (None elsewhere)."""
        if not self.several:
            return h
        self.comm.check_same("the parameters (a checksum)", digest([params]))
        return self.comm.gather_rows(h, self.batch_size)

    def row_fields(self, steps):
        """The fields of a progress row about the ranks: their number and rank 0's time in the gradient Allreduce,
        per step of the `steps` since new_window() (none with one process)."""
        if not self.several:
            return {}
        return {"ranks": self.comm.size, "allreduce_ms": 1e3 * self.allreduce_seconds / max(steps, 1)}

    def new_window(self):
        self.allreduce_seconds = 0.0
