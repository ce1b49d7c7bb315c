// Fused CPU forward and backward of global_relation (docs/math.md). Pairs are processed in tiles of
// (row block × key block): the differences of a tile are formed on per-worker scratch, projected
// with a single-threaded GEMM and reduced at once, so the extra memory is O(B·N·H) plus a few
// tiles per worker; the (B, N, M, H) tensor of the naive form never exists. Only valid keys are
// visited. Work is split into units that depend on the shapes alone, never on the thread count,
// and every reduction across units runs in a fixed order, so results are bitwise reproducible.
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <ATen/core/grad_mode.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/mm.h>
#include <ATen/ops/zeros.h>
#include <ATen/ops/zeros_like.h>

#include <algorithm>
#include <tuple>
#include <vector>

#include "checks.h"
#include "global_relation.h"
#include "relation_math.h"

// Present when torch links MKL; lets each worker pin its own BLAS calls to one thread.
extern "C" int MKL_Set_Num_Threads_Local(int) __attribute__((weak));

namespace fastrel {
namespace {

// Pairs per tile: rows × keys, sized so that one (pairs × H) tile stays within L2.
constexpr int64_t kTileRows = 16;
constexpr int64_t kTileBytes = 128 * 1024;
// Units of backward work per call, when the shapes allow: enough for load balance on a machine
// with a few dozen cores, few enough that per-unit partials of dW and db stay small.
constexpr int64_t kTargetUnits = 32;

// Keeps BLAS calls made by this worker single-threaded: the parallelism is ours, and a GEMM
// whose result depended on the BLAS thread count would break reproducibility.
class SingleThreadedBlas {
 public:
  SingleThreadedBlas() : previous_(MKL_Set_Num_Threads_Local ? MKL_Set_Num_Threads_Local(1) : 0) {}
  ~SingleThreadedBlas() {
    if (MKL_Set_Num_Threads_Local) MKL_Set_Num_Threads_Local(previous_);
  }
  SingleThreadedBlas(const SingleThreadedBlas&) = delete;
  SingleThreadedBlas& operator=(const SingleThreadedBlas&) = delete;

 private:
  int previous_;
};

// Keys per tile of kTileRows rows for hidden size H (H = 0 included), elements of acc_t.
template <typename acc_t>
int64_t tile_keys(int64_t H) {
  const int64_t row_bytes = static_cast<int64_t>(sizeof(acc_t)) * std::max<int64_t>(H, 1);
  const int64_t pairs = std::max<int64_t>(kTileBytes / row_bytes, kTileRows);
  return std::max<int64_t>(pairs / kTileRows, 1);
}

// The valid keys of every batch element: keys[b * M + k] for k < counts[b].
struct ValidKeys {
  std::vector<int64_t> keys;
  std::vector<int64_t> counts;
};

ValidKeys valid_keys(const std::optional<at::Tensor>& key_mask, int64_t B, int64_t M) {
  ValidKeys v{std::vector<int64_t>(B * M), std::vector<int64_t>(B, 0)};
  const bool* mask = key_mask.has_value() ? key_mask->data_ptr<bool>() : nullptr;
  for (int64_t b = 0; b < B; ++b) {
    int64_t n = 0;
    for (int64_t j = 0; j < M; ++j) {
      if (mask == nullptr || mask[b * M + j]) v.keys[b * M + n++] = j;
    }
    v.counts[b] = n;
  }
  return v;
}

// Everything a kernel reads, with the weight and bias already in the accumulation type.
template <typename scalar_t>
struct Problem {
  using acc_t = at::opmath_type<scalar_t>;
  const scalar_t* a;
  const scalar_t* b;
  at::Tensor weight;    // (R, H) acc_t
  at::Tensor weight_t;  // its transpose (H, R), the right operand of z = p W_rᵀ
  const acc_t* bias;  // (R,)
  int64_t B, N, M, H, R;
  const ValidKeys* valid;

