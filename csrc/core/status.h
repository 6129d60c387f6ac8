// Exceptions to status codes, for every C API entry point and every function
// of a backend table: C++ code throws, the C boundary returns an fl_status
// and keeps the message for the calling thread (fl_last_error).
#ifndef FUSEDLSTM_CORE_STATUS_H_
#define FUSEDLSTM_CORE_STATUS_H_

#include <cstdint>
#include <exception>
#include <new>
#include <stdexcept>
#include <string>

#include "fusedlstm/fusedlstm.h"

namespace fusedlstm {

// A bad argument: FL_INVALID_ARGUMENT (a ValueError in Python).
struct InvalidArgument : std::runtime_error {
  using std::runtime_error::runtime_error;
};

// The interrupt check (fl_set_interrupt_check) stopped the call: FL_INTERRUPTED.
struct Interrupted : std::runtime_error {
  using std::runtime_error::runtime_error;
};

// A failure a backend returned as a status (core/backend_call.h), carried
// through C++ callers to the C API with that status and message.
struct BackendError : std::runtime_error {
  BackendError(fl_status s, const std::string& message) : std::runtime_error(message), status(s) {}
  fl_status status;
};

inline void require(bool ok, const std::string& what) {
  if (!ok) throw InvalidArgument(what);
}

// A failed host allocation that says what it was for and how many bytes:
// FL_OUT_OF_MEMORY (a MemoryError in Python). Still a std::bad_alloc.
class OutOfMemory : public std::bad_alloc {
 public:
  OutOfMemory(const std::string& what, int64_t bytes)
      : message_("out of host memory allocating " + std::to_string(bytes) + " bytes for " + what) {}
  const char* what() const noexcept override { return message_.c_str(); }

 private:
  std::string message_;
};

// Runs fn() and returns FL_OK, or the status of what it threw with the
// message in `error`. other_status(e) gives the status of any other
// std::exception (a backend may recognise its own out-of-memory errors).
template <class Fn, class OtherStatus>
fl_status guarded(std::string& error, Fn&& fn, OtherStatus&& other_status) {
  try {
    fn();
    error.clear();
    return FL_OK;
  } catch (const InvalidArgument& e) {
    error = e.what();
    return FL_INVALID_ARGUMENT;
  } catch (const Interrupted& e) {
    error = e.what();
    return FL_INTERRUPTED;
  } catch (const BackendError& e) {
    error = e.what();
    return e.status;
  } catch (const OutOfMemory& e) {
    error = e.what();
    return FL_OUT_OF_MEMORY;
  } catch (const std::bad_alloc&) {
    error = "out of host memory allocating a host array (std::bad_alloc)";
    return FL_OUT_OF_MEMORY;
  } catch (const std::length_error& e) {  // a size no container can hold
    error = std::string("a size is too large for this machine (") + e.what() + ")";
    return FL_INVALID_ARGUMENT;
  } catch (const std::exception& e) {
    error = e.what();
    return other_status(e);
  } catch (...) {
    error = "unknown internal error";
    return FL_INTERNAL_ERROR;
  }
}

}  // namespace fusedlstm

#endif  // FUSEDLSTM_CORE_STATUS_H_
