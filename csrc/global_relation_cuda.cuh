// CUDA kernels of fastrel::global_relation (docs/math.md).
//
// Pairs are processed in tiles of kOwn "own" items by kOther "other" items (64 pairs); pair
// pr = own * kOther + other. In the forward and in the backward row pass the own items are the
// rows i and the other items the keys j; in the key pass the roles swap. The projection
// z = W_r p is a tiled matrix product whose left operand, the pair tile p = δ(a_i − b_j), is built
// in shared memory chunk by chunk over H and never stored in device memory. The backward recomputes
// z, keeps dz for one pair tile (shared memory, or a per-block scratch in device memory when R is
// too large), and from it forms [dW | dβ] (per-block partials summed in a fixed order) and da or db.
// For bf16/fp16 the three products run on the tensor cores (WMMA) with fp32 accumulation, their
// operands p and dz rounded to the input dtype as the reference rounds them; fp32 and fp64 use
// plain FMA in their own precision.
//
// Thread layout of every 64 x 64 tile: 256 threads, ty = tid / 16 selects the own item (or the
// output row), tx = tid % 16 the output columns tx + 16 c, c < 4. Each thread thus holds all kOther
// pairs of its own item, so reductions over the other side stay inside the thread.
//
// FASTREL_HOST_EMULATION: the file is compiled by a host compiler for the CPU, and the including
// file provides what CUDA would (tests/emulation/cuda_emulation.h, used by tests/test_cuda_emulation.py).
#pragma once

#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>
#ifndef FASTREL_HOST_EMULATION
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <mma.h>
#endif

#include <cstdint>
#include <type_traits>

#include "relation_math.h"

namespace fastrel {
namespace cuda_kernels {

constexpr int kThreads = 256;
constexpr int kLanes = 16;               // threads along the columns of a tile
constexpr int kOwn = 16;                 // own items per tile
constexpr int kOther = 4;                // other items per tile step
constexpr int kPairs = kOwn * kOther;    // 64 pairs per tile
constexpr int kCols = 64;                // output columns per tile (kLanes x 4)
constexpr int kPerLane = kCols / kLanes;  // 4
constexpr int kDepth = 16;               // reduction chunk of the FMA path
constexpr int kStride = kDepth + 1;      // padded row of a [64][kDepth] tile
constexpr int kWide = kCols + 1;         // padded row of a [16][64] tile
constexpr int kTcDepth = 32;             // reduction chunk of the tensor-core path
constexpr int kTcStride = kTcDepth + 8;  // 80-byte rows: fragment pointers stay 32-byte aligned
constexpr int kZStride = kCols + 4;      // fp32 accumulator tile row
constexpr int kMaxClipItems = 64;        // the backward handles a whole clip in one block up to here
// One resident block per SM is all the main kernels ask of ptxas: with no minimum it held them at
// 128 registers (80 in the fp32 forward) and spilled up to 168 B per thread.
constexpr int kMinBlocks = 1;

static_assert(kLanes * kOwn == kThreads, "one thread per (own item, lane)");

template <typename T>
struct Acc {
  using type = float;
};
template <>
struct Acc<double> {
  using type = double;
};

// Tensor-core operand type of an input dtype; void where the FMA path is used.
template <typename T>
struct Mma {
  using type = void;
};
template <>
struct Mma<c10::Half> {
  using type = __half;
};
template <>
struct Mma<c10::BFloat16> {
  using type = __nv_bfloat16;
};
template <typename T>
constexpr bool kTensorCores = !std::is_void_v<typename Mma<T>::type>;

__device__ __forceinline__ void store_operand(__half* p, float v) { *p = __float2half_rn(v); }
__device__ __forceinline__ void store_operand(__nv_bfloat16* p, float v) { *p = __float2bfloat16_rn(v); }

template <typename T>
__device__ __forceinline__ T activation(int code, T x) {
  return with_activation(code, [x](auto a) { return activate<decltype(a)::value>(x); });
}

template <typename T>
__device__ __forceinline__ T activation_grad(int code, T x) {
  return with_activation(code, [x](auto a) { return derivative<decltype(a)::value>(x); });
}

#ifndef FASTREL_HOST_EMULATION
// The block's dynamic shared memory (its size is set at launch); the host emulation provides its own.
__device__ __forceinline__ unsigned char* dynamic_shared_memory() {
  extern __shared__ __align__(128) unsigned char dynamic_smem[];
  return dynamic_smem;
}
#endif

__device__ __forceinline__ bool key_valid(const bool* mask, int j, int M) {
  return j < M && (mask == nullptr || mask[j]);
}

// True when one of the keys j0 .. j0 + kOther - 1 takes part; the same for every thread of a block.
__device__ __forceinline__ bool any_key(const bool* mask, int j0, int M) {
  bool any = false;
#pragma unroll
  for (int x = 0; x < kOther; ++x) any = any || key_valid(mask, j0 + x, M);
  return any;
}

// Block coordinates in a 1-D grid over (batch, row tile, column tile), the column tile fastest. The
// whole grid sits in axis x (up to 2^31 - 1 blocks): axes y and z stop at 65535, too few for a batch.
struct GridTile {
  int batch, row, col;
};
__device__ __forceinline__ GridTile grid_tile(int row_tiles, int col_tiles) {
  const int id = blockIdx.x;
  return {id / col_tiles / row_tiles, id / col_tiles % row_tiles, id % col_tiles};
}

// Where one tile of pairs lives: a and b of one batch element, the key mask, the own/other tile
// origin and extents.
template <typename scalar_t>
struct PairTile {
  const scalar_t* a;  // (N, H) of this batch element
  const scalar_t* b;  // (M, H) of this batch element
  const bool* mask;   // (M,) of this batch element, or nullptr: every key takes part
  int own0, other0, n_own, n_other, H;
  bool rows;  // own items are rows i (forward, row pass) or keys j (key pass)

