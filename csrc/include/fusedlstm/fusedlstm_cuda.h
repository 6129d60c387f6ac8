// fusedlstm CUDA addendum: the few functions only the CUDA backend has. The
// LSTM entry points themselves are those of fusedlstm.h, with
// params.device.type = FL_DEVICE_CUDA.
#ifndef FUSEDLSTM_FUSEDLSTM_CUDA_H_
#define FUSEDLSTM_FUSEDLSTM_CUDA_H_

#include "fusedlstm/fusedlstm.h"

#ifdef __cplusplus
extern "C" {
#endif

// Number of usable CUDA devices; 0 when the backend library, the driver or a
// device is missing (the reason then in *why, valid until the next call on
// this thread, when why is non-NULL). Never fails.
int fl_cuda_device_count(const char** why);
// "cuda", "cuda-emulated" (the CPU emulation, tests/emu/), or "" when the
// backend library does not load.
const char* fl_cuda_backend_name(void);
// 1 when the loaded backend's device memory is host memory (the emulation).
int fl_cuda_backend_host_memory(void);
// "80-real;90-real;90-virtual" etc.: what the backend library compiled.
const char* fl_cuda_build_archs(void);
// The recurrence policy (FUSEDLSTM_CUDA_PATH: "auto", "persistent",
// "fallback") and what the last forward / backward on this thread ran
// ("persistent", "fallback" or "none"); "" without the backend.
const char* fl_cuda_path(void);
const char* fl_cuda_last_forward_path(void);
const char* fl_cuda_last_backward_path(void);

#ifdef __cplusplus
}
#endif

#endif  // FUSEDLSTM_FUSEDLSTM_CUDA_H_
