// The exact sort path of the global relation on the CPU (docs/sort_path.md). For outer = identity
// and inner = relu or abs, the mean difference D_i = Σ_j m_j δ(a_i − b_j) / n of one channel follows
// from that channel's valid keys sorted once and their prefix sums; its backward from the queries
// sorted once and the prefix sums of the incoming gradient. One task per (batch, channel), run in
// parallel; comparisons on the exact input values, sums in double around the channel's key mean.
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <utility>
#include <vector>

#include "global_relation.h"
#include "relation_math.h"

namespace fastrel {
namespace {

// One channel's valid keys, ascending, with prefix[t] = Σ_{u<t} (keys[u] − centre).
template <typename key_t>
struct SortedKeys {
  std::vector<key_t> keys;
  std::vector<double> prefix;
  double centre = 0.0;

  // Gathers the valid keys of row[0..M) (mask may be null) and sorts them.
  template <typename scalar_t>
  void build(const scalar_t* row, const bool* mask, int64_t M) {
    keys.clear();
    for (int64_t j = 0; j < M; ++j) {
      if (mask == nullptr || mask[j]) keys.push_back(static_cast<key_t>(row[j]));
    }
    std::sort(keys.begin(), keys.end());
    double sum = 0.0;
    for (key_t k : keys) sum += static_cast<double>(k);
    centre = keys.empty() ? 0.0 : sum / static_cast<double>(keys.size());
    prefix.resize(keys.size() + 1);
    prefix[0] = 0.0;
    for (size_t t = 0; t < keys.size(); ++t) prefix[t + 1] = prefix[t] + (static_cast<double>(keys[t]) - centre);
  }

  // Σ_j δ(q − key_j) over the valid keys, and its derivative in q (count below, minus count above
  // for abs). Keys equal to q contribute 0 to both, as relu'(0) = abs'(0) = 0.
  template <bool kIsAbs>
  void relate(key_t q, double* total, double* slope) const {
    const int64_t count = static_cast<int64_t>(keys.size());
    const int64_t below = std::lower_bound(keys.begin(), keys.end(), q) - keys.begin();
    const double qc = static_cast<double>(q) - centre;
    double sum = static_cast<double>(below) * qc - prefix[below];
    double derivative = static_cast<double>(below);
    if constexpr (kIsAbs) {
      const int64_t not_above = std::upper_bound(keys.begin() + below, keys.end(), q) - keys.begin();
      const int64_t above = count - not_above;
      sum += (prefix[count] - prefix[not_above]) - static_cast<double>(above) * qc;
      derivative -= static_cast<double>(above);
    }
    *total = sum;
    *slope = derivative;
  }
};

// Inputs laid out channel-major: a (B, H, N), b (B, H, M), mask (B, M) or null.
template <typename scalar_t>
struct Channels {
  using key_t = at::opmath_type<scalar_t>;
  const scalar_t* a;
  const scalar_t* b;
  const bool* mask;
  int64_t B, H, N, M;

