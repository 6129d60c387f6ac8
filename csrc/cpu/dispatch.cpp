#include "cpu/dispatch.h"

#include <exception>
#include "cpu/thread_pool.h"
#include "fusedlstm/fusedlstm.h"

#include <sched.h>

#include <atomic>
#include <cstdlib>
#include <cstring>
#include <thread>

namespace fusedlstm {
namespace cpu {

const std::vector<const KernelTable*>& supported_kernels() {
  static const std::vector<const KernelTable*> tables = [] {
    std::vector<const KernelTable*> t;
#if defined(FUSEDLSTM_HAVE_X86_KERNELS)
    // libgcc's checks include the OS (XCR0) saving the wider registers.
    __builtin_cpu_init();
    if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512dq") &&
        __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512bw")) {
      if (__builtin_cpu_supports("avx512bf16")) t.push_back(&kernels_avx512_bf16());
      t.push_back(&kernels_avx512());
    }
    if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) t.push_back(&kernels_avx2());
#endif
    t.push_back(&kernels_generic());
    return t;
  }();
  return tables;
}

namespace {

const KernelTable* find_supported(const char* name) {
  for (const KernelTable* t : supported_kernels())
    if (std::strcmp(t->name, name) == 0) return t;
  return nullptr;
}

std::atomic<const KernelTable*>& current_table() {
  static std::atomic<const KernelTable*> table = [] {
    const char* env = std::getenv("FUSEDLSTM_ISA");
    const KernelTable* chosen = (env && *env) ? find_supported(env) : nullptr;
    // An unsupported FUSEDLSTM_ISA falls back to the best table; the Python
    // package checks the variable at import and warns.
    return chosen ? chosen : supported_kernels().front();
  }();
  return table;
}

int clamp_threads(int n) { return n < 1 ? 1 : n > FL_MAX_THREADS ? FL_MAX_THREADS : n; }

int default_threads() {
  if (const char* env = std::getenv("FUSEDLSTM_NUM_THREADS")) {
    const int n = std::atoi(env);
    if (n >= 1) return n;
  }
  cpu_set_t set;
  if (sched_getaffinity(0, sizeof(set), &set) == 0) {
    const int n = CPU_COUNT(&set);
    if (n >= 1) return n;
  }
  const unsigned n = std::thread::hardware_concurrency();
  return n >= 1 ? int(n) : 1;
}

std::atomic<int>& thread_setting() {
  static std::atomic<int> n{clamp_threads(default_threads())};
  return n;
}

}  // namespace

const KernelTable& active_kernels() { return *current_table().load(std::memory_order_acquire); }

bool select_kernels(const std::string& name) {
  const KernelTable* t = find_supported(name.c_str());
  if (!t) return false;
  current_table().store(t, std::memory_order_release);
  return true;
}

namespace {
thread_local int thread_limit = 0;  // 0: none (see ScopedThreadLimit)
}  // namespace

int num_threads() {
  const int n = thread_setting().load(std::memory_order_relaxed);
  return thread_limit > 0 && thread_limit < n ? thread_limit : n;
}

ScopedThreadLimit::ScopedThreadLimit(int n) : previous_(thread_limit) { thread_limit = n; }
ScopedThreadLimit::~ScopedThreadLimit() { thread_limit = previous_; }

int set_thread_limit(int n) {
  const int previous = thread_limit;
  thread_limit = n > 0 ? n : 0;
  return previous;
}

void run_pair(const std::function<void(int)>& fn) {
  std::exception_ptr error[2];
  ThreadPool::instance().run(2, [&](int tid, int) {
    ScopedThreadLimit limit(1);
    try {
      fn(tid);
    } catch (...) {
      error[tid] = std::current_exception();
    }
  });
  for (auto& e : error)
    if (e) std::rethrow_exception(e);
}
void set_num_threads(int n) { thread_setting().store(clamp_threads(n), std::memory_order_relaxed); }

}  // namespace cpu
}  // namespace fusedlstm
