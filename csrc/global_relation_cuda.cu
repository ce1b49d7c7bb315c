// Host side of the CUDA global_relation: argument checks and the launch plans of the pair kernels
// of global_relation_cuda.cuh, for every outer activation (the sort backend is the exact fast path
// for outer = identity, docs/math.md).
//
// With FASTREL_HOST_EMULATION defined, the including file provides the CUDA runtime instead
// (tests/emulation/cuda_emulation.h) and this code runs on CPU tensors: everything below the
// argument checks is what the emulation test exercises.
#include <ATen/ATen.h>
#ifndef FASTREL_HOST_EMULATION
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#endif

#include <algorithm>

#include "checks.h"
#include "global_relation.h"
#include "global_relation_cuda.cuh"

namespace fastrel {
namespace {

using namespace cuda_kernels;

template <typename T>
const T* optional_ptr(const std::optional<at::Tensor>& t) {
  return t.has_value() ? t->data_ptr<T>() : nullptr;
}

// Partials of [dW | dβ] (one (R, H + 1) slab per block) stay under this many bytes.
constexpr int64_t kSlabBudgetBytes = int64_t{256} << 20;

// Runs kernel over a 1-D grid of `blocks` on the current stream and checks the launch.
template <typename... Params, typename... Args>
void launch(void (*kernel)(Params...), int64_t blocks, int threads, size_t shared_bytes, Args... args) {
  TORCH_CHECK(blocks <= INT32_MAX, "global_relation (cuda): ", blocks, " blocks exceed the grid limit");
#ifdef FASTREL_HOST_EMULATION
  emulation::launch(kernel, dim3(blocks), dim3(threads), shared_bytes, args...);
#else
  kernel<<<static_cast<unsigned>(blocks), threads, shared_bytes, c10::cuda::getCurrentCUDAStream()>>>(args...);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
#endif
}

void check_inputs(const at::Tensor& a, const at::Tensor& b, const at::Tensor& weight,
                  const std::optional<at::Tensor>& bias, const std::optional<at::Tensor>& key_mask, int64_t inner,
                  int64_t outer) {
  fastrel::check_inputs(a, b, weight, bias, key_mask, inner, outer, at::kCUDA);
  TORCH_CHECK_VALUE(a.numel() < INT32_MAX && b.numel() < INT32_MAX && weight.numel() < INT32_MAX &&
                        a.size(0) * a.size(1) * weight.size(0) < INT32_MAX,
                    "a, b, weight: expected fewer than 2^31 elements per tensor (and in the output), got shapes ",
                    a.sizes(), ", ", b.sizes(), ", ", weight.sizes());
}

// 1 / max(Σ_j m_j, 1) per batch element, in the accumulation dtype.
at::Tensor inverse_counts(const at::Tensor& a, const at::Tensor& b, const std::optional<at::Tensor>& key_mask) {
  const auto acc = accumulation_type(a.scalar_type());
  if (key_mask.has_value()) return key_mask->sum(1, false, acc).clamp_min(1).reciprocal();
  return at::full({a.size(0)}, 1.0 / std::max<int64_t>(b.size(1), 1), a.options().dtype(acc));
}

// Dynamic shared memory and grid of one backward launch.
struct BackwardLaunch {
  size_t shared_bytes = 0;
  bool dz_in_shared = true;
  int blocks = 0;
};

template <bool kRowPass, typename scalar_t>
BackwardLaunch plan_backward(int tiles, int ldz, bool clip, int B, int64_t slab_bytes) {
  using acc_t = typename Acc<scalar_t>::type;
  const auto kernel = global_relation_backward_kernel<kRowPass, scalar_t>;
  int device = 0, shared_optin = 0, multiprocessors = 0;
  C10_CUDA_CHECK(cudaGetDevice(&device));
  C10_CUDA_CHECK(cudaDeviceGetAttribute(&shared_optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, device));
  C10_CUDA_CHECK(cudaDeviceGetAttribute(&multiprocessors, cudaDevAttrMultiProcessorCount, device));
  cudaFuncAttributes attributes;
  C10_CUDA_CHECK(cudaFuncGetAttributes(&attributes, kernel));
  const size_t dz_bytes = sizeof(DzType<scalar_t>) * kPairs * ldz;
  const size_t clip_bytes = clip ? sizeof(acc_t) * kOwn * kOther * kCols : 0;
  const size_t room = static_cast<size_t>(shared_optin) - attributes.sharedSizeBytes;
  BackwardLaunch plan;
  plan.dz_in_shared = dz_bytes + clip_bytes <= room;
  plan.shared_bytes = clip_bytes + (plan.dz_in_shared ? dz_bytes : 0);
  TORCH_CHECK(plan.shared_bytes <= room, "global_relation (cuda): not enough shared memory");
  // Without this the dynamic limit is 48 KiB less the static shared memory of the kernel.
  C10_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                      static_cast<int>(plan.shared_bytes)));
  if (clip) {
    plan.blocks = B;
    return plan;
  }
  int per_sm = 0;
  C10_CUDA_CHECK(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, kernel, kThreads, plan.shared_bytes));
  int64_t blocks = static_cast<int64_t>(std::max(per_sm, 1)) * multiprocessors;
  if (slab_bytes > 0) {
    // Partials stay under the slab budget, with at least one block per multiprocessor.
    const int64_t budget = kSlabBudgetBytes / slab_bytes;
    blocks = std::min(blocks, std::max<int64_t>(budget, multiprocessors));
  }
  plan.blocks = static_cast<int>(std::min<int64_t>(blocks, tiles));
  return plan;
}

