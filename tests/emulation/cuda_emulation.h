// The part of CUDA that csrc/global_relation_cuda.{cuh,cu} use, emulated on the CPU, so that the
// kernels' arithmetic and the host's launch plans run under g++ (FASTREL_HOST_EMULATION).
//
// A launch runs its blocks one after another. The threads of a block are fibers (ucontext) on
// one OS thread: each runs until __syncthreads() or its end, then the next one runs; a barrier
// opens when every thread of the block waits at it. A thread that ends while others wait, or
// waits while others ended, is a divergent barrier and fails the launch. `__shared__` variables
// are function statics (blocks never overlap); dynamic shared memory is a per-block buffer filled
// with NaN bytes. A WMMA operation is collective: lane 0 of each warp performs it for the warp on
// whole 16x16 tiles, in fp32 (the operands are the same for every lane, as the device requires).
// Atomics are plain updates (one OS thread), counted. The device limits are an H100's unless a
// test sets them.
#pragma once

#include <c10/core/Device.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>
#include <ucontext.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <functional>
#include <memory>
#include <stdexcept>
#include <string>
#include <type_traits>
#include <utility>
#include <unordered_map>
#include <vector>

// ---- Declaration specifiers ---------------------------------------------------------------------
#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __launch_bounds__(...)
#define __align__(n) __attribute__((aligned(n)))
#define __shared__ static

struct dim3 {
  unsigned x, y, z;
  constexpr dim3(unsigned x = 1, unsigned y = 1, unsigned z = 1) : x(x), y(y), z(z) {}
};
inline thread_local dim3 threadIdx, blockIdx, blockDim, gridDim;

// ---- 16-bit types -------------------------------------------------------------------------------
using __half = c10::Half;
using __nv_bfloat16 = c10::BFloat16;
inline __half __float2half_rn(float v) { return __half(v); }              // round to nearest even
inline __nv_bfloat16 __float2bfloat16_rn(float v) { return __nv_bfloat16(v); }  // round to nearest even

namespace emulation {

// What the emulated device reports and enforces, and what it counted; tests change the limits to
// reach other launch plans.
struct Device {
  int multiprocessors = 132;
  int shared_optin = 232448;      // bytes of shared memory a block may opt in to
  int static_shared = 48 * 1024;  // static shared memory reported for every kernel (an upper bound)
  unsigned max_grid_yz = 65535;   // grid axes y and z
  int64_t atomics = 0;            // atomic operations, since the test last reset it
  size_t most_dynamic_shared = 0;  // largest dynamic shared memory of a launch, since then
  int guards = 0;                 // live device guards
  std::unordered_map<const void*, int> dynamic_limit;  // cudaFuncAttributeMaxDynamicSharedMemorySize
};
inline Device device;

// Reports a fault. Inside a block's thread it is kept until the block ends (an exception cannot
// cross a fiber), then thrown; elsewhere it is thrown at once.
void fail(const std::string& what);

// ---- One block of threads as fibers -------------------------------------------------------------
class Block {
 public:
  static constexpr size_t kStackBytes = 256 * 1024;

  // Runs body once per thread of a block of `threads` with `shared_bytes` of dynamic shared memory.
  void run(const std::function<void()>& body, unsigned threads, size_t shared_bytes) {
    body_ = &body;
    shared_.assign(shared_bytes + 128, 0xff);  // NaN bytes: unwritten shared memory reads as NaN
    while (stacks_.size() < threads) stacks_.emplace_back(new char[kStackBytes]);
    fibers_.assign(threads, ucontext_t{});
    state_.assign(threads, kReady);
    for (unsigned t = 0; t < threads; ++t) {
      getcontext(&fibers_[t]);
      fibers_[t].uc_stack.ss_sp = stacks_[t].get();
      fibers_[t].uc_stack.ss_size = kStackBytes;
      fibers_[t].uc_link = &scheduler_;
      makecontext(&fibers_[t], &Block::start, 0);
    }
    for (int barrier = 0;; ++barrier) {
      in_fiber_ = true;
      for (unsigned t = 0; t < threads; ++t) {
        current_ = t;
        threadIdx = dim3(t % blockDim.x, t / blockDim.x % blockDim.y, t / (blockDim.x * blockDim.y));
        swapcontext(&scheduler_, &fibers_[t]);
      }
      in_fiber_ = false;
      if (!fault_.empty()) throw std::runtime_error(std::exchange(fault_, ""));
      int waiting = 0;
      for (auto s : state_) waiting += s == kWaiting;
      if (waiting == 0) return;
      if (waiting != static_cast<int>(threads))
        fail("divergent __syncthreads: " + std::to_string(waiting) + " of " + std::to_string(threads) +
             " threads wait at barrier " + std::to_string(barrier) + " while the others have returned");
      for (auto& s : state_) s = kReady;
    }
  }

