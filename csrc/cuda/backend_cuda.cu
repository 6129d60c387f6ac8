// The CUDA backend's table (core/backend.h), exported from
// libfusedlstm_cuda.so as fusedlstm_cuda_backend_ops. Each entry runs on
// its call's device (a guard sets and restores the current device) and
// stream, catches every exception (none may cross the library boundary) and
// keeps the message for last_error() on the calling thread.
#include <cuda_runtime.h>

#include <cstdlib>
#include <cstring>
#include <string>

#include "core/backend.h"
#include "core/checked_size.h"
#include "core/status.h"
#include "cuda/cuda_check.h"
#include "cuda/lstm_cuda.h"

#ifndef FUSEDLSTM_CUDA_ARCHS
#define FUSEDLSTM_CUDA_ARCHS "unknown"
#endif

namespace fusedlstm::cuda {
namespace {

thread_local std::string last_error_message;

// Sets the current device for the guard's scope.
class DeviceGuard {
 public:
  explicit DeviceGuard(int device) {
    FL_CUDA_CHECK(cudaGetDevice(&prev_));
    if (prev_ != device) FL_CUDA_CHECK(cudaSetDevice(device));
  }
  ~DeviceGuard() {
    int now = -1;
    if (cudaGetDevice(&now) == cudaSuccess && now != prev_) cudaSetDevice(prev_);
  }
  DeviceGuard(const DeviceGuard&) = delete;
  DeviceGuard& operator=(const DeviceGuard&) = delete;

 private:
  int prev_ = 0;
};

struct DeviceOutOfMemory : std::runtime_error {
  using std::runtime_error::runtime_error;
};

template <class Fn>
fl_status guarded(Fn&& fn) {
  return fusedlstm::guarded(last_error_message, fn, [](const std::exception& e) {
    // A workspace cudaMallocAsync running out of device memory reads as out of memory.
    const bool oom = dynamic_cast<const DeviceOutOfMemory*>(&e) || std::strstr(e.what(), "cudaErrorMemoryAllocation");
    return oom ? FL_OUT_OF_MEMORY : FL_INTERNAL_ERROR;
  });
}

template <class Fn>
fl_status on_device(int device, Fn&& fn) {
  return guarded([&] {
    DeviceGuard guard(device);
    fn();
  });
}

int64_t cell_reserve_bytes(fl_cell_kind cell, fl_dtype dtype, int64_t T, int64_t B, int64_t H, int64_t proj_size) {
  int64_t bytes = -1;
  const auto size = [&] { bytes = reserve_bytes(cell, dtype, T, B, H, proj_size); };
  if (guarded(size) != FL_OK) return -1;
  return bytes;
}

fl_status forward(const fl_forward_params* p, void* reserve) {
  return on_device(p->device.index, [&] { fusedlstm::cuda::forward(*p, reserve); });
}

fl_status backward(const fl_forward_params* p, const void* reserve, const fl_backward_params* grads) {
  return on_device(p->device.index, [&] { fusedlstm::cuda::backward(*p, reserve, *grads); });
}

fl_status cell(const fl_cell_params* p) {
  return on_device(p->device.index, [&] { fusedlstm::cuda::cell(*p); });
}

fl_status cell_backward(const fl_cell_backward_params* p) {
  return on_device(p->device.index, [&] { fusedlstm::cuda::cell_backward(*p); });
}

fl_status alloc(const fl_device* device, int64_t bytes, const char* what, void** out) {
  *out = nullptr;
  if (bytes <= 0) return FL_OK;
  return on_device(device->index, [&] {
    const cudaError_t err = cudaMallocAsync(out, size_t(bytes), static_cast<cudaStream_t>(device->stream));
    if (err == cudaSuccess) return;
    cudaGetLastError();  // leave no sticky error behind for the next call
    *out = nullptr;
    const std::string why = std::string(cudaGetErrorName(err)) + ", " + cudaGetErrorString(err);
    if (err != cudaErrorMemoryAllocation)
      throw CudaError("cudaMallocAsync of " + std::to_string(bytes) + " bytes for " + (what ? what : "a buffer") +
                      " failed: " + why);
    throw DeviceOutOfMemory("out of CUDA device memory allocating " + std::to_string(bytes) + " bytes for " +
                            (what ? what : "a buffer") + " on device " + std::to_string(device->index) + " (" +
                            why + ")");
  });
}

void release(const fl_device* device, void* ptr) {
  if (!ptr) return;
  guarded([&] {
    DeviceGuard guard(device->index);
    FL_CUDA_CHECK(cudaFreeAsync(ptr, static_cast<cudaStream_t>(device->stream)));
  });
}

fl_status fill_zero(const fl_device* device, void* dst, int64_t bytes) {
  return on_device(device->index, [&] {
    if (bytes > 0) FL_CUDA_CHECK(cudaMemsetAsync(dst, 0, size_t(bytes), static_cast<cudaStream_t>(device->stream)));
  });
}

fl_status rows(const fl_device* device, fl_dtype dtype, fl_rows_op op, void* dst, int64_t dst_st, int64_t dst_sb,
               const void* src, int64_t src_st, int64_t src_sb, int64_t T, int64_t B, int64_t n) {
  return on_device(device->index, [&] {
    fusedlstm::cuda::rows(*device, dtype, op, dst, dst_st, dst_sb, src, src_st, src_sb, T, B, n);
  });
}

// One direction after the other: each fills the GPU on its own.
fl_status for_each_direction(const fl_stack_params*, int64_t D, fl_status (*run)(void* ctx, int64_t d), void* ctx) {
  for (int64_t d = 0; d < D; ++d) {
    const fl_status s = run(ctx, d);
    if (s != FL_OK) return s;
  }
  return FL_OK;
}

const char* last_error() { return last_error_message.c_str(); }

int device_count(const char** why) {
  int n = 0;
  const cudaError_t err = cudaGetDeviceCount(&n);
  if (err != cudaSuccess) {
    cudaGetLastError();  // clear it; this query must leave no error behind
    if (why) *why = cudaGetErrorString(err);
    return 0;
  }
  if (why) *why = n > 0 ? "" : "no CUDA device";
  return n;
}

const char* info(const char* key) {
  if (!key) return nullptr;
  if (std::strcmp(key, "build_archs") == 0) return FUSEDLSTM_CUDA_ARCHS;
  if (std::strcmp(key, "path") == 0) return path_setting();
  if (std::strcmp(key, "last_forward_path") == 0) return last_forward_path();
  if (std::strcmp(key, "last_backward_path") == 0) return last_backward_path();
  return nullptr;
}

#ifdef FUSEDLSTM_CUDA_EMULATE
constexpr const char* kName = "cuda-emulated";
constexpr int kHostMemory = 1;
#else
constexpr const char* kName = "cuda";
constexpr int kHostMemory = 0;
#endif

const fl_backend_ops kOps = {
    FL_BACKEND_ABI, kName,     kHostMemory, cell_reserve_bytes, forward, backward, cell, cell_backward, alloc,
    release,        fill_zero, rows,        for_each_direction, last_error, device_count, info,
};

}  // namespace
}  // namespace fusedlstm::cuda

extern "C" __attribute__((visibility("default"))) const fl_backend_ops* fusedlstm_cuda_backend_ops(int abi) {
  return abi == FL_BACKEND_ABI ? &fusedlstm::cuda::kOps : nullptr;
}
