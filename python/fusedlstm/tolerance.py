"""The tolerance policy of fusedlstm's checks: the one rule, written once.

Used by the test-suite (tests/conftest.py) and by ``python -m fusedlstm``.

An output array ``a`` of the library (y, h_n, c_n or any gradient) is compared
with the numpy reference (fusedlstm.reference) evaluated ON THE SAME INPUTS:

* ref64 = the reference in float64 (inputs upcast exactly): the truth.
* float64 results: a normwise relative error with a floor,
      max|a - ref64|  <=  F64_RTOL * max|ref64| + FLOOR_EPS * eps(float64) * max(1, max|ref64|),
  F64_RTOL = 1e-12 (~4500 ulp: room for another summation order, FMA and a
  vectorised exp / tanh over the modest sizes of the checks, no slack on top).
  The floor (8.9e-16 for unit-scale data) only matters for arrays that cancel
  to almost zero, where the float64 reference itself is no more accurate.
* every other precision (float32; on CUDA also TF32, float16, bfloat16):
  with plain = the same reference run in that precision (a plain numpy
  implementation of the same equations, see plain_precision below) and
      err_plain = max|plain - ref64|,
      floor     = FLOOR_EPS * eps(float32) * max(1, max|ref64|)
                  + eps(storage) / 2 * max|ref64|,
  the library must satisfy
      max|a - ref64|  <=  PLAIN_FACTOR * err_plain + floor,
  i.e. it may be at most twice as inaccurate as the naive implementation in
  the same precision; the floor guards arrays where err_plain happens to be ~0.
  float32 accumulates in float32, so its eps is the floor for every precision.
  The second term is half a unit in the last place of the format the output is
  stored in (float16: eps 2^-10, bfloat16: 2^-7; float32 and TF32 store
  float32): the stored result carries its own rounding, so where err_plain is
  itself about half an ulp (a float16 dW of a few rows), a summation order
  differing from plain's by far less than one ulp may round the stored value
  to the neighbour and double the error. Found by the emulated CUDA check
  (a float16 dw_ih at 2.13 err_plain, err_plain = half an ulp of max|ref|).
* Applied per output array. Non-finite inputs: where ref64 is NaN the library
  must be NaN, where it is +Inf / -Inf the same infinity, and a NaN / Inf where
  ref64 is finite fails; the bound applies to the positions where ref64 is
  finite (max|ref64| and err_plain taken there too).

Same arithmetic (checks of the reference against itself): the same float64
values computed in another arrangement (a row alone or in a batch, one mode or
another) agree elementwise, |a - b| <= SAME_RTOL * |b| + SAME_ATOL (about 45 ulp:
only the summation order inside BLAS differs).

Plain implementation per precision (PRECISIONS): "float64" and "float32" are
the reference in that dtype. "tf32", "float16" and "bfloat16" (CUDA) are the
float32 reference with every operand of every matrix product, forward and
backward, rounded to the format (TF32: 10 mantissa bits; float16; bfloat16: 7
mantissa bits, round to nearest even) and its outputs rounded to the storage
format (TF32 stores float32). Its inputs, like ref64's, are those the library
saw: already in the storage format.

bfloat16 on the CPU (written down with issue 12). The CPU kernels differ from
CUDA's: they round the operands of the products with the gate weights to
bfloat16 and accumulate in float32, forward (x W_ih^T, h_{t-1} W_hh^T, h_{t-1}
rounded each step) and backward (dG W_ih, dG W_hh, dG^T x, dG^T h: the gate
gradients rounded); the cell state, the gate math and the projection's
products (w_hr) stay float32. The rule is the one above, with a plain
implementation that rounds those same operands and no others:
* "bfloat16_cpu" (bfloat16 arrays on the CPU): the float32 reference with
  those products' operands rounded to bfloat16 (round_scope "gates"), its
  outputs (y, h_n, c_n and every gradient) rounded to bfloat16 once, and in a
  layer stack the arrays kept between layers (layer outputs, their dropout
  product, input gradients and their sum) rounded as the stack stores them;
* "float32_bf16" (float32 arrays with compute="bf16", the core's allow_bf16):
  the same products, float32 outputs (no rounding of the stored result: it
  shows the kernels' precision without the output's own rounding).
Where the kernels round less than this plain implementation (feed="output"'s
steps t >= 1 run float32 on W_ih + W_hh; the single step is float32 on its
bfloat16 inputs), they are more accurate and the rule holds all the more.
Why this plain implementation and not CUDA's: one that rounded more (the
projection, the states) would be less accurate than the kernels are designed
to be and would let a kernel that rounds where it should not pass; one that
rounded less (float32) would fail kernels that do exactly what the format
asks (rounding h_{t-1} each step is the bulk of the error: 2^-9 relative per
step, carried through the recurrence); one that rounds other operands (a sum
of the gate gradients over steps instead of each step's) is as accurate but
its error is not the kernels', and the factor 2 would catch the difference
between two equally good roundings now and then. Factor 2 and the floor as
above (the floor's storage term: 2^-7 / 2 for bfloat16_cpu, none beyond
float32 for float32_bf16).
"""

