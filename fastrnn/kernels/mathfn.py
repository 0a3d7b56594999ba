"""Vectorizable tanh and exp for the kernels (llvmlite has no SVML: np.tanh/np.exp in a loop are scalar libm calls).

`tanh(x)` and `exp(x)` are called from njit code; they dispatch on the scalar type at compile time:

- float32: branch-free approximations that LLVM vectorizes, accurate to a few float32 ulp (tanh within 6, exp within 5; tested against NumPy):
  tanh is a rational minimax approximation on [-7.905, 7.905] (odd degree-13 numerator over even degree-6
  denominator, Eigen's `ptanh_float` coefficients), x itself for |x| < 4e-4 (so denormals and -0 pass through),
  and exactly +-1 beyond the clamp (tanh(+-inf) = +-1); exp uses range reduction x = k ln2 + r, |r| <= ln2/2, a degree-6
  polynomial for e^r (Cephes expf) and 2^k built in the exponent bits; exp(x) = 0 for x < -87.337 (where the
  exact value is a denormal, below 1.2e-38) and inf for x > 88.72. NaN propagates through both.
- float64: NumPy's np.tanh / np.exp (libm), so float64 results match the reference to rounding.
"""

import numpy as np
from llvmlite import ir
from numba import types
from numba.extending import intrinsic, overload

from fastrnn.kernels.jit import OPTIONS


def tanh(x):
    """tanh of a float scalar (Python fallback; see the module docstring for the njit versions)."""
    return np.tanh(x)


def exp(x):
    """exp of a float scalar (Python fallback; see the module docstring for the njit versions)."""
    return np.exp(x)


@intrinsic
def _int32_as_float32(typingctx, i):
    """Reinterpret the bits of an int32 as a float32."""
    if i != types.int32:
        return None

    def codegen(context, builder, signature, args):
        return builder.bitcast(args[0], ir.FloatType())

    return types.float32(types.int32), codegen


_f = np.float32
# tanh: Eigen ptanh_float
_T_CLAMP, _T_TINY = _f(7.90531110763549805), _f(0.0004)
_A1, _A3, _A5, _A7 = _f(4.89352455891786e-03), _f(6.37261928875436e-04), _f(1.48572235717979e-05), \
    _f(5.12229709037114e-08)
_A9, _A11, _A13 = _f(-8.60467152213735e-11), _f(2.00018790482477e-13), _f(-2.76076847742355e-16)
_B0, _B2, _B4, _B6 = _f(4.89352518554385e-03), _f(2.26843463243900e-03), _f(1.18534705686654e-04), \
    _f(1.19825839466702e-06)
# exp: Cephes expf
_E_HI, _E_LO = _f(88.72283935546875), _f(-87.33654022216797)
_LOG2E, _LN2_HI, _LN2_LO = _f(1.44269504088896341), _f(0.693359375), _f(-2.12194440e-4)
_P0, _P1, _P2, _P3, _P4, _P5 = _f(1.9875691500e-4), _f(1.3981999507e-3), _f(8.3334519073e-3), \
    _f(4.1665795894e-2), _f(1.6666665459e-1), _f(5.0000001201e-1)
_HALF, _ONE, _ZERO, _INF = _f(0.5), _f(1.0), _f(0.0), _f(np.inf)


def _tanh_f32(x):
    # clamps written so that a NaN falls through unchanged
    c = _T_CLAMP if x > _T_CLAMP else x
    c = -_T_CLAMP if c < -_T_CLAMP else c
    x2 = c * c
    p = x2 * _A13 + _A11
    p = x2 * p + _A9
    p = x2 * p + _A7
    p = x2 * p + _A5
    p = x2 * p + _A3
    p = x2 * p + _A1
    p = c * p
    q = x2 * _B6 + _B4
    q = x2 * q + _B2
    q = x2 * q + _B0
    y = p / q
    y = _ONE if x > _T_CLAMP else y
    y = -_ONE if x < -_T_CLAMP else y
    return x if abs(x) < _T_TINY else y


def _exp_f32(x):
    c = _E_HI if x > _E_HI else x
    c = _E_LO if c < _E_LO else c
    c = _ZERO if c != c else c  # NaN: compute on 0 (keeps the integer conversion defined), select NaN at the end
    k = np.floor(c * _LOG2E + _HALF)
    r = c - k * _LN2_HI
    r = r - k * _LN2_LO
    p = r * _P0 + _P1
    p = r * p + _P2
    p = r * p + _P3
    p = r * p + _P4
    p = r * p + _P5
    p = p * (r * r) + r + _ONE
    ki = np.int32(k)  # in [-126, 128]
    p = p + p if ki == 128 else p  # 2^128 is not a float32: use 2 * 2^127
    ki = np.int32(127) if ki == 128 else ki
    y = p * _int32_as_float32(np.int32((ki + 127) << 23))
    y = _INF if x > _E_HI else y
    y = _ZERO if x < _E_LO else y
    return x if x != x else y


@overload(tanh, jit_options=OPTIONS, inline="always")
def _tanh_overload(x):
    if isinstance(x, types.Float) and x.bitwidth == 32:
        return _tanh_f32
    if isinstance(x, types.Float):
        return lambda x: np.tanh(x)
    return None


@overload(exp, jit_options=OPTIONS, inline="always")
def _exp_overload(x):
    if isinstance(x, types.Float) and x.bitwidth == 32:
        return _exp_f32
    if isinstance(x, types.Float):
        return lambda x: np.exp(x)
    return None


def cast_like(value, like):
    """value as a scalar of the dtype of the array `like` (Python version; njit code gets a plain cast, resolved
    at compile time: numba types float literals and Python floats as float64, which would promote float32)."""
    return like.dtype.type(value)


@overload(cast_like, jit_options=OPTIONS, inline="always")
def _cast_like_overload(value, like):
    if isinstance(like, types.Array) and like.dtype == types.float32:
        return lambda value, like: np.float32(value)
    if isinstance(like, types.Array) and like.dtype == types.float64:
        return lambda value, like: np.float64(value)
    return None


# Called (not inlined at numba's IR level) versions, for kernels with several tanh/sigmoid in one function: numba
# inlines the overloads above into the caller's IR, and two inlined copies in one function trip numba's SSA check
# (NumbaIRAssumptionWarning "variable ... is not in scope"). These compile once as separate functions, which LLVM
# inlines into the loops all the same (measured: same speed).


def tanh_call(x):
    """tanh of a float scalar, as `tanh`, compiled as a called function (see above)."""
    return np.tanh(x)


def sigmoid(x):
    """The logistic function as the reference computes it: 1/2 + tanh(x/2)/2 (no overflow for large |x|)."""
    return 0.5 + 0.5 * np.tanh(0.5 * x)


@overload(tanh_call, jit_options=OPTIONS)
def _tanh_call_overload(x):
    if isinstance(x, types.Float) and x.bitwidth == 32:
        return _tanh_f32
    if isinstance(x, types.Float):
        return lambda x: np.tanh(x)
    return None


@overload(sigmoid, jit_options=OPTIONS)
def _sigmoid_overload(x):
    if isinstance(x, types.Float) and x.bitwidth == 32:
        return lambda x: _HALF + _HALF * tanh(_HALF * x)
    if isinstance(x, types.Float):
        return lambda x: 0.5 + 0.5 * np.tanh(0.5 * x)
    return None