template <bool kRowPass, typename scalar_t>
void launch_backward(BackwardArgs<scalar_t> args, const BackwardLaunch& plan, const at::Tensor& like,
                     at::Tensor& dz_scratch) {
  if (!plan.dz_in_shared) {
    const int64_t bytes = static_cast<int64_t>(sizeof(DzType<scalar_t>)) * plan.blocks * kPairs * args.ldz;
    dz_scratch = at::empty({bytes}, like.options().dtype(at::kByte));
    args.dz_scratch = dz_scratch.data_ptr();
  }
  launch(global_relation_backward_kernel<kRowPass, scalar_t>, plan.blocks, kThreads, plan.shared_bytes, args);
}

template <typename scalar_t>
std::vector<at::Tensor> backward_general(const at::Tensor& grad, const at::Tensor& a, const at::Tensor& b,
                                         const at::Tensor& weight, const std::optional<at::Tensor>& bias,
                                         const std::optional<at::Tensor>& key_mask, int64_t inner, int64_t outer,
                                         bool deterministic) {
  using acc_t = typename Acc<scalar_t>::type;
  const int B = a.size(0), N = a.size(1), M = b.size(1), H = a.size(2), R = weight.size(0);
  const at::TensorOptions options = a.options().dtype(c10::CppTypeToScalarType<acc_t>::value);
  const int ldz = dz_stride<scalar_t>(R);
  const int64_t slab_bytes = static_cast<int64_t>(sizeof(acc_t)) * R * (H + 1);
  const int row_tiles = B * ceil_div(N, kOwn), key_tiles = B * ceil_div(M, kOwn);
  const bool clip = N <= kMaxClipItems && M <= kMaxClipItems && B * slab_bytes <= kSlabBudgetBytes;

  at::Tensor da = at::zeros({B, N, H}, options);
  at::Tensor db = at::zeros({B, M, H}, options);
  BackwardArgs<scalar_t> args{grad.data_ptr<scalar_t>(),
                              a.data_ptr<scalar_t>(),
                              b.data_ptr<scalar_t>(),
                              weight.data_ptr<scalar_t>(),
                              optional_ptr<scalar_t>(bias),
                              optional_ptr<bool>(key_mask),
                              nullptr,
                              da.data_ptr<acc_t>(),
                              (clip || !deterministic) ? db.data_ptr<acc_t>() : nullptr,
                              nullptr,
                              nullptr,
                              B,
                              N,
                              M,
                              H,
                              R,
                              ldz,
                              static_cast<int>(inner),
                              static_cast<int>(outer),
                              clip};
  const auto inv = inverse_counts(a, b, key_mask);
  args.inv_count = inv.data_ptr<acc_t>();

  const auto rows = plan_backward<true, scalar_t>(row_tiles, ldz, clip, B, slab_bytes);
  at::Tensor slabs = at::zeros({rows.blocks, R, H + 1}, options);
  args.slabs = slabs.data_ptr<acc_t>();
  at::Tensor dz_rows, dz_keys;
  launch_backward<true, scalar_t>(args, rows, a, dz_rows);

  if (deterministic && !clip) {
    const auto keys = plan_backward<false, scalar_t>(key_tiles, ldz, false, B, 0);
    BackwardArgs<scalar_t> key_args = args;
    key_args.own_grad = db.data_ptr<acc_t>();
    key_args.other_grad = nullptr;
    key_args.slabs = nullptr;
    key_args.dz_scratch = nullptr;
    launch_backward<false, scalar_t>(key_args, keys, a, dz_keys);
  }

  auto dweight = at::empty_like(weight);
  auto dbias = at::empty({R}, weight.options());
  const int64_t size = static_cast<int64_t>(R) * (H + 1);
  launch(global_relation_reduce_slabs_kernel<scalar_t>, ceil_div(size, kThreads), kThreads, 0,
         slabs.data_ptr<acc_t>(), rows.blocks, R, H, dweight.data_ptr<scalar_t>(), dbias.data_ptr<scalar_t>());
  return {da.to(a.scalar_type()), db.to(a.scalar_type()), dweight, dbias};
}

