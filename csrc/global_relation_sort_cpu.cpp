// The exact sort path of the global relation on the CPU (docs/sort_path.md). Its 1-D problem, the
// mean Φ_i = Σ_j m_j φ(q_i − s_j) / n of one channel for a piecewise-linear φ (relu, leaky_relu,
// abs, identity), follows from that channel's valid keys and queries sorted together once and the
// keys' prefix sums; its backward from the same sort and the prefix sums of the incoming gradient in
// query order. Parallel over blocks of channels; comparisons on the exact input values, sums in
// double around the channel's key mean. Inputs are finite (fastrel/backends/sort.py sends ±inf and
// NaN to the torch ops).
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/zeros.h>

#include <algorithm>
#include <array>
#include <cstdint>
#include <cstring>
#include <type_traits>
#include <vector>

#include "checks.h"
#include "global_relation.h"
#include "relation_math.h"

namespace fastrel {
namespace {

// Order-preserving unsigned bit pattern of a float or double (−0 is first made +0, so equal floats
// tie), and back.
template <typename key_t>
struct OrderedBits {
  using type = std::conditional_t<sizeof(key_t) == 4, uint32_t, uint64_t>;
  static constexpr type kSign = type(1) << (8 * sizeof(type) - 1);

  static type encode(key_t value) {
    type bits;
    const key_t canonical = value + key_t(0);
    std::memcpy(&bits, &canonical, sizeof(bits));
    return (bits & kSign) ? ~bits : (bits | kSign);
  }

  static key_t decode(type bits) {
    bits = (bits & kSign) ? (bits ^ kSign) : ~bits;
    key_t value;
    std::memcpy(&value, &bits, sizeof(value));
    return value;
  }
};

// Sorts one channel's keys and queries together: a single LSD radix sort (11-bit digits) of the
// N + k values, where a query sorts before a key of equal value and ties otherwise keep index order.
// One pass over the merged order then gives both sorted lists and, for every query, the number of
// keys strictly below it, and for every key, the number of queries at or below it: O(N + k) per
// channel, with no comparison-driven branches.
template <typename key_t>
class MergedSort {
 public:
  std::vector<key_t> keys, queries;  // ascending; each has one spare slot at the end
  std::vector<int32_t> key_order, query_order;  // index in the input of each sorted entry
  std::vector<int32_t> keys_below;  // per sorted query: #{keys < q}
  std::vector<int32_t> queries_not_above;  // per sorted key: #{queries ≤ b}

  void sort(const key_t* key_values, int64_t k, const key_t* query_values, int64_t N) {
    const int64_t n = k + N;
    items_.resize(n);
    spare_.resize(n);
    for (int64_t j = 0; j < k; ++j) items_[j] = make_item(key_values[j], kKeyTag | uint32_t(j));
    for (int64_t i = 0; i < N; ++i) items_[k + i] = make_item(query_values[i], uint32_t(i));
    radix(n);
    keys.resize(k + 1);
    key_order.resize(k + 1);
    queries_not_above.resize(k + 1);
    queries.resize(N + 1);
    query_order.resize(N + 1);
    keys_below.resize(N + 1);
    int64_t kc = 0, qc = 0;
    for (int64_t t = 0; t < n; ++t) {  // both lists written every step; the wrong one is overwritten
      const key_t value = value_of(items_[t]);
      const uint32_t label = label_of(items_[t]);
      const int32_t index = static_cast<int32_t>(label & ~kKeyTag);
      const int64_t is_key = label >> 31;
      keys[kc] = value;
      key_order[kc] = index;
      queries_not_above[kc] = static_cast<int32_t>(qc);
      queries[qc] = value;
      query_order[qc] = index;
      keys_below[qc] = static_cast<int32_t>(kc);
      kc += is_key;
      qc += 1 - is_key;
    }
  }

 private:
  using Bits = OrderedBits<key_t>;
  static constexpr uint32_t kKeyTag = 1u << 31;
  static constexpr int kDigitBits = 11;
  static constexpr int kBuckets = 1 << kDigitBits;

