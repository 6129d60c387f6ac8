// Host workspaces of the CPU backend: 64-byte aligned blocks, recycled.
#ifndef FUSEDLSTM_CPU_BUFFER_H_
#define FUSEDLSTM_CPU_BUFFER_H_

#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <map>
#include <mutex>
#include <new>
#include <utility>

#include "core/checked_size.h"
#include "core/status.h"

namespace fusedlstm {
namespace cpu {

// Large workspaces come back for the next call instead of going to the OS:
// a fresh multi-megabyte allocation is mmapped and every page faulted and
// zeroed on first touch, which cost more than packing the weights at B = 1.
// Blocks of at least kMinCached bytes are kept, kMaxCachedTotal at most.
class BlockCache {
 public:
  static BlockCache& instance() {
    static BlockCache* cache = new BlockCache();  // leaked: used until exit
    return *cache;
  }
  void* take(size_t bytes, size_t* capacity) {
    if (bytes >= kMinCached) {
      std::lock_guard<std::mutex> lock(mutex_);
      auto it = free_.lower_bound(bytes);
      if (it != free_.end() && it->first <= 2 * bytes) {
        void* p = it->second;
        *capacity = it->first;
        cached_ -= it->first;
        free_.erase(it);
        return p;
      }
    }
    *capacity = bytes;
    return std::aligned_alloc(64, bytes);
  }
  void give(void* p, size_t capacity) {
    if (capacity >= kMinCached) {
      std::lock_guard<std::mutex> lock(mutex_);
      if (cached_ + capacity <= kMaxCachedTotal) {
        free_.emplace(capacity, p);
        cached_ += capacity;
        return;
      }
    }
    std::free(p);
  }

 private:
  static constexpr size_t kMinCached = size_t(1) << 20;
  static constexpr size_t kMaxCachedTotal = size_t(256) << 20;
  std::mutex mutex_;
  std::multimap<size_t, void*> free_;
  size_t cached_ = 0;
};

// 64-byte aligned, uninitialised (or zeroed) storage of n elements. `what`
// names it in the OutOfMemory error when it cannot be allocated.
template <class T>
class Buffer {
 public:
  Buffer() = default;
  explicit Buffer(int64_t n, bool zero = false, const char* what = "a CPU workspace") : n_(n) {
    if (n <= 0) return;
    const int64_t bytes = checked_round_up("workspace bytes", checked_bytes(what, {n, int64_t(sizeof(T))}), 64);
    p_ = static_cast<T*>(BlockCache::instance().take(size_t(bytes), &capacity_));
    if (!p_) throw OutOfMemory(what, bytes);
    if (zero) std::memset(p_, 0, size_t(bytes));
  }
  Buffer(Buffer&& o) noexcept : p_(o.p_), n_(o.n_), capacity_(o.capacity_) { o.p_ = nullptr, o.n_ = 0; }
  Buffer& operator=(Buffer&& o) noexcept {
    std::swap(p_, o.p_);
    std::swap(n_, o.n_);
    std::swap(capacity_, o.capacity_);
    return *this;
  }
  Buffer(const Buffer&) = delete;
  Buffer& operator=(const Buffer&) = delete;
  ~Buffer() {
    if (p_) BlockCache::instance().give(p_, capacity_);
  }
  T* data() const { return p_; }
  int64_t size() const { return n_; }

 private:
  T* p_ = nullptr;
  int64_t n_ = 0;
  size_t capacity_ = 0;
};

}  // namespace cpu
}  // namespace fusedlstm

#endif  // FUSEDLSTM_CPU_BUFFER_H_