  const int64_t* keys(int64_t batch) const { return valid->keys.data() + batch * M; }
  int64_t count(int64_t batch) const { return valid->counts[batch]; }
  // [Σ_j m_j > 0]: whether the bias, and any gradient, reaches this batch element's rows.
  bool has_key(int64_t batch) const { return count(batch) > 0; }
  acc_t inv_count(int64_t batch) const { return acc_t(1) / acc_t(std::max<int64_t>(count(batch), 1)); }
};

// Splits each batch element's rows into tiles of `tile_rows`, and the tiles into `chunks`
// contiguous units that own their partial sums.
struct RowUnits {
  int64_t tile_rows, tiles, chunks;

  RowUnits(int64_t B, int64_t N, int64_t tile_rows_)
      : tile_rows(tile_rows_), tiles(ceil_div(N, tile_rows_)) {
    chunks = std::min(tiles, std::max<int64_t>(1, ceil_div(kTargetUnits, B)));
  }
  int64_t first_tile(int64_t chunk) const { return chunk * tiles / chunks; }
};

template <typename acc_t>
at::TensorOptions acc_options() {
  return at::TensorOptions().dtype(c10::CppTypeToScalarType<acc_t>::value);
}

// Converts `rows` rows of length H (gathered through `index` when given) into acc_t.
template <typename scalar_t, typename acc_t>
void load_rows(const scalar_t* src, const int64_t* index, int64_t rows, int64_t H, acc_t* dst) {
  for (int64_t r = 0; r < rows; ++r) {
    const scalar_t* s = src + (index ? index[r] : r) * H;
    acc_t* d = dst + r * H;
    for (int64_t h = 0; h < H; ++h) d[h] = static_cast<acc_t>(s[h]);
  }
}

// Runs body(scratch, batch, i0, ri) for every tile of ri ≤ kTileRows rows (from row i0) of every
// batch element, the tiles split across workers; each worker makes its scratch once and keeps its
// BLAS calls single-threaded.
template <typename MakeScratch, typename Body>
void for_each_row_tile(int64_t B, int64_t N, MakeScratch make_scratch, Body body) {
  const RowUnits units(B, N, kTileRows);
  at::parallel_for(0, B * units.tiles, 1, [&](int64_t begin, int64_t end) {
    SingleThreadedBlas single;
    auto scratch = make_scratch();
    for (int64_t unit = begin; unit < end; ++unit) {
      const int64_t batch = unit / units.tiles, i0 = (unit % units.tiles) * kTileRows;
      body(scratch, batch, i0, std::min(kTileRows, N - i0));
    }
  });
}

// p[(i, j), :] = δ(a_i − b_j) for a tile of ri rows × kj keys, pair (i, j) at row i * kj + j.
template <int IN, typename acc_t>
void form_differences(const acc_t* a, int64_t ri, const acc_t* b, int64_t kj, int64_t H, acc_t* p) {
  for (int64_t i = 0; i < ri; ++i) {
    const acc_t* ai = a + i * H;
    for (int64_t j = 0; j < kj; ++j) {
      const acc_t* bj = b + j * H;
      acc_t* out = p + (i * kj + j) * H;
      for (int64_t h = 0; h < H; ++h) out[h] = activate<IN>(ai[h] - bj[h]);
    }
  }
}

// ---------------------------------------------------------------------------------------------
// The pair kernels: the projection runs per pair, for every outer activation σ (the identity
// included: the sort backend is the exact fast path for it, docs/math.md).

template <int IN, int OUT, typename scalar_t>
void forward_pairs(const Problem<scalar_t>& pb, scalar_t* g) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t H = pb.H, R = pb.R, kt = tile_keys<acc_t>(H);
  const auto make_scratch = [&] {
    const auto opts = acc_options<acc_t>();
    return std::tuple(at::empty({kTileRows * kt, H}, opts), at::empty({kTileRows * kt, R}, opts),
                      std::vector<acc_t>(kTileRows * H), std::vector<acc_t>(kt * H), std::vector<acc_t>(kTileRows * R));
  };
  for_each_row_tile(pb.B, pb.N, make_scratch, [&](auto& scratch, int64_t batch, int64_t i0, int64_t ri) {
    auto& [p, z, a_tile, b_tile, sums] = scratch;
    const int64_t count = pb.count(batch);
    std::fill(sums.begin(), sums.end(), acc_t(0));
    load_rows(pb.a + (batch * pb.N + i0) * H, nullptr, ri, H, a_tile.data());
    for (int64_t k0 = 0; k0 < count; k0 += kt) {
      const int64_t kj = std::min(kt, count - k0), pairs = ri * kj;
      load_rows(pb.b + batch * pb.M * H, pb.keys(batch) + k0, kj, H, b_tile.data());
      at::Tensor pt = p.narrow(0, 0, pairs), zt = z.narrow(0, 0, pairs);
      form_differences<IN>(a_tile.data(), ri, b_tile.data(), kj, H, pt.data_ptr<acc_t>());
      at::mm_out(zt, pt, pb.weight_t);
      const acc_t* zp = zt.data_ptr<acc_t>();
      for (int64_t i = 0; i < ri; ++i) {
        acc_t* s = sums.data() + i * R;
        for (int64_t j = 0; j < kj; ++j) {
          const acc_t* zij = zp + (i * kj + j) * R;
          for (int64_t r = 0; r < R; ++r) s[r] += activate<OUT>(zij[r] + pb.bias[r]);
        }
      }
    }
    const acc_t scale = pb.inv_count(batch);
    scalar_t* out = g + (batch * pb.N + i0) * R;
    for (int64_t e = 0; e < ri * R; ++e) out[e] = static_cast<scalar_t>(sums[e] * scale);
  });
}

template <int IN, int OUT, typename scalar_t>
void backward_pairs(const Problem<scalar_t>& pb, const scalar_t* grad, scalar_t* da, at::Tensor& dw_parts,
                    at::Tensor& dbias_parts, at::Tensor& db_parts, const RowUnits& units) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t H = pb.H, R = pb.R, M = pb.M, kt = tile_keys<acc_t>(H);
  at::parallel_for(0, pb.B * units.chunks, 1, [&](int64_t begin, int64_t end) {
    SingleThreadedBlas single;
    const auto opts = acc_options<acc_t>();
    at::Tensor p = at::empty({kTileRows * kt, H}, opts), dq = at::empty({kTileRows * kt, H}, opts);
    at::Tensor z = at::empty({kTileRows * kt, R}, opts);
    std::vector<acc_t> a_tile(kTileRows * H), b_tile(kt * H), g_tile(kTileRows * R), da_tile(kTileRows * H);
    for (int64_t unit = begin; unit < end; ++unit) {
      const int64_t batch = unit / units.chunks, chunk = unit % units.chunks, count = pb.count(batch);
      if (!pb.has_key(batch)) continue;
      at::Tensor dw_part = dw_parts[unit];
      acc_t* dbias_part = dbias_parts[unit].data_ptr<acc_t>();
      acc_t* db_part = db_parts[unit].data_ptr<acc_t>();
      const int64_t* keys = pb.keys(batch);
      const acc_t scale = pb.inv_count(batch);
      for (int64_t t = units.first_tile(chunk); t < units.first_tile(chunk + 1); ++t) {
        const int64_t i0 = t * kTileRows, ri = std::min(kTileRows, pb.N - i0);
        load_rows(pb.a + (batch * pb.N + i0) * H, nullptr, ri, H, a_tile.data());
        const scalar_t* grad_rows = grad + (batch * pb.N + i0) * R;
        for (int64_t e = 0; e < ri * R; ++e) g_tile[e] = static_cast<acc_t>(grad_rows[e]) * scale;
        std::fill(da_tile.begin(), da_tile.end(), acc_t(0));
        for (int64_t k0 = 0; k0 < count; k0 += kt) {
          const int64_t kj = std::min(kt, count - k0), pairs = ri * kj;
          load_rows(pb.b + batch * M * H, keys + k0, kj, H, b_tile.data());
          at::Tensor pt = p.narrow(0, 0, pairs), zt = z.narrow(0, 0, pairs), dqt = dq.narrow(0, 0, pairs);
          form_differences<IN>(a_tile.data(), ri, b_tile.data(), kj, H, pt.data_ptr<acc_t>());
          at::mm_out(zt, pt, pb.weight_t);
          acc_t* zp = zt.data_ptr<acc_t>();
          for (int64_t i = 0; i < ri; ++i) {
            const acc_t* gi = g_tile.data() + i * R;
            for (int64_t j = 0; j < kj; ++j) {
              acc_t* dz = zp + (i * kj + j) * R;
              for (int64_t r = 0; r < R; ++r) {
                dz[r] = derivative<OUT>(dz[r] + pb.bias[r]) * gi[r];
                dbias_part[r] += dz[r];
              }
            }
          }
          dw_part.addmm_(zt.t(), pt);
          at::mm_out(dqt, zt, pb.weight);
          const acc_t* dqp = dqt.data_ptr<acc_t>();
          for (int64_t i = 0; i < ri; ++i) {
            const acc_t* ai = a_tile.data() + i * H;
            acc_t* dai = da_tile.data() + i * H;
            for (int64_t j = 0; j < kj; ++j) {
              const acc_t* bj = b_tile.data() + j * H;
              const acc_t* dqij = dqp + (i * kj + j) * H;
              acc_t* dbj = db_part + keys[k0 + j] * H;
              for (int64_t h = 0; h < H; ++h) {
                const acc_t du = derivative<IN>(ai[h] - bj[h]) * dqij[h];
                dai[h] += du;
                dbj[h] -= du;
              }
            }
          }
        }
        scalar_t* out = da + (batch * pb.N + i0) * H;
        for (int64_t e = 0; e < ri * H; ++e) out[e] = static_cast<scalar_t>(da_tile[e]);
      }
    }
  });
}