// g (B, N, R) for checked inputs, on a's device.
at::Tensor forward(const at::Tensor& a, const at::Tensor& b, const at::Tensor& weight,
                   const std::optional<at::Tensor>& bias, const std::optional<at::Tensor>& key_mask, int64_t inner,
                   int64_t outer) {
  const c10::cuda::CUDAGuard guard(a.device());
  const int B = a.size(0), N = a.size(1), M = b.size(1), H = a.size(2), R = weight.size(0);
  if (static_cast<int64_t>(B) * N * R == 0) return at::zeros({B, N, R}, a.options());
  auto g = at::empty({B, N, R}, a.options());
  const auto inv = inverse_counts(a, b, key_mask);
  const int64_t blocks = int64_t{B} * ceil_div(N, kOwn) * ceil_div(R, kCols);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, a.scalar_type(), "global_relation_forward_cuda", [&] {
    using acc_t = typename Acc<scalar_t>::type;
    launch(global_relation_forward_kernel<scalar_t>, blocks, kThreads, 0, a.data_ptr<scalar_t>(),
           b.data_ptr<scalar_t>(), weight.data_ptr<scalar_t>(), optional_ptr<scalar_t>(bias),
           optional_ptr<bool>(key_mask), inv.data_ptr<acc_t>(), g.data_ptr<scalar_t>(), N, M, H, R,
           static_cast<int>(inner), static_cast<int>(outer));
  });
  return g;
}

// {da, db, dweight, dbias} for checked inputs, on a's device.
std::vector<at::Tensor> backward(const at::Tensor& grad, const at::Tensor& a, const at::Tensor& b,
                                 const at::Tensor& weight, const std::optional<at::Tensor>& bias,
                                 const std::optional<at::Tensor>& key_mask, int64_t inner, int64_t outer,
                                 bool deterministic) {
  const c10::cuda::CUDAGuard guard(a.device());
  const auto B = a.size(0), N = a.size(1), M = b.size(1), H = a.size(2), R = weight.size(0);
  // No pair contributes: zeros. With H = 0 pairs still exist (z = β), and dβ is not zero.
  if (B * N * M * R == 0) {
    return {at::zeros_like(a), at::zeros_like(b), at::zeros_like(weight), at::zeros({R}, weight.options())};
  }
  std::vector<at::Tensor> out;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, a.scalar_type(), "global_relation_backward_cuda", [&] {
    out = backward_general<scalar_t>(grad, a, b, weight, bias, key_mask, inner, outer, deterministic);
  });
  return out;
}

}  // namespace

at::Tensor global_relation_forward_cuda(const at::Tensor& a, const at::Tensor& b, const at::Tensor& weight,
                                        const std::optional<at::Tensor>& bias,
                                        const std::optional<at::Tensor>& key_mask, int64_t inner,
                                        int64_t outer) {
  check_inputs(a, b, weight, bias, key_mask, inner, outer);
  return forward(a, b, weight, bias, key_mask, inner, outer);
}

std::vector<at::Tensor> global_relation_backward_cuda(const at::Tensor& grad, const at::Tensor& a,
                                                      const at::Tensor& b, const at::Tensor& weight,
                                                      const std::optional<at::Tensor>& bias,
                                                      const std::optional<at::Tensor>& key_mask,
                                                      int64_t inner, int64_t outer, bool deterministic) {
  check_inputs(a, b, weight, bias, key_mask, inner, outer);
  const auto B = a.size(0), N = a.size(1), R = weight.size(0);
  TORCH_CHECK(grad.sizes() == at::IntArrayRef({B, N, R}) && grad.is_contiguous() &&
                  grad.scalar_type() == a.scalar_type() && grad.device() == a.device(),
              "grad: expected a contiguous (", B, ", ", N, ", ", R, ") tensor like a, got sizes ", grad.sizes(),
              ", dtype ", grad.scalar_type());
  return backward(grad, a, b, weight, bias, key_mask, inner, outer, deterministic);
}

}  // namespace fastrel
