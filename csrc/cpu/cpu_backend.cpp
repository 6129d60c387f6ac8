// The CPU backend's table: wraps the driver (lstm_cpu.cpp) behind the C
// boundary of core/backend.h, bounds its own workspaces, and does the
// stack's elementwise row operations and direction scheduling on the host.
#include "cpu/cpu_backend.h"

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <string>

#include "core/arg_checks.h"
#include "core/bf16.h"
#include "core/checked_size.h"
#include "core/interrupt.h"
#include "core/status.h"
#include "cpu/bf16_io.h"
#include "cpu/buffer.h"
#include "cpu/dispatch.h"
#include "cpu/lstm_cpu.h"

namespace fusedlstm {
namespace cpu {

namespace {

thread_local std::string last_error;

template <class Fn>
fl_status guarded_call(Fn&& fn) {
  return fusedlstm::guarded(last_error, fn, [](const std::exception&) { return FL_INTERNAL_ERROR; });
}

void require_cpu_dtype(fl_dtype dtype) {
  require(dtype != FL_FLOAT16, "dtype FL_FLOAT16 runs on CUDA only; the CPU backend takes FL_FLOAT32, "
                               "FL_FLOAT64 or FL_BFLOAT16");
}

// Bytes per element of the driver's workspaces: bfloat16 calls run the
// float32 driver (bf16_io.h).
int64_t workspace_element_size(fl_dtype dtype) { return dtype == FL_FLOAT64 ? 8 : 4; }

// The workspaces of one direction of T steps (x of width I, recurrent state
// of width Hout), bounded so that no product the driver forms from the sizes
// can overflow: the per-step activations and gradients of every (step, row)
// at the widest padded width, x transposed, and the packed weight panels.
void check_workspaces(int64_t elem, int64_t T, int64_t B, int64_t I, int64_t H, int64_t Hout) {
  const int64_t hp = checked_round_up("H rounded up to 16", H, 16);
  const int64_t kp = checked_round_up("max(I, Hout) rounded up to 64", std::max(I, Hout), 64);
  checked_bytes("T*B*I*elem", {T, B, I, elem});
  checked_bytes("T*B*4*roundup(H, 16)*elem (activations of every step)", {T, B, 4, hp, elem});
  checked_bytes("4*roundup(H, 16)*roundup(max(I, Hout), 64)*elem (packed weights)", {4, hp, kp, elem});
}

void check_sequence(const fl_forward_params& p) {
  require_cpu_dtype(p.dtype);
  check_workspaces(workspace_element_size(p.dtype), p.T, p.B, p.I, p.H, p.proj_size > 0 ? p.proj_size : p.H);
}

// The single step runs as one step of the sequence path from B rows on
// (kCellPackedMinRows), hence the sequence workspaces with T = 1.
template <class P>
void check_cell(const P& p) {
  require_cpu_dtype(p.dtype);
  check_workspaces(workspace_element_size(p.dtype), 1, p.B, p.I, p.H, p.H);
}

int64_t cell_reserve_bytes(fl_cell_kind cell, fl_dtype dtype, int64_t T, int64_t B, int64_t H, int64_t proj_size) {
  int64_t bytes = -1;
  guarded_call([&] {
    require_cpu_dtype(dtype);
    bytes = reserve_bytes(cell, dtype, T, B, H, proj_size);
  });
  return bytes;
}

fl_status forward_op(const fl_forward_params* p, void* reserve) {
  return guarded_call([&] {
    check_sequence(*p);
    if (p->dtype == FL_BFLOAT16) forward_bf16(*p, reserve);
    else if (p->dtype == FL_FLOAT32 && p->device.allow_bf16) forward_bf16_operands(*p, reserve);
    else forward(*p, reserve);
  });
}

fl_status backward_op(const fl_forward_params* p, const void* reserve, const fl_backward_params* g) {
  return guarded_call([&] {
    check_sequence(*p);
    if (p->dtype == FL_BFLOAT16) backward_bf16(*p, reserve, *g);
    else if (p->dtype == FL_FLOAT32 && g->device.allow_bf16) backward_bf16_operands(*p, reserve, *g);
    else backward(*p, reserve, *g);
  });
}

fl_status cell_op(const fl_cell_params* p) {
  return guarded_call([&] {
    check_cell(*p);
    if (p->dtype == FL_BFLOAT16) cell_bf16(*p);
    else if (p->dtype == FL_FLOAT32 && p->device.allow_bf16) cell_bf16_operands(*p);
    else cell(*p);
  });
}

fl_status cell_backward_op(const fl_cell_backward_params* p) {
  return guarded_call([&] {
    check_cell(*p);
    if (p->dtype == FL_BFLOAT16) cell_backward_bf16(*p);
    else cell_backward(*p);
  });
}

// Host blocks from the recycled workspace cache; a 64-byte header before
// each block keeps its capacity for release.
constexpr int64_t kHeader = 64;

fl_status alloc_op(const fl_device*, int64_t bytes, const char* what, void** out) {
  *out = nullptr;
  return guarded_call([&] {
    const int64_t total = checked_sum(what, {checked_round_up(what, bytes, 64), kHeader});
    size_t capacity = 0;
    auto* block = static_cast<unsigned char*>(BlockCache::instance().take(size_t(total), &capacity));
    if (!block) throw OutOfMemory(what, total);
    std::memcpy(block, &capacity, sizeof capacity);
    *out = block + kHeader;
  });
}

void release_op(const fl_device*, void* ptr) {
  if (!ptr) return;
  unsigned char* block = static_cast<unsigned char*>(ptr) - kHeader;
  size_t capacity;
  std::memcpy(&capacity, block, sizeof capacity);
  BlockCache::instance().give(block, capacity);
}

fl_status fill_zero_op(const fl_device*, void* dst, int64_t bytes) {
  std::memset(dst, 0, size_t(bytes));
  return FL_OK;
}

// A bfloat16 element for combine_rows: arithmetic in float32, one rounding per result.
struct Bf16 {
  uint16_t bits;
  Bf16& operator+=(Bf16 o) { return bits = float_to_bf16(bf16_to_float(bits) + bf16_to_float(o.bits)), *this; }
  Bf16& operator*=(Bf16 o) { return bits = float_to_bf16(bf16_to_float(bits) * bf16_to_float(o.bits)), *this; }
};

template <class T>
void combine_rows(fl_rows_op op, void* dst, int64_t dst_st, int64_t dst_sb, const void* src, int64_t src_st,
                  int64_t src_sb, int64_t T_, int64_t B, int64_t n) {
  for (int64_t t = 0; t < T_; ++t)
    for (int64_t b = 0; b < B; ++b) {
      T* d = static_cast<T*>(dst) + t * dst_st + b * dst_sb;
      const T* s = static_cast<const T*>(src) + t * src_st + b * src_sb;
      if (op == FL_ROWS_ADD)
        for (int64_t k = 0; k < n; ++k) d[k] += s[k];
      else
        for (int64_t k = 0; k < n; ++k) d[k] *= s[k];
    }
}

fl_status rows_op(const fl_device*, fl_dtype dtype, fl_rows_op op, void* dst, int64_t dst_st, int64_t dst_sb,
                  const void* src, int64_t src_st, int64_t src_sb, int64_t T, int64_t B, int64_t n) {
  return guarded_call([&] {
    const int64_t elem = element_size(dtype);
    if (op == FL_ROWS_COPY) {  // bitwise: any element type of this size
      for (int64_t t = 0; t < T; ++t)
        for (int64_t b = 0; b < B; ++b)
          std::memcpy(static_cast<unsigned char*>(dst) + (t * dst_st + b * dst_sb) * elem,
                      static_cast<const unsigned char*>(src) + (t * src_st + b * src_sb) * elem, size_t(n * elem));
      return;
    }
    require(op == FL_ROWS_ADD || op == FL_ROWS_MULTIPLY, "rows: unknown operation");
    require_cpu_dtype(dtype);
    if (dtype == FL_FLOAT64) combine_rows<double>(op, dst, dst_st, dst_sb, src, src_st, src_sb, T, B, n);
    else if (dtype == FL_BFLOAT16) combine_rows<Bf16>(op, dst, dst_st, dst_sb, src, src_st, src_sb, T, B, n);
    else combine_rows<float>(op, dst, dst_st, dst_sb, src, src_st, src_sb, T, B, n);
  });
}

// Both directions of a layer at once, one thread each, instead of one after
// the other on every thread: worth it while a step is too small to split
// well across threads. Measured (bench/NOTES.md, change 7; 2 threads, T=100,
// sequential/together time): B=1 H=64 1.72, H=128 1.13, H=192 1.04,
// H=256 0.95, H=1024 0.64; B=4 H=128 1.07; B=16 H=128 0.91.
bool directions_together(const fl_stack_params& p, int64_t D) {
  if (D != 2 || num_threads() < 2) return false;
  if (const char* force = std::getenv("FUSEDLSTM_DIRECTIONS")) {  // tuning and tests
    if (std::strcmp(force, "together") == 0) return true;
    if (std::strcmp(force, "sequential") == 0) return false;
  }
  const double hout = double(p.proj_size > 0 ? p.proj_size : p.H);
  const double flops_per_step = 8.0 * double(p.B) * double(p.H) * hout;  // work, not a size: never wraps
  return flops_per_step < double(1 << 19);
}

fl_status for_each_direction_op(const fl_stack_params* p, int64_t D, fl_status (*run)(void*, int64_t), void* ctx) {
  if (!directions_together(*p, D)) {
    for (int64_t d = 0; d < D; ++d)
      if (const fl_status s = run(ctx, d); s != FL_OK) return s;
    return FL_OK;
  }
  fl_status status[2] = {FL_OK, FL_OK};
  const fl_status pool = guarded_call([&] {
    CallDecision* call = current_call();
    run_pair([&](int d) {
      const FollowCall follow(call);  // the pool thread running d = 1 stops with the caller
      status[d] = run(ctx, d);
    });
  });
  if (pool != FL_OK) return pool;
  return status[0] != FL_OK ? status[0] : status[1];
}

const char* last_error_op() { return last_error.c_str(); }

}  // namespace

const fl_backend_ops& backend_ops() {
  static const fl_backend_ops ops = [] {
    fl_backend_ops o{};
    o.abi = FL_BACKEND_ABI;
    o.name = "cpu";
    o.host_memory = 1;
    o.cell_reserve_bytes = cell_reserve_bytes;
    o.forward = forward_op;
    o.backward = backward_op;
    o.cell = cell_op;
    o.cell_backward = cell_backward_op;
    o.alloc = alloc_op;
    o.release = release_op;
    o.fill_zero = fill_zero_op;
    o.rows = rows_op;
    o.for_each_direction = for_each_direction_op;
    o.last_error = last_error_op;
    return o;
  }();
  return ops;
}

}  // namespace cpu
}  // namespace fusedlstm