  void sync() {
    state_[current_] = kWaiting;
    swapcontext(&fibers_[current_], &scheduler_);
  }

  unsigned char* shared() {
    const auto p = reinterpret_cast<uintptr_t>(shared_.data());
    return reinterpret_cast<unsigned char*>((p + 127) & ~uintptr_t{127});
  }

  // False outside a block's threads: fail() may throw.
  bool keep(const std::string& what) {
    if (!in_fiber_) return false;
    if (fault_.empty()) fault_ = what;
    return true;
  }

 private:
  enum State { kReady, kWaiting, kDone };
  static void start();

  const std::function<void()>* body_ = nullptr;
  std::vector<std::unique_ptr<char[]>> stacks_;
  std::vector<ucontext_t> fibers_;
  std::vector<State> state_;
  std::vector<unsigned char> shared_;
  ucontext_t scheduler_{};
  unsigned current_ = 0;
  bool in_fiber_ = false;
  std::string fault_;
};

inline thread_local Block block;

inline void Block::start() {
  (*block.body_)();
  block.state_[block.current_] = kDone;  // uc_link returns to the scheduler
}

inline void fail(const std::string& what) {
  if (!block.keep("cuda emulation: " + what)) throw std::runtime_error("cuda emulation: " + what);
}

// Runs kernel(args...) over a grid, block by block, checking the launch as the device would.
template <typename... Params, typename... Args>
void launch(void (*kernel)(Params...), dim3 grid, dim3 threads, size_t shared_bytes, Args... args) {
  if (device.guards == 0) fail("launch without a device guard");
  if (grid.y > device.max_grid_yz || grid.z > device.max_grid_yz)
    fail("grid (" + std::to_string(grid.x) + ", " + std::to_string(grid.y) + ", " + std::to_string(grid.z) +
         ") exceeds the y/z limit " + std::to_string(device.max_grid_yz));
  const unsigned count = threads.x * threads.y * threads.z;
  if (count == 0 || count > 1024) fail("block of " + std::to_string(count) + " threads");
  const auto limit = device.dynamic_limit.find(reinterpret_cast<const void*>(kernel));
  const int64_t allowed = limit != device.dynamic_limit.end() ? limit->second : 48 * 1024 - device.static_shared;
  if (static_cast<int64_t>(shared_bytes) > allowed)
    fail(std::to_string(shared_bytes) + " bytes of dynamic shared memory, the kernel allows " +
         std::to_string(allowed));
  device.most_dynamic_shared = std::max(device.most_dynamic_shared, shared_bytes);
  gridDim = grid;
  blockDim = threads;
  const std::function<void()> body = [&] { kernel(args...); };
  for (unsigned z = 0; z < grid.z; ++z)
    for (unsigned y = 0; y < grid.y; ++y)
      for (unsigned x = 0; x < grid.x; ++x) {
        blockIdx = dim3(x, y, z);
        block.run(body, count, shared_bytes);
      }
}

}  // namespace emulation

inline unsigned char* dynamic_shared_memory() { return emulation::block.shared(); }

// ---- Device functions ---------------------------------------------------------------------------
inline void __syncthreads() { emulation::block.sync(); }
[[noreturn]] inline void __trap() { std::abort(); }

template <typename T>
T atomicAdd(T* address, T value) {
  ++emulation::device.atomics;
  const T old = *address;
  *address = old + value;
  return old;
}