from typing import NamedTuple, Optional

import numpy as np

F64_RTOL = 1e-12
FLOOR_EPS = 4.0
PLAIN_FACTOR = 2.0
# eps of the format each precision's outputs are stored in (the floor's second term).
STORAGE_EPS = {"float32": 2.0 ** -23, "tf32": 2.0 ** -23, "float16": 2.0 ** -10, "bfloat16": 2.0 ** -7,
               "bfloat16_cpu": 2.0 ** -7, "float32_bf16": 2.0 ** -23}
SAME_RTOL = 1e-14
SAME_ATOL = 1e-15

# precision -> (dtype of the plain implementation's arithmetic, format its GEMM operands
# are rounded to, format its outputs are stored in, which products round: "all" (every
# product of forward and backward) or "gates" (the forward's x W_ih^T and h W_hh^T
# only: the CPU's bfloat16, see above)); a format is a mantissa width in bits
# (float32's exponent range), "float16", or None for no rounding.
PRECISIONS = {
    "float64": (np.float64, None, None, "all"),
    "float32": (np.float32, None, None, "all"),
    "tf32": (np.float32, 10, None, "all"),
    "float16": (np.float32, "float16", "float16", "all"),
    "bfloat16": (np.float32, 7, 7, "all"),
    "bfloat16_cpu": (np.float32, 7, 7, "gates"),
    "float32_bf16": (np.float32, 7, None, "gates"),
}


def round_mantissa(a, bits):
    """float32 copy of `a` with the mantissa rounded to `bits` bits (nearest, ties
    to even), the exponent range of float32: TF32 (10) and bfloat16 (7)."""
    a = np.ascontiguousarray(a, np.float32)
    u = a.view(np.uint32).astype(np.uint64)
    drop = 23 - bits
    half = np.uint64(1 << (drop - 1))
    odd = (u >> np.uint64(drop)) & np.uint64(1)
    rounded = ((u + half - np.uint64(1) + odd) >> np.uint64(drop)) << np.uint64(drop)
    out = (rounded & np.uint64(0xFFFFFFFF)).astype(np.uint32).view(np.float32)
    return np.where(np.isfinite(a), out, a)  # NaN / Inf stay as they are


def rounder(fmt):
    """The rounding of one format of PRECISIONS (mantissa bits or "float16"), as a function."""
    if fmt is None:
        return None
    if fmt == "float16":
        return lambda a: np.asarray(a, np.float32).astype(np.float16).astype(np.float32)
    return lambda a: round_mantissa(a, fmt)


