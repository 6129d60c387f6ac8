// CPU stand-ins for the CUDA runtime and cuBLAS calls that csrc/cuda/ makes,
// for tests/emu (FUSEDLSTM_CUDA_EMULATE). "Device" memory is host memory,
// filled with 0xFF bytes (NaN in every float type) when allocated so that a
// read of an unwritten element shows. cublasGemmEx / cublasGemmStridedBatchedEx
// follow cuBLAS's column-major definition: C = alpha op(A) op(B) + beta C,
// C not read when beta == 0; products accumulate in double.
#include <cublas_v2.h>
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#if !defined(__x86_64__)
#include <ucontext.h>
#endif

#include <algorithm>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <memory>
#include <stdexcept>
#include <vector>

#include "cuda_emu.h"

thread_local dim3 blockIdx, threadIdx, blockDim, gridDim;

// ------------------------------------------------- cooperative launch (fibers)
namespace fl_emu {
namespace {

// Fiber contexts. On x86-64 a switch saves the callee-saved registers on the
// old stack and pops them from the new one (no system call; ucontext's
// swapcontext also saves the signal mask: a system call per switch, which
// adds up over millions of switches). Elsewhere ucontext.
#if defined(__x86_64__)
extern "C" void fl_emu_switch(void** save_sp, void* load_sp);
asm(R"(
  .text
  .globl fl_emu_switch
  .type fl_emu_switch, @function
fl_emu_switch:
  pushq %rbp
  pushq %rbx
  pushq %r12
  pushq %r13
  pushq %r14
  pushq %r15
  movq %rsp, (%rdi)
  movq %rsi, %rsp
  popq %r15
  popq %r14
  popq %r13
  popq %r12
  popq %rbx
  popq %rbp
  ret
  .size fl_emu_switch, .-fl_emu_switch
)");

struct Context {
  void* sp = nullptr;
};
void switch_context(Context& from, Context& to) { fl_emu_switch(&from.sp, to.sp); }
// A new context starts in entry (which must never return) on the given stack:
// six zero registers for fl_emu_switch to pop, entry as the return address,
// and a null fake return address of entry, so that entry starts with
// rsp = 8 mod 16 as the ABI wants.
void make_context(Context& c, char* stack, size_t size, void (*entry)()) {
  void** sp = reinterpret_cast<void**>((reinterpret_cast<uintptr_t>(stack) + size) & ~uintptr_t(15));
  *--sp = nullptr;
  *--sp = reinterpret_cast<void*>(entry);
  for (int i = 0; i < 6; ++i) *--sp = nullptr;
  c.sp = sp;
}
#else
struct Context {
  ucontext_t uc;
};
void switch_context(Context& from, Context& to) { swapcontext(&from.uc, &to.uc); }
void make_context(Context& c, char* stack, size_t size, void (*entry)()) {
  getcontext(&c.uc);
  c.uc.uc_stack.ss_sp = stack;
  c.uc.uc_stack.ss_size = size;
  c.uc.uc_link = nullptr;
  makecontext(&c.uc, entry, 0);
}
#endif

// Generation barrier: the arrival that makes count reach n opens it.
struct Barrier {
  int n = 0, count = 0;
  uint64_t gen = 0;
  void open_if_complete() {
    if (count > 0 && count >= n) count = 0, ++gen;
  }
};

struct Fiber {
  Context ctx;
  std::unique_ptr<char[]> stack;
  unsigned block = 0, thread = 0;
  bool done = false;
  const Barrier* waiting = nullptr;  // blocked until waiting->gen != wait_gen
  uint64_t wait_gen = 0;
  int exchange_parity = 0;
};

struct Warp {
  Barrier bar;
  unsigned char slot[2][32][16];
};

struct Block {
  Barrier bar;
  std::vector<unsigned char> smem;
  std::vector<Warp> warps;
};

struct Grid {
  std::vector<Fiber> fibers;
  std::vector<Block> blocks;
  Barrier bar;
  std::function<void()> fn;
  Context scheduler;
  Fiber* current = nullptr;
  unsigned threads = 0;
};

Grid* grid = nullptr;
constexpr size_t kStack = 256 * 1024;

Fiber& me() {
  if (!grid || !grid->current) throw std::logic_error("barrier or warp exchange outside a cooperative launch");
  return *grid->current;
}

void wait_at(Barrier& b) {
  Fiber& f = me();
  const uint64_t g = b.gen;
  ++b.count;
  b.open_if_complete();
  if (b.gen != g) return;
  f.waiting = &b, f.wait_gen = g;
  switch_context(f.ctx, grid->scheduler);
}

void fiber_entry() {
  grid->fn();
  Fiber& f = *grid->current;
  f.done = true;
  // An ended thread no longer counts at its barriers.
  Block& blk = grid->blocks[f.block];
  Warp& w = blk.warps[f.thread / 32];
  for (Barrier* b : {&w.bar, &blk.bar, &grid->bar}) --b->n, b->open_if_complete();
  switch_context(f.ctx, grid->scheduler);
}

}  // namespace

void launch_cooperative(unsigned blocks, unsigned threads, size_t smem_bytes, std::function<void()> fn) {
  if (grid) throw std::logic_error("nested cooperative launch");
  Grid g;
  g.fn = std::move(fn);
  g.threads = threads;
  g.blocks.resize(blocks);
  for (Block& b : g.blocks) {
    b.smem.assign(smem_bytes, 0xFF);
    b.bar.n = int(threads);
    b.warps.resize((threads + 31) / 32);
    for (size_t w = 0; w < b.warps.size(); ++w) b.warps[w].bar.n = int(std::min<size_t>(32, threads - 32 * w));
  }
  g.bar.n = int(blocks * threads);
  g.fibers.resize(size_t(blocks) * threads);
  for (unsigned b = 0; b < blocks; ++b)
    for (unsigned t = 0; t < threads; ++t) {
      Fiber& f = g.fibers[size_t(b) * threads + t];
      f.block = b, f.thread = t;
      f.stack.reset(new char[kStack]);
      make_context(f.ctx, f.stack.get(), kStack, fiber_entry);
    }
  gridDim = dim3(blocks), blockDim = dim3(threads);
  grid = &g;
  size_t live = g.fibers.size();
  while (live) {
    bool ran = false;
    for (Fiber& f : g.fibers) {
      if (f.done || (f.waiting && f.waiting->gen == f.wait_gen)) continue;
      f.waiting = nullptr;
      blockIdx = dim3(f.block), threadIdx = dim3(f.thread);
      g.current = &f;
      switch_context(g.scheduler, f.ctx);
      g.current = nullptr;
      ran = true;
      if (f.done) --live;
    }
    if (!ran) {
      grid = nullptr;
      throw std::runtime_error("emulated cooperative launch: deadlock (threads wait at barriers that cannot complete)");
    }
  }
  grid = nullptr;
}

void sync_block() { wait_at(grid->blocks[me().block].bar); }
void sync_grid() { wait_at(grid->bar); }
unsigned char* dynamic_smem() { return grid->blocks[me().block].smem.data(); }

void warp_exchange_xor(const void* in, void* out, size_t bytes, int xor_mask) {
  Fiber& f = me();
  Warp& w = grid->blocks[f.block].warps[f.thread / 32];
  const int lane = int(f.thread % 32), par = f.exchange_parity;
  if (bytes > sizeof(w.slot[0][0])) throw std::logic_error("warp exchange of more than 16 bytes");
  std::memcpy(w.slot[par][lane], in, bytes);
  wait_at(w.bar);
  // Double-buffered: no lane reaches the exchange after next before every
  // lane has passed the next one's barrier, i.e. has read this one.
  std::memcpy(out, w.slot[par][(lane ^ xor_mask) & 31], bytes);
  f.exchange_parity ^= 1;
}

}  // namespace fl_emu

