// Which backend table serves a device: the CPU's, linked in, or the CUDA
// one, loaded from libfusedlstm_cuda.so on first use (see fusedlstm.h,
// "Backends").
#ifndef FUSEDLSTM_CAPI_BACKENDS_H_
#define FUSEDLSTM_CAPI_BACKENDS_H_

#include <string>

#include "core/backend.h"

namespace fusedlstm {

// Checks the device's fields (type, index, stream) and returns its backend;
// throws InvalidArgument when the CUDA backend cannot be loaded, saying why.
const fl_backend_ops& backend_for(const fl_device& device);

// The CUDA backend if it loads, else nullptr with the reason in *why.
const fl_backend_ops* cuda_backend(std::string* why);

}  // namespace fusedlstm

#endif  // FUSEDLSTM_CAPI_BACKENDS_H_
