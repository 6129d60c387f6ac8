// Stopping a long call early (fl_set_interrupt_check). The thread that makes
// a call polls its check between the steps of the call's loops, at most every
// kInterruptPollMs, and throws Interrupted (FL_INTERRUPTED) when the check
// says stop; threads that only work for the call read that decision.
#ifndef FUSEDLSTM_CORE_INTERRUPT_H_
#define FUSEDLSTM_CORE_INTERRUPT_H_

#include <atomic>

namespace fusedlstm {

constexpr int kInterruptPollMs = 50;

// Installs the check of the calling thread (fn nullptr: none).
void set_interrupt_check(int (*fn)(void* ctx), void* ctx);

// The stop decision of one call, shared by every thread working for it.
struct CallDecision {
  std::atomic<bool> stop{false};
};

// Marks a call on this thread, from its start to its end. The outermost one
// holds a fresh decision; nested ones (the layer stack running one
// direction) and those on a thread following another call (FollowCall) use
// the decision already there. The first poll comes kInterruptPollMs after
// the outermost scope starts, so a short call never runs the check.
class CallScope {
 public:
  CallScope();
  ~CallScope();
  CallScope(const CallScope&) = delete;
  CallScope& operator=(const CallScope&) = delete;

 private:
  bool outermost_;
  CallDecision decision_;
};

// The decision of the call running on this thread (nullptr outside calls).
CallDecision* current_call();

// Makes this thread, while alive, part of the call whose decision is given
// (a pool thread running half of it): it reads the decision, never runs the
// check itself (a check may need the caller's thread, e.g. Python's GIL).
class FollowCall {
 public:
  explicit FollowCall(CallDecision* call);
  ~FollowCall();
  FollowCall(const FollowCall&) = delete;
  FollowCall& operator=(const FollowCall&) = delete;

 private:
  CallDecision* previous_;
  bool previous_polls_;
};

// True once the current call must stop. On the calling thread it runs the
// check when kInterruptPollMs have passed since the last poll (the fast path
// is a coarse clock read); elsewhere it reads the decision.
bool interrupt_requested();
// Throws Interrupted when interrupt_requested().
void throw_if_interrupted();

}  // namespace fusedlstm

#endif  // FUSEDLSTM_CORE_INTERRUPT_H_