// ---------------------------------------------------------------------------------------------
// Fixed-order reductions of per-unit partials.

// out[g][e] = Σ_u parts[g * count + u][e] over u in order, for parts (groups · count, E) in acc_t.
template <typename acc_t, typename scalar_t>
void sum_units(const at::Tensor& parts, int64_t groups, int64_t count, scalar_t* out, int64_t E) {
  const acc_t* p = parts.data_ptr<acc_t>();
  const int64_t grain = std::max<int64_t>((1 << 18) / std::max<int64_t>(count, 1), 1);
  at::parallel_for(0, groups * E, grain, [&](int64_t begin, int64_t end) {
    for (int64_t ge = begin; ge < end; ++ge) {
      const int64_t g = ge / E, e = ge % E;
      const acc_t* pg = p + g * count * E + e;
      acc_t s = 0;
      for (int64_t u = 0; u < count; ++u) s += pg[u * E];
      out[ge] = static_cast<scalar_t>(s);
    }
  });
}

// ---------------------------------------------------------------------------------------------
// Entry points.

template <typename scalar_t>
Problem<scalar_t> make_problem(const at::Tensor& a, const at::Tensor& b, const at::Tensor& weight,
                               const at::Tensor& bias_acc, const ValidKeys& valid) {
  const at::Tensor weight_acc = weight.detach().to(accumulation_type(weight.scalar_type())).contiguous();
  return Problem<scalar_t>{a.data_ptr<scalar_t>(),
                           b.data_ptr<scalar_t>(),
                           weight_acc,
                           weight_acc.t(),
                           bias_acc.data_ptr<at::opmath_type<scalar_t>>(),
                           a.size(0),
                           a.size(1),
                           b.size(1),
                           a.size(2),
                           weight.size(0),
                           &valid};
}