  const scalar_t* queries(int64_t task) const { return a + task * N; }
  const scalar_t* keys(int64_t task) const { return b + task * M; }
  const bool* key_mask(int64_t task) const { return mask == nullptr ? nullptr : mask + (task / H) * M; }
};

template <typename scalar_t, bool kIsAbs>
void forward_kernel(const Channels<scalar_t>& in, at::opmath_type<scalar_t>* mean) {
  using key_t = at::opmath_type<scalar_t>;
  at::parallel_for(0, in.B * in.H, 1, [&](int64_t begin, int64_t end) {
    SortedKeys<key_t> sorted;
    for (int64_t task = begin; task < end; ++task) {
      sorted.build(in.keys(task), in.key_mask(task), in.M);
      const double n = static_cast<double>(std::max<size_t>(sorted.keys.size(), 1));
      const scalar_t* q = in.queries(task);
      key_t* out = mean + task * in.N;
      for (int64_t i = 0; i < in.N; ++i) {
        double total, slope;
        sorted.template relate<kIsAbs>(static_cast<key_t>(q[i]), &total, &slope);
        out[i] = static_cast<key_t>(total / n);
      }
    }
  });
}

// grad (B, H, N) is dL/dD. Writes D (B, H, N), dL/da (B, H, N) and dL/db (B, H, M):
//   da_i = grad_i · slope(a_i) / n,   db_j = −(Σ_{a_i > b_j} grad_i − [abs] Σ_{a_i < b_j} grad_i) / n.
template <typename scalar_t, bool kIsAbs>
void backward_kernel(const Channels<scalar_t>& in, const at::opmath_type<scalar_t>* grad,
                     at::opmath_type<scalar_t>* mean, at::opmath_type<scalar_t>* da,
                     at::opmath_type<scalar_t>* db) {
  using key_t = at::opmath_type<scalar_t>;
  at::parallel_for(0, in.B * in.H, 1, [&](int64_t begin, int64_t end) {
    SortedKeys<key_t> sorted;
    std::vector<std::pair<key_t, int64_t>> order(in.N);
    std::vector<key_t> sorted_queries(in.N);
    std::vector<double> scan(in.N + 1);
    for (int64_t task = begin; task < end; ++task) {
      const bool* mask = in.key_mask(task);
      sorted.build(in.keys(task), mask, in.M);
      const double n = static_cast<double>(std::max<size_t>(sorted.keys.size(), 1));
      const scalar_t* q = in.queries(task);
      const key_t* g = grad + task * in.N;
      for (int64_t i = 0; i < in.N; ++i) {
        double total, slope;
        sorted.template relate<kIsAbs>(static_cast<key_t>(q[i]), &total, &slope);
        mean[task * in.N + i] = static_cast<key_t>(total / n);
        da[task * in.N + i] = static_cast<key_t>(static_cast<double>(g[i]) * slope / n);
      }
      // Queries in ascending order, ties by index, so the scan is the same on every run.
      for (int64_t i = 0; i < in.N; ++i) order[i] = {static_cast<key_t>(q[i]), i};
      std::sort(order.begin(), order.end());
      scan[0] = 0.0;
      for (int64_t t = 0; t < in.N; ++t) {
        sorted_queries[t] = order[t].first;
        scan[t + 1] = scan[t] + static_cast<double>(g[order[t].second]);
      }
      const scalar_t* keys = in.keys(task);
      key_t* out = db + task * in.M;
      for (int64_t j = 0; j < in.M; ++j) {
        if (mask != nullptr && !mask[j]) {
          out[j] = key_t(0);
          continue;
        }
        const key_t k = static_cast<key_t>(keys[j]);
        const int64_t below = std::lower_bound(sorted_queries.begin(), sorted_queries.end(), k) -
                              sorted_queries.begin();
        const int64_t not_above =
            std::upper_bound(sorted_queries.begin() + below, sorted_queries.end(), k) - sorted_queries.begin();
        double sum = scan[not_above] - scan[in.N];
        if constexpr (kIsAbs) sum += scan[below];
        out[j] = static_cast<key_t>(sum / n);
      }
    }
  });
}

void check_inputs(const at::Tensor& a, const at::Tensor& b, const std::optional<at::Tensor>& key_mask,
                  int64_t inner) {
  TORCH_CHECK(a.device().is_cpu() && b.device().is_cpu(), "sort path: expected CPU tensors, got a on ",
              a.device(), ", b on ", b.device());
  TORCH_CHECK(a.dim() == 3 && b.dim() == 3 && a.size(0) == b.size(0) && a.size(2) == b.size(2),
              "sort path: expected a (B, N, H) and b (B, M, H), got ", a.sizes(), " and ", b.sizes());
  TORCH_CHECK(a.scalar_type() == b.scalar_type(), "sort path: expected b of dtype ", a.scalar_type(),
              ", got ", b.scalar_type());
  TORCH_CHECK(inner == kRelu || inner == kAbs, "sort path: expected inner relu (", int(kRelu), ") or abs (",
              int(kAbs), "), got ", inner);
  if (key_mask.has_value()) {
    TORCH_CHECK(key_mask->scalar_type() == at::kBool && key_mask->dim() == 2 &&
                    key_mask->size(0) == b.size(0) && key_mask->size(1) == b.size(1),
                "sort path: expected key_mask bool (", b.size(0), ", ", b.size(1), "), got ",
                key_mask->scalar_type(), " ", key_mask->sizes());
  }
}

at::ScalarType opmath_of(at::ScalarType type) {
  return type == at::kDouble ? at::kDouble : at::kFloat;
}

}  // namespace

at::Tensor global_relation_sort_forward_cpu(const at::Tensor& a, const at::Tensor& b,
                                            const std::optional<at::Tensor>& key_mask, int64_t inner) {
  check_inputs(a, b, key_mask, inner);
  const int64_t B = a.size(0), N = a.size(1), H = a.size(2), M = b.size(1);
  const at::Tensor queries = a.transpose(1, 2).contiguous();
  const at::Tensor keys = b.transpose(1, 2).contiguous();
  const at::Tensor mask = key_mask.has_value() ? key_mask->contiguous() : at::Tensor();
  at::Tensor mean = at::empty({B, H, N}, a.options().dtype(opmath_of(a.scalar_type())));
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, a.scalar_type(), "global_relation_sort_forward", [&] {
    using key_t = at::opmath_type<scalar_t>;
    const Channels<scalar_t> in{queries.data_ptr<scalar_t>(), keys.data_ptr<scalar_t>(),
                                mask.defined() ? mask.data_ptr<bool>() : nullptr, B, H, N, M};
    if (inner == kAbs) forward_kernel<scalar_t, true>(in, mean.data_ptr<key_t>());
    else forward_kernel<scalar_t, false>(in, mean.data_ptr<key_t>());
  });
  return mean.transpose(1, 2).contiguous();
}

