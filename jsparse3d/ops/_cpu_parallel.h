// Work sharing for the native CPU kernels: XLA's intra-op thread pool, with the calling thread working too.
//
// Every kernel splits its work into items that depend only on its operands, never on the number of threads, so
// its results do not either.

#ifndef JSPARSE3D_OPS_CPU_PARALLEL_H_
#define JSPARSE3D_OPS_CPU_PARALLEL_H_

#include <algorithm>
#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <cstdlib>
#include <functional>
#include <memory>
#include <mutex>

#include "xla/ffi/api/ffi.h"

namespace jsparse3d {

// Runs fn(0) .. fn(n - 1) on the calling thread and up to `workers - 1` tasks of XLA's intra-op pool; returns
// when all have finished. The calling thread waits only for items another thread has already claimed, so the
// call cannot deadlock when the pool is busy.
class ParallelFor {
 public:
  static void Run(xla::ffi::ThreadPool& pool, int64_t n, int64_t workers, std::function<void(int64_t)> fn) {
    const int64_t helpers = std::min<int64_t>(workers, n) - 1;
    if (helpers <= 0) {
      for (int64_t i = 0; i < n; ++i) fn(i);
      return;
    }
    auto state = std::make_shared<State>(n, std::move(fn));
    for (int64_t h = 0; h < helpers; ++h) pool.Schedule([state] { state->Work(); });
    state->Work();
    std::unique_lock<std::mutex> lock(state->mu);
    state->cv.wait(lock, [&] { return state->done == state->n; });
  }

 private:
  struct State {
    State(int64_t n, std::function<void(int64_t)> fn) : n(n), fn(std::move(fn)) {}
    // Claims items until none is left. A helper that starts after the call returned claims nothing.
    void Work() {
      for (int64_t i = next.fetch_add(1); i < n; i = next.fetch_add(1)) {
        fn(i);
        std::lock_guard<std::mutex> lock(mu);
        if (++done == n) cv.notify_all();
      }
    }
    const int64_t n;
    std::function<void(int64_t)> fn;
    std::atomic<int64_t> next{0};
    int64_t done = 0;  // guarded by mu
    std::mutex mu;
    std::condition_variable cv;
  };
};

// Threads a call uses: XLA's intra-op thread count, or JSPARSE3D_NATIVE_THREADS if set. No result depends on it
// (tests check this by varying it).
inline int64_t NumParts(xla::ffi::ThreadPool& pool) {
  if (const char* env = std::getenv("JSPARSE3D_NATIVE_THREADS")) {
    const long n = std::strtol(env, nullptr, 10);
    if (n > 0) return n;
  }
  return std::max<int64_t>(pool.num_threads(), 1);
}

}  // namespace jsparse3d

#endif  // JSPARSE3D_OPS_CPU_PARALLEL_H_
