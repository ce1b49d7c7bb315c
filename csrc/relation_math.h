// The per-element math of the relation module, shared by the CPU and CUDA kernels so that the
// activations and their derivatives exist once. Codes match fastrel/activations.py CODES (the
// bindings export them and the Python side compares them when it probes fastrel._C).
// Kinks: relu'(0) = 0, abs'(0) = 0, leaky_relu'(0) = kLeakySlope (docs/math.md). NaN as in
// PyTorch: every activation maps NaN to NaN; at NaN relu' = 1, leaky_relu' = kLeakySlope, abs' = 0
// (autograd's values). Comparisons are written so that NaN takes those branches.
#pragma once

#include <cstdint>
#include <type_traits>

#ifdef __CUDACC__
#define FASTREL_HD __host__ __device__ __forceinline__
#else
#define FASTREL_HD inline
#endif

namespace fastrel {

enum Activation : int { kIdentity = 0, kRelu = 1, kLeakyRelu = 2, kAbs = 3 };

constexpr double kLeakySlope = 0.01;

// Number of tiles of size y that cover x items.
FASTREL_HD constexpr int64_t ceil_div(int64_t x, int64_t y) { return (x + y - 1) / y; }

template <int A, typename T>
FASTREL_HD T activate(T x) {
  if constexpr (A == kRelu) return x < T(0) ? T(0) : x;
  else if constexpr (A == kLeakyRelu) return x > T(0) ? x : x * T(kLeakySlope);
  else if constexpr (A == kAbs) return x < T(0) ? -x : x;
  else return x;
}

// Derivative of activation A at x.
template <int A, typename T>
FASTREL_HD T derivative(T x) {
  if constexpr (A == kRelu) return x <= T(0) ? T(0) : T(1);
  else if constexpr (A == kLeakyRelu) return x > T(0) ? T(1) : T(kLeakySlope);
  else if constexpr (A == kAbs) return x > T(0) ? T(1) : (x < T(0) ? T(-1) : T(0));
  else return T(1);
}

// Calls f(std::integral_constant<int, A>{}) for the activation A that the run-time `code` names and
// returns what f returns: the one place where a code becomes a template argument, on the host and
// on the device. Codes are checked where they enter fastrel._C (checks.h); any other code takes the
// identity. kOuter leaves abs out (no outer activation, docs/math.md): no kernel is built for it.
template <bool kOuter = false, typename F>
FASTREL_HD auto with_activation(int64_t code, F&& f) {
  if (code == kRelu) return f(std::integral_constant<int, kRelu>{});
  if (code == kLeakyRelu) return f(std::integral_constant<int, kLeakyRelu>{});
  if constexpr (!kOuter) {
    if (code == kAbs) return f(std::integral_constant<int, kAbs>{});
  }
  return f(std::integral_constant<int, kIdentity>{});
}

}  // namespace fastrel
