// A persistent thread pool and a spinning barrier for the CPU backend.
//
// The recurrence needs one barrier per time step, so a step must not pay for
// waking threads: a parallel region runs the whole time loop, threads meet at
// SpinBarrier between steps, and between regions idle workers spin briefly
// before they sleep on a condition variable.
#ifndef FUSEDLSTM_CPU_THREAD_POOL_H_
#define FUSEDLSTM_CPU_THREAD_POOL_H_

#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <functional>
#include <memory>
#include <mutex>
#include <thread>
#include <vector>

namespace fusedlstm {
namespace cpu {

void cpu_relax();

// Barrier for a fixed team of threads that meet once per time step. Each
// thread bumps its own counter (its own cache line) and waits until every
// other counter has caught up: one cache-line hand-over per pair of threads,
// where a shared counter costs several. wait(tid) must be called the same
// number of times by every thread of the team.
class SpinBarrier {
 public:
  explicit SpinBarrier(int n) : counters_(size_t(n)) {}
  void wait(int tid);

 private:
  struct alignas(64) Counter {
    std::atomic<int64_t> value{0};
  };
  std::vector<Counter> counters_;
};

class ThreadPool {
 public:
  static ThreadPool& instance();
  // Runs fn(tid, n) for tid in [0, n) on n threads, the caller being tid 0,
  // and returns when all have finished. Concurrent callers are serialised.
  // fn must not throw.
  void run(int n, const std::function<void(int, int)>& fn);
  ~ThreadPool();

  // Run parallel regions on the host process's OpenMP team (GNU libgomp,
  // found among the already loaded symbols) instead of our own workers.
  // fusedlstm.torch turns this on: torch's OpenMP workers spin for several
  // milliseconds after each torch op, and a region of ours started in that
  // window shares a core with one of them (a barrier then waits for a time
  // slice). Returns false, and changes nothing, when libgomp is not loaded.
  // Regions fall back to our workers when called inside an OpenMP region or
  // when the team granted is smaller than asked.
  static bool use_openmp(bool on);
  static bool using_openmp();

 private:
  ThreadPool() = default;
  // Starts workers until there are `workers`. On failure the workers it
  // started are joined again and it throws; a failed thread start is a
  // std::system_error naming the thread and the system's reason.
  // Test hook: FUSEDLSTM_TEST_FAIL_THREAD_START=k (environment) makes the
  // k-th thread start of the process fail with EAGAIN, as under a pids limit.
  void grow(int workers);
  // Stops and joins the workers past the first `keep`.
  void retire(size_t keep);

  // Each worker waits on its own ticket: a region hands out tickets only to
  // the workers it uses, so idle ones never touch the job fields.
  struct alignas(64) Slot {
    std::atomic<uint64_t> ticket{0};
  };

  void worker_loop(int index, Slot& slot);

  std::mutex run_mutex_;  // one region at a time
  std::mutex mutex_;      // guards sleeping
  std::condition_variable wake_;
  std::vector<std::thread> workers_;
  std::vector<std::unique_ptr<Slot>> slots_;  // slots_[i] belongs to tid i + 1
  const std::function<void(int, int)>* job_ = nullptr;  // written before tickets
  int job_threads_ = 0;
  uint64_t generation_ = 0;
  std::atomic<int> pending_{0};
  std::atomic<int> sleepers_{0};
};

}  // namespace cpu
}  // namespace fusedlstm

#endif  // FUSEDLSTM_CPU_THREAD_POOL_H_