at::Tensor bias_in_acc(const std::optional<at::Tensor>& bias, const at::Tensor& weight) {
  const auto acc = accumulation_type(weight.scalar_type());
  return bias.has_value() ? bias->detach().to(acc).contiguous() : at::zeros({weight.size(0)}, weight.options().dtype(acc));
}

}  // namespace

at::Tensor global_relation_forward_cpu(const at::Tensor& a, const at::Tensor& b, const at::Tensor& weight,
                                       const std::optional<at::Tensor>& bias,
                                       const std::optional<at::Tensor>& key_mask, int64_t inner, int64_t outer) {
  check_inputs(a, b, weight, bias, key_mask, inner, outer, at::kCPU);
  at::NoGradGuard no_grad;
  const ValidKeys valid = valid_keys(key_mask, a.size(0), b.size(1));
  const at::Tensor bias_acc = bias_in_acc(bias, weight);
  at::Tensor g = at::zeros({a.size(0), a.size(1), weight.size(0)}, a.options());
  if (g.numel() == 0) return g;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, a.scalar_type(), "global_relation_forward_cpu", [&] {
    const auto pb = make_problem<scalar_t>(a, b, weight, bias_acc, valid);
    scalar_t* out = g.data_ptr<scalar_t>();
    with_activation(inner, [&](auto in) {
      with_activation</*kOuter=*/true>(outer, [&](auto out_act) {
        forward_pairs<decltype(in)::value, decltype(out_act)::value>(pb, out);
      });
    });
  });
  return g;
}

