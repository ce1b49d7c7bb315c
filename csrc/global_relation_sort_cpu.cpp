// The exact sort path of the global relation on the CPU (docs/sort_path.md). For outer = identity
// and inner = relu or abs, the mean difference D_i = Σ_j m_j δ(a_i − b_j) / n of one channel follows
// from that channel's valid keys sorted once and their prefix sums; its backward from the queries
// sorted once and the prefix sums of the incoming gradient. One task per (batch, channel), run in
// parallel; comparisons on the exact input values, sums in double around the channel's key mean.
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <array>
#include <cstdint>
#include <cstring>
#include <type_traits>
#include <vector>

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

// Sorts (value, index) pairs ascending by value with an LSD radix sort (11-bit digits) on the
// ordered bit pattern: O(n) per channel instead of O(n log n). Stable, so ties keep index order.
// Each pair travels as one 64-bit word (value bits above the index) for float, as two words for double.
template <typename key_t>
class RadixSorter {
 public:
  // values[0..n) → sorted[0..n) ascending and order[t], the index of sorted[t] in values.
  void sort(const key_t* values, int64_t n, key_t* sorted, int32_t* order) {
    if constexpr (sizeof(key_t) == 4) {
      words_.resize(n);
      spare_.resize(n);
      for (int64_t i = 0; i < n; ++i) {
        words_[i] = (uint64_t(Bits::encode(values[i])) << 32) | uint64_t(uint32_t(i));
      }
      radix(words_.data(), spare_.data(), n, 32, [](uint64_t w) { return w; });
      for (int64_t i = 0; i < n; ++i) {
        sorted[i] = Bits::decode(static_cast<uint32_t>(words_[i] >> 32));
        order[i] = static_cast<int32_t>(words_[i] & 0xffffffffu);
      }
    } else {
      pairs_.resize(n);
      spare_pairs_.resize(n);
      for (int64_t i = 0; i < n; ++i) pairs_[i] = {Bits::encode(values[i]), static_cast<int32_t>(i)};
      radix(pairs_.data(), spare_pairs_.data(), n, 0, [](const Pair& p) { return p.bits; });
      for (int64_t i = 0; i < n; ++i) {
        sorted[i] = Bits::decode(pairs_[i].bits);
        order[i] = pairs_[i].index;
      }
    }
  }

 private:
  using Bits = OrderedBits<key_t>;
  struct Pair {
    typename Bits::type bits;
    int32_t index;
  };
  static constexpr int kDigitBits = 11;
  static constexpr int kBuckets = 1 << kDigitBits;
  static constexpr int kPasses = (8 * sizeof(key_t) + kDigitBits - 1) / kDigitBits;

  // Sorts items[0..n) by the digits of key(item) >> shift, leaving the result in items.
  template <typename item_t, typename Key>
  void radix(item_t* items, item_t* spare, int64_t n, int shift, Key key) {
    counts_.assign(static_cast<size_t>(kPasses) * kBuckets, 0);
    auto digit = [&](const item_t& item, int pass) {
      return static_cast<int>((key(item) >> (shift + kDigitBits * pass)) & (kBuckets - 1));
    };
    for (int64_t i = 0; i < n; ++i) {
      for (int pass = 0; pass < kPasses; ++pass) ++counts_[pass * kBuckets + digit(items[i], pass)];
    }
    item_t* from = items;
    item_t* to = spare;
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
    if (from != items) std::copy(from, from + n, items);
  }

  std::vector<uint64_t> words_, spare_;
  std::vector<Pair> pairs_, spare_pairs_;
  std::vector<int32_t> counts_;
};

// Inputs laid out channel-major: a (B, H, N), b (B, H, M), mask (B, M) or null. A task is one
// (batch, channel) pair.
template <typename scalar_t>
struct Channels {
  const scalar_t* a;
  const scalar_t* b;
  const bool* mask;
  int64_t B, H, N, M;

