// Argument checks and the small helpers every entry point of fastrel._C shares (cpu, sort, cuda).
// Messages read "<argument>: expected <what>, got <what came>", as fastrel/checks.py writes them:
// a wrong dtype raises TypeError, a wrong shape, device, layout or code raises ValueError.
#pragma once

#include <ATen/core/Tensor.h>

#include <initializer_list>
#include <optional>
#include <string>

#include "relation_math.h"

namespace fastrel {

// The dtype sums and GEMM results are kept in: float64 for float64, float32 otherwise
// (fastrel/dtypes.py `accumulation`).
inline at::ScalarType accumulation_type(at::ScalarType dtype) {
  return dtype == at::kDouble ? at::kDouble : at::kFloat;
}

// "float32" rather than "Float", as the Python messages write dtypes.
inline std::string dtype_name(at::ScalarType dtype) {
  switch (dtype) {
    case at::kDouble: return "float64";
    case at::kFloat: return "float32";
    case at::kBFloat16: return "bfloat16";
    case at::kHalf: return "float16";
    case at::kBool: return "bool";
    default: return c10::toString(dtype);
  }
}

// `t` has `dims` dimensions, lives on `device` (a's device, or a device type for a itself) and,
// unless the caller makes its own contiguous copies, is contiguous.
inline void check_tensor(const at::Tensor& t, const char* name, int64_t dims, const at::Device& device,
                         bool contiguous = true) {
  const bool on_device = device.has_index() ? t.device() == device : t.device().type() == device.type();
  TORCH_CHECK_VALUE(on_device, name, ": expected device ", device, ", got ", t.device());
  TORCH_CHECK_VALUE(t.dim() == dims, name, ": expected ", dims, " dimensions, got shape ", t.sizes());
  TORCH_CHECK_VALUE(!contiguous || t.is_contiguous(), name, ": expected a contiguous tensor, got strides ",
                    t.strides());
}

inline void check_dtype(const at::Tensor& t, const char* name, at::ScalarType expected, const char* why) {
  TORCH_CHECK_TYPE(t.scalar_type() == expected, name, ": expected dtype ", dtype_name(expected), why, ", got ",
                   dtype_name(t.scalar_type()));
}

// An activation code of `argument` ("inner", "outer") among `allowed` (codes of relation_math.h).
inline void check_code(int64_t code, const char* argument, std::initializer_list<int> allowed) {
  for (int c : allowed) {
    if (code == c) return;
  }
  std::string list;
  for (int c : allowed) list += (list.empty() ? "" : ", ") + std::to_string(c);
  TORCH_CHECK_VALUE(false, argument, ": expected an activation code in {", list, "}, got ", code);
}

// a (B, N, H) of a floating dtype on `device`, b (B, M, H) and key_mask (B, M) bool alongside it.
inline void check_pairs(const at::Tensor& a, const at::Tensor& b, const std::optional<at::Tensor>& key_mask,
                        c10::DeviceType device, bool contiguous = true) {
  check_tensor(a, "a", 3, at::Device(device), contiguous);
  const auto dtype = a.scalar_type();
  TORCH_CHECK_TYPE(dtype == at::kDouble || dtype == at::kFloat || dtype == at::kBFloat16 || dtype == at::kHalf,
                   "a: expected a floating dtype (float64, float32, bfloat16, float16), got ", dtype_name(dtype));
  check_tensor(b, "b", 3, a.device(), contiguous);
  check_dtype(b, "b", dtype, " to match a");
  const int64_t B = a.size(0), H = a.size(2);
  TORCH_CHECK_VALUE(b.size(0) == B && b.size(2) == H, "b: expected shape (", B, ", M, ", H, ") to match a, got shape ",
                    b.sizes());
  if (key_mask.has_value()) {
    check_tensor(*key_mask, "key_mask", 2, a.device(), contiguous);
    check_dtype(*key_mask, "key_mask", at::kBool, "");
    TORCH_CHECK_VALUE(key_mask->size(0) == B && key_mask->size(1) == b.size(1), "key_mask: expected shape (", B,
                      ", ", b.size(1), "), got shape ", key_mask->sizes());
  }
}

// Everything global_relation's kernels take (fastrel/global_relation.h), on `device`.
inline void check_inputs(const at::Tensor& a, const at::Tensor& b, const at::Tensor& weight,
                         const std::optional<at::Tensor>& bias, const std::optional<at::Tensor>& key_mask,
                         int64_t inner, int64_t outer, c10::DeviceType device) {
  check_pairs(a, b, key_mask, device);
  check_tensor(weight, "weight", 2, a.device());
  check_dtype(weight, "weight", a.scalar_type(), " to match a");
  TORCH_CHECK_VALUE(weight.size(1) == a.size(2), "weight: expected shape (R, ", a.size(2), "), got shape ",
                    weight.sizes());
  if (bias.has_value()) {
    check_tensor(*bias, "bias", 1, a.device());
    check_dtype(*bias, "bias", a.scalar_type(), " to match a");
    TORCH_CHECK_VALUE(bias->size(0) == weight.size(0), "bias: expected shape (", weight.size(0), ",), got shape ",
                      bias->sizes());
  }
  check_code(inner, "inner", {kIdentity, kRelu, kLeakyRelu, kAbs});
  check_code(outer, "outer", {kIdentity, kRelu, kLeakyRelu});  // abs is not an outer activation
}

// The upstream gradient `name` of shape `sizes` in `dtype`, alongside a.
inline void check_grad(const at::Tensor& grad, const char* name, at::IntArrayRef sizes, at::ScalarType dtype,
                       const at::Tensor& a, bool contiguous = true) {
  check_tensor(grad, name, static_cast<int64_t>(sizes.size()), a.device(), contiguous);
  check_dtype(grad, name, dtype, "");
  TORCH_CHECK_VALUE(grad.sizes() == sizes, name, ": expected shape ", sizes, ", got shape ", grad.sizes());
}

}  // namespace fastrel