extern "C" {

cudaError_t cudaMallocAsync(void** p, size_t bytes, cudaStream_t) {
  *p = std::malloc(bytes ? bytes : 1);
  if (!*p) return cudaErrorMemoryAllocation;
  std::memset(*p, 0xFF, bytes);
  return cudaSuccess;
}
cudaError_t cudaFreeAsync(void* p, cudaStream_t) {
  std::free(p);
  return cudaSuccess;
}
cudaError_t cudaMemsetAsync(void* p, int value, size_t n, cudaStream_t) {
  std::memset(p, value, n);
  return cudaSuccess;
}
cudaError_t cudaMemcpyAsync(void* dst, const void* src, size_t n, cudaMemcpyKind, cudaStream_t) {
  std::memmove(dst, src, n);
  return cudaSuccess;
}
cudaError_t cudaGetDevice(int* d) {
  *d = 0;
  return cudaSuccess;
}
cudaError_t cudaSetDevice(int d) { return d == 0 ? cudaSuccess : cudaErrorInvalidDevice; }
cudaError_t cudaGetDeviceCount(int* n) {
  *n = 1;
  return cudaSuccess;
}
cudaError_t cudaGetLastError(void) { return cudaSuccess; }
const char* cudaGetErrorName(cudaError_t) { return "cudaErrorEmulated"; }
const char* cudaGetErrorString(cudaError_t) { return "emulated error"; }
cudaError_t cudaEventCreateWithFlags(cudaEvent_t* e, unsigned) {
  static int dummy;
  *e = reinterpret_cast<cudaEvent_t>(&dummy);
  return cudaSuccess;
}
cudaError_t cudaEventRecord(cudaEvent_t, cudaStream_t) { return cudaSuccess; }
cudaError_t cudaEventDestroy(cudaEvent_t) { return cudaSuccess; }
cudaError_t cudaStreamWaitEvent(cudaStream_t, cudaEvent_t, unsigned) { return cudaSuccess; }

cublasStatus_t cublasCreate_v2(cublasHandle_t* h) {
  static int dummy;
  *h = reinterpret_cast<cublasHandle_t>(&dummy);
  return CUBLAS_STATUS_SUCCESS;
}
cublasStatus_t cublasSetStream_v2(cublasHandle_t, cudaStream_t) { return CUBLAS_STATUS_SUCCESS; }
const char* cublasGetStatusName(cublasStatus_t) { return "CUBLAS_STATUS_EMULATED"; }
const char* cublasGetStatusString(cublasStatus_t) { return "emulated cuBLAS error"; }

}  // extern "C"

