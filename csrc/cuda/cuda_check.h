// Error checking for the CUDA backend: every CUDA and cuBLAS call and every
// kernel launch goes through one of these macros. A failure throws
// CudaError with the call's text, the error string, file and line; the
// backend table (backend_cuda.cu) turns it into FL_INTERNAL_ERROR and its
// last_error() message, the binding into a Python RuntimeError. Nothing here
// exits the process.
#ifndef FUSEDLSTM_CUDA_CUDA_CHECK_H_
#define FUSEDLSTM_CUDA_CUDA_CHECK_H_

#include <cublas_v2.h>
#include <cuda_runtime.h>

#include <stdexcept>
#include <string>

#include "core/status.h"

namespace fusedlstm::cuda {

struct CudaError : std::runtime_error {
  using std::runtime_error::runtime_error;
};
using fusedlstm::InvalidArgument;  // core/status.h

[[noreturn]] inline void throw_cuda(const char* call, cudaError_t err, const char* file, int line) {
  throw CudaError(std::string(call) + " failed: " + cudaGetErrorName(err) + " (" + cudaGetErrorString(err) +
                  ") at " + file + ":" + std::to_string(line));
}

[[noreturn]] inline void throw_cublas(const char* call, cublasStatus_t st, const char* file, int line) {
  throw CudaError(std::string(call) + " failed: " + cublasGetStatusName(st) + " (" + cublasGetStatusString(st) +
                  ") at " + file + ":" + std::to_string(line));
}

}  // namespace fusedlstm::cuda

#define FL_CUDA_CHECK(call)                                                        \
  do {                                                                             \
    const cudaError_t fl_err_ = (call);                                            \
    if (fl_err_ != cudaSuccess) ::fusedlstm::cuda::throw_cuda(#call, fl_err_, __FILE__, __LINE__); \
  } while (0)

#define FL_CUBLAS_CHECK(call)                                                      \
  do {                                                                             \
    const cublasStatus_t fl_st_ = (call);                                          \
    if (fl_st_ != CUBLAS_STATUS_SUCCESS)                                           \
      ::fusedlstm::cuda::throw_cublas(#call, fl_st_, __FILE__, __LINE__);          \
  } while (0)

// After every <<<>>> launch: catches bad configurations at once (errors inside
// the kernel surface at a later checked call on the same stream).
#define FL_LAUNCH_CHECK(kernel_name)                                               \
  do {                                                                             \
    const cudaError_t fl_err_ = cudaGetLastError();                                \
    if (fl_err_ != cudaSuccess)                                                    \
      ::fusedlstm::cuda::throw_cuda("launch of " kernel_name, fl_err_, __FILE__, __LINE__); \
  } while (0)

#endif  // FUSEDLSTM_CUDA_CUDA_CHECK_H_