  __device__ __forceinline__ int row(int pr) const { return rows ? own0 + pr / kOther : other0 + pr % kOther; }
  __device__ __forceinline__ int key(int pr) const { return rows ? other0 + pr % kOther : own0 + pr / kOther; }

  // δ-argument a_i − b_j of pair pr at channel h, in acc_t; the caller checks valid(pr).
  template <typename acc_t>
  __device__ __forceinline__ acc_t difference(int pr, int h) const {
    return static_cast<acc_t>(a[static_cast<int64_t>(row(pr)) * H + h]) -
           static_cast<acc_t>(b[static_cast<int64_t>(key(pr)) * H + h]);
  }
  // Pair pr lies inside the tile and its key takes part: a key the mask excludes is never read, so a
  // NaN or inf there cannot reach a result (0 · inf).
  __device__ __forceinline__ bool valid(int pr) const {
    const int own = own0 + pr / kOther, other = other0 + pr % kOther;
    const int j = rows ? other : own;
    return own < n_own && other < n_other && (mask == nullptr || mask[j]);
  }
  // p[pair, h] of the projection: δ(a_i − b_j)[h], zero outside the tile and for excluded keys.
  template <typename acc_t>
  __device__ __forceinline__ acc_t relation_input(int pr, int h, int inner) const {
    return h < H && valid(pr) ? activation(inner, difference<acc_t>(pr, h)) : acc_t(0);
  }
  // p[pair, h] of the [dW | dβ] product: relation_input, with the dβ column p[pair, H] = 1.
  template <typename acc_t>
  __device__ __forceinline__ acc_t weight_operand(int pr, int h, int inner) const {
    return h == H && valid(pr) ? acc_t(1) : relation_input<acc_t>(pr, h, inner);
  }
};

// z[x][c] = Σ_h W[r0 + tx + 16 c, h] p(pair ty * kOther + x)[h], FMA path in acc_t.
// pt holds kPairs x kStride, wt kCols x kStride elements of shared memory.
template <typename scalar_t, typename acc_t>
__device__ void project_fma(acc_t (&z)[kOther][kPerLane], acc_t* pt, acc_t* wt, const PairTile<scalar_t>& tile,
                            const scalar_t* w, int r0, int R, int inner) {
  const int ty = threadIdx.x / kLanes, tx = threadIdx.x % kLanes;
#pragma unroll
  for (int x = 0; x < kOther; ++x)
#pragma unroll
    for (int c = 0; c < kPerLane; ++c) z[x][c] = acc_t(0);
  for (int h0 = 0; h0 < tile.H; h0 += kDepth) {
    for (int e = threadIdx.x; e < kPairs * kDepth; e += kThreads) {
      const int k = e % kDepth, pr = e / kDepth;
      pt[pr * kStride + k] = tile.template relation_input<acc_t>(pr, h0 + k, inner);
    }
    for (int e = threadIdx.x; e < kCols * kDepth; e += kThreads) {
      const int k = e % kDepth, col = e / kDepth, r = r0 + col, h = h0 + k;
      wt[col * kStride + k] = (r < R && h < tile.H) ? static_cast<acc_t>(w[static_cast<int64_t>(r) * tile.H + h])
                                                     : acc_t(0);
    }
    __syncthreads();
#pragma unroll
    for (int k = 0; k < kDepth; ++k) {
      acc_t wv[kPerLane];
#pragma unroll
      for (int c = 0; c < kPerLane; ++c) wv[c] = wt[(tx + kLanes * c) * kStride + k];
#pragma unroll
      for (int x = 0; x < kOther; ++x) {
        const acc_t pv = pt[(ty * kOther + x) * kStride + k];
#pragma unroll
        for (int c = 0; c < kPerLane; ++c) z[x][c] += pv * wv[c];
      }
    }
    __syncthreads();
  }
}

// Shared-memory tiles of the tensor-core projection, as raw 16-bit storage.
struct TcTiles {
  unsigned short p[kPairs * kTcStride];  // pair tile, row-major [pair][k]
  unsigned short w[kCols * kTcStride];   // W^T chunk, column-major [col][k]
  float z[kPairs * kZStride];            // accumulators, row-major [pair][col]
};

#if !defined(__CUDA_ARCH__) || __CUDA_ARCH__ >= 800
// One warp's share of a 64 x 64 product on the tensor cores (WMMA 16x16x16, fp32 accumulators):
// warp w owns rows 16 (w / 2) .. + 15 and column blocks 2 (w % 2) + {0, 1}.
struct WarpProduct {
  int row_block, col_block;
  nvcuda::wmma::fragment<nvcuda::wmma::accumulator, 16, 16, 16, float> acc[2];

