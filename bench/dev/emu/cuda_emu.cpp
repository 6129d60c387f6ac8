// CPU stand-ins for the CUDA runtime and cuBLAS calls that csrc/cuda/ makes,
// for bench/dev/emu (FUSEDLSTM_CUDA_EMULATE). "Device" memory is host memory,
// filled with 0xFF bytes (NaN in every float type) when allocated so that a
// read of an unwritten element shows. cublasGemmEx / cublasGemmStridedBatchedEx
// follow cuBLAS's column-major definition: C = alpha op(A) op(B) + beta C,
// C not read when beta == 0; products accumulate in double.
#include <cublas_v2.h>
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstdlib>
#include <cstring>
#include <stdexcept>

thread_local dim3 blockIdx, threadIdx, blockDim, gridDim;

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