  // float: one word, value bits above the label, sorted on bits 31..63 (tag and value).
  // double: value bits and label apart; the tag is sorted first, then the 64 value bits.
  struct Wide {
    uint64_t bits;
    uint32_t label;
  };
  using item_t = std::conditional_t<sizeof(key_t) == 4, uint64_t, Wide>;
  static constexpr int kPasses = sizeof(key_t) == 4 ? 3 : 7;

  static item_t make_item(key_t value, uint32_t label) {
    if constexpr (sizeof(key_t) == 4) return (uint64_t(Bits::encode(value)) << 32) | label;
    else return Wide{Bits::encode(value), label};
  }
  static key_t value_of(const item_t& item) {
    if constexpr (sizeof(key_t) == 4) return Bits::decode(static_cast<uint32_t>(item >> 32));
    else return Bits::decode(item.bits);
  }
  static uint32_t label_of(const item_t& item) {
    if constexpr (sizeof(key_t) == 4) return static_cast<uint32_t>(item);
    else return item.label;
  }
  static int digit(const item_t& item, int pass) {
    if constexpr (sizeof(key_t) == 4) return static_cast<int>((item >> (31 + kDigitBits * pass)) & (kBuckets - 1));
    else if (pass == 0) return static_cast<int>(item.label >> 31);
    else return static_cast<int>((item.bits >> (kDigitBits * (pass - 1))) & (kBuckets - 1));
  }

  void radix(int64_t n) {
    counts_.assign(static_cast<size_t>(kPasses) * kBuckets, 0);
    for (int64_t i = 0; i < n; ++i) {
      for (int pass = 0; pass < kPasses; ++pass) ++counts_[pass * kBuckets + digit(items_[i], pass)];
    }
    item_t* from = items_.data();
    item_t* to = spare_.data();
    for (int pass = 0; pass < kPasses; ++pass) {
      int32_t* count = counts_.data() + pass * kBuckets;
      if (n == 0 || count[digit(from[0], pass)] == n) continue;  // one digit value: nothing moves
      int32_t offset = 0;
      for (int d = 0; d < kBuckets; ++d) {
        const int32_t c = count[d];
        count[d] = offset;
        offset += c;
      }
      for (int64_t i = 0; i < n; ++i) to[count[digit(from[i], pass)]++] = from[i];
      std::swap(from, to);
    }
    if (from != items_.data()) std::copy(from, from + n, items_.data());
  }

  std::vector<item_t> items_, spare_;
  std::vector<int32_t> counts_;
};

// The inputs in their (B, ·, H) layout: a (B, N, H), b (B, M, H), mask (B, M) or null. The unit
// of parallel work is a block of up to kBlock consecutive channels of one batch element, whose
// rows are gathered into channel-major buffers (one cache line per row) and whose results are
// scattered back the same way, so no transposed copy of a tensor is ever made.
constexpr int64_t kBlock = 16;

template <typename scalar_t>
struct Inputs {
  const scalar_t* a;
  const scalar_t* b;
  const bool* mask;
  int64_t B, H, N, M;

  int64_t blocks() const { return (H + kBlock - 1) / kBlock; }
  int64_t tasks() const { return B * blocks(); }
  int64_t batch(int64_t task) const { return task / blocks(); }
  int64_t first_channel(int64_t task) const { return (task % blocks()) * kBlock; }
  int64_t width(int64_t task) const { return std::min(kBlock, H - first_channel(task)); }
  const bool* key_mask(int64_t task) const { return mask == nullptr ? nullptr : mask + batch(task) * M; }
};

// dst[c * rows + i] = src[i * H + h0 + c] for c < width: one block of channels, channel-major.
template <typename T>
void gather_block(const T* src, int64_t rows, int64_t H, int64_t h0, int64_t width, T* dst) {
  for (int64_t i = 0; i < rows; ++i) {
    const T* row = src + i * H + h0;
    for (int64_t c = 0; c < width; ++c) dst[c * rows + i] = row[c];
  }
}

// The inverse of gather_block.
template <typename T>
void scatter_block(const T* src, int64_t rows, int64_t H, int64_t h0, int64_t width, T* dst) {
  for (int64_t i = 0; i < rows; ++i) {
    T* row = dst + i * H + h0;
    for (int64_t c = 0; c < width; ++c) row[c] = src[c * rows + i];
  }
}

// φ(x) = kEvery·x + kAbove·relu(x) + kBelow·relu(−x), so φ'(x) = kEvery + kAbove·[x > 0] − kBelow·[x < 0]:
// each activation's derivative with its kink convention at 0 (relation_math.h).
template <int A>
struct Split {
  static constexpr double kEvery = A == kIdentity ? 1.0 : (A == kLeakyRelu ? kLeakySlope : 0.0);
  static constexpr double kAbove = A == kIdentity ? 0.0 : (A == kLeakyRelu ? 1.0 - kLeakySlope : 1.0);
  static constexpr double kBelow = A == kAbs ? 1.0 : 0.0;
};

// The work space of one thread: one channel's valid keys and its queries, sorted together, and the
// prefix sums prefix[t] = Σ_{u<t} (keys[u] − centre) of the keys around their mean.
template <typename key_t>
struct Channel {
  MergedSort<key_t> sorted;
  std::vector<key_t> key_values, query_values;
  std::vector<int32_t> key_index;  // position j in the row of each valid key
  std::vector<double> prefix;
  double centre = 0.0;
  int64_t k = 0;  // valid keys
  int64_t N = 0;

