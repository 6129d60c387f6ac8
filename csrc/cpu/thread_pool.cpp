#include "cpu/thread_pool.h"

#include <dlfcn.h>
#include <pthread.h>

#include <cstdlib>
#include <string>
#include <system_error>

namespace fusedlstm {
namespace cpu {

namespace {
// About 50-100 us of spinning: longer than one step of any size we target,
// short enough that an idle pool gives its cores back quickly.
constexpr int kSpinsBeforeSleep = 20000;
constexpr int kSpinsBeforeYield = 2000;
// A slot holding this ticket tells its worker to exit (real tickets count up from 1).
constexpr uint64_t kRetireTicket = ~uint64_t(0);

// Test hook (documented in thread_pool.h): FUSEDLSTM_TEST_FAIL_THREAD_START=k
// makes the k-th worker start of the process fail as an exhausted pids or
// memory limit makes it fail. Read at each start, which is rare.
std::thread start_thread(std::function<void()> body) {
  static std::atomic<int> starts{0};
  const int this_start = starts.fetch_add(1) + 1;
  if (const char* env = std::getenv("FUSEDLSTM_TEST_FAIL_THREAD_START"); env && std::atoi(env) == this_start)
    throw std::system_error(std::make_error_code(std::errc::resource_unavailable_try_again),
                            "test hook FUSEDLSTM_TEST_FAIL_THREAD_START");
  return std::thread(std::move(body));
}
}  // namespace

void cpu_relax() {
#if defined(__x86_64__) || defined(__i386__)
  __builtin_ia32_pause();
#elif defined(__aarch64__)
  asm volatile("yield" ::: "memory");
#endif
}

void SpinBarrier::wait(int tid) {
  const int64_t step = counters_[size_t(tid)].value.load(std::memory_order_relaxed) + 1;
  counters_[size_t(tid)].value.store(step, std::memory_order_release);
  for (size_t j = 0; j < counters_.size(); ++j) {
    if (int(j) == tid) continue;
    for (int spins = 0; counters_[j].value.load(std::memory_order_acquire) < step; ++spins) {
      if (spins < kSpinsBeforeYield) {
        cpu_relax();
      } else {
        // More threads than free cores (an oversubscribed machine): let the
        // thread we are waiting for run.
        std::this_thread::yield();
      }
    }
  }
}

namespace {
std::atomic<ThreadPool*> g_pool{nullptr};
std::once_flag g_pool_once;
}  // namespace

ThreadPool& ThreadPool::instance() {
  // Leaked on purpose: workers must not be joined from static destructors
  // (the interpreter may already be tearing down threads at exit).
  std::call_once(g_pool_once, [] {
    g_pool.store(new ThreadPool(), std::memory_order_release);
    // A forked child (multiprocessing, DataLoader workers) has none of the
    // parent's workers: give it a fresh pool and leave the old one untouched.
    // Nor can it trust the parent's OpenMP team (GNU libgomp is not
    // fork-safe once its threads exist): back to our own threads there.
    pthread_atfork(nullptr, nullptr, [] {
      g_pool.store(new ThreadPool(), std::memory_order_release);
      ThreadPool::use_openmp(false);
    });
  });
  return *g_pool.load(std::memory_order_acquire);
}

ThreadPool::~ThreadPool() { retire(0); }

void ThreadPool::retire(size_t keep) {
  for (size_t i = keep; i < slots_.size(); ++i) slots_[i]->ticket.store(kRetireTicket, std::memory_order_seq_cst);
  {
    // Taking the mutex orders this notify after a sleeper's predicate check.
    std::lock_guard<std::mutex> lock(mutex_);
    wake_.notify_all();
  }
  for (size_t i = keep; i < workers_.size(); ++i) workers_[i].join();
  workers_.resize(keep);
  slots_.resize(keep);
}

void ThreadPool::grow(int workers) {
  const size_t before = workers_.size();
  if (int(before) >= workers) return;
  // A start that fails (a pids or memory limit) stops and joins the workers
  // this call started: the pool is left as it was, slots and workers paired.
  try {
    workers_.reserve(size_t(workers));
    slots_.reserve(size_t(workers));
    while (int(workers_.size()) < workers) {
      const int index = int(workers_.size()) + 1;  // tid 0 is the caller
      auto slot = std::make_unique<Slot>();
      Slot* s = slot.get();
      std::thread worker = start_thread([this, index, s] { worker_loop(index, *s); });
      slots_.push_back(std::move(slot));  // cannot throw: reserved
      workers_.push_back(std::move(worker));
    }
  } catch (const std::system_error& e) {
    const size_t failed = workers_.size() + 1;
    retire(before);
    throw std::system_error(
        e.code(), "fusedlstm could not start worker thread " + std::to_string(failed) + " of the " +
                      std::to_string(workers) + " a call on " + std::to_string(workers + 1) +
                      " threads needs (the pool keeps the " + std::to_string(before) +
                      " it had); use fewer threads (fusedlstm.set_num_threads / fl_set_num_threads) or raise the "
                      "process's thread limit");
  } catch (...) {
    retire(before);
    throw;
  }
}

void ThreadPool::worker_loop(int index, Slot& slot) {
  uint64_t seen = 0;
  for (;;) {
    uint64_t ticket = slot.ticket.load(std::memory_order_acquire);
    for (int spins = 0; ticket == seen && spins < kSpinsBeforeSleep; ++spins) {
      cpu_relax();
      ticket = slot.ticket.load(std::memory_order_acquire);
    }
    if (ticket == seen) {
      std::unique_lock<std::mutex> lock(mutex_);
      sleepers_.fetch_add(1, std::memory_order_seq_cst);
      wake_.wait(lock, [&] { return slot.ticket.load(std::memory_order_seq_cst) != seen; });
      sleepers_.fetch_sub(1, std::memory_order_seq_cst);
      ticket = slot.ticket.load(std::memory_order_acquire);
    }
    if (ticket == kRetireTicket) return;
    seen = ticket;
    (*job_)(index, job_threads_);
    pending_.fetch_sub(1, std::memory_order_acq_rel);
  }
}

namespace {

// The GNU OpenMP entry points a region needs (libgomp's ABI).
struct OpenMP {
  void (*parallel)(void (*fn)(void*), void* data, unsigned num_threads, unsigned flags);
  int (*thread_num)();
  int (*num_threads)();
  int (*in_parallel)();
};
std::atomic<const OpenMP*> g_openmp{nullptr};

const OpenMP* load_openmp() {
  static const OpenMP* found = []() -> const OpenMP* {
    auto* omp = new OpenMP{
        reinterpret_cast<decltype(OpenMP::parallel)>(dlsym(RTLD_DEFAULT, "GOMP_parallel")),
        reinterpret_cast<decltype(OpenMP::thread_num)>(dlsym(RTLD_DEFAULT, "omp_get_thread_num")),
        reinterpret_cast<decltype(OpenMP::num_threads)>(dlsym(RTLD_DEFAULT, "omp_get_num_threads")),
        reinterpret_cast<decltype(OpenMP::in_parallel)>(dlsym(RTLD_DEFAULT, "omp_in_parallel"))};
    if (omp->parallel && omp->thread_num && omp->num_threads && omp->in_parallel) return omp;
    delete omp;
    return nullptr;
  }();
  return found;
}

struct OpenMPRegion {
  const OpenMP* omp;
  const std::function<void(int, int)>* fn;
  int n;
  std::atomic<bool> team_ok{true};
};

void openmp_trampoline(void* data) {
  auto* r = static_cast<OpenMPRegion*>(data);
  // Every member sees the same team size: all run fn, or none does.
  if (r->omp->num_threads() != r->n) {
    r->team_ok.store(false, std::memory_order_relaxed);
    return;
  }
  (*r->fn)(r->omp->thread_num(), r->n);
}

}  // namespace

bool ThreadPool::use_openmp(bool on) {
  if (!on) {
    g_openmp.store(nullptr);
    return true;
  }
  const OpenMP* omp = load_openmp();
  if (omp) g_openmp.store(omp);
  return omp != nullptr;
}

bool ThreadPool::using_openmp() { return g_openmp.load() != nullptr; }

void ThreadPool::run(int n, const std::function<void(int, int)>& fn) {
  if (n <= 1) {
    fn(0, 1);
    return;
  }
  std::lock_guard<std::mutex> region(run_mutex_);
  if (const OpenMP* omp = g_openmp.load(std::memory_order_acquire); omp && !omp->in_parallel()) {
    OpenMPRegion r{omp, &fn, n};
    omp->parallel(&openmp_trampoline, &r, unsigned(n), 0);
    if (r.team_ok.load(std::memory_order_relaxed)) return;
  }
  grow(n - 1);
  job_ = &fn;
  job_threads_ = n;
  ++generation_;
  pending_.store(n - 1, std::memory_order_relaxed);
  for (int i = 0; i < n - 1; ++i) slots_[i]->ticket.store(generation_, std::memory_order_seq_cst);
  if (sleepers_.load(std::memory_order_seq_cst) > 0) {
    // Taking the mutex orders this notify after a sleeper's predicate check.
    std::lock_guard<std::mutex> lock(mutex_);
    wake_.notify_all();
  }
  fn(0, n);
  for (int spins = 0; pending_.load(std::memory_order_acquire) != 0; ++spins) {
    if (spins < kSpinsBeforeYield) cpu_relax();
    else std::this_thread::yield();
  }
}

}  // namespace cpu
}  // namespace fusedlstm