  __device__ WarpProduct() : row_block(threadIdx.x / 32 / 2), col_block((threadIdx.x / 32 % 2) * 2) {
    nvcuda::wmma::fill_fragment(acc[0], 0.0f);
    nvcuda::wmma::fill_fragment(acc[1], 0.0f);
  }

  // acc[f] += A B_f for f = 0, 1: A the 16 x 16 tile at a, B_f the one at b + f * b_step.
  template <typename LayoutA, typename LayoutB, typename T>
  __device__ __forceinline__ void mma(const T* a, int lda, const T* b, int b_step, int ldb) {
    using namespace nvcuda;
    wmma::fragment<wmma::matrix_a, 16, 16, 16, T, LayoutA> fa;
    wmma::load_matrix_sync(fa, a, lda);
#pragma unroll
    for (int f = 0; f < 2; ++f) {
      wmma::fragment<wmma::matrix_b, 16, 16, 16, T, LayoutB> fb;
      wmma::load_matrix_sync(fb, b + f * b_step, ldb);
      wmma::mma_sync(acc[f], fa, fb, acc[f]);
    }
  }

  // Stores the product to s.z and reads it back in the thread layout: out[x][v] is row row(ty, x),
  // column tx + 16 v.
  template <int kRowsPerThread, bool kInterleaved>
  __device__ __forceinline__ void read_back(float (&out)[kRowsPerThread][kPerLane], TcTiles& s) const {
#pragma unroll
    for (int f = 0; f < 2; ++f)
      nvcuda::wmma::store_matrix_sync(s.z + row_block * 16 * kZStride + (col_block + f) * 16, acc[f], kZStride,
                                      nvcuda::wmma::mem_row_major);
    __syncthreads();
    const int ty = threadIdx.x / kLanes, tx = threadIdx.x % kLanes;
#pragma unroll
    for (int x = 0; x < kRowsPerThread; ++x) {
      const int row = kInterleaved ? ty + kLanes * x : ty * kRowsPerThread + x;
#pragma unroll
      for (int v = 0; v < kPerLane; ++v) out[x][v] = s.z[row * kZStride + tx + kLanes * v];
    }
    __syncthreads();
  }
};
#endif

// Same result as project_fma with bf16/fp16 operands and fp32 accumulation on the tensor cores
// (WMMA 16x16x16). Warp w computes pair rows 16 (w / 2) .. + 15 and column blocks 2 (w % 2) + {0, 1}.
template <typename scalar_t>
__device__ void project_tc(float (&z)[kOther][kPerLane], TcTiles& s, const PairTile<scalar_t>& tile,
                           const scalar_t* w, int r0, int R, int inner) {
#if !defined(__CUDA_ARCH__) || __CUDA_ARCH__ >= 800
  using namespace nvcuda;
  using mma_t = typename Mma<scalar_t>::type;
  mma_t* p = reinterpret_cast<mma_t*>(s.p);
  mma_t* wt = reinterpret_cast<mma_t*>(s.w);
  WarpProduct product;
  for (int h0 = 0; h0 < tile.H; h0 += kTcDepth) {
    for (int e = threadIdx.x; e < kPairs * kTcDepth; e += kThreads) {
      const int k = e % kTcDepth, pr = e / kTcDepth;
      store_operand(p + pr * kTcStride + k, tile.template relation_input<float>(pr, h0 + k, inner));
    }
    for (int e = threadIdx.x; e < kCols * kTcDepth; e += kThreads) {
      const int k = e % kTcDepth, col = e / kTcDepth, r = r0 + col, h = h0 + k;
      const float v = (r < R && h < tile.H) ? static_cast<float>(w[static_cast<int64_t>(r) * tile.H + h]) : 0.0f;
      store_operand(wt + col * kTcStride + k, v);
    }
    __syncthreads();
#pragma unroll
    for (int k = 0; k < kTcDepth; k += 16) {
      product.mma<wmma::row_major, wmma::col_major>(p + product.row_block * 16 * kTcStride + k, kTcStride,
                                                    wt + product.col_block * 16 * kTcStride + k, 16 * kTcStride,
                                                    kTcStride);
    }
    __syncthreads();
  }
  product.read_back<kOther, false>(z, s);
#else
  __trap();
#endif
}

// Shared memory of the projection for one input dtype: FMA tiles, or tensor-core tiles.
template <typename scalar_t, bool = kTensorCores<scalar_t>>
struct ProjectTiles {
  using acc_t = typename Acc<scalar_t>::type;
  acc_t p[kPairs * kStride];
  acc_t w[kCols * kStride];
  __device__ void project(acc_t (&z)[kOther][kPerLane], const PairTile<scalar_t>& tile, const scalar_t* w_r,
                          int r0, int R, int inner) {
    project_fma(z, p, w, tile, w_r, r0, R, inner);
  }
};
template <typename scalar_t>
struct ProjectTiles<scalar_t, true> {
  TcTiles tc;
  __device__ void project(float (&z)[kOther][kPerLane], const PairTile<scalar_t>& tile, const scalar_t* w_r,
                          int r0, int R, int inner) {
    project_tc(z, tc, tile, w_r, r0, R, inner);
  }
};

// g (B, N, R). Grid: B x row tiles x column tiles (grid_tile); block (b, i0 .. i0 + 15, r0 .. r0 + 63).
template <typename scalar_t>
__global__ void __launch_bounds__(kThreads, kMinBlocks)
    global_relation_forward_kernel(const scalar_t* __restrict__ a, const scalar_t* __restrict__ b,
                                   const scalar_t* __restrict__ w, const scalar_t* __restrict__ bias,
                                   const bool* __restrict__ key_mask,
                                   const typename Acc<scalar_t>::type* __restrict__ inv_count,
                                   scalar_t* __restrict__ g, int N, int M, int H, int R, int inner, int outer) {
  using acc_t = typename Acc<scalar_t>::type;
  __shared__ __align__(32) ProjectTiles<scalar_t> tiles;
  const GridTile block = grid_tile(ceil_div(N, kOwn), ceil_div(R, kCols));
  const int batch = block.batch, i0 = block.row * kOwn, r0 = block.col * kCols;
  const int ty = threadIdx.x / kLanes, tx = threadIdx.x % kLanes;
  const bool* mask = key_mask ? key_mask + static_cast<int64_t>(batch) * M : nullptr;
  PairTile<scalar_t> tile{a + static_cast<int64_t>(batch) * N * H, b + static_cast<int64_t>(batch) * M * H,
                          mask, i0, 0, N, M, H, true};
  acc_t bias_c[kPerLane], sum[kPerLane];
#pragma unroll
  for (int c = 0; c < kPerLane; ++c) {
    const int r = r0 + tx + kLanes * c;
    bias_c[c] = (bias != nullptr && r < R) ? static_cast<acc_t>(bias[r]) : acc_t(0);
    sum[c] = acc_t(0);
  }
  for (int j0 = 0; j0 < M; j0 += kOther) {
    if (!any_key(mask, j0, M)) continue;
    tile.other0 = j0;
    acc_t z[kOther][kPerLane];
    tiles.project(z, tile, w, r0, R, inner);
#pragma unroll
    for (int x = 0; x < kOther; ++x) {
      if (!key_valid(mask, j0 + x, M)) continue;
#pragma unroll
      for (int c = 0; c < kPerLane; ++c) sum[c] += activation(outer, z[x][c] + bias_c[c]);
    }
  }
  const int i = i0 + ty;
  if (i >= N) return;
  const acc_t scale = inv_count[batch];
#pragma unroll
  for (int c = 0; c < kPerLane; ++c) {
    const int r = r0 + tx + kLanes * c;
    if (r < R) g[(static_cast<int64_t>(batch) * N + i) * R + r] = static_cast<scalar_t>(sum[c] * scale);
  }
}

constexpr int kTcWide = kCols + 8;  // 144-byte rows of a 16-bit [k][64] operand tile

// Row stride of the dz tile: 16-bit rows padded to a multiple of 8 for the tensor cores, fp32/fp64
// rows padded by one against bank conflicts.
template <typename scalar_t>
constexpr int dz_stride(int R) {
  const int padded = (R + kCols - 1) / kCols * kCols;
  return kTensorCores<scalar_t> ? padded + 8 : padded + 1;
}

// Element type of the dz tile: the tensor-core operand type, or the accumulation type.
template <typename scalar_t>
using DzType = std::conditional_t<kTensorCores<scalar_t>, typename Mma<scalar_t>::type, typename Acc<scalar_t>::type>;

// out[u][v] = Σ_pairs dz[pair, rb + ty + 16 u] p[pair, hb + tx + 16 v] with p[pair, H] = 1, on the
// tensor cores: A = dzᵀ (column-major view of the [pair][r] tile), B = the pair tile built in bt.
// Warp w computes r rows 16 (w / 2) .. + 15 and h column blocks 2 (w % 2) + {0, 1}.
template <typename scalar_t>
__device__ void weight_grad_tc(float (&out)[kPerLane][kPerLane], TcTiles& s, unsigned short* bt,
                               const typename Mma<scalar_t>::type* dz, int ldz, const PairTile<scalar_t>& tile,
                               int rb, int hb, int inner) {
#if !defined(__CUDA_ARCH__) || __CUDA_ARCH__ >= 800
  using namespace nvcuda;
  using mma_t = typename Mma<scalar_t>::type;
  mma_t* p = reinterpret_cast<mma_t*>(bt);
  for (int e = threadIdx.x; e < kPairs * kCols; e += kThreads) {
    const int hc = e % kCols, pr = e / kCols;
    store_operand(p + pr * kTcWide + hc, tile.template weight_operand<float>(pr, hb + hc, inner));
  }
  __syncthreads();
  WarpProduct product;
#pragma unroll
  for (int k = 0; k < kPairs; k += 16) {
    product.mma<wmma::col_major, wmma::row_major>(dz + k * ldz + rb + product.row_block * 16, ldz,
                                                  p + k * kTcWide + product.col_block * 16, 16, kTcWide);
  }
  product.read_back<kPerLane, true>(out, s);
#else
  __trap();
#endif
}

// out[x][v] = Σ_r dz[ty * kOther + x, r] W[r, hb + tx + 16 v] on the tensor cores: A = the dz tile
// (row-major), B = W rows staged in bt. Warp w computes pair rows 16 (w / 2) .. + 15 and h column
// blocks 2 (w % 2) + {0, 1}.
template <typename scalar_t>
__device__ void input_grad_tc(float (&out)[kOther][kPerLane], TcTiles& s, unsigned short* bt,
                              const typename Mma<scalar_t>::type* dz, int ldz, const scalar_t* w, int hb, int R,
                              int H) {
#if !defined(__CUDA_ARCH__) || __CUDA_ARCH__ >= 800
  using namespace nvcuda;
  using mma_t = typename Mma<scalar_t>::type;
  mma_t* wt = reinterpret_cast<mma_t*>(bt);
  WarpProduct product;
  for (int r0 = 0; r0 < R; r0 += kTcDepth) {
    for (int e = threadIdx.x; e < kTcDepth * kCols; e += kThreads) {
      const int hc = e % kCols, rk = e / kCols, r = r0 + rk, h = hb + hc;
      const float v = (r < R && h < H) ? static_cast<float>(w[static_cast<int64_t>(r) * H + h]) : 0.0f;
      store_operand(wt + rk * kTcWide + hc, v);
    }
    __syncthreads();
#pragma unroll
    for (int k = 0; k < kTcDepth; k += 16) {
      product.mma<wmma::row_major, wmma::row_major>(dz + product.row_block * 16 * ldz + r0 + k, ldz,
                                                    wt + k * kTcWide + product.col_block * 16, 16, kTcWide);
    }
    __syncthreads();
  }
  product.read_back<kOther, false>(out, s);
#else
  __trap();
#endif
}

// out[u][v] = Σ_pairs dz[pair, rb + ty + 16 u] p[pair, hb + tx + 16 v] with p[pair, H] = 1: the FMA
// counterpart of weight_grad_tc. pt holds kDepth x kWide elements.
template <typename scalar_t, typename acc_t>
__device__ void weight_grad_fma(acc_t (&out)[kPerLane][kPerLane], acc_t* pt, const acc_t* dz, int ldz,
                                const PairTile<scalar_t>& tile, int rb, int hb, int inner) {
  const int ty = threadIdx.x / kLanes, tx = threadIdx.x % kLanes;
#pragma unroll
  for (int u = 0; u < kPerLane; ++u)
#pragma unroll
    for (int v = 0; v < kPerLane; ++v) out[u][v] = acc_t(0);
  for (int p0 = 0; p0 < kPairs; p0 += kDepth) {
    for (int e = threadIdx.x; e < kDepth * kCols; e += kThreads) {
      const int hc = e % kCols, k = e / kCols;
      pt[k * kWide + hc] = tile.template weight_operand<acc_t>(p0 + k, hb + hc, inner);
    }
    __syncthreads();
#pragma unroll
    for (int k = 0; k < kDepth; ++k) {
      acc_t dv[kPerLane];
#pragma unroll
      for (int u = 0; u < kPerLane; ++u) dv[u] = dz[(p0 + k) * ldz + rb + ty + kLanes * u];
#pragma unroll
      for (int v = 0; v < kPerLane; ++v) {
        const acc_t pv = pt[k * kWide + tx + kLanes * v];
#pragma unroll
        for (int u = 0; u < kPerLane; ++u) out[u][v] += dv[u] * pv;
      }
    }
    __syncthreads();
  }
}

// out[x][v] = Σ_r dz[ty * kOther + x, r] W[r, hb + tx + 16 v]: the FMA counterpart of input_grad_tc.
// wt holds kDepth x kWide elements.
template <typename scalar_t, typename acc_t>
__device__ void input_grad_fma(acc_t (&out)[kOther][kPerLane], acc_t* wt, const acc_t* dz, int ldz,
                               const scalar_t* w, int hb, int R, int H) {
  const int ty = threadIdx.x / kLanes, tx = threadIdx.x % kLanes;
#pragma unroll
  for (int x = 0; x < kOther; ++x)
#pragma unroll
    for (int v = 0; v < kPerLane; ++v) out[x][v] = acc_t(0);
  for (int r0 = 0; r0 < R; r0 += kDepth) {
    for (int e = threadIdx.x; e < kDepth * kCols; e += kThreads) {
      const int hc = e % kCols, k = e / kCols, r = r0 + k, h = hb + hc;
      wt[k * kWide + hc] = (r < R && h < H) ? static_cast<acc_t>(w[static_cast<int64_t>(r) * H + h]) : acc_t(0);
    }
    __syncthreads();
#pragma unroll
    for (int k = 0; k < kDepth; ++k) {
      acc_t wv[kPerLane];
#pragma unroll
      for (int v = 0; v < kPerLane; ++v) wv[v] = wt[k * kWide + tx + kLanes * v];
#pragma unroll
      for (int x = 0; x < kOther; ++x) {
        const acc_t d = dz[(ty * kOther + x) * ldz + r0 + k];
#pragma unroll
        for (int v = 0; v < kPerLane; ++v) out[x][v] += d * wv[v];
      }
    }
    __syncthreads();
  }
}

// Shared memory of the backward for one input dtype: the projection's tiles and the operand tile of
// the dW and du products, with the three products on the FMA path or on the tensor cores.
template <typename scalar_t, bool = kTensorCores<scalar_t>>
struct BackwardTiles : ProjectTiles<scalar_t> {
  using acc_t = typename Acc<scalar_t>::type;
  acc_t operand[kDepth * kWide];  // [kDepth][kWide] pair or W_r tile
  __device__ void weight_grad(acc_t (&out)[kPerLane][kPerLane], const acc_t* dz, int ldz,
                              const PairTile<scalar_t>& tile, int rb, int hb, int inner) {
    weight_grad_fma(out, operand, dz, ldz, tile, rb, hb, inner);
  }
  __device__ void input_grad(acc_t (&out)[kOther][kPerLane], const acc_t* dz, int ldz, const scalar_t* w, int hb,
                             int R, int H) {
    input_grad_fma(out, operand, dz, ldz, w, hb, R, H);
  }
};
template <typename scalar_t>
struct BackwardTiles<scalar_t, true> : ProjectTiles<scalar_t> {
  using mma_t = typename Mma<scalar_t>::type;
  __align__(32) unsigned short operand[kPairs * kTcWide];  // 16-bit [64][kTcWide] pair or W_r tile
  __device__ void weight_grad(float (&out)[kPerLane][kPerLane], const mma_t* dz, int ldz,
                              const PairTile<scalar_t>& tile, int rb, int hb, int inner) {
    weight_grad_tc(out, this->tc, operand, dz, ldz, tile, rb, hb, inner);
  }
  __device__ void input_grad(float (&out)[kOther][kPerLane], const mma_t* dz, int ldz, const scalar_t* w, int hb,
                             int R, int H) {
    input_grad_tc<scalar_t>(out, this->tc, operand, dz, ldz, w, hb, R, H);
  }
};

// Per-launch constants of the backward.
template <typename scalar_t>
struct BackwardArgs {
  using acc_t = typename Acc<scalar_t>::type;
  const scalar_t* grad;  // (B, N, R)
  const scalar_t* a;
  const scalar_t* b;
  const scalar_t* w;
  const scalar_t* bias;  // or nullptr
  const bool* key_mask;  // or nullptr
  const acc_t* inv_count;  // (B,) 1 / max(Σ_j m_j, 1)
  acc_t* own_grad;   // da (B, N, H) in the row pass, db (B, M, H) in the key pass; zero-initialised
  acc_t* other_grad;  // db (B, M, H) accumulated with atomics by the row pass, or nullptr
  acc_t* slabs;  // per-block [dW | dβ] partials (R, H + 1), zero-initialised, or nullptr (key pass)
  void* dz_scratch;  // per-block dz tiles (kPairs, ldz) of DzType in device memory, or nullptr: shared memory
  int B, N, M, H, R, ldz, inner, outer;
  bool clip;  // block b owns batch element b whole: it also forms db, with a fixed-order reduction
};

// One own tile of the backward and where its gradients go; other0 advances along the other side.
template <typename scalar_t>
struct OwnTile {
  using acc_t = typename Acc<scalar_t>::type;
  PairTile<scalar_t> pairs;
  const scalar_t* grad;  // dL/dg (N, R) of this batch element
  acc_t scale;           // 1 / n
  acc_t* own_grad;       // (n_own, H) of this batch element
  acc_t* other_grad;     // (n_other, H) of this batch element, or nullptr
};

template <bool kRowPass, typename scalar_t>
__device__ OwnTile<scalar_t> own_tile(const BackwardArgs<scalar_t>& args, int batch, int own0) {
  const int n_own = kRowPass ? args.N : args.M, n_other = kRowPass ? args.M : args.N;
  const bool* mask = args.key_mask ? args.key_mask + static_cast<int64_t>(batch) * args.M : nullptr;
  PairTile<scalar_t> pairs{args.a + static_cast<int64_t>(batch) * args.N * args.H,
                           args.b + static_cast<int64_t>(batch) * args.M * args.H,
                           mask,
                           own0,
                           0,
                           n_own,
                           n_other,
                           args.H,
                           kRowPass};
  return {pairs, args.grad + static_cast<int64_t>(batch) * args.N * args.R, args.inv_count[batch],
          args.own_grad + static_cast<int64_t>(batch) * n_own * args.H,
          args.other_grad ? args.other_grad + static_cast<int64_t>(batch) * n_other * args.H : nullptr};
}

// Step 1. dz[pair, r] = m_j σ'(z_ij)[r] G_i[r] / n for the tile's 64 pairs and all R columns, z
// recomputed; zero for pairs outside the tile or with an excluded key.
template <typename scalar_t>
__device__ void relation_grad(DzType<scalar_t>* dz, BackwardTiles<scalar_t>& tiles, const OwnTile<scalar_t>& own,
                              const BackwardArgs<scalar_t>& args) {
  using acc_t = typename Acc<scalar_t>::type;
  const int ty = threadIdx.x / kLanes, tx = threadIdx.x % kLanes;
  const PairTile<scalar_t>& pairs = own.pairs;
  for (int r0 = 0; r0 < args.R; r0 += kCols) {
    acc_t z[kOther][kPerLane];
    tiles.project(z, pairs, args.w, r0, args.R, args.inner);
#pragma unroll
    for (int x = 0; x < kOther; ++x) {
      const int pr = ty * kOther + x;
      const bool valid = pairs.valid(pr);
#pragma unroll
      for (int c = 0; c < kPerLane; ++c) {
        const int r = r0 + tx + kLanes * c;
        acc_t d = acc_t(0);
        if (valid && r < args.R) {
          const acc_t zr = z[x][c] + (args.bias ? static_cast<acc_t>(args.bias[r]) : acc_t(0));
          const acc_t g = static_cast<acc_t>(own.grad[static_cast<int64_t>(pairs.row(pr)) * args.R + r]);
          d = activation_grad(args.outer, zr) * g * own.scale;
        }
        if constexpr (kTensorCores<scalar_t>) store_operand(dz + pr * args.ldz + r, d);
        else dz[pr * args.ldz + r] = d;
      }
    }
  }
}

// Step 2 (row pass). slab[r, h] += Σ_pairs dz[pair, r] p[pair, h] with p[pair, H] = 1: this block's
// partial of [dW | dβ].
template <typename scalar_t>
__device__ void add_weight_grad(typename Acc<scalar_t>::type* slab, BackwardTiles<scalar_t>& tiles,
                                const DzType<scalar_t>* dz, const PairTile<scalar_t>& pairs,
                                const BackwardArgs<scalar_t>& args) {
  using acc_t = typename Acc<scalar_t>::type;
  const int ty = threadIdx.x / kLanes, tx = threadIdx.x % kLanes, H = args.H, R = args.R;
  for (int rb = 0; rb < R; rb += kCols) {
    for (int hb = 0; hb <= H; hb += kCols) {
      acc_t acc[kPerLane][kPerLane];
      tiles.weight_grad(acc, dz, args.ldz, pairs, rb, hb, args.inner);
#pragma unroll
      for (int u = 0; u < kPerLane; ++u) {
        const int r = rb + ty + kLanes * u;
#pragma unroll
        for (int v = 0; v < kPerLane; ++v) {
          const int h = hb + tx + kLanes * v;
          if (r < R && h <= H) slab[static_cast<int64_t>(r) * (H + 1) + h] += acc[u][v];
        }
      }
    }
  }
}

// Step 3. du[pair, h] = δ'(a_i − b_j)[h] Σ_r dz[pair, r] W[r, h]. The own side sums in the thread
// (da in the row pass, db = −Σ_i du in the key pass); the other side, in the row pass, goes to db
// by atomics, or in clip mode through clip_sum (kOwn x kOther x kCols) in a fixed order.
template <bool kRowPass, typename scalar_t>
__device__ void add_input_grads(BackwardTiles<scalar_t>& tiles, const DzType<scalar_t>* dz,
                                const OwnTile<scalar_t>& own, typename Acc<scalar_t>::type* clip_sum,
                                const BackwardArgs<scalar_t>& args) {
  using acc_t = typename Acc<scalar_t>::type;
  const int ty = threadIdx.x / kLanes, tx = threadIdx.x % kLanes, H = args.H;
  const PairTile<scalar_t>& pairs = own.pairs;
  const int o = pairs.own0 + ty, other0 = pairs.other0;
  for (int hb = 0; hb < H; hb += kCols) {
    acc_t acc[kOther][kPerLane];
    tiles.input_grad(acc, dz, args.ldz, args.w, hb, args.R, H);
#pragma unroll
    for (int v = 0; v < kPerLane; ++v) {
      const int h = hb + tx + kLanes * v;
      acc_t own_sum = acc_t(0);
#pragma unroll
      for (int x = 0; x < kOther; ++x) {
        const int pr = ty * kOther + x;
        acc_t du = acc_t(0);
        if (h < H && pairs.valid(pr)) du = acc[x][v] * activation_grad(args.inner, pairs.template difference<acc_t>(pr, h));
        own_sum += du;
        if (args.clip) clip_sum[ty * (kOther * kCols) + x * kCols + tx + kLanes * v] = du;
        else if (own.other_grad != nullptr && h < H && other0 + x < pairs.n_other)
          atomicAdd(own.other_grad + static_cast<int64_t>(other0 + x) * H + h, -du);
      }
      if (o < pairs.n_own && h < H) own.own_grad[static_cast<int64_t>(o) * H + h] += kRowPass ? own_sum : -own_sum;
    }
    if (args.clip) {
      // db[j, h] −= Σ_own du, summed over the kOwn own items in a fixed order.
      __syncthreads();
      const int x = threadIdx.x / kCols, hc = threadIdx.x % kCols, h = hb + hc;
      acc_t s = acc_t(0);
      for (int k = 0; k < kOwn; ++k) s += clip_sum[k * (kOther * kCols) + threadIdx.x];
      if (h < H && other0 + x < pairs.n_other) own.other_grad[static_cast<int64_t>(other0 + x) * H + h] -= s;
      __syncthreads();
    }
  }
}
static_assert(kOther * kCols == kThreads, "the clip reduction gives each thread one (key, channel)");

// The backward over own tiles. Row pass (kRowPass): da, [dW | dβ], and db either with atomics
// (other_grad) or, in clip mode, by a block reduction. Key pass: db only. Blocks take own tiles
// in a grid-stride loop; in clip mode block b takes every own tile of batch element b.
template <bool kRowPass, typename scalar_t>
__global__ void __launch_bounds__(kThreads, kMinBlocks) global_relation_backward_kernel(BackwardArgs<scalar_t> args) {
  using acc_t = typename Acc<scalar_t>::type;
  using dz_t = DzType<scalar_t>;
  __shared__ __align__(32) BackwardTiles<scalar_t> tiles;
  dz_t* dz;
  acc_t* clip_sum;  // kOwn x (kOther * kCols), clip mode only
  if (args.dz_scratch != nullptr) {
    dz = static_cast<dz_t*>(args.dz_scratch) + static_cast<int64_t>(blockIdx.x) * kPairs * args.ldz;
    clip_sum = reinterpret_cast<acc_t*>(dynamic_shared_memory());
  } else {
    dz = reinterpret_cast<dz_t*>(dynamic_shared_memory());
    clip_sum = reinterpret_cast<acc_t*>(dz + kPairs * args.ldz);
  }
  acc_t* slab = args.slabs ? args.slabs + static_cast<int64_t>(blockIdx.x) * args.R * (args.H + 1) : nullptr;

  const int own_tiles = ceil_div(kRowPass ? args.N : args.M, kOwn);
  const int first = args.clip ? blockIdx.x * own_tiles : blockIdx.x;
  const int last = args.clip ? first + own_tiles : args.B * own_tiles;
  const int step = args.clip ? 1 : gridDim.x;
  for (int t = first; t < last; t += step) {
    OwnTile<scalar_t> own = own_tile<kRowPass>(args, t / own_tiles, (t % own_tiles) * kOwn);
    for (int other0 = 0; other0 < own.pairs.n_other; other0 += kOther) {
      if (kRowPass && !any_key(own.pairs.mask, other0, args.M)) continue;
      own.pairs.other0 = other0;
      relation_grad(dz, tiles, own, args);
      if (kRowPass) add_weight_grad(slab, tiles, dz, own.pairs, args);
      add_input_grads<kRowPass>(tiles, dz, own, clip_sum, args);
    }
  }
}

// dW[r, h] = Σ_s slab_s[r, h], dβ[r] = Σ_s slab_s[r, H], summed in slab order.
template <typename scalar_t>
__global__ void global_relation_reduce_slabs_kernel(const typename Acc<scalar_t>::type* __restrict__ slabs,
                                                    int n_slabs, int R, int H, scalar_t* __restrict__ dweight,
                                                    scalar_t* __restrict__ dbias) {
  using acc_t = typename Acc<scalar_t>::type;
  const int64_t size = static_cast<int64_t>(R) * (H + 1);
  const int64_t e = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (e >= size) return;
  acc_t s = acc_t(0);
  for (int k = 0; k < n_slabs; ++k) s += slabs[k * size + e];
  const int64_t r = e / (H + 1), h = e % (H + 1);
  if (h < H) dweight[r * H + h] = static_cast<scalar_t>(s);
  else dbias[r] = static_cast<scalar_t>(s);
}

}  // namespace cuda_kernels
}  // namespace fastrel