  const scalar_t* queries(int64_t task) const { return a + task * N; }
  const scalar_t* keys(int64_t task) const { return b + task * M; }
  const bool* key_mask(int64_t task) const { return mask == nullptr ? nullptr : mask + (task / H) * M; }
};

// out[t] = #{u < n : sorted[u] < probes[t]} (≤ when !kStrict) for ascending probes[0..m), by one
// merge pass without data-dependent branches (a branchy merge of random data mispredicts half its
// steps). sorted[n] must be readable; its value is not used.
template <bool kStrict, typename key_t>
void count_below(const key_t* sorted, int64_t n, const key_t* probes, int64_t m, int32_t* out) {
  int64_t u = 0;
  for (int64_t t = 0; t < m;) {
    const key_t probe = probes[t];
    const bool passed = kStrict ? sorted[u] < probe : !(probe < sorted[u]);
    const bool step = (u < n) & passed;
    out[t] = static_cast<int32_t>(u);
    u += step;
    t += !step;
  }
}

// The work space of one thread: one channel's valid keys and its queries, each sorted, and the
// prefix sums prefix[t] = Σ_{u<t} (keys[u] − centre) of the keys around their mean.
template <typename key_t>
struct Channel {
  RadixSorter<key_t> sorter;
  std::vector<key_t> gathered, keys, queries;  // keys and queries have one unused slot at the end
  std::vector<int32_t> key_index, key_order, query_order, below, not_above;
  std::vector<double> prefix;
  double centre = 0.0;
  int64_t k = 0;  // valid keys

  double n() const { return static_cast<double>(std::max<int64_t>(k, 1)); }
  int64_t query_count() const { return static_cast<int64_t>(query_order.size()); }

  template <typename scalar_t>
  void load(const scalar_t* key_row, const bool* mask, int64_t M, const scalar_t* query_row, int64_t N) {
    gathered.clear();
    key_index.clear();
    for (int64_t j = 0; j < M; ++j) {
      if (mask == nullptr || mask[j]) {
        gathered.push_back(static_cast<key_t>(key_row[j]));
        key_index.push_back(static_cast<int32_t>(j));
      }
    }
    k = static_cast<int64_t>(gathered.size());
    keys.resize(k + 1);
    key_order.resize(k);
    sorter.sort(gathered.data(), k, keys.data(), key_order.data());
    keys[k] = key_t(0);
    double sum = 0.0;
    for (int64_t t = 0; t < k; ++t) sum += static_cast<double>(keys[t]);
    centre = k == 0 ? 0.0 : sum / static_cast<double>(k);
    prefix.resize(k + 1);
    prefix[0] = 0.0;
    for (int64_t t = 0; t < k; ++t) prefix[t + 1] = prefix[t] + (static_cast<double>(keys[t]) - centre);

    gathered.resize(N);
    for (int64_t i = 0; i < N; ++i) gathered[i] = static_cast<key_t>(query_row[i]);
    queries.resize(N + 1);
    query_order.resize(N);
    sorter.sort(gathered.data(), N, queries.data(), query_order.data());
    queries[N] = key_t(0);
  }

  // visit(i, Σ_j δ(q_i − b_j), dΣ/dq_i) for every query, in ascending order of q_i. Keys equal to
  // q_i contribute 0 to both, as relu'(0) = abs'(0) = 0.
  template <bool kIsAbs, typename Visit>
  void relate(Visit visit) {
    const int64_t N = query_count();
    below.resize(N);
    count_below<true>(keys.data(), k, queries.data(), N, below.data());
    if constexpr (kIsAbs) {
      not_above.resize(N);
      count_below<false>(keys.data(), k, queries.data(), N, not_above.data());
    }
    for (int64_t t = 0; t < N; ++t) {
      const double qc = static_cast<double>(queries[t]) - centre;
      const int64_t lo = below[t];
      double total = static_cast<double>(lo) * qc - prefix[lo];
      double slope = static_cast<double>(lo);
      if constexpr (kIsAbs) {
        const int64_t hi = not_above[t];
        const int64_t above = k - hi;
        total += (prefix[k] - prefix[hi]) - static_cast<double>(above) * qc;
        slope -= static_cast<double>(above);
      }
      visit(query_order[t], total, slope);
    }
  }
};

