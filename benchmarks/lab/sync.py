"""Two threads sharing one minibatch inside one prange region: atomics, a start-up handshake, progress counters.

A paired kernel runs `for me in prange(2): ...` with two roles that hand work to each other through a small int64
array `sync` (zeroed by the caller before the prange): one publishes how far it got (store_release), the other
waits for it (wait_until: acquire loads, the CPU's pause hint, sched_yield every YIELD_EVERY turns so that a
preempted partner gets the core back). numba has no atomics on the CPU, so they are LLVM intrinsics here.

Nothing assumes that the two iterations really run at the same time. `join` decides it at the start: each role
claims its own slot; one that has waited SPIN_LIMIT turns without seeing its partner claims the partner's slot too
and then does both roles, one after the other (mode 1); the late partner, finding its slot taken, returns at once
(mode 0). So a threading layer that runs the two iterations in turn on one thread (TBB may; with one thread every
layer does) costs a short wait (~6 ms), never a deadlock.

Layout of `sync` (SYNC_SIZE int64; slots and counters 128 bytes apart, no false sharing):
    [SLOT + 16*i]    0 free, 1 claimed by role i, 2 claimed by the other role (which then does both)
    [COUNT + 16*k]   progress counter k (the paired kernel's own meaning), k = 0..5
"""

import ctypes
import platform

import llvmlite.binding as ll
from llvmlite import ir
from numba import types
from numba.core import cgutils
from numba.extending import intrinsic

from fastrnn.kernels.jit import kernel

SLOT, COUNT = 0, 32
SYNC_SIZE = 128
SPIN_LIMIT = 200_000  # turns (about 6 ms) a role waits for its partner to show up at the start
YIELD_EVERY = 1024  # spins between two sched_yield calls while waiting: if the partner was preempted (more threads
# than cores), the waiting thread gives its core away instead of spinning through the scheduler's time slice
_X86 = platform.machine().lower() in ("x86_64", "amd64", "i386", "i686")


def _noop_yield():
    return 0


def _register_yield():
    """Bind the symbol fastrnn_sched_yield to libc's sched_yield (or a no-op callback where there is none); a
    symbol, not an address in the code, so cached kernels stay valid across processes (as blas.py)."""
    try:
        fn = ctypes.CDLL(None).sched_yield
        keep = fn
    except (AttributeError, OSError):
        keep = fn = ctypes.CFUNCTYPE(ctypes.c_int)(_noop_yield)
    ll.add_symbol("fastrnn_sched_yield", ctypes.cast(fn, ctypes.c_void_p).value)
    return keep


_keep = _register_yield()
sched_yield = types.ExternalFunction("fastrnn_sched_yield", types.int32())


def _pointer(context, builder, aryty, ary_value, idx_value, idxty):
    ary = context.make_array(aryty)(context, builder, ary_value)
    idx = context.cast(builder, idx_value, idxty, types.intp)
    return cgutils.get_item_pointer(context, builder, aryty, ary, [idx])


def _int64_array(arr):
    return isinstance(arr, types.Array) and arr.dtype == types.int64 and arr.ndim == 1


@intrinsic
def load_acquire(typingctx, arr, idx):
    """arr[idx] read with acquire ordering (int64 1-D array); never hoisted out of a loop."""
    if not (_int64_array(arr) and isinstance(idx, types.Integer)):
        return None

    def codegen(context, builder, sig, args):
        ptr = _pointer(context, builder, sig.args[0], args[0], args[1], sig.args[1])
        return builder.load_atomic(ptr, "acquire", 8)

    return types.int64(arr, idx), codegen


@intrinsic
def store_release(typingctx, arr, idx, value):
    """arr[idx] = value with release ordering (int64 1-D array)."""
    if not (_int64_array(arr) and isinstance(idx, types.Integer) and isinstance(value, types.Integer)):
        return None

    def codegen(context, builder, sig, args):
        ptr = _pointer(context, builder, sig.args[0], args[0], args[1], sig.args[1])
        val = context.cast(builder, args[2], sig.args[2], types.int64)
        builder.store_atomic(val, ptr, "release", 8)
        return context.get_dummy_value()

    return types.void(arr, idx, value), codegen


@intrinsic
def compare_exchange(typingctx, arr, idx, expected, value):
    """Atomically: if arr[idx] == expected, set it to value and return True; else return False."""
    if not (_int64_array(arr) and all(isinstance(a, types.Integer) for a in (idx, expected, value))):
        return None

    def codegen(context, builder, sig, args):
        ptr = _pointer(context, builder, sig.args[0], args[0], args[1], sig.args[1])
        old = context.cast(builder, args[2], sig.args[2], types.int64)
        new = context.cast(builder, args[3], sig.args[3], types.int64)
        pair = builder.cmpxchg(ptr, old, new, "acq_rel", "acquire")
        return builder.extract_value(pair, 1)

    return types.boolean(arr, idx, expected, value), codegen


@intrinsic
def cpu_relax(typingctx):
    """The spin-wait hint (x86 `pause`; a fence elsewhere)."""

    def codegen(context, builder, sig, args):
        if _X86:  # numba's LLVM has no inline assembler: the intrinsic emits `pause`
            fn = cgutils.get_or_insert_function(builder.module, ir.FunctionType(ir.VoidType(), []),
                                                "llvm.x86.sse2.pause")
            builder.call(fn, [])
        else:
            builder.fence("seq_cst")
        return context.get_dummy_value()

    return types.void(), codegen


@kernel
def spin(spins):
    """One turn of a wait loop (`spins` turns done before): the pause hint, and every YIELD_EVERY turns a
    sched_yield."""
    cpu_relax()
    if spins % YIELD_EVERY == YIELD_EVERY - 1:
        sched_yield()


@kernel
def wait_until(sync, idx, value):
    """Spin until sync[idx] >= value."""
    spins = 0
    while load_acquire(sync, idx) < value:
        spin(spins)
        spins += 1


@kernel
def join(sync, me):
    """Start-up handshake of role `me` (0 or 1). Returns 2 if both roles run on their own threads (do role `me`,
    waiting on the partner's counters), 1 if this thread runs alone (do both roles in turn; there is nothing to
    wait for), 0 if the partner took this role (return at once)."""
    other = 1 - me
    if not compare_exchange(sync, SLOT + 16 * me, 0, 1):
        return 0
    spins = 0
    while load_acquire(sync, SLOT + 16 * other) == 0:
        if spins >= SPIN_LIMIT:
            if compare_exchange(sync, SLOT + 16 * other, 0, 2):
                return 1
            break  # the partner claimed its slot just now
        spin(spins)
        spins += 1
    return 2