  double n() const { return static_cast<double>(std::max<int64_t>(k, 1)); }

  template <typename scalar_t>
  void load(const scalar_t* key_row, const bool* mask, int64_t M, const scalar_t* query_row, int64_t queries) {
    key_values.clear();
    key_index.clear();
    for (int64_t j = 0; j < M; ++j) {
      if (mask == nullptr || mask[j]) {
        key_values.push_back(static_cast<key_t>(key_row[j]));
        key_index.push_back(static_cast<int32_t>(j));
      }
    }
    k = static_cast<int64_t>(key_values.size());
    N = queries;
    query_values.resize(N);
    for (int64_t i = 0; i < N; ++i) query_values[i] = static_cast<key_t>(query_row[i]);
    sorted.sort(key_values.data(), k, query_values.data(), N);
    double sum = 0.0;
    for (int64_t t = 0; t < k; ++t) sum += static_cast<double>(sorted.keys[t]);
    centre = k == 0 ? 0.0 : sum / static_cast<double>(k);
    prefix.resize(k + 1);
    prefix[0] = 0.0;
    for (int64_t t = 0; t < k; ++t) prefix[t + 1] = prefix[t] + (static_cast<double>(sorted.keys[t]) - centre);
  }

  // visit(i, Σ_j φ(q_i − s_j), dΣ/dq_i) for every query, in ascending order of q_i. Keys equal to
  // q_i contribute φ(0) = 0 to the sum and kEvery (φ'(0)) to the derivative.
  template <int A, typename Visit>
  void relate(Visit visit) const {
    using S = Split<A>;
    const key_t* keys = sorted.keys.data();
    for (int64_t t = 0; t < N; ++t) {
      const key_t q = sorted.queries[t];
      const double qc = static_cast<double>(q) - centre;
      const int64_t lower = sorted.keys_below[t];  // keys < q
      double total = 0.0, slope = 0.0;
      if constexpr (S::kAbove != 0.0) {
        total += S::kAbove * (static_cast<double>(lower) * qc - prefix[lower]);
        slope += S::kAbove * static_cast<double>(lower);
      }
      if constexpr (S::kEvery != 0.0) {
        total += S::kEvery * (static_cast<double>(k) * qc - prefix[k]);
        slope += S::kEvery * static_cast<double>(k);
      }
      if constexpr (S::kBelow != 0.0) {
        int64_t upper = lower;  // keys ≤ q: skip the keys equal to q (rare for real-valued data)
        while (upper < k && !(q < keys[upper])) ++upper;
        const int64_t larger = k - upper;
        total += S::kBelow * ((prefix[k] - prefix[upper]) - static_cast<double>(larger) * qc);
        slope -= S::kBelow * static_cast<double>(larger);
      }
      visit(sorted.query_order[t], total, slope);
    }
  }
};

template <typename scalar_t, int A>
void forward_kernel(const Inputs<scalar_t>& in, at::opmath_type<scalar_t>* mean) {
  using key_t = at::opmath_type<scalar_t>;
  const int64_t N = in.N, M = in.M, H = in.H;
  at::parallel_for(0, in.tasks(), 1, [&](int64_t begin, int64_t end) {
    Channel<key_t> channel;
    std::vector<scalar_t> query_block(kBlock * N), key_block(kBlock * M);
    std::vector<key_t> mean_block(kBlock * N);
    for (int64_t task = begin; task < end; ++task) {
      const int64_t batch = in.batch(task), h0 = in.first_channel(task), width = in.width(task);
      gather_block(in.a + batch * N * H, N, H, h0, width, query_block.data());
      gather_block(in.b + batch * M * H, M, H, h0, width, key_block.data());
      for (int64_t c = 0; c < width; ++c) {
        channel.load(key_block.data() + c * M, in.key_mask(task), M, query_block.data() + c * N, N);
        const double n = channel.n();
        key_t* out = mean_block.data() + c * N;
        channel.template relate<A>(
            [&](int32_t i, double total, double) { out[i] = static_cast<key_t>(total / n); });
      }
      scatter_block(mean_block.data(), N, H, h0, width, mean + batch * N * H);
    }
  });
}

// grad (B, N, C) is dL/dΦ. Writes Φ (B, N, C), dL/dq (B, N, C) and dL/ds (B, M, C):
//   dq_i = grad_i · slope(q_i) / n,
//   ds_j = −(kEvery Σ_i grad_i + kAbove Σ_{q_i > s_j} grad_i − kBelow Σ_{q_i < s_j} grad_i) / n,
// the sums read off the prefix sums of grad in ascending query order.
template <typename scalar_t, int A>
void backward_kernel(const Inputs<scalar_t>& in, const at::opmath_type<scalar_t>* grad,
                     at::opmath_type<scalar_t>* mean, at::opmath_type<scalar_t>* da,
                     at::opmath_type<scalar_t>* db) {
  using key_t = at::opmath_type<scalar_t>;
  const int64_t N = in.N, M = in.M, H = in.H;
  at::parallel_for(0, in.tasks(), 1, [&](int64_t begin, int64_t end) {
    Channel<key_t> channel;
    std::vector<scalar_t> query_block(kBlock * N), key_block(kBlock * M);
    std::vector<key_t> grad_block(kBlock * N), mean_block(kBlock * N), da_block(kBlock * N), db_block(kBlock * M);
    std::vector<double> scan(N + 1);
    for (int64_t task = begin; task < end; ++task) {
      const int64_t batch = in.batch(task), h0 = in.first_channel(task), width = in.width(task);
      gather_block(in.a + batch * N * H, N, H, h0, width, query_block.data());
      gather_block(in.b + batch * M * H, M, H, h0, width, key_block.data());
      gather_block(grad + batch * N * H, N, H, h0, width, grad_block.data());
      for (int64_t c = 0; c < width; ++c) {
        channel.load(key_block.data() + c * M, in.key_mask(task), M, query_block.data() + c * N, N);
        const double n = channel.n();
        const key_t* g = grad_block.data() + c * N;
        key_t* mean_row = mean_block.data() + c * N;
        key_t* da_row = da_block.data() + c * N;
        channel.template relate<A>([&](int32_t i, double total, double slope) {
          mean_row[i] = static_cast<key_t>(total / n);
          da_row[i] = static_cast<key_t>(static_cast<double>(g[i]) * slope / n);
        });
        const int32_t* order = channel.sorted.query_order.data();
        scan[0] = 0.0;
        for (int64_t t = 0; t < N; ++t) scan[t + 1] = scan[t] + static_cast<double>(g[order[t]]);
        key_t* db_row = db_block.data() + c * M;
        std::fill(db_row, db_row + M, key_t(0));  // masked keys
        [[maybe_unused]] const key_t* queries = channel.sorted.queries.data();
        for (int64_t u = 0; u < channel.k; ++u) {
          using S = Split<A>;
          const int64_t not_above = channel.sorted.queries_not_above[u];  // #{queries ≤ key}
          double sum = S::kAbove * (scan[not_above] - scan[N]) - S::kEvery * scan[N];
          if constexpr (S::kBelow != 0.0) {
            const key_t key = channel.sorted.keys[u];
            int64_t below = not_above;  // #{queries < key}: skip the queries equal to it
            while (below > 0 && !(queries[below - 1] < key)) --below;
            sum += S::kBelow * scan[below];
          }
          db_row[channel.key_index[channel.sorted.key_order[u]]] = static_cast<key_t>(sum / n);
        }
      }
      scatter_block(mean_block.data(), N, H, h0, width, mean + batch * N * H);
      scatter_block(da_block.data(), N, H, h0, width, da + batch * N * H);
      scatter_block(db_block.data(), M, H, h0, width, db + batch * M * H);
    }
  });
}

// The inputs of the 1-D problem and its activation φ (any code, docs/sort_path.md).
void check_inputs(const at::Tensor& a, const at::Tensor& b, const std::optional<at::Tensor>& key_mask,
                  int64_t activation) {
  check_pairs(a, b, key_mask, at::kCPU, /*contiguous=*/false);
  TORCH_CHECK_VALUE(a.size(1) < INT32_MAX && b.size(1) < INT32_MAX, "a, b: expected N, M < 2^31, got ", a.size(1),
                    ", ", b.size(1));
  check_code(activation, "activation", {kIdentity, kRelu, kLeakyRelu, kAbs});
}

}  // namespace

// `activation` is φ of the 1-D problem: the inner activation when outer = identity, the outer one
// when inner = identity.
at::Tensor global_relation_sort_forward_cpu(const at::Tensor& a, const at::Tensor& b,
                                            const std::optional<at::Tensor>& key_mask, int64_t activation) {
  check_inputs(a, b, key_mask, activation);
  const int64_t B = a.size(0), N = a.size(1), H = a.size(2), M = b.size(1);
  const at::Tensor queries = a.contiguous();
  const at::Tensor keys = b.contiguous();
  const at::Tensor mask = key_mask.has_value() ? key_mask->contiguous() : at::Tensor();
  at::Tensor mean = at::empty({B, N, H}, a.options().dtype(accumulation_type(a.scalar_type())));
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, a.scalar_type(), "global_relation_sort_forward", [&] {
    using key_t = at::opmath_type<scalar_t>;
    const Inputs<scalar_t> in{queries.data_ptr<scalar_t>(), keys.data_ptr<scalar_t>(),
                                mask.defined() ? mask.data_ptr<bool>() : nullptr, B, H, N, M};
    with_activation(activation, [&](auto phi) {
      forward_kernel<scalar_t, decltype(phi)::value>(in, mean.data_ptr<key_t>());
    });
  });
  return mean;
}

