// Backend lookup and the run-time loading of the CUDA backend.
#include "capi/backends.h"

#include <dlfcn.h>

#include <cstdlib>
#include <mutex>
#include <string>

#include "core/arg_checks.h"
#include "core/status.h"
#include "cpu/cpu_backend.h"

namespace fusedlstm {

namespace {

constexpr const char* kLibraryName = "libfusedlstm_cuda.so";

// The folder of the shared object (or program) holding this code.
std::string own_folder() {
  Dl_info info{};
  if (!dladdr(reinterpret_cast<void*>(&own_folder), &info) || !info.dli_fname) return "";
  const std::string path = info.dli_fname;
  const size_t slash = path.rfind('/');
  return slash == std::string::npos ? "" : path.substr(0, slash + 1);
}

struct Loaded {
  const fl_backend_ops* ops = nullptr;
  std::string why;
};

Loaded load_cuda() {
  Loaded r;
  std::string tried;
  void* handle = nullptr;
  auto attempt = [&](const std::string& path) {
    if (handle) return;
    handle = dlopen(path.c_str(), RTLD_NOW | RTLD_LOCAL);
    if (!handle) {
      const char* e = dlerror();
      tried += "\n  " + path + ": " + (e ? e : "not loadable");
    }
  };
  if (const char* env = std::getenv("FUSEDLSTM_CUDA_LIBRARY"); env && *env) {
    attempt(env);  // set: only this one
  } else {
    attempt(own_folder() + kLibraryName);
    attempt(kLibraryName);
  }
  if (!handle) {
    r.why = "the CUDA backend library could not be loaded (this build may have no CUDA backend: "
            "FUSEDLSTM_CUDA=on builds it); tried:" + tried;
    return r;
  }
  auto entry = reinterpret_cast<fl_cuda_backend_entry>(dlsym(handle, FL_CUDA_BACKEND_ENTRY));
  if (!entry) {
    r.why = std::string("the CUDA backend library has no ") + FL_CUDA_BACKEND_ENTRY + " entry point";
    return r;
  }
  r.ops = entry(FL_BACKEND_ABI);
  if (!r.ops) r.why = "the CUDA backend library was built for another version of fusedlstm (backend ABI)";
  return r;  // the library stays loaded for the life of the process
}

const Loaded& cuda_loaded() {
  static const Loaded loaded = load_cuda();
  return loaded;
}

}  // namespace

const fl_backend_ops* cuda_backend(std::string* why) {
  const Loaded& l = cuda_loaded();
  if (!l.ops && why) *why = l.why;
  return l.ops;
}

const fl_backend_ops& backend_for(const fl_device& device) {
  require_enum("device.type", device.type, {"FL_DEVICE_CPU", "FL_DEVICE_CUDA"});
  if (device.type == FL_DEVICE_CPU) {
    require(device.index == 0, "device.index = " + std::to_string(device.index) + " must be 0 on the CPU");
    require(device.stream == nullptr, "device.stream must be NULL on the CPU");
    return cpu::backend_ops();
  }
  require(device.index >= 0, "device.index = " + std::to_string(device.index) + " must be >= 0");
  std::string why;
  const fl_backend_ops* ops = cuda_backend(&why);
  require(ops != nullptr, "FL_DEVICE_CUDA: " + why);
  return *ops;
}

}  // namespace fusedlstm