// ---- WMMA: whole tiles per thread, fp32 products and sums ---------------------------------------
namespace nvcuda {
namespace wmma {
struct matrix_a {};
struct matrix_b {};
struct accumulator {};
struct row_major {};
struct col_major {};
enum layout_t { mem_row_major, mem_col_major };

template <typename Use, int m, int n, int k, typename T, typename Layout = void>
struct fragment {
  static constexpr int kRows = std::is_same_v<Use, matrix_b> ? k : m;
  static constexpr int kCols = std::is_same_v<Use, matrix_a> ? k : n;
  float x[kRows * kCols];
  float& at(int r, int c) { return x[r * kCols + c]; }
  float at(int r, int c) const { return x[r * kCols + c]; }
};

// The warp's lane 0, which performs its collective operations.
inline bool warp_leader() { return threadIdx.x % 32 == 0; }

inline void check_operand(const void* p, unsigned ldm, size_t element_bytes) {
  if (reinterpret_cast<uintptr_t>(p) % 32 != 0) emulation::fail("WMMA pointer not 32-byte aligned");
  if ((ldm * element_bytes) % 16 != 0) emulation::fail("WMMA leading dimension not a multiple of 16 bytes");
}

template <typename Use, int m, int n, int k, typename T, typename Layout>
void fill_fragment(fragment<Use, m, n, k, T, Layout>& f, float v) {
  for (auto& e : f.x) e = v;
}

template <typename Use, int m, int n, int k, typename T, typename Layout, typename S>
void load_matrix_sync(fragment<Use, m, n, k, T, Layout>& f, const S* p, unsigned ldm) {
  static_assert(sizeof(S) == sizeof(T), "operand element type");
  check_operand(p, ldm, sizeof(S));
  if (!warp_leader()) return;
  using F = fragment<Use, m, n, k, T, Layout>;
  for (int r = 0; r < F::kRows; ++r)
    for (int c = 0; c < F::kCols; ++c)
      f.at(r, c) = static_cast<float>(std::is_same_v<Layout, row_major> ? p[r * ldm + c] : p[c * ldm + r]);
}

template <int m, int n, int k, typename T, typename LA, typename LB>
void mma_sync(fragment<accumulator, m, n, k, float>& d, const fragment<matrix_a, m, n, k, T, LA>& a,
              const fragment<matrix_b, m, n, k, T, LB>& b, const fragment<accumulator, m, n, k, float>& c) {
  if (!warp_leader()) return;
  fragment<accumulator, m, n, k, float> out;
  for (int i = 0; i < m; ++i)
    for (int j = 0; j < n; ++j) {
      float s = c.at(i, j);
      for (int kk = 0; kk < k; ++kk) s = std::fma(a.at(i, kk), b.at(kk, j), s);
      out.at(i, j) = s;
    }
  d = out;
}

template <int m, int n, int k>
void store_matrix_sync(float* p, const fragment<accumulator, m, n, k, float>& f, unsigned ldm, layout_t layout) {
  check_operand(p, ldm, sizeof(float));
  if (!warp_leader()) return;
  for (int r = 0; r < m; ++r)
    for (int c = 0; c < n; ++c) (layout == mem_row_major ? p[r * ldm + c] : p[c * ldm + r]) = f.at(r, c);
}
}  // namespace wmma
}  // namespace nvcuda

// ---- Runtime API used by the host code ----------------------------------------------------------
using cudaError_t = int;
constexpr cudaError_t cudaSuccess = 0;
enum cudaDeviceAttr { cudaDevAttrMaxSharedMemoryPerBlockOptin, cudaDevAttrMultiProcessorCount };
enum cudaFuncAttribute { cudaFuncAttributeMaxDynamicSharedMemorySize };
struct cudaFuncAttributes {
  size_t sharedSizeBytes;
};

inline cudaError_t cudaGetDevice(int* d) {
  *d = 0;
  return cudaSuccess;
}
inline cudaError_t cudaDeviceGetAttribute(int* value, cudaDeviceAttr attribute, int) {
  *value = attribute == cudaDevAttrMultiProcessorCount ? emulation::device.multiprocessors
                                                       : emulation::device.shared_optin;
  return cudaSuccess;
}
template <typename F>
cudaError_t cudaFuncGetAttributes(cudaFuncAttributes* attributes, F) {
  attributes->sharedSizeBytes = emulation::device.static_shared;
  return cudaSuccess;
}
template <typename F>
cudaError_t cudaFuncSetAttribute(F kernel, cudaFuncAttribute, int bytes) {
  if (bytes + emulation::device.static_shared > emulation::device.shared_optin)
    emulation::fail("dynamic shared memory of " + std::to_string(bytes) + " bytes over the opt-in limit");
  emulation::device.dynamic_limit[reinterpret_cast<const void*>(kernel)] = bytes;
  return cudaSuccess;
}
template <typename F>
cudaError_t cudaOccupancyMaxActiveBlocksPerMultiprocessor(int* blocks, F, int, size_t) {
  *blocks = 1;
  return cudaSuccess;
}

#define C10_CUDA_CHECK(expr)                                              \
  do {                                                                    \
    if ((expr) != cudaSuccess) emulation::fail("CUDA call failed: " #expr); \
  } while (0)

namespace c10::cuda {
// Counts itself while alive: every emulated launch must happen under one.
struct CUDAGuard {
  explicit CUDAGuard(c10::Device) { ++emulation::device.guards; }
  ~CUDAGuard() { --emulation::device.guards; }
  CUDAGuard(const CUDAGuard&) = delete;
  CUDAGuard& operator=(const CUDAGuard&) = delete;
};
}  // namespace c10::cuda
