// Calling a backend table (core/backend.h) from C++: a failed status
// becomes the exception the C API turns back into that status, with the
// backend's message, and device memory is held by a RAII handle.
#ifndef FUSEDLSTM_CORE_BACKEND_CALL_H_
#define FUSEDLSTM_CORE_BACKEND_CALL_H_

#include <cstdint>
#include <stdexcept>
#include <string>
#include <utility>

#include "core/backend.h"
#include "core/status.h"

namespace fusedlstm {

inline void check(const fl_backend_ops& ops, fl_status status) {
  if (status == FL_OK) return;
  const std::string message = ops.last_error ? ops.last_error() : "";
  switch (status) {
    case FL_INVALID_ARGUMENT: throw InvalidArgument(message);
    case FL_INTERRUPTED: throw Interrupted(message);
    default: throw BackendError(status, message);
  }
}

// Memory from ops.alloc on one device, released on that device (CUDA: on the
// stream it holds then; set_stream moves the release after later work).
class DeviceBuffer {
 public:
  DeviceBuffer() = default;
  DeviceBuffer(const fl_backend_ops& ops, const fl_device& device, int64_t bytes, const char* what)
      : ops_(&ops), device_(device), bytes_(bytes) {
    if (bytes > 0) check(ops, ops.alloc(&device_, bytes, what, &ptr_));
  }
  DeviceBuffer(DeviceBuffer&& o) noexcept { swap(o); }
  DeviceBuffer& operator=(DeviceBuffer&& o) noexcept {
    swap(o);
    return *this;
  }
  DeviceBuffer(const DeviceBuffer&) = delete;
  DeviceBuffer& operator=(const DeviceBuffer&) = delete;
  ~DeviceBuffer() {
    if (ptr_) ops_->release(&device_, ptr_);
  }
  unsigned char* data() const { return static_cast<unsigned char*>(ptr_); }
  int64_t bytes() const { return bytes_; }
  void set_stream(void* stream) { device_.stream = stream; }

 private:
  void swap(DeviceBuffer& o) noexcept {
    std::swap(ops_, o.ops_);
    std::swap(device_, o.device_);
    std::swap(ptr_, o.ptr_);
    std::swap(bytes_, o.bytes_);
  }
  const fl_backend_ops* ops_ = nullptr;
  fl_device device_{};
  void* ptr_ = nullptr;
  int64_t bytes_ = 0;
};

}  // namespace fusedlstm

#endif  // FUSEDLSTM_CORE_BACKEND_CALL_H_