def plain_precision(precision):
    """(arithmetic dtype, rounding of GEMM operands or None, rounding of the stored
    outputs or None) of the plain implementation in `precision` (which products
    round: plain_scope)."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision: {precision!r} is not one of {sorted(PRECISIONS)}")
    dtype, operands, storage, _ = PRECISIONS[precision]
    return dtype, rounder(operands), rounder(storage)


def plain_scope(precision):
    """Which matrix products the plain implementation of `precision` rounds: "all" or
    "gates" (fusedlstm.reference's round_scope)."""
    plain_precision(precision)
    return PRECISIONS[precision][3]


def _max_abs(a):
    return float(np.max(np.abs(a))) if a.size else 0.0


def _where_max(diff):
    if diff.size == 0:
        return ()
    flat = np.nan_to_num(np.abs(diff), nan=np.inf)
    return np.unravel_index(int(np.argmax(flat)), diff.shape)


class Measure(NamedTuple):
    """One output against the policy: passes when problem is None and err <= bound."""
    err: float       # max|actual - ref64| over the positions where ref64 is finite
    bound: float     # the policy's bound there
    detail: str      # how the bound is made up, and where the error is largest
    problem: Optional[str] = None  # shape / non-finite mismatch (then err and bound are inf)

    @property
    def ok(self):
        return self.problem is None and self.err <= self.bound


def measure(actual, ref64, plain=None, *, precision):
    """actual, ref64, plain: arrays of one shape (plain: the plain implementation's
    result, needed for every precision but float64); precision: a key of PRECISIONS.
    Dtypes of the library's results are the caller's to check."""
    plain_precision(precision)  # validates the name
    actual = np.asarray(actual, np.float64)
    ref64 = np.asarray(ref64, np.float64)
    inf = float("inf")
    if actual.shape != ref64.shape:
        return Measure(inf, inf, "", f"shape {actual.shape} != expected {ref64.shape}")
    finite = np.isfinite(ref64)
    if not finite.all():
        wrong = ~finite & ~((np.isnan(ref64) & np.isnan(actual)) | (actual == ref64))
        if wrong.any():
            return Measure(inf, inf, "", (
                f"{int(wrong.sum())} non-finite reference values not matched, first at "
                f"{np.unravel_index(int(np.argmax(wrong)), wrong.shape)}: library "
                f"{actual[wrong][0]!r}, reference {ref64[wrong][0]!r}"))
        actual, ref64 = actual[finite], ref64[finite]
        plain = None if plain is None else np.asarray(plain)[finite]
    diff = actual - ref64
    err = _max_abs(diff)
    err = inf if np.isnan(err) else err
    scale = _max_abs(ref64)
    if precision == "float64":
        floor = FLOOR_EPS * float(np.finfo(np.float64).eps) * max(1.0, scale)
        bound = F64_RTOL * scale + floor
        return Measure(err, bound, f"at {_where_max(diff)}, bound = {F64_RTOL:.0e} * max|ref| {scale:.3e} + "
                                   f"floor {floor:.3e} (normwise relative error {err / max(scale, 1e-300):.3e})")
    if plain is None:
        return Measure(inf, inf, "", f"a {precision} check needs the plain {precision} implementation's result")
    err_plain = _max_abs(np.asarray(plain, np.float64) - ref64)
    floor = FLOOR_EPS * float(np.finfo(np.float32).eps) * max(1.0, scale) + STORAGE_EPS[precision] / 2 * scale
    bound = PLAIN_FACTOR * err_plain + floor
    return Measure(err, bound, f"at {_where_max(diff)}, bound = {PLAIN_FACTOR} * err_plain {err_plain:.3e} + "
                               f"floor {floor:.3e} (max|ref64| {scale:.3e})")


def check(name, actual, ref64, plain=None, *, precision):
    """None if `actual` meets the policy against `ref64` (see measure), else the reason."""
    m = measure(actual, ref64, plain, precision=precision)
    if m.problem is not None:
        return f"{name} ({precision}): {m.problem}"
    if not m.ok:
        return f"{name} ({precision}): max abs error {m.err:.3e} > bound {m.bound:.3e}, {m.detail}"
    return None


def assert_same_arithmetic(actual, expected, name=""):
    """The same-arithmetic rule above (raises AssertionError naming `name`)."""
    np.testing.assert_allclose(actual, expected, rtol=SAME_RTOL, atol=SAME_ATOL, err_msg=name)
