// Run-time choice of the SIMD kernel table and of the thread count.
#ifndef FUSEDLSTM_CPU_DISPATCH_H_
#define FUSEDLSTM_CPU_DISPATCH_H_

#include <functional>
#include <string>
#include <vector>

#include "cpu/kernels.h"

namespace fusedlstm {
namespace cpu {

// Tables this CPU (and OS) can run, best first.
const std::vector<const KernelTable*>& supported_kernels();
// The table in use: FUSEDLSTM_ISA if set to a supported name, else the best.
const KernelTable& active_kernels();
// False (and nothing changes) when the name is unknown or unsupported here.
bool select_kernels(const std::string& name);

int num_threads();
void set_num_threads(int n);

// Caps num_threads() on this thread while alive: work already running on a
// pool thread (e.g. one direction of a bidirectional layer) must not start
// a nested parallel region, so it runs with a limit of 1.
class ScopedThreadLimit {
 public:
  explicit ScopedThreadLimit(int n);
  ~ScopedThreadLimit();
  ScopedThreadLimit(const ScopedThreadLimit&) = delete;
  ScopedThreadLimit& operator=(const ScopedThreadLimit&) = delete;

 private:
  int previous_;
};

// The cap of ScopedThreadLimit without a scope (0: none); returns the previous one.
int set_thread_limit(int n);

// Runs fn(0) and fn(1) at once on two pool threads, each under a thread
// limit of 1 (exceptions come back to the caller).
void run_pair(const std::function<void(int)>& fn);

}  // namespace cpu
}  // namespace fusedlstm

#endif  // FUSEDLSTM_CPU_DISPATCH_H_