template <typename scalar_t, bool kIsAbs>
void forward_kernel(const Channels<scalar_t>& in, at::opmath_type<scalar_t>* mean) {
  using key_t = at::opmath_type<scalar_t>;
  at::parallel_for(0, in.B * in.H, 1, [&](int64_t begin, int64_t end) {
    Channel<key_t> channel;
    for (int64_t task = begin; task < end; ++task) {
      channel.load(in.keys(task), in.key_mask(task), in.M, in.queries(task), in.N);
      const double n = channel.n();
      key_t* out = mean + task * in.N;
      channel.template relate<kIsAbs>(
          [&](int32_t i, double total, double) { out[i] = static_cast<key_t>(total / n); });
    }
  });
}

// grad (B, H, N) is dL/dD. Writes D (B, H, N), dL/da (B, H, N) and dL/db (B, H, M):
//   da_i = grad_i · slope(a_i) / n,   db_j = −(Σ_{a_i > b_j} grad_i − [abs] Σ_{a_i < b_j} grad_i) / n,
// the sums read off the prefix sums of grad in ascending query order.
template <typename scalar_t, bool kIsAbs>
void backward_kernel(const Channels<scalar_t>& in, const at::opmath_type<scalar_t>* grad,
                     at::opmath_type<scalar_t>* mean, at::opmath_type<scalar_t>* da,
                     at::opmath_type<scalar_t>* db) {
  using key_t = at::opmath_type<scalar_t>;
  at::parallel_for(0, in.B * in.H, 1, [&](int64_t begin, int64_t end) {
    Channel<key_t> channel;
    std::vector<double> scan(in.N + 1);
    std::vector<int32_t> queries_below(in.M), queries_not_above(in.M);
    for (int64_t task = begin; task < end; ++task) {
      channel.load(in.keys(task), in.key_mask(task), in.M, in.queries(task), in.N);
      const double n = channel.n();
      const key_t* g = grad + task * in.N;
      key_t* mean_row = mean + task * in.N;
      key_t* da_row = da + task * in.N;
      channel.template relate<kIsAbs>([&](int32_t i, double total, double slope) {
        mean_row[i] = static_cast<key_t>(total / n);
        da_row[i] = static_cast<key_t>(static_cast<double>(g[i]) * slope / n);
      });
      scan[0] = 0.0;
      for (int64_t t = 0; t < in.N; ++t) scan[t + 1] = scan[t] + static_cast<double>(g[channel.query_order[t]]);
      key_t* db_row = db + task * in.M;
      std::fill(db_row, db_row + in.M, key_t(0));  // masked keys
      // For the keys in ascending order: #{queries < key} and #{queries ≤ key}.
      const key_t* sorted_keys = channel.keys.data();
      count_below<false>(channel.queries.data(), in.N, sorted_keys, channel.k, queries_not_above.data());
      if constexpr (kIsAbs) {
        count_below<true>(channel.queries.data(), in.N, sorted_keys, channel.k, queries_below.data());
      }
      for (int64_t u = 0; u < channel.k; ++u) {
        double sum = scan[queries_not_above[u]] - scan[in.N];
        if constexpr (kIsAbs) sum += scan[queries_below[u]];
        db_row[channel.key_index[channel.key_order[u]]] = static_cast<key_t>(sum / n);
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
  TORCH_CHECK(a.size(1) < INT32_MAX && b.size(1) < INT32_MAX, "sort path: expected N, M < 2^31, got ",
              a.size(1), ", ", b.size(1));
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
