// fastrel::global_relation — the fused global relation vector (docs/math.md), one declaration per
// device. Inputs are contiguous: a (B, N, H), b (B, M, H), weight (R, H), bias (R,) or undefined,
// key_mask (B, M) bool or undefined; weight and bias have a's dtype. inner/outer are Activation
// codes (relation_math.h). The forward returns g (B, N, R) in a's dtype; the backward returns
// {da, db, dweight, dbias}, dbias defined even when bias is not.
#pragma once

#include <ATen/core/Tensor.h>

#include <optional>
#include <vector>

namespace fastrel {

at::Tensor global_relation_forward_cpu(const at::Tensor& a, const at::Tensor& b, const at::Tensor& weight,
                                       const std::optional<at::Tensor>& bias,
                                       const std::optional<at::Tensor>& key_mask, int64_t inner,
                                       int64_t outer);

std::vector<at::Tensor> global_relation_backward_cpu(const at::Tensor& grad, const at::Tensor& a,
                                                     const at::Tensor& b, const at::Tensor& weight,
                                                     const std::optional<at::Tensor>& bias,
                                                     const std::optional<at::Tensor>& key_mask,
                                                     int64_t inner, int64_t outer, bool deterministic);

// The 1-D problem of the exact sort path (docs/sort_path.md), for finite inputs. The forward
// returns Φ (B, N, C) = Σ_j m_j φ(q_i − s_j) / max(Σ_j m_j, 1) for φ = `activation` (any code) in
// float (double for double inputs); the backward takes dL/dΦ in that dtype and returns {Φ, dq, ds}.
at::Tensor global_relation_sort_forward_cpu(const at::Tensor& q, const at::Tensor& s,
                                            const std::optional<at::Tensor>& key_mask, int64_t activation);

std::vector<at::Tensor> global_relation_sort_backward_cpu(const at::Tensor& grad_mean, const at::Tensor& q,
                                                          const at::Tensor& s,
                                                          const std::optional<at::Tensor>& key_mask,
                                                          int64_t activation);

#ifdef WITH_CUDA
at::Tensor global_relation_forward_cuda(const at::Tensor& a, const at::Tensor& b, const at::Tensor& weight,
                                        const std::optional<at::Tensor>& bias,
                                        const std::optional<at::Tensor>& key_mask, int64_t inner,
                                        int64_t outer);

std::vector<at::Tensor> global_relation_backward_cuda(const at::Tensor& grad, const at::Tensor& a,
                                                      const at::Tensor& b, const at::Tensor& weight,
                                                      const std::optional<at::Tensor>& bias,
                                                      const std::optional<at::Tensor>& key_mask,
                                                      int64_t inner, int64_t outer, bool deterministic);
#endif

}  // namespace fastrel