std::vector<at::Tensor> global_relation_sort_backward_cpu(const at::Tensor& grad_mean, const at::Tensor& a,
                                                          const at::Tensor& b,
                                                          const std::optional<at::Tensor>& key_mask,
                                                          int64_t activation) {
  check_inputs(a, b, key_mask, activation);
  const int64_t B = a.size(0), N = a.size(1), H = a.size(2), M = b.size(1);
  const at::ScalarType acc = accumulation_type(a.scalar_type());
  check_grad(grad_mean, "grad_mean", a.sizes(), acc, a, /*contiguous=*/false);
  const at::Tensor queries = a.contiguous();
  const at::Tensor keys = b.contiguous();
  const at::Tensor grad = grad_mean.contiguous();
  const at::Tensor mask = key_mask.has_value() ? key_mask->contiguous() : at::Tensor();
  const auto options = a.options().dtype(acc);
  at::Tensor mean = at::empty({B, N, H}, options);
  at::Tensor da = at::empty({B, N, H}, options);
  at::Tensor db = at::empty({B, M, H}, options);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, a.scalar_type(), "global_relation_sort_backward", [&] {
    using key_t = at::opmath_type<scalar_t>;
    const Inputs<scalar_t> in{queries.data_ptr<scalar_t>(), keys.data_ptr<scalar_t>(),
                                mask.defined() ? mask.data_ptr<bool>() : nullptr, B, H, N, M};
    with_activation(activation, [&](auto phi) {
      backward_kernel<scalar_t, decltype(phi)::value>(in, grad.data_ptr<key_t>(), mean.data_ptr<key_t>(),
                                                      da.data_ptr<key_t>(), db.data_ptr<key_t>());
    });
  });
  return {mean, da, db};
}

}  // namespace fastrel
