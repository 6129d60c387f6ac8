#include "core/interrupt.h"

#include <time.h>

#include <cstdint>

#include "core/status.h"

namespace fusedlstm {

namespace {

thread_local int (*t_check)(void*) = nullptr;
thread_local void* t_check_ctx = nullptr;
thread_local CallDecision* t_call = nullptr;
thread_local bool t_polls = false;  // this thread runs the check for t_call
thread_local int64_t t_next_poll_ns = 0;

int64_t now_ns() {
  timespec ts;
#if defined(CLOCK_MONOTONIC_COARSE)
  clock_gettime(CLOCK_MONOTONIC_COARSE, &ts);  // a few ns through the vDSO; ms resolution is plenty
#else
  clock_gettime(CLOCK_MONOTONIC, &ts);
#endif
  return int64_t(ts.tv_sec) * 1000000000 + ts.tv_nsec;
}

constexpr int64_t kPollIntervalNs = int64_t(kInterruptPollMs) * 1000000;

}  // namespace

void set_interrupt_check(int (*fn)(void*), void* ctx) {
  t_check = fn;
  t_check_ctx = ctx;
}

CallScope::CallScope() : outermost_(t_call == nullptr) {
  if (!outermost_) return;
  t_call = &decision_;
  t_polls = true;
  t_next_poll_ns = t_check ? now_ns() + kPollIntervalNs : 0;
}

CallScope::~CallScope() {
  if (!outermost_) return;
  t_call = nullptr;
  t_polls = false;
}

CallDecision* current_call() { return t_call; }

FollowCall::FollowCall(CallDecision* call) : previous_(t_call), previous_polls_(t_polls) {
  if (call == t_call) return;  // the calling thread itself
  t_call = call;
  t_polls = false;
}

FollowCall::~FollowCall() {
  t_call = previous_;
  t_polls = previous_polls_;
}

bool interrupt_requested() {
  CallDecision* call = t_call;
  if (!call) return false;
  if (call->stop.load(std::memory_order_relaxed)) return true;
  if (!t_polls || !t_check) return false;
  const int64_t now = now_ns();
  if (now < t_next_poll_ns) return false;
  t_next_poll_ns = now + kPollIntervalNs;
  if (t_check(t_check_ctx) == 0) return false;
  call->stop.store(true, std::memory_order_relaxed);
  return true;
}

void throw_if_interrupted() {
  if (interrupt_requested())
    throw Interrupted("interrupted: the interrupt check (fl_set_interrupt_check) asked the call to stop");
}

}  // namespace fusedlstm