std::vector<at::Tensor> global_relation_sort_backward_cpu(const at::Tensor& grad_mean, const at::Tensor& a,
                                                          const at::Tensor& b,
                                                          const std::optional<at::Tensor>& key_mask,
                                                          int64_t inner) {
  check_inputs(a, b, key_mask, inner);
  const int64_t B = a.size(0), N = a.size(1), H = a.size(2), M = b.size(1);
  const at::ScalarType opmath = opmath_of(a.scalar_type());
  TORCH_CHECK(grad_mean.sizes() == a.sizes() && grad_mean.scalar_type() == opmath,
              "sort path: expected grad_mean of shape ", a.sizes(), " and dtype ", opmath, ", got ",
              grad_mean.sizes(), " ", grad_mean.scalar_type());
  const at::Tensor queries = a.transpose(1, 2).contiguous();
  const at::Tensor keys = b.transpose(1, 2).contiguous();
  const at::Tensor grad = grad_mean.transpose(1, 2).contiguous();
  const at::Tensor mask = key_mask.has_value() ? key_mask->contiguous() : at::Tensor();
  const auto options = a.options().dtype(opmath);
  at::Tensor mean = at::empty({B, H, N}, options);
  at::Tensor da = at::empty({B, H, N}, options);
  at::Tensor db = at::empty({B, H, M}, options);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, a.scalar_type(), "global_relation_sort_backward", [&] {
    using key_t = at::opmath_type<scalar_t>;
    const Channels<scalar_t> in{queries.data_ptr<scalar_t>(), keys.data_ptr<scalar_t>(),
                                mask.defined() ? mask.data_ptr<bool>() : nullptr, B, H, N, M};
    if (inner == kAbs) {
      backward_kernel<scalar_t, true>(in, grad.data_ptr<key_t>(), mean.data_ptr<key_t>(), da.data_ptr<key_t>(),
                                      db.data_ptr<key_t>());
    } else {
      backward_kernel<scalar_t, false>(in, grad.data_ptr<key_t>(), mean.data_ptr<key_t>(), da.data_ptr<key_t>(),
                                       db.data_ptr<key_t>());
    }
  });
  return {mean.transpose(1, 2).contiguous(), da.transpose(1, 2).contiguous(), db.transpose(1, 2).contiguous()};
}

}  // namespace fastrel