namespace {

double load(const void* p, cudaDataType_t t, size_t i) {
  switch (t) {
    case CUDA_R_32F: return static_cast<const float*>(p)[i];
    case CUDA_R_64F: return static_cast<const double*>(p)[i];
    case CUDA_R_16F: return __half2float(static_cast<const __half*>(p)[i]);
    case CUDA_R_16BF: return __bfloat162float(static_cast<const __nv_bfloat16*>(p)[i]);
    default: throw std::runtime_error("emulated GEMM: unsupported type");
  }
}
void store(void* p, cudaDataType_t t, size_t i, double v) {
  switch (t) {
    case CUDA_R_32F: static_cast<float*>(p)[i] = static_cast<float>(v); return;
    case CUDA_R_64F: static_cast<double*>(p)[i] = v; return;
    case CUDA_R_16F: static_cast<__half*>(p)[i] = __float2half(static_cast<float>(v)); return;
    case CUDA_R_16BF: static_cast<__nv_bfloat16*>(p)[i] = __float2bfloat16(static_cast<float>(v)); return;
    default: throw std::runtime_error("emulated GEMM: unsupported type");
  }
}

cublasStatus_t gemm(cublasOperation_t ta, cublasOperation_t tb, int m, int n, int k, const void* alpha, const void* A,
                    cudaDataType_t at, int lda, long long sa, const void* B, cudaDataType_t bt, int ldb, long long sb,
                    const void* beta, void* C, cudaDataType_t ct, int ldc, long long sc, int batch,
                    cublasComputeType_t ctype) {
  // Column-major: element (r, c) of X at X[r + c*ld]. op(A) is m x k, op(B) k x n.
  const bool f64 = ctype == CUBLAS_COMPUTE_64F || ctype == CUBLAS_COMPUTE_64F_PEDANTIC;
  const double al = f64 ? *static_cast<const double*>(alpha) : *static_cast<const float*>(alpha);
  const double be = f64 ? *static_cast<const double*>(beta) : *static_cast<const float*>(beta);
  const int a_rows = ta == CUBLAS_OP_N ? m : k, b_rows = tb == CUBLAS_OP_N ? k : n;
  if (lda < (a_rows > 1 ? a_rows : 1) || ldb < (b_rows > 1 ? b_rows : 1) || ldc < (m > 1 ? m : 1))
    return CUBLAS_STATUS_INVALID_VALUE;
  for (int q = 0; q < batch; ++q)
    for (int c = 0; c < n; ++c)
      for (int r = 0; r < m; ++r) {
        double acc = 0;
        for (int l = 0; l < k; ++l) {
          const size_t ia = ta == CUBLAS_OP_N ? size_t(r) + size_t(l) * lda : size_t(l) + size_t(r) * lda;
          const size_t ib = tb == CUBLAS_OP_N ? size_t(l) + size_t(c) * ldb : size_t(c) + size_t(l) * ldb;
          acc += load(A, at, q * sa + ia) * load(B, bt, q * sb + ib);
        }
        const size_t ic = q * sc + size_t(r) + size_t(c) * ldc;
        double v = al * acc;
        if (be != 0) v += be * load(C, ct, ic);
        store(C, ct, ic, v);
      }
  return CUBLAS_STATUS_SUCCESS;
}

}  // namespace

extern "C" {

cublasStatus_t cublasGemmEx(cublasHandle_t, cublasOperation_t ta, cublasOperation_t tb, int m, int n, int k,
                            const void* alpha, const void* A, cudaDataType_t at, int lda, const void* B,
                            cudaDataType_t bt, int ldb, const void* beta, void* C, cudaDataType_t ct, int ldc,
                            cublasComputeType_t ctype, cublasGemmAlgo_t) {
  return gemm(ta, tb, m, n, k, alpha, A, at, lda, 0, B, bt, ldb, 0, beta, C, ct, ldc, 0, 1, ctype);
}

cublasStatus_t cublasGemmStridedBatchedEx(cublasHandle_t, cublasOperation_t ta, cublasOperation_t tb, int m, int n,
                                          int k, const void* alpha, const void* A, cudaDataType_t at, int lda,
                                          long long sa, const void* B, cudaDataType_t bt, int ldb, long long sb,
                                          const void* beta, void* C, cudaDataType_t ct, int ldc, long long sc,
                                          int batch, cublasComputeType_t ctype, cublasGemmAlgo_t) {
  return gemm(ta, tb, m, n, k, alpha, A, at, lda, sa, B, bt, ldb, sb, beta, C, ct, ldc, sc, batch, ctype);
}

}  // extern "C"