std::vector<at::Tensor> global_relation_backward_cpu(const at::Tensor& grad, const at::Tensor& a,
                                                     const at::Tensor& b, const at::Tensor& weight,
                                                     const std::optional<at::Tensor>& bias,
                                                     const std::optional<at::Tensor>& key_mask, int64_t inner,
                                                     int64_t outer, bool deterministic) {
  (void)deterministic;  // always deterministic: no atomics, fixed reduction order
  check_inputs(a, b, weight, bias, key_mask, inner, outer, at::kCPU);
  const int64_t B = a.size(0), N = a.size(1), M = b.size(1), H = a.size(2), R = weight.size(0);
  check_grad(grad, "grad", {B, N, R}, a.scalar_type(), a);
  at::NoGradGuard no_grad;
  const ValidKeys valid = valid_keys(key_mask, B, M);
  const at::Tensor bias_acc = bias_in_acc(bias, weight);
  at::Tensor da = at::zeros_like(a), db = at::zeros_like(b);
  at::Tensor dweight = at::zeros_like(weight), dbias = at::zeros({R}, weight.options());
  if (B * N * M == 0 || R == 0) return {da, db, dweight, dbias};
  const auto acc_opts = weight.options().dtype(accumulation_type(a.scalar_type()));
  const RowUnits units(B, N, kTileRows);
  const int64_t U = B * units.chunks;
  at::Tensor dw_parts = at::zeros({U, R, H}, acc_opts), dbias_parts = at::zeros({U, R}, acc_opts);
  at::Tensor db_parts = at::zeros({U, M, H}, acc_opts);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, a.scalar_type(), "global_relation_backward_cpu", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const auto pb = make_problem<scalar_t>(a, b, weight, bias_acc, valid);
    const scalar_t* g = grad.data_ptr<scalar_t>();
    with_activation(inner, [&](auto in) {
      with_activation</*kOuter=*/true>(outer, [&](auto out_act) {
        backward_pairs<decltype(in)::value, decltype(out_act)::value>(pb, g, da.data_ptr<scalar_t>(), dw_parts,
                                                                     dbias_parts, db_parts, units);
      });
    });
    sum_units<acc_t>(db_parts, B, units.chunks, db.data_ptr<scalar_t>(), M * H);
    sum_units<acc_t>(dw_parts, 1, U, dweight.data_ptr<scalar_t>(), R * H);
    sum_units<acc_t>(dbias_parts, 1, U, dbias.data_ptr<scalar_t>(), R);
  });
  return {da, db, dweight, dbias};
}

}  // namespace fastrel
