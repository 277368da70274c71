// The attention-statistics kernel (what it computes: kernels/attention_stats.h).
//
// Pass 1 reads K and V once and leaves, per (row = query x q head, page), the log2-sum-exp of the
// page's scaled logits, and per (page, kv head) the sum of value-vector norms. Two versions:
//  - tiled (mma_pass below), for tokens_per_page 8/16/32/64 and head_dim 64/128/256: every page
//    lies inside one 64-token tile, so page sums come straight out of the MMA accumulators
//    (mma.sync, or Hopper's wgmma where the build has sm_90a code: kOptWgmma);
//  - generic (any tokens_per_page, head_dim a multiple of 16): one block per (kv head, run of
//    whole pages) computes S = Q.K^T per 64-token tile on the tensor cores (WMMA) into shared
//    memory, then walks it with an online softmax per page, carrying a page across tiles.
// Each row's log2-sum-exp over the whole sequence comes next: in the tiled pass, the last block of
// each (kv head, row split) merges the blocks' running (max, sum) pairs; in the generic one, a
// second launch reduces the page partials. Pass 3, one block per 16 pages over every q head, turns
// the partials into masses, breadth, entropy over heads and mean value norm (launched as a
// programmatic dependent, so that its launch overlaps pass 1's drain). Where the tiled pass has
// one row split and its grid fits the device at once (Llama-3-8B's 32/8 heads, window 32), pass 1
// is launched cooperatively and does pass 3's work in its tail instead (mma_pass::FusedTail): no
// second launch.
// Nothing of size tokens x rows is ever stored: the page partials are [rows][pages] floats, 1/16
// of K's bytes at 16 tokens a page.
#include <cuda.h>
#include <cudaTypedefs.h>
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <mma.h>

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <type_traits>

#include "absl/strings/str_cat.h"
#include "kernels/cuda/driver_entry.h"
#include "kernels/cuda/gpu_kernels.h"
#include "kernels/cuda/ptx.cuh"

namespace kvtier::kernels {
namespace {

constexpr int kTileTokens = 64;
constexpr int kThreads = 256;
constexpr int kWarps = kThreads / 32;
constexpr int kMaxVecPerThread = kTileTokens * (256 / 8) / kThreads;  // head_dim <= 256

struct Pass1Params {
  const void* q;
  const void* k;
  const void* v;
  uint32_t tokens, q_heads, kv_heads, head_dim, window, tokens_per_page, pages;
  uint32_t pages_per_block;
  uint32_t rows_per_block;  // a block takes rows [blockIdx.z * rows_per_block, +rows_per_block)
  float scale_log2;  // log2(e) / sqrt(head_dim): exp2 of scaled logits is exp of the softmax's
  float* page_lse;   // [q_heads * window][pages]
  float* norm_sum;   // [pages][kv_heads]
};

struct SmemLayout {
  uint32_t rows, rows_pad, d_pad, st_ld;
  size_t q_off, k_off, st_off, state_off, hmax_off, vn_off, page_end_off, seg_off, bytes;
};

constexpr int kMaxSegments = kTileTokens + 1;

__host__ __device__ inline SmemLayout MakeLayout(uint32_t rows, uint32_t head_dim) {
  SmemLayout l;
  l.rows = rows;
  l.rows_pad = (rows + 15) / 16 * 16;
  l.d_pad = head_dim + 8;    // 16 bytes of padding per row spreads WMMA loads over the banks
  l.st_ld = l.rows_pad + 4;  // S is stored transposed so that threads of consecutive rows read
                             // consecutive words (no bank conflicts)
  l.q_off = 0;
  l.k_off = l.q_off + size_t{l.rows_pad} * l.d_pad * 2;
  l.st_off = l.k_off + size_t{kTileTokens} * l.d_pad * 2;
  // Per-row online-softmax state (max, sum of the page still open), double-buffered by tile
  // parity: [2][rows_pad] maxima then [2][rows_pad] sums.
  l.state_off = l.st_off + size_t{kTileTokens} * l.st_ld * 4;
  l.hmax_off = l.state_off + size_t{4} * l.rows_pad * 4;  // [2 halves][rows_pad] tile maxima
  l.vn_off = l.hmax_off + size_t{2} * l.rows_pad * 4;     // [kTileTokens] + [2] norm carry
  l.page_end_off = l.vn_off + (kTileTokens + 2) * 4;
  l.seg_off = l.page_end_off + kTileTokens * 4;  // begin, end, page of each segment, then count
  l.bytes = l.seg_off + (3 * kMaxSegments + 1) * 4;
  return l;
}

// 2^x on the special-function unit (ex2.approx: relative error ~2^-22, far inside the mass
// bound; -inf gives 0).
__device__ __forceinline__ float Ex2(float x) {
  float y;
  asm("ex2.approx.ftz.f32 %0, %1;" : "=f"(y) : "f"(x));
  return y;
}

template <typename T>
__device__ inline float SumSquares(const uint4& x) {
  const T* e = reinterpret_cast<const T*>(&x);
  float s[2] = {0, 0};  // two chains: half the dependent-add latency
#pragma unroll
  for (int j = 0; j < 8; ++j) {
    const float f = static_cast<float>(e[j]);
    s[j % 2] = fmaf(f, f, s[j % 2]);
  }
  return s[0] + s[1];
}

// kHeadDim: 64, 128 or 256 compile the index arithmetic to shifts and size the register tiles
// exactly; 0 is the generic version for any multiple of 16 up to 256.
template <typename T, int kHeadDim>
__global__ void __launch_bounds__(kThreads) AttentionStatsPass1(Pass1Params p) {
  using namespace nvcuda;
  constexpr int kVec = kHeadDim != 0 ? kTileTokens * kHeadDim / 8 / kThreads : kMaxVecPerThread;
  extern __shared__ __align__(16) unsigned char smem[];
  const uint32_t head_dim = kHeadDim != 0 ? kHeadDim : p.head_dim;
  const uint32_t group = p.q_heads / p.kv_heads;
  // Rows of the kv head's group split over blockIdx.z: smaller blocks, more of them per SM.
  const uint32_t rbeg = blockIdx.z * p.rows_per_block;
  const uint32_t nrows = min(group * p.window - rbeg, p.rows_per_block);
  const bool do_norms = blockIdx.z == 0;  // one split per (kv head, pages) reads V
  const SmemLayout l = MakeLayout(p.rows_per_block, head_dim);
  T* qs = reinterpret_cast<T*>(smem + l.q_off);
  T* ks = reinterpret_cast<T*>(smem + l.k_off);
  float* st = reinterpret_cast<float*>(smem + l.st_off);
  float* state_m = reinterpret_cast<float*>(smem + l.state_off);  // [2][rows_pad]
  float* state_s = state_m + 2 * l.rows_pad;                      // [2][rows_pad]
  float* hmax = reinterpret_cast<float*>(smem + l.hmax_off);      // [2][rows_pad]
  float* vn_sq = reinterpret_cast<float*>(smem + l.vn_off);       // [kTileTokens]
  float* vn_carry = vn_sq + kTileTokens;                          // [2]
  // page_end[t]: the page index if tile column t is its page's last token, else -1.
  int* page_end = reinterpret_cast<int*>(smem + l.page_end_off);
  int* seg_begin = reinterpret_cast<int*>(smem + l.seg_off);
  int* seg_end = seg_begin + kMaxSegments;
  int* seg_page = seg_end + kMaxSegments;
  int* seg_count = seg_page + kMaxSegments;

  const uint32_t g = blockIdx.y;
  const uint32_t tid = threadIdx.x;
  const uint32_t vecs = head_dim / 8;  // 16-byte vectors per head row
  const uint4 zero = make_uint4(0, 0, 0, 0);

  // The q-head group's window queries: row r = j * window + i is query i of q head g*group + j.
  const uint4* q4 = static_cast<const uint4*>(p.q);
  for (uint32_t idx = tid; idx < l.rows_pad * vecs; idx += kThreads) {
    const uint32_t r = idx / vecs, c = idx % vecs;
    uint4 x = zero;
    if (r < nrows) {
      const uint32_t j = (rbeg + r) / p.window, i = (rbeg + r) % p.window;
      x = q4[(size_t{i} * p.q_heads + g * group + j) * vecs + c];
    }
    *reinterpret_cast<uint4*>(qs + size_t{r} * l.d_pad + c * 8) = x;
  }
  for (uint32_t r = tid; r < l.rows_pad; r += kThreads) {
    state_m[r] = -INFINITY;
    state_s[r] = 0;
  }
  for (uint32_t t = tid; t < kTileTokens; t += kThreads) vn_sq[t] = 0;  // atomics add into it
  if (tid == 0) vn_carry[0] = 0;

  const uint32_t tok_begin = blockIdx.x * p.pages_per_block * p.tokens_per_page;
  const uint32_t tok_end = min(p.tokens, tok_begin + p.pages_per_block * p.tokens_per_page);
  const uint32_t tok_stride = p.kv_heads * vecs;  // uint4s from one token to the next
  const uint4* kg = static_cast<const uint4*>(p.k) + g * vecs;
  const uint4* vg = static_cast<const uint4*>(p.v) + g * vecs;
  const uint32_t tile_vecs = kTileTokens * vecs;

  // K and V of a tile travel in registers: the next tile's loads are issued before this tile's
  // MMA and walk, so device-memory latency overlaps the arithmetic (software pipelining).
  uint4 kr[kVec], vr[kVec];
  auto load_tile = [&](uint32_t c) {
#pragma unroll
    for (int u = 0; u < kVec; ++u) {
      const uint32_t idx = tid + u * kThreads;
      kr[u] = zero;
      vr[u] = zero;
      if (idx < tile_vecs) {
        const uint32_t tok = c + idx / vecs;
        if (tok < tok_end) {
          const size_t off = size_t{tok} * tok_stride + idx % vecs;
          kr[u] = kg[off];
          if (do_norms) vr[u] = vg[off];
        }
      }
    }
  };
  load_tile(tok_begin);
  uint32_t parity = 0;
  for (uint32_t c0 = tok_begin; c0 < tok_end; c0 += kTileTokens, parity ^= 1) {
    __syncthreads();
#pragma unroll
    for (int u = 0; u < kVec; ++u) {
      const uint32_t idx = tid + u * kThreads;
      if (idx < tile_vecs) {
        const uint32_t t = idx / vecs;
        *reinterpret_cast<uint4*>(ks + size_t{t} * l.d_pad + (idx % vecs) * 8) = kr[u];
        // A token's squares are spread over `vecs` consecutive lanes; where vecs divides the warp
        // (head_dim 16..256, powers of two) a shuffle tree sums them, because 16 lanes doing
        // shared-memory atomics on one word serialise and cost more than the whole tile's loads.
        float sq = SumSquares<T>(vr[u]);  // zero past tok_end
        if (!do_norms) {
          // block-uniform: this split does not own the value norms
        } else if (32 % vecs == 0) {
          for (uint32_t off = vecs / 2; off > 0; off /= 2) {
            sq += __shfl_xor_sync(0xffffffffu, sq, off);
          }
          if (idx % vecs == 0) vn_sq[t] = sq;
        } else {
          atomicAdd(&vn_sq[t], sq);
        }
      }
    }
    if (tid < kTileTokens) {
      const uint32_t tok = c0 + tid;
      const bool last =
          tok < tok_end && ((tok + 1) % p.tokens_per_page == 0 || tok + 1 == p.tokens);
      page_end[tid] = last ? static_cast<int>(tok / p.tokens_per_page) : -1;
    }
    __syncthreads();
    if (c0 + kTileTokens < tok_end) load_tile(c0 + kTileTokens);

    // S^T tile [64 tokens][rows_pad] = (Q . K^T)^T on the tensor cores. A warp owns one row tile
    // and half the columns (two 16x16 outputs), so each Q fragment it loads feeds two MMAs.
    const uint32_t row_tiles = l.rows_pad / 16;
    for (uint32_t unit = tid / 32; unit < row_tiles * 2; unit += kWarps) {
      const uint32_t rt = unit / 2, ct0 = (unit % 2) * 2;
      wmma::fragment<wmma::accumulator, 16, 16, 16, float> acc0, acc1;
      wmma::fill_fragment(acc0, 0.0f);
      wmma::fill_fragment(acc1, 0.0f);
#pragma unroll 4
      for (uint32_t kk = 0; kk < head_dim; kk += 16) {
        wmma::fragment<wmma::matrix_a, 16, 16, 16, T, wmma::row_major> a;
        wmma::fragment<wmma::matrix_b, 16, 16, 16, T, wmma::col_major> b0, b1;
        wmma::load_matrix_sync(a, qs + size_t{rt} * 16 * l.d_pad + kk, l.d_pad);
        wmma::load_matrix_sync(b0, ks + size_t{ct0} * 16 * l.d_pad + kk, l.d_pad);
        wmma::load_matrix_sync(b1, ks + size_t{ct0 + 1} * 16 * l.d_pad + kk, l.d_pad);
        wmma::mma_sync(acc0, a, b0, acc0);
        wmma::mma_sync(acc1, a, b1, acc1);
      }
      wmma::store_matrix_sync(st + size_t{ct0} * 16 * l.st_ld + rt * 16, acc0, l.st_ld,
                              wmma::mem_col_major);
      wmma::store_matrix_sync(st + size_t{ct0 + 1} * 16 * l.st_ld + rt * 16, acc1, l.st_ld,
                              wmma::mem_col_major);
    }
    const uint32_t tile_end = min(tok_end - c0, uint32_t{kTileTokens});
    // The tile's pages: segments of columns split after each page end (warp 0, by ballot). The
    // first segment continues the page left open by the previous tile; the last may stay open.
    if (tid < 32) {
      const bool e0 = tid < tile_end && page_end[tid] >= 0;
      const bool e1 = tid + 32 < tile_end && page_end[tid + 32] >= 0;
      uint64_t ends =
          __ballot_sync(0xffffffffu, e0) | (uint64_t{__ballot_sync(0xffffffffu, e1)} << 32);
      if (tid == 0) {
        int n = 0, begin = 0;
        while (ends != 0) {
          const int c = __ffsll(static_cast<long long>(ends)) - 1;
          ends &= ends - 1;
          seg_begin[n] = begin;
          seg_end[n] = c + 1;
          seg_page[n] = page_end[c];
          ++n;
          begin = c + 1;
        }
        if (begin < static_cast<int>(tile_end)) {
          seg_begin[n] = begin;
          seg_end[n] = static_cast<int>(tile_end);
          seg_page[n] = -1;
          ++n;
        }
        *seg_count = n;
      }
    }
    __syncthreads();

    // Walk 1: each row's maximum over the tile's unmasked columns, two threads a row (halves).
    for (uint32_t item = tid; item < 2 * nrows; item += kThreads) {
      const uint32_t r = item % nrows, half = item / nrows;
      const uint32_t pos = p.tokens - p.window + (rbeg + r) % p.window;  // causal: sees [0, pos]
      const uint32_t n_valid = pos >= c0 ? min(tile_end, pos - c0 + 1) : 0;
      const uint32_t t1 = min(n_valid, (half + 1) * (kTileTokens / 2));
      float mx = -INFINITY;
#pragma unroll 8
      for (uint32_t t = half * (kTileTokens / 2); t < t1; ++t) {
        mx = fmaxf(mx, st[size_t{t} * l.st_ld + r]);
      }
      hmax[half * l.rows_pad + r] = mx * p.scale_log2;
    }
    __syncthreads();

    // Walk 2: one item per (row, segment), plus one per segment for the value norms. All share
    // the row's new reference max, so the sums of one page split over tiles simply add (the
    // carried sum is rescaled once).
    const int nseg = *seg_count;
    const float* m_cur = state_m + parity * l.rows_pad;
    const float* s_cur = state_s + parity * l.rows_pad;
    float* m_nxt = state_m + (parity ^ 1) * l.rows_pad;
    float* s_nxt = state_s + (parity ^ 1) * l.rows_pad;
    // The value-norm items come first: their loops are serial, so they should not be a last
    // round that the whole block waits for.
    const uint32_t norm_items = do_norms ? nseg : 0;
    const uint32_t items = nrows * nseg + norm_items;
    for (uint32_t item = tid; item < items; item += kThreads) {
      if (item >= norm_items) {
        const uint32_t r = (item - norm_items) % nrows, k = (item - norm_items) / nrows;
        const uint32_t j = (rbeg + r) / p.window, i = (rbeg + r) % p.window;
        const uint32_t pos = p.tokens - p.window + i;
        const uint32_t n_valid = pos >= c0 ? min(tile_end, pos - c0 + 1) : 0;
        const float m_old = m_cur[r];
        const float m_new = fmaxf(m_old, fmaxf(hmax[r], hmax[l.rows_pad + r]));
        float sum = (k == 0 && m_old != -INFINITY) ? s_cur[r] * Ex2(m_old - m_new) : 0.0f;
        const uint32_t c_end = min(static_cast<uint32_t>(seg_end[k]), n_valid);
        const float* col = st + r;
#pragma unroll 4
        for (uint32_t t = seg_begin[k]; t < c_end; ++t) {
          sum += Ex2(fmaf(col[size_t{t} * l.st_ld], p.scale_log2, -m_new));
        }
        const int pg = seg_page[k];
        if (pg >= 0) {
          p.page_lse[(size_t{g * group + j} * p.window + i) * p.pages + pg] =
              sum > 0 ? m_new + log2f(sum) : -INFINITY;
          sum = 0;
        }
        if (static_cast<int>(k) == nseg - 1) {
          m_nxt[r] = m_new;
          s_nxt[r] = sum;
        }
      } else {
        const int k = static_cast<int>(item);
        float acc = k == 0 ? vn_carry[parity] : 0.0f;
        for (int t = seg_begin[k]; t < seg_end[k]; ++t) {
          acc += sqrtf(vn_sq[t]);
          vn_sq[t] = 0;  // the atomic path of the next tile adds into it
        }
        const int pg = seg_page[k];
        if (pg >= 0) {
          p.norm_sum[size_t(pg) * p.kv_heads + g] = acc;
          acc = 0;
        }
        if (k == nseg - 1) vn_carry[parity ^ 1] = acc;
      }
    }
  }
}

// Merges log2-sum-exp `x` into the running (m, s) pair.
__device__ inline void MergeLse(float& m, float& s, float x_m, float x_s) {
  if (x_s == 0) return;
  if (s == 0) {
    m = x_m;
    s = x_s;
    return;
  }
  const float mx = fmaxf(m, x_m);
  s = s * exp2f(m - mx) + x_s * exp2f(x_m - mx);
  m = mx;
}

__global__ void __launch_bounds__(kThreads)
    AttentionStatsRowLse(const float* __restrict__ page_lse, uint32_t pages,
                         float* __restrict__ row_lse) {
  const uint32_t row = blockIdx.x;
  float m = 0, s = 0;
  for (uint32_t pg = threadIdx.x; pg < pages; pg += kThreads) {
    const float x = page_lse[size_t{row} * pages + pg];
    if (x != -INFINITY) MergeLse(m, s, x, 1.0f);
  }
  for (int off = 16; off > 0; off /= 2) {
    const float om = __shfl_xor_sync(0xffffffffu, m, off);
    const float os = __shfl_xor_sync(0xffffffffu, s, off);
    MergeLse(m, s, om, os);
  }
  __shared__ float wm[kWarps], ws[kWarps];
  if (threadIdx.x % 32 == 0) {
    wm[threadIdx.x / 32] = m;
    ws[threadIdx.x / 32] = s;
  }
  __syncthreads();
  if (threadIdx.x == 0) {
    for (int w = 1; w < kWarps; ++w) MergeLse(m, s, wm[w], ws[w]);
    row_lse[row] = s > 0 ? m + log2f(s) : -INFINITY;
  }
}

// ---------------------------------------------------------------------------------------------
// Pass 1 for page-aligned tiles (tokens_per_page 8, 16, 32 or 64; head_dim 64, 128 or 256: the
// shapes of vLLM, SGLang and TensorRT-LLM paged caches). FlashAttention-2's layout: a warp owns 16
// query rows whose Q fragments stay in registers for the whole block; K and V tiles of 64 tokens
// stream through a ring of shared-memory stages (filled by tensor copies, or cp.async, see the
// kOpt* options below), so the loads of the next stages overlap this tile's arithmetic; S = Q.K^T
// comes out of mma.sync in registers, and every page lies inside one tile, so each page's
// log2-sum-exp is finished from the accumulator fragments and a quad reduce-scatter, without
// touching shared memory. Each thread also keeps its rows' running (reference, sum) over the
// block's tokens, which the last block merges (a few floats per row instead of re-reading every
// page partial).
//
// Measured on an H200 (bench/RESULTS.md, issue 18; us of the whole statistics, 32k tokens, 32/8
// heads, d 128, window 32; K+V read once 31.8-32.3 us): options 0 (the H100's kernel) 81.5-82.1,
// kOptFixedRef 78.2, + kOptMmaNorms 68.9-69.4, + kOptBulkLoads 69.8, + kOptEvictFirst (15, the
// default until session 14) 66.1-67.5; pass 1 alone 56-63 us under ncu, pass 3 9-10 us. Session 14:
// + the fused tail (kOptFusedTail, now the default) 63.7-67.4, median 66.0 against 66.5 for 15 in
// the same processes; the one kernel 63.6-65.1 us under ncu. Run 7: + unpadded swizzled tiles
// (kOptSwizzle) 64.3-68.6, against 64.2-69.4 for 79 in the same processes. Session 15 (run 9):
// + tensor maps cached per K/V pointer (kOptCacheMaps, now the default) 64.1-65.6, median 64.9
// (2.04x), against 64.4-65.7 for 207 in the same processes. V outside the stage ring, norms in two
// chains, S in two halves and two other launch paths were all slower or no faster
// (bench/gpu/results/h200-run9.md; their code: s15-attention-experiments.patch there). Session 16:
// S by wgmma (kOptWgmma, the default of sm_90a builds) 58.6-60.7 us, median 59.8 (1.84-1.90x),
// against 65.0-66.9, median 66.3, for 4303 in the same processes; the one kernel under ncu 59.9 us
// against 62.4-63.3 (SpeedOfLight), 61.7 against 61.8 (a multi-metric replay): 9% fewer
// instructions, half the shared-memory loads, and its warps now wait on the warpgroup-wide wgmma
// instead (bench/gpu/results/h200-s16-attnw.md).
namespace mma_pass {

constexpr int kTile = 64;
constexpr int kMaxWarps = 8;  // 128 rows a block: the q-head group x window of Llama-3-8B

// kDeep: one block an SM with 6 stages (head_dim <= 128) instead of two blocks with 3 each.
// kSwizzle (kOptSwizzle): unpadded tiles in the tensor copy's 128-byte swizzle (see
// SwizzledChunk); the ring then starts at the first 1024-byte boundary of the dynamic shared
// memory, hence the 1024 extra bytes.
template <int kHeadDim, bool kDeep = false, bool kSwizzle = false>
struct Geometry {
  // 2 blocks an SM up to head_dim 128
  static constexpr int kStages = kDeep && kHeadDim <= 128 ? 6 : kHeadDim <= 128 ? 3 : 2;
  // Padded: a 16-byte pad puts the 8 rows of an ldmatrix on distinct banks.
  static constexpr int kRowElems = kSwizzle ? kHeadDim : kHeadDim + 8;
  static constexpr int kChunksPerRow = kHeadDim / 8;  // 16-byte vectors per token row
  static constexpr size_t kTileBytes = size_t{kTile} * kRowElems * 2;
  static constexpr size_t kStageBytes = 2 * kTileBytes;         // K, then V
  static constexpr size_t kBarrierOff = kStages * kStageBytes;  // full[kStages], empty[kStages]
  static constexpr size_t kAlignPad = kSwizzle ? 1024 : 0;
  static constexpr size_t kSmemBytes = kBarrierOff + 2 * kStages * sizeof(uint64_t) + kAlignPad;
};

// kOptSwizzle's tile layout: the tensor copy writes a tile as head_dim / 64 boxes of 64 tokens x
// 128 bytes, 8 KiB each, with CU_TENSOR_MAP_SWIZZLE_128B: 16-byte chunk c of token row t lands at
// chunk c ^ (t % 8) of its 128-byte row. The byte offset in the tile of chunk `chunk` (16 bytes,
// counted along the whole head row) of token row `row`.
__device__ __forceinline__ uint32_t SwizzledChunk(uint32_t row, uint32_t chunk) {
  return (chunk / 8) * (kTile * 128) + row * 128 + (((chunk % 8) ^ (row % 8)) << 4);
}

struct Params {
  // K and V as [tokens][kv_heads * head_dim] for the bulk tensor copies (kOptBulkLoads): a box
  // of 64 tokens x (head_dim + 8) elements lands as one padded stage tile (the 8 extra elements
  // are the next head's, or zeros past the last, and are never read).
  CUtensorMap tmap_k;
  CUtensorMap tmap_v;
  const void* q;
  const void* k;
  const void* v;
  uint32_t tokens, q_heads, kv_heads, window, pages;
  uint32_t rows_per_block;   // a multiple of 16, at most 128
  uint32_t tiles_per_block;  // 64-token tiles of one block; gridDim.x blocks cover the sequence
  float scale_log2;
  float* page_lse;   // [q_heads * window][pages]
  float2* row_part;  // [q_heads * window][gridDim.x] running (max, sum), log2 units
  float* row_lse;    // [q_heads * window] written by the last block of each (kv head, split)
  float* norm_sum;   // [pages][kv_heads][tokens_per_page / 8]: one part per 8 tokens
  uint32_t* done;    // [kv_heads][splits] blocks finished; zero between launches
  // [kv_heads][splits] chunks handed out past the grid's first ones (kOptDynamic); zero between
  // launches.
  uint32_t* next_chunk;
  // The fused tail (kOptFusedTail; a launch-time choice, nonzero only for a cooperative launch
  // with one row split and the static schedule): pass 3's work done by pass 1's blocks, see
  // FusedTail. Counters zero between launches.
  uint32_t fused;
  float breadth_threshold;
  uint32_t* arrive;    // [kv_heads] blocks whose running (max, sum) pairs are published
  uint32_t* depart;    // [kv_heads] blocks done reading them
  uint32_t* finished;  // [gridDim.x] kv heads' blocks done with the pages of block column x
  float4* kv_part;     // [kv_heads][pages] (mass, sum of mass log mass, breadth count, unused)
  PageAttentionStats* out;
};

using ptx::CpAsync16;
using ptx::CpAsyncArriveOn;
using ptx::CpAsyncWait;
using ptx::MbarrierArrive;
using ptx::MbarrierInit;
using ptx::MbarrierWait;
using ptx::SmemAddress;

// The stage ring's mbarriers: `full` completes when the producer's cp.asyncs into the stage have
// landed, `empty` when every consumer thread has read the stage.

__device__ __forceinline__ void LdMatrixX4(uint32_t addr, uint32_t& r0, uint32_t& r1, uint32_t& r2,
                                           uint32_t& r3) {
  // volatile (kept in order with the barriers and cp.async waits, which are volatile too) but no
  // "memory" clobber, which would pin every MMA around it in program order.
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0, %1, %2, %3}, [%4];\n"
               : "=r"(r0), "=r"(r1), "=r"(r2), "=r"(r3)
               : "r"(addr));
}

// c += a . b for one m16n8k16 tile, 16-bit inputs, fp32 accumulators. Not volatile: a pure
// function of its operands, which the compiler may schedule between the shared-memory loads.
template <typename T>
__device__ __forceinline__ void Mma16816(float (&c)[4], const uint32_t (&a)[4], uint32_t b0,
                                         uint32_t b1) {
  if constexpr (std::is_same_v<T, __nv_bfloat16>) {
    asm("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0, %1, %2, %3}, "
        "{%4, %5, %6, %7}, {%8, %9}, {%0, %1, %2, %3};\n"
        : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
  } else {
    asm("mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0, %1, %2, %3}, "
        "{%4, %5, %6, %7}, {%8, %9}, {%0, %1, %2, %3};\n"
        : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
  }
}

// Hopper's warpgroup MMA (kOptWgmma), compiled only for sm_90a: anywhere else kHaveWgmma is
// false and the option's kernels take the mma.sync path, so a build for any other target still
// gets a working kernel.
#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
constexpr bool kHaveWgmma = true;
#else
constexpr bool kHaveWgmma = false;
#endif

// The matrix descriptor of a K-major operand in the tensor copy's 128-byte swizzle (PTX ISA,
// "Matrix Descriptor Format"): start address >> 4 in bits 0-13; leading byte offset (unused for a
// swizzled K-major layout whose K extent fits one 128-byte row: 1 by convention) in bits 16-29;
// stride byte offset 1024 >> 4 (8 rows of 128 bytes, one swizzle atom, to the next 8 rows) in
// bits 32-45; base offset 0 (the atoms start 1024-byte aligned); swizzle mode 1 (128B) in bits
// 62-63. A shared-memory address < 256 KiB fits the 14 bits, so adding (bytes >> 4) to the
// descriptor moves its start address.
// (A template only so that a build without wgmma, which never calls it, does not warn.)
template <int kSwizzleBytes = 128>
__device__ __forceinline__ uint64_t SwizzledKDescriptor(uint32_t smem_addr) {
  static_assert(kSwizzleBytes == 128, "the tensor copy's 128-byte swizzle only");
  return uint64_t{(smem_addr & 0x3ffffu) >> 4} | (uint64_t{1} << 16) | (uint64_t{1024 >> 4} << 32) |
         (uint64_t{1} << 62);
}

// Registers the warpgroup MMA writes asynchronously: an empty volatile asm that "rewrites" them,
// kept in order with the wgmma waits (volatile too), so that no read of them is moved above the
// wait that makes them valid.
template <int kN>
__device__ __forceinline__ void FenceAccumulators(float (&acc)[kN][4]) {
#pragma unroll
  for (int n = 0; n < kN; ++n) {
#pragma unroll
    for (int e = 0; e < 4; ++e) asm volatile("" : "+f"(acc[n][e])::"memory");
  }
}

template <int kPending>
__device__ __forceinline__ void WgmmaWait() {
  asm volatile("wgmma.wait_group.sync.aligned %0;\n" ::"n"(kPending) : "memory");
}

// acc (+)= A . B for a 64 x 64 x 16 tile on the warpgroup: A (16 rows a warp) from registers in
// mma.sync's m16n8k16 A layout, B = 64 token rows x 16 dimensions through `desc`; the
// accumulator's per-thread layout is that of eight m16n8 C fragments (acc[n] = tokens 8n..8n+7).
// `accumulate` false: acc = A . B (the old contents are ignored).
template <typename T>
__device__ __forceinline__ void Wgmma64x64x16(float (&acc)[8][4], const uint32_t (&a)[4],
                                              uint64_t desc, bool accumulate) {
#define KVTIER_WGMMA_ACC                                                                   \
  "+f"(acc[0][0]), "+f"(acc[0][1]), "+f"(acc[0][2]), "+f"(acc[0][3]), "+f"(acc[1][0]),     \
      "+f"(acc[1][1]), "+f"(acc[1][2]), "+f"(acc[1][3]), "+f"(acc[2][0]), "+f"(acc[2][1]), \
      "+f"(acc[2][2]), "+f"(acc[2][3]), "+f"(acc[3][0]), "+f"(acc[3][1]), "+f"(acc[3][2]), \
      "+f"(acc[3][3]), "+f"(acc[4][0]), "+f"(acc[4][1]), "+f"(acc[4][2]), "+f"(acc[4][3]), \
      "+f"(acc[5][0]), "+f"(acc[5][1]), "+f"(acc[5][2]), "+f"(acc[5][3]), "+f"(acc[6][0]), \
      "+f"(acc[6][1]), "+f"(acc[6][2]), "+f"(acc[6][3]), "+f"(acc[7][0]), "+f"(acc[7][1]), \
      "+f"(acc[7][2]), "+f"(acc[7][3])
#define KVTIER_WGMMA_OPERANDS                                                         \
  "{%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, %16, %17, " \
  "%18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31}, "           \
  "{%32, %33, %34, %35}, %36, p, 1, 1, 0;\n"
  if constexpr (std::is_same_v<T, __nv_bfloat16>) {
    asm volatile(
        "{\n.reg .pred p;\nsetp.ne.b32 p, %37, 0;\n"
        "wgmma.mma_async.sync.aligned.m64n64k16.f32.bf16.bf16 " KVTIER_WGMMA_OPERANDS "}\n"
        : KVTIER_WGMMA_ACC
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(desc), "r"(accumulate ? 1 : 0));
  } else {
    asm volatile(
        "{\n.reg .pred p;\nsetp.ne.b32 p, %37, 0;\n"
        "wgmma.mma_async.sync.aligned.m64n64k16.f32.f16.f16 " KVTIER_WGMMA_OPERANDS "}\n"
        : KVTIER_WGMMA_ACC
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(desc), "r"(accumulate ? 1 : 0));
  }
#undef KVTIER_WGMMA_ACC
#undef KVTIER_WGMMA_OPERANDS
}

// Issues S = Q . K^T for one 64-token tile of the swizzled ring (kOptSwizzle's layout: head_dim /
// 64 boxes of 64 tokens x 128 bytes) as one wgmma group: k step ks starts 32 bytes further into
// the 128-byte rows, and every 4 steps one 8 KiB box further. The fence orders the warpgroup's
// earlier register accesses to acc (the last tile's statistics read it) before the MMAs.
template <typename T, int kHeadDim>
__device__ __forceinline__ void IssueTileS(float (&acc)[8][4],
                                           const uint32_t (&qa)[kHeadDim / 16][4],
                                           uint32_t k_tile) {
  asm volatile("wgmma.fence.sync.aligned;\n" ::: "memory");
  const uint64_t desc = SwizzledKDescriptor(k_tile);
#pragma unroll
  for (int ks = 0; ks < kHeadDim / 16; ++ks) {
    const uint32_t off = (ks / 4) * (64 * 128) + (ks % 4) * 32;
    Wgmma64x64x16<T>(acc, qa[ks], desc + (off >> 4), ks > 0);
  }
  asm volatile("wgmma.commit_group.sync.aligned;\n" ::: "memory");
}

__device__ __forceinline__ float QuadMax(float x) {
  x = fmaxf(x, __shfl_xor_sync(0xffffffffu, x, 1));
  return fmaxf(x, __shfl_xor_sync(0xffffffffu, x, 2));
}
__device__ __forceinline__ float QuadSum(float x) {
  x += __shfl_xor_sync(0xffffffffu, x, 1);
  return x + __shfl_xor_sync(0xffffffffu, x, 2);
}

// The last block of a (kv head, row split) to finish merges every block's running (max, sum) of
// its rows into the rows' log2-sum-exp (the threadFenceReduction pattern: each block publishes its
// parts, fences, and counts itself done), so no separate launch is needed for it.
__device__ void MergeRowParts(const Params& p, uint32_t rbeg, uint32_t nrows) {
  __shared__ bool last;
  __threadfence();  // this block's row parts are visible before it counts itself done
  __syncthreads();
  uint32_t* done = p.done + blockIdx.y * gridDim.z + blockIdx.z;
  if (threadIdx.x == 0) last = atomicAdd(done, 1u) == gridDim.x - 1;
  __syncthreads();
  if (!last) return;
  __threadfence();
  // Two threads a row (neighbouring lanes), each merging half the blocks' parts; loads of
  // different parts are independent, so they overlap.
  const uint32_t group = p.q_heads / p.kv_heads;
  for (uint32_t item = threadIdx.x; item < 2 * ((nrows + 15) / 16 * 16); item += blockDim.x) {
    const uint32_t r = item / 2, half = item % 2;
    float m = 0, s = 0;
    uint32_t row = 0;
    if (r < nrows) {
      const uint32_t rr = rbeg + r;
      row = (blockIdx.y * group + rr / p.window) * p.window + rr % p.window;
#pragma unroll 8
      for (uint32_t c = half; c < gridDim.x; c += 2) {
        const float2 x = __ldcg(&p.row_part[size_t{row} * gridDim.x + c]);  // other SMs wrote it
        MergeLse(m, s, x.x, x.y);
      }
    }
    MergeLse(m, s, __shfl_xor_sync(0xffffffffu, m, 1), __shfl_xor_sync(0xffffffffu, s, 1));
    if (r < nrows && half == 0) p.row_lse[row] = s > 0 ? m + log2f(s) : -INFINITY;
  }
  if (threadIdx.x == 0) {  // ready for the next launch on this workspace
    *done = 0;
    p.next_chunk[blockIdx.y * gridDim.z + blockIdx.z] = 0;
  }
}

// Pass 3 folded into pass 1's tail (kOptFusedTail), for one row split: the grid is launched
// cooperatively (every block resident at once), so a block can wait for the other blocks of its
// kv head. Each block then
//  1. publishes its rows' running (max, sum) pairs (written before the call) and waits until
//     every block of its kv head has: one counter a kv head, no grid-wide barrier;
//  2. merges them into its rows' log2-sum-exp over the whole sequence, each block for itself;
//  3. turns the page partials of its own pages (page_lse, which its threads wrote) into each q
//     head's mass, and per page the sums over its q heads of mass, mass log mass and the breadth
//     count: one float4 a (kv head, page);
//  4. counts itself done with its pages; the last kv head's block of a block column adds the kv
//     heads' float4s in kv-head order and the value norms, and writes the pages' statistics.
// Mass and entropy need only sums over heads, so nothing waits for the whole grid, and no second
// launch (nor its 61-65% SM occupancy, measured) is left. Deterministic: every sum runs in a
// fixed order (the breadth counts are integers).
constexpr uint32_t kTailPages = 64;
// A block waiting for its kv head's others longer than this traps (an error at the next
// synchronisation) instead of hanging: with a cooperative launch it never happens.
constexpr uint64_t kTailSpinLimitNs = 20'000'000'000ull;

__device__ __forceinline__ uint32_t LoadAcquireGpu(const uint32_t* address) {
  uint32_t v;
  asm volatile("ld.acquire.gpu.global.u32 %0, [%1];\n" : "=r"(v) : "l"(address) : "memory");
  return v;
}

__device__ __forceinline__ uint64_t GlobalTimerNs() {
  uint64_t t;
  asm volatile("mov.u64 %0, %%globaltimer;\n" : "=l"(t));
  return t;
}

// `s_mass`: at least q_heads / kv_heads * kTailPages floats of shared memory the block no longer
// uses (its stage ring).
template <int kTpp>
__device__ void FusedTail(const Params& p, uint32_t tile_begin, uint32_t tile_end, float* s_mass) {
  constexpr uint32_t kPagesPerTile = kTile / kTpp;
  constexpr uint32_t kNormParts = kTpp / 8;
  constexpr uint32_t kSlots = 4;  // step 4: threads a page
  __shared__ float s_lse[kMaxWarps * 16];
  __shared__ uint32_t s_above[kTailPages];
  __shared__ float4 s_sum[kSlots][kTailPages];
  __shared__ bool s_last;
  const uint32_t tid = threadIdx.x, g = blockIdx.y;
  const uint32_t group = p.q_heads / p.kv_heads;
  const uint32_t nrows = group * p.window;  // one row split: the kv head's whole q-head group
  const uint32_t row0 = g * nrows;          // its first row of page_lse

  // 1. Publish, then wait for the kv head's other blocks (thread 0 spins, the rest at the barrier).
  __threadfence();
  __syncthreads();
  if (tid == 0) {
    atomicAdd(p.arrive + g, 1u);
    const uint64_t t0 = GlobalTimerNs();
    while (LoadAcquireGpu(p.arrive + g) < gridDim.x) {
      __nanosleep(32);
      if (GlobalTimerNs() - t0 > kTailSpinLimitNs) __trap();
    }
  }
  __syncthreads();
  __threadfence();

  // 2. Rows' log2-sum-exp, two threads a row, into shared memory. The parts come in batches of
  // loads issued together, each batch merged as max then sum (no chain of dependent merges).
  // A part (m, s) stands for s * 2^m; s == 0 is an empty one (m may be -inf).
  constexpr int kMergeBatch = 16;
  const uint32_t rows_pad = (nrows + 15) / 16 * 16;
  for (uint32_t item = tid; item < 2 * rows_pad; item += blockDim.x) {
    const uint32_t r = item / 2, half = item % 2;
    float m = -INFINITY, s = 0;
    if (r < nrows) {
      const float2* part = p.row_part + size_t{row0 + r} * gridDim.x;
      for (uint32_t c0 = half; c0 < gridDim.x; c0 += 2 * kMergeBatch) {
        float2 x[kMergeBatch];
#pragma unroll
        for (int k = 0; k < kMergeBatch; ++k) {
          const uint32_t c = c0 + 2 * k;
          x[k] = c < gridDim.x ? __ldcg(part + c) : make_float2(-INFINITY, 0.0f);  // other SMs'
        }
        float mx = m;
#pragma unroll
        for (int k = 0; k < kMergeBatch; ++k) {
          if (x[k].y > 0) mx = fmaxf(mx, x[k].x);
        }
        if (mx != -INFINITY) {
          float sum = s > 0 ? s * Ex2(m - mx) : 0.0f;
#pragma unroll
          for (int k = 0; k < kMergeBatch; ++k) {
            sum += x[k].y > 0 ? x[k].y * Ex2(x[k].x - mx) : 0.0f;
          }
          m = mx;
          s = sum;
        }
      }
    }
    const float om = __shfl_xor_sync(0xffffffffu, m, 1);
    const float os = __shfl_xor_sync(0xffffffffu, s, 1);
    const float mx = fmaxf(m, om);
    const float total = (s > 0 ? s * Ex2(m - mx) : 0.0f) + (os > 0 ? os * Ex2(om - mx) : 0.0f);
    if (r < nrows && half == 0) s_lse[r] = total > 0 ? mx + log2f(total) : -INFINITY;
  }
  __syncthreads();
  // Every block of the kv head is past its wait: the last to leave rearms the counters.
  if (tid == 0 && atomicAdd(p.depart + g, 1u) == gridDim.x - 1) {
    p.arrive[g] = 0;
    p.depart[g] = 0;
  }

  // 3. Masses of the block's pages, kTailPages at a time: one thread a (q head, page) walks the
  // window; consecutive threads read consecutive pages of one page_lse row.
  const uint32_t pg_begin = tile_begin * kPagesPerTile;
  const uint32_t pg_end = min(p.pages, tile_end * kPagesPerTile);
  for (uint32_t c0 = pg_begin; c0 < pg_end; c0 += kTailPages) {
    const uint32_t n = min(kTailPages, pg_end - c0);
    if (tid < kTailPages) s_above[tid] = 0;
    __syncthreads();
    for (uint32_t item = tid; item < group * kTailPages; item += blockDim.x) {
      const uint32_t j = item / kTailPages, col = item % kTailPages;
      float mass = 0;
      uint32_t above = 0;
      if (col < n) {
        // Queries i of q head j: 32 loads issued together, then their exponentials.
        constexpr int kMassBatch = 32;
        const float* x_ptr = p.page_lse + size_t{row0 + j * p.window} * p.pages + c0 + col;
        const float* ref_ptr = s_lse + j * p.window;
        for (uint32_t i0 = 0; i0 < p.window; i0 += kMassBatch) {
          float x[kMassBatch];
#pragma unroll
          for (int k = 0; k < kMassBatch; ++k) {
            const uint32_t i = i0 + k;
            x[k] = i < p.window ? x_ptr[size_t{i} * p.pages] : -INFINITY;  // this block wrote it
          }
#pragma unroll
          for (int k = 0; k < kMassBatch; ++k) {
            const uint32_t i = i0 + k;
            const float m = Ex2(x[k] - (i < p.window ? ref_ptr[i] : 0.0f));  // ex2(-inf) = 0
            mass += m;
            above += m > p.breadth_threshold ? 1u : 0u;
          }
        }
      }
      s_mass[j * kTailPages + col] = mass;
      if (above != 0) atomicAdd(&s_above[col], above);
    }
    __syncthreads();
    if (tid < n) {
      float total = 0, h_log_h = 0;
      for (uint32_t j = 0; j < group; ++j) {
        const float m = s_mass[j * kTailPages + tid];
        total += m;
        if (m > 0) h_log_h += m * __logf(m);
      }
      p.kv_part[size_t{g} * p.pages + c0 + tid] =
          make_float4(total, h_log_h, __uint_as_float(s_above[tid]), 0.0f);
    }
    __syncthreads();
  }

  // 4. The last kv head's block of this block column writes the pages.
  __threadfence();
  __syncthreads();
  if (tid == 0) s_last = atomicAdd(p.finished + blockIdx.x, 1u) == gridDim.y - 1;
  __syncthreads();
  if (!s_last) return;
  __threadfence();
  const uint32_t norm_values = p.kv_heads * kNormParts;
  for (uint32_t c0 = pg_begin; c0 < pg_end; c0 += kTailPages) {
    const uint32_t col = tid % kTailPages, slot = tid / kTailPages;
    const uint32_t pg = c0 + col;
    if (slot < kSlots) {
      // Slot k adds kv heads k, k + 4, ... and norm parts k, k + 4, ...: independent loads.
      float4 acc = make_float4(0.0f, 0.0f, 0.0f, 0.0f);
      uint32_t above = 0;
      if (pg < pg_end) {
        // Batches of loads issued together: kv heads slot, slot + 4, ...; norm parts likewise.
        constexpr int kBatch = 4;
        for (uint32_t h0 = slot; h0 < p.kv_heads; h0 += kSlots * kBatch) {
          float4 x[kBatch];
#pragma unroll
          for (int k = 0; k < kBatch; ++k) {
            const uint32_t h = h0 + k * kSlots;
            x[k] = h < p.kv_heads ? __ldcg(&p.kv_part[size_t{h} * p.pages + pg])
                                  : make_float4(0.0f, 0.0f, 0.0f, 0.0f);
          }
#pragma unroll
          for (int k = 0; k < kBatch; ++k) {
            acc.x += x[k].x;
            acc.y += x[k].y;
            above += __float_as_uint(x[k].z);
          }
        }
        for (uint32_t k0 = slot; k0 < norm_values; k0 += kSlots * kBatch) {
          float x[kBatch];
#pragma unroll
          for (int k = 0; k < kBatch; ++k) {
            const uint32_t part = k0 + k * kSlots;
            x[k] = part < norm_values ? __ldcg(&p.norm_sum[size_t{pg} * norm_values + part]) : 0.0f;
          }
#pragma unroll
          for (int k = 0; k < kBatch; ++k) acc.w += x[k];
        }
      }
      acc.z = __uint_as_float(above);
      s_sum[slot][col] = acc;
    }
    __syncthreads();
    if (tid < kTailPages && pg < pg_end) {
      float total = 0, h_log_h = 0, norm = 0;
      uint32_t above = 0;
#pragma unroll
      for (uint32_t k = 0; k < kSlots; ++k) {
        const float4 x = s_sum[k][tid];
        total += x.x;
        h_log_h += x.y;
        above += __float_as_uint(x.z);
        norm += x.w;
      }
      // As AttentionStatsPageMass writes it.
      PageAttentionStats o;
      const float pairs = static_cast<float>(p.q_heads) * p.window;
      o.mass = total / pairs;
      o.breadth = above / pairs;
      o.mass_entropy =
          (p.q_heads > 1 && total > 0)
              ? fminf(1.0f, fmaxf(0.0f, (logf(total) - h_log_h / total) / logf(float(p.q_heads))))
              : 1.0f;
      const uint32_t t0 = pg * kTpp;
      const uint32_t t1 = min(p.tokens, t0 + kTpp);
      o.value_norm = norm / (float(t1 - t0) * p.kv_heads);
      p.out[pg] = o;
    }
    __syncthreads();
  }
  if (tid == 0) p.finished[blockIdx.x] = 0;
}

// Options of the tiled pass, a bit each (kOptDefault is what the plan launches; the others stay
// selectable for side-by-side measurements, see PlanMmaPass).
//  kOptFixedRef: a row's exponentials take a fixed reference, the first tile's maximum, instead
//    of each tile's maximum, so the common tile needs no maximum (16 max, 4 shuffles a row) and
//    its sum adds to the row's running sum without rescaling; a tile whose sums come out too
//    large (or the first, whose reference is -inf) falls back, warp-uniformly, to the tile's
//    maximum. Page sums leave the quad by a reduce-scatter (3 shuffles for 4 pages, not 8).
//  kOptMmaNorms: value norms on the tensor cores: the diagonal of V8 . V8^T for the warp's 8
//    tokens (one ldmatrix.x4 and two MMAs per 32 dimensions, instead of unpacking and squaring
//    every element on the FMA pipe). Products of 16-bit values are exact in fp32.
//  kOptBulkLoads: the producer's lane 0 fetches each tile of K and of V with one tensor copy
//    (cp.async.bulk.tensor through a tensor map, completing on the stage's mbarrier) instead of
//    the warp's 64 16-byte cp.asyncs a tile with their address arithmetic (~600 instructions a
//    tile, issued on the sub-partition that also runs two consumer warps of each block).
//    head_dim 64 and 128 only (the box is at most 256 elements wide); if the tensor map cannot
//    be made, the launch takes the same options without it.
//  kOptEvictFirst: K and V are read once: the bulk copies mark them evict-first in L2, so the
//    page partials that pass 3 reads next stay there (needs kOptBulkLoads).
constexpr int kOptFixedRef = 1;
constexpr int kOptMmaNorms = 2;
constexpr int kOptBulkLoads = 4;
constexpr int kOptEvictFirst = 8;
// Measured and not taken (H200, bench/RESULTS.md), selectable with KVTIER_ATTN_OPT:
//  kOptDeep: one block an SM with a 6-stage ring instead of two blocks of 3 (slower: half the
//    consumer warps).
//  kOptDynamic: the blocks of a (kv head, row split) take 2-tile chunks from a counter as they
//    go (first chunk: blockIdx.x) instead of a fixed range each, so that a block slowed by its
//    memory traffic would not hold up the pass (no faster: SMs were active 77% of pass 1 with
//    fixed ranges, 80% with chunks).
constexpr int kOptDeep = 16;
constexpr int kOptDynamic = 32;
constexpr uint32_t kNoTile = 0xffffffffu;
constexpr uint32_t kChunkTiles = 2;
//  kOptFusedTail: pass 3 in pass 1's tail (FusedTail above) instead of a second launch. Not a
//    template option: the same kernel takes it at launch (Params::fused) where the plan can
//    launch the grid cooperatively with one row split and the static schedule; elsewhere the
//    launch falls back to pass 3.
constexpr int kOptFusedTail = 64;
//  kOptSwizzle (session 14, run 7): the tensor copies land unpadded tiles, head_dim / 64 boxes
//    of 64 tokens x 128 bytes each in CU_TENSOR_MAP_SWIZZLE_128B (SwizzledChunk), instead of one
//    box of head_dim + 8 elements a row: the padded box also fetched 16 bytes of the next head
//    (a 32-byte sector more per 256-byte row, 12.5% more sectors from L2) and took 6 KiB more
//    shared memory a block. ldmatrix stays free of bank conflicts (the swizzle spreads 8 rows'
//    chunks over all banks). Needs kOptBulkLoads and kOptMmaNorms. Measured (option set 207 =
//    79 + this, H200, bench/RESULTS.md): bit-identical output; faster than 79 in 13 of 20
//    back-to-back pairs, 0.36 us on average; one kernel 61.8-62.1 us under ncu against
//    62.8-65.6; the load pipeline alone (consumers releasing stages unread) 51 us against 57.
//  kOptPromote256: with kOptSwizzle, the tensor maps promote L2 fills to 256 bytes (a token's
//    whole head row, both boxes); launch-time (the tensor map), not a template option. Measured
//    no faster than kOptSwizzle alone (option set 463: 62.1 us under ncu, L2 hits 40% not 25%).
constexpr int kOptSwizzle = 128;
constexpr int kOptPromote256 = 256;
// Launch-time (session 15):
//  kOptCacheMaps: the workspace keeps K's and V's tensor maps with the pointers they were made
//    for, and a launch encodes them again (cuTensorMapEncodeTiled, on the host, between the
//    call's start and the kernel's) only for other pointers. A workspace serves one shape, so
//    the pointer is the whole key. Measured (H200, run 9; 4303 = 207 + it): a lone call faster
//    than 207 in 9 of 13 back-to-back pairs (3 ties, 1 slower), by 0.3 us on average; two calls
//    back to back faster in 13 of 13, by 0.5-2.6 us.
constexpr int kOptCacheMaps = 4096;
// Session 16:
//  kOptWgmma: S = Q.K^T by Hopper's warpgroup MMA (wgmma, sm_90a builds only; elsewhere the
//    option's kernels take mma.sync): the two warpgroups of 64 rows each take B straight from
//    the swizzled K tile through a matrix descriptor, so K is read from shared memory twice a
//    block instead of 8 times (ldmatrix a warp), and the MMAs run asynchronously under the
//    value norms. Needs kOptSwizzle.
//    Measured (H200, 4303 + it = 12495): 58.6-60.7 us against 65.0-66.9 for 4303 in the same
//    processes; with kOptDeep (12511, 116 registers, one block an SM) 66.8-68.2.
//  kOptWgmmaPipe: with kOptWgmma, two accumulator sets: tile t + 1's MMAs are issued before
//    tile t's exponentials and page sums, so the tensor cores and the special-function unit
//    work at once (FlashAttention-3's intra-warpgroup overlap). Not taken: it needs ~150
//    registers a thread, so one block an SM (with kOptDeep, 28895: 67.2-68.7 us, occupancy 14%);
//    at two blocks an SM (96 registers: 18 warps on 4 schedulers) it spills and ptxas serializes
//    the wgmmas (28879: 96.6-98.5 us). Kept, with the default's loop written as it is: the same
//    kernel with this option taken out and the wgmma loop rewritten as one plain loop measured
//    66.0-67.4 us, not 58 (ncu 59.6 against 55.4; bench/gpu/results/h200-run13.md); ptxas's
//    scheduling of the wgmmas follows the loop's shape, so measure any change to it.
constexpr int kOptWgmma = 8192;
constexpr int kOptWgmmaPipe = 16384;
constexpr int kOptDefault = kOptFixedRef | kOptMmaNorms | kOptBulkLoads | kOptEvictFirst |
                            kOptFusedTail | kOptSwizzle | kOptCacheMaps;
constexpr int kKernelOpts = ~(kOptFusedTail | kOptPromote256 | kOptCacheMaps);
// What head_dim 64 and 128 take instead where the device code has wgmma (an sm_90a build on a
// Hopper GPU: WgmmaBuilt); measured above (kOptWgmma).
constexpr int kOptDefaultWgmma = kOptDefault | kOptWgmma;

// One stage tile of K or V (64 tokens x head_dim + 8 elements of kv head `head`), global ->
// shared, by the tensor copy unit; completes its bytes on the mbarrier.
__device__ __forceinline__ void TmaTileLoad(uint32_t dst, const CUtensorMap* map, int32_t col,
                                            int32_t token, uint32_t bar, uint64_t policy,
                                            bool hint) {
  const auto desc = reinterpret_cast<uint64_t>(map);
  if (hint) {
    asm volatile(
        "cp.async.bulk.tensor.2d.shared::cluster.global.mbarrier::complete_tx::bytes"
        ".L2::cache_hint [%0], [%1, {%2, %3}], [%4], %5;\n" ::"r"(dst),
        "l"(desc), "r"(col), "r"(token), "r"(bar), "l"(policy)
        : "memory");
  } else {
    asm volatile(
        "cp.async.bulk.tensor.2d.shared::cluster.global.mbarrier::complete_tx::bytes"
        " [%0], [%1, {%2, %3}], [%4];\n" ::"r"(dst),
        "l"(desc), "r"(col), "r"(token), "r"(bar)
        : "memory");
  }
}

// Sums page partials over the 4 lanes of a quad (the lanes that hold one row's columns) and
// scatters them: with P >= 4 lane tig ends with page 4i + tig in v[i] (i < P / 4); with P = 2
// every lane holds page tig & 1 in v[0]; with P = 1 every lane holds the page in v[0].
template <int P>
__device__ __forceinline__ void QuadReduceScatter(float (&v)[P], uint32_t tig) {
  if constexpr (P >= 2) {
    const bool b0 = (tig & 1) != 0;
#pragma unroll
    for (int j = 0; j < P / 2; ++j) {
      const float keep = b0 ? v[2 * j + 1] : v[2 * j];
      const float send = b0 ? v[2 * j] : v[2 * j + 1];
      v[j] = keep + __shfl_xor_sync(0xffffffffu, send, 1);
    }
  } else {
    v[0] += __shfl_xor_sync(0xffffffffu, v[0], 1);
  }
  if constexpr (P >= 4) {
    const bool b1 = (tig & 2) != 0;
#pragma unroll
    for (int i = 0; i < P / 4; ++i) {
      const float keep = b1 ? v[2 * i + 1] : v[2 * i];
      const float send = b1 ? v[2 * i] : v[2 * i + 1];
      v[i] = keep + __shfl_xor_sync(0xffffffffu, send, 2);
    }
  } else {
    v[0] += __shfl_xor_sync(0xffffffffu, v[0], 2);
  }
}

// Warp-specialised: kMaxWarps consumer warps compute, one producer warp keeps the stage ring
// full. Stages are handed over through mbarriers instead of block barriers, so consumer warps
// drift apart and one warp's tensor-core work overlaps another's exponentials and shuffles
// (with a barrier per tile, every warp was in the same phase at once and the SM's units took
// turns idling).
template <typename T, int kHeadDim, int kTpp, int kOpt>
__global__ void __launch_bounds__((kMaxWarps + 1) * 32,
                                  kHeadDim <= 128 && (kOpt & kOptDeep) == 0 ? 2 : 1)
    AttentionStatsPass1Mma(const __grid_constant__ Params p) {
  // The tensor copy's box is at most 256 elements wide: head_dim 256 keeps the cp.async producer.
  constexpr bool kBulk = (kOpt & kOptBulkLoads) != 0 && kHeadDim <= 128;
  constexpr bool kSwizzle = kBulk && (kOpt & kOptSwizzle) != 0;
  using G = Geometry<kHeadDim, (kOpt & kOptDeep) != 0, kSwizzle>;
  constexpr bool kDynamic = (kOpt & kOptDynamic) != 0;
  __shared__ uint32_t stage_tile[G::kStages];  // kDynamic: the tile in each stage, or kNoTile
  constexpr bool kFixedRef = (kOpt & kOptFixedRef) != 0;
  constexpr bool kMmaNorms = (kOpt & kOptMmaNorms) != 0;
  constexpr bool kEvictFirst = kBulk && (kOpt & kOptEvictFirst) != 0;
  constexpr bool kWgmma =
      kHaveWgmma && kSwizzle && (kOpt & kOptWgmma) != 0 && (kOpt & kOptDynamic) == 0;
  constexpr bool kWgmmaPipe = kWgmma && (kOpt & kOptWgmmaPipe) != 0;
  constexpr int kPagesPerTile = kTile / kTpp;
  constexpr int kNTilesPerPage = kTpp / 8;
  constexpr int kKSteps = kHeadDim / 16;
  constexpr int kNormParts = kTpp / 8;  // each consumer warp sums the value norms of 8 tokens
  static_assert(kTile % kTpp == 0 && kTpp % 8 == 0, "pages must tile the 64-token tile");
  static_assert(kTile == kMaxWarps * 8, "value norms: 8 tokens a consumer warp");
  static_assert(!kSwizzle || kMmaNorms, "the swizzled layout has no FMA value-norm path");
  extern __shared__ __align__(128) unsigned char smem_raw[];
  // The stage ring (and its barriers behind it): with kSwizzle, from the first 1024-byte boundary
  // (the swizzle pattern repeats every 1024 bytes and is anchored to the address).
  unsigned char* const smem =
      smem_raw + (kSwizzle ? (1024u - SmemAddress(smem_raw) % 1024u) % 1024u : 0u);
  const uint32_t bar_full = SmemAddress(smem + G::kBarrierOff);
  const uint32_t bar_empty = bar_full + G::kStages * sizeof(uint64_t);

  const uint32_t tid = threadIdx.x, lane = tid % 32, warp = tid / 32;
  const uint32_t g = blockIdx.y;
  const uint32_t group = p.q_heads / p.kv_heads;
  const uint32_t rbeg = blockIdx.z * p.rows_per_block;
  const uint32_t nrows = min(group * p.window - rbeg, p.rows_per_block);
  const bool do_norms = blockIdx.z == 0;  // one row split per (kv head, tiles) reads V
  const uint32_t tiles_total = (p.tokens + kTile - 1) / kTile;
  const uint32_t tile_begin = blockIdx.x * p.tiles_per_block;
  const uint32_t tile_end = min(tiles_total, tile_begin + p.tiles_per_block);
  // The producer's lane 0: the k-th tile this block loads (k counting up from 0), or kNoTile.
  uint32_t chunk_pos = blockIdx.x * kChunkTiles;
  uint32_t chunk_end = min(chunk_pos + kChunkTiles, tiles_total);
  auto next_tile = [&](uint32_t k) -> uint32_t {
    if constexpr (kDynamic) {
      if (chunk_pos >= chunk_end) {
        const uint32_t c =
            gridDim.x + atomicAdd(p.next_chunk + blockIdx.y * gridDim.z + blockIdx.z, 1u);
        chunk_pos = c * kChunkTiles;
        chunk_end = min(chunk_pos + kChunkTiles, tiles_total);
        if (chunk_pos >= tiles_total) return kNoTile;
      }
      return chunk_pos++;
    } else {
      return tile_begin + k < tile_end ? tile_begin + k : kNoTile;
    }
  };

  if (tid == 0) {
    for (int s = 0; s < G::kStages; ++s) {
      // The producer's lanes (cp.async), or its lane 0's expect_tx arrival (bulk copies).
      // (+1 with kDynamic on cp.async: lane 0's release of the stage's tile index).
      MbarrierInit(bar_full + s * 8, kBulk ? 1 : (kDynamic ? 33 : 32));
      // Every consumer thread: each one's release covers its own reads of the stage.
      MbarrierInit(bar_empty + s * 8, kMaxWarps * 32);
    }
    if constexpr (kBulk) {
      // The bulk copies complete on these barriers through the async proxy: make their
      // initialisation visible to it first.
      asm volatile("fence.mbarrier_init.release.cluster;\n" ::: "memory");
      asm volatile("fence.proxy.async.shared::cta;\n" ::: "memory");
    }
  }
  __syncthreads();

  if (warp == kMaxWarps) {
    if constexpr (kBulk) {
      // Producer, tensor copies: lane 0 issues two per tile (K, V), each completing a whole
      // padded tile on the stage's barrier; rows past the sequence arrive as zeros.
      if (lane == 0) {
        uint64_t policy = 0;
        if constexpr (kEvictFirst) {
          asm volatile("createpolicy.fractional.L2::evict_first.b64 %0, 1.0;\n" : "=l"(policy));
        }
        const int32_t col = static_cast<int32_t>(g * kHeadDim);
        for (uint32_t it = 0;; ++it) {
          const uint32_t tile = next_tile(it);
          if (!kDynamic && tile == kNoTile) break;
          const uint32_t s = it % G::kStages, round = it / G::kStages;
          if (round > 0) MbarrierWait(bar_empty + s * 8, (round - 1) & 1);
          const uint32_t bar = bar_full + s * 8;
          if constexpr (kDynamic) {
            stage_tile[s] = tile;  // released to the consumers by the arrival below
            if (tile == kNoTile) {
              MbarrierArrive(bar);
              break;
            }
          }
          const uint32_t bytes = static_cast<uint32_t>(G::kTileBytes) * (do_norms ? 2u : 1u);
          asm volatile("mbarrier.arrive.expect_tx.shared::cta.b64 _, [%0], %1;\n" ::"r"(bar),
                       "r"(bytes)
                       : "memory");
          const uint32_t base = SmemAddress(smem + s * G::kStageBytes);
          const auto token = static_cast<int32_t>(tile * kTile);
          if constexpr (kSwizzle) {
            // One box a 64-dimension half of the row (the swizzle's box is 128 bytes wide).
#pragma unroll
            for (int h = 0; h < kHeadDim / 64; ++h) {
              TmaTileLoad(base + h * kTile * 128, &p.tmap_k, col + h * 64, token, bar, policy,
                          kEvictFirst);
            }
            if (do_norms) {
#pragma unroll
              for (int h = 0; h < kHeadDim / 64; ++h) {
                TmaTileLoad(base + G::kTileBytes + h * kTile * 128, &p.tmap_v, col + h * 64, token,
                            bar, policy, kEvictFirst);
              }
            }
          } else {
            TmaTileLoad(base, &p.tmap_k, col, token, bar, policy, kEvictFirst);
            if (do_norms) {
              TmaTileLoad(base + G::kTileBytes, &p.tmap_v, col, token, bar, policy, kEvictFirst);
            }
          }
        }
      }
      __syncwarp();
    } else {
      // Producer: lane l copies 16-byte column l % kChunksPerRow of every (32 / kChunksPerRow)-th
      // token row, for K and (row split 0 only) V. The k-th refill of a stage waits for the
      // consumers to release its (k-1)-th contents.
      constexpr int kLanesPerRow = G::kChunksPerRow < 32 ? G::kChunksPerRow : 32;
      constexpr int kRowStep = 32 / kLanesPerRow;
      constexpr int kChunksPerLaneRow = G::kChunksPerRow / kLanesPerRow;
      const size_t token_stride = size_t{p.kv_heads} * kHeadDim;
      const uint32_t row0 = lane / kLanesPerRow, col0 = lane % kLanesPerRow * 8;
      const T* k_src = static_cast<const T*>(p.k) + size_t{g} * kHeadDim + col0;
      const T* v_src = static_cast<const T*>(p.v) + size_t{g} * kHeadDim + col0;
      for (uint32_t it = 0;; ++it) {
        uint32_t tile = lane == 0 ? next_tile(it) : 0;
        tile = __shfl_sync(0xffffffffu, tile, 0);
        if (!kDynamic && tile == kNoTile) break;
        const uint32_t s = it % G::kStages, round = it / G::kStages;
        if (round > 0) MbarrierWait(bar_empty + s * 8, (round - 1) & 1);
        if constexpr (kDynamic) {
          if (lane == 0) {
            stage_tile[s] = tile;
            MbarrierArrive(bar_full + s * 8);  // release: the index before the consumers read it
          }
          if (tile == kNoTile) {
            CpAsyncArriveOn(bar_full + s * 8);
            break;
          }
        }
        const uint32_t base =
            SmemAddress(smem + s * G::kStageBytes) + (row0 * G::kRowElems + col0) * 2;
#pragma unroll 4
        for (int r = 0; r < kTile / kRowStep; ++r) {
          const uint32_t tok = tile * kTile + row0 + r * kRowStep;
          const bool valid = tok < p.tokens;
          const size_t off = (valid ? tok : 0) * token_stride;
#pragma unroll
          for (int c = 0; c < kChunksPerLaneRow; ++c) {
            const uint32_t dst = base + (r * kRowStep * G::kRowElems + c * kLanesPerRow * 8) * 2;
            CpAsync16(dst, k_src + off + c * kLanesPerRow * 8, valid);
            if (do_norms) {
              CpAsync16(dst + G::kTileBytes, v_src + off + c * kLanesPerRow * 8, valid);
            }
          }
        }
        CpAsyncArriveOn(bar_full + s * 8);
      }
      CpAsyncWait<0>();
    }
  } else {
    // Consumers. The thread's two rows: fragment rows gid and gid + 8 of the warp's 16. Block
    // row r is query i of q head g * group + j, r = j * window + i, as in the generic pass.
    const uint32_t gid = lane / 4, tig = lane % 4;  // MMA fragment row group / thread in group
    const bool warp_has_rows = warp * 16 < nrows;   // warps past the rows take only norms
    bool row_ok[2];
    uint32_t pos[2], row_global[2];
    const T* q_row[2];
#pragma unroll
    for (int h = 0; h < 2; ++h) {
      const uint32_t r = warp * 16 + gid + 8 * h;
      row_ok[h] = r < nrows;
      const uint32_t rr = row_ok[h] ? rbeg + r : 0;
      const uint32_t j = rr / p.window, i = rr % p.window;
      pos[h] = p.tokens - p.window + i;  // causal: the query sees tokens [0, pos]
      row_global[h] = (g * group + j) * p.window + i;
      q_row[h] = static_cast<const T*>(p.q) + (size_t{i} * p.q_heads + g * group + j) * kHeadDim;
    }
    uint32_t qa[kKSteps][4];
#pragma unroll
    for (int ks = 0; ks < kKSteps; ++ks) {
      const uint32_t c = ks * 16 + tig * 2;
      qa[ks][0] = row_ok[0] ? *reinterpret_cast<const uint32_t*>(q_row[0] + c) : 0u;
      qa[ks][1] = row_ok[1] ? *reinterpret_cast<const uint32_t*>(q_row[1] + c) : 0u;
      qa[ks][2] = row_ok[0] ? *reinterpret_cast<const uint32_t*>(q_row[0] + c + 8) : 0u;
      qa[ks][3] = row_ok[1] ? *reinterpret_cast<const uint32_t*>(q_row[1] + c + 8) : 0u;
    }
    // Running (max, sum) of each row over the block's tiles, log2 units. With kFixedRef, m_run is
    // the fixed reference and s_run this lane's share of the sum (its pages), summed over the
    // quad at the end.
    float m_run[2] = {-INFINITY, -INFINITY}, s_run[2] = {0.0f, 0.0f};
    // ldmatrix.x4 of two n-tiles x two k-halves: lane supplies row (lane % 8) of matrix lane / 8.
    const uint32_t lm_offset =
        (((lane / 16) * 8 + lane % 8) * G::kRowElems + (lane / 8) % 2 * 8) * 2;
    // kSwizzle: the same lanes' offsets in the swizzled tile (SwizzledChunk), for k steps ks with
    // ks % 4 == j (ks / 4 picks the 8 KiB box and n-tile pair np adds 16 rows: both multiples of
    // the swizzle's 8 rows, so compile-time offsets), and for the value norms' ldmatrix at
    // dimensions 32q with q % 2 == j.
    uint32_t k_swz[4], v_swz[2];
#pragma unroll
    for (uint32_t j = 0; j < 4; ++j) {
      k_swz[j] = SwizzledChunk((lane / 16) * 8 + lane % 8, j * 2 + (lane / 8) % 2);
    }
#pragma unroll
    for (uint32_t j = 0; j < 2; ++j)
      v_swz[j] = SwizzledChunk(warp * 8 + lane % 8, j * 4 + lane / 8);
    // The value norms of a tile (row split 0 only): V in `stage`, tokens from c0.
    auto value_norms = [&](const unsigned char* stage, uint32_t c0) {
      if (do_norms && kMmaNorms) {
        // Tokens c0 + 8w .. +7. ldmatrix.x4 at dimensions 32q.. gives r0..r3 = V8[:, 32q + 8m ..
        // + 8], which are at once the A fragment (rows 8..15 repeat rows 0..7) and the B
        // fragment of V8 . V8^T over those 16 dimensions; token i's squared norm is the
        // diagonal element (i, i), held by lane 4i + i / 2.
        const uint32_t vbase =
            SmemAddress(stage + G::kTileBytes) +
            (kSwizzle ? 0u : ((warp * 8 + lane % 8) * G::kRowElems + (lane / 8) * 8) * 2);
        float c[4] = {0.0f, 0.0f, 0.0f, 0.0f};
#pragma unroll
        for (int q = 0; q < kHeadDim / 32; ++q) {
          uint32_t r0, r1, r2, r3;
          // Lane l: row 8w + l % 8, 16-byte chunk 4q + l / 8 of it.
          LdMatrixX4(kSwizzle ? vbase + (q / 2) * (kTile * 128) + v_swz[q % 2] : vbase + q * 64, r0,
                     r1, r2, r3);
          const uint32_t a0[4] = {r0, r0, r1, r1};
          const uint32_t a1[4] = {r2, r2, r3, r3};
          Mma16816<T>(c, a0, r0, r1);
          Mma16816<T>(c, a1, r2, r3);
        }
        const uint32_t tok = c0 + warp * 8 + gid;
        const bool diag = tig == gid / 2 && tok < p.tokens;  // rows past the end hold stale data
        float norm = diag ? sqrtf((gid & 1) ? c[1] : c[0]) : 0.0f;
#pragma unroll
        for (int off = 16; off > 0; off /= 2) norm += __shfl_xor_sync(0xffffffffu, norm, off);
        const uint32_t first = c0 + warp * 8, pg = first / kTpp;
        if (lane == 0 && pg < p.pages) {
          p.norm_sum[(size_t{pg} * p.kv_heads + g) * kNormParts + first % kTpp / 8] = norm;
        }
      } else if (do_norms) {
        // Tokens c0 + 8w .. +7 (the lane's low 3 bits), a quarter of each row per lane (its
        // high 2 bits): the 8 lanes of a shared-memory phase read 8 rows at one column, on
        // distinct banks thanks to the row pad. Two shuffles finish each token, three more add
        // the warp's 8 tokens into one part of their page.
        constexpr int kChunksPerLane = G::kChunksPerRow / 4;
        const uint32_t t = warp * 8 + lane % 8;
        const unsigned char* row =
            stage + G::kTileBytes + (t * G::kRowElems + lane / 8 * kChunksPerLane * 8) * 2;
        float sq[kChunksPerLane];
#pragma unroll
        for (int c = 0; c < kChunksPerLane; ++c) {
          sq[c] = SumSquares<T>(*reinterpret_cast<const uint4*>(row + c * 16));
        }
        float total = 0;
#pragma unroll
        for (int c = 0; c < kChunksPerLane; ++c) total += sq[c];
        total += __shfl_xor_sync(0xffffffffu, total, 8);
        total += __shfl_xor_sync(0xffffffffu, total, 16);
        // Bulk loads leave rows past the sequence stale (cp.async zero-fills them).
        float norm = (!kBulk || c0 + t < p.tokens) ? sqrtf(total) : 0.0f;
        norm += __shfl_xor_sync(0xffffffffu, norm, 1);
        norm += __shfl_xor_sync(0xffffffffu, norm, 2);
        norm += __shfl_xor_sync(0xffffffffu, norm, 4);
        const uint32_t first = c0 + warp * 8, pg = first / kTpp;
        if (lane == 0 && pg < p.pages) {
          p.norm_sum[(size_t{pg} * p.kv_heads + g) * kNormParts + first % kTpp / 8] = norm;
        }
      }
    };
    // A tile's page partials and the rows' running sums from its S accumulators (masked in
    // place). Warps with rows only: the shuffles are warp-wide.
    auto tile_stats = [&](float(&acc)[8][4], uint32_t tile, uint32_t c0) {
      // Causal mask, only in the tiles that reach past the first window query's position (it
      // also hides the columns past the sequence's end, zero-filled or stale).
      if (c0 + kTile > p.tokens - p.window + 1) {
#pragma unroll
        for (int n = 0; n < 8; ++n) {
#pragma unroll
          for (int e = 0; e < 4; ++e) {
            if (c0 + n * 8 + tig * 2 + (e & 1) > pos[e >> 1]) acc[n][e] = -INFINITY;
          }
        }
      }

      if constexpr (kFixedRef) {
        // Page sums relative to the row's fixed reference. Any sum not below 2^100 (overflow
        // near, or the first tile, whose reference is -inf and gives inf or NaN) sends the
        // whole warp (its shuffles are warp-wide) through the exact path below for this tile.
        float v[2][kPagesPerTile];
        auto page_sums = [&](const float(&ref)[2]) {
#pragma unroll
          for (int h = 0; h < 2; ++h) {
#pragma unroll
            for (int pp = 0; pp < kPagesPerTile; ++pp) {
              float sum = 0;
#pragma unroll
              for (int n = pp * kNTilesPerPage; n < (pp + 1) * kNTilesPerPage; ++n) {
                sum += Ex2(fmaf(acc[n][2 * h], p.scale_log2, -ref[h])) +
                       Ex2(fmaf(acc[n][2 * h + 1], p.scale_log2, -ref[h]));
              }
              v[h][pp] = sum;
            }
            QuadReduceScatter<kPagesPerTile>(v[h], tig);
          }
        };
        page_sums(m_run);
        constexpr int kSlots = kPagesPerTile >= 4 ? kPagesPerTile / 4 : 1;
        bool bad = false;
#pragma unroll
        for (int h = 0; h < 2; ++h) {
#pragma unroll
          for (int i = 0; i < kSlots; ++i) bad |= !(v[h][i] < 0x1p100f);
        }
        if (__any_sync(0xffffffffu, bad)) {
          float ref[2];
#pragma unroll
          for (int h = 0; h < 2; ++h) {
            float mx = -INFINITY;
#pragma unroll
            for (int n = 0; n < 8; ++n) mx = fmaxf(mx, fmaxf(acc[n][2 * h], acc[n][2 * h + 1]));
            mx = QuadMax(mx);
            const float m_new = fmaxf(m_run[h], mx * p.scale_log2);  // -inf: all masked
            if (m_new != -INFINITY) {
              s_run[h] = m_run[h] == -INFINITY ? 0.0f : s_run[h] * Ex2(m_run[h] - m_new);
              m_run[h] = m_new;
            }
            ref[h] = m_run[h] == -INFINITY ? 0.0f : m_run[h];
          }
          page_sums(ref);
        }
        // Lane tig owns pages 4i + tig (4+ pages a tile), tig (2 pages, lanes 0-1) or the
        // tile's one page (lane 0); owners write the page's log2-sum-exp and add it to their
        // share of the row's sum.
#pragma unroll
        for (int h = 0; h < 2; ++h) {
#pragma unroll
          for (int i = 0; i < kSlots; ++i) {
            const uint32_t pp = kPagesPerTile >= 4   ? 4 * i + tig
                                : kPagesPerTile == 2 ? (tig & 1)
                                                     : 0;
            const bool owner = kPagesPerTile >= 4 || tig < static_cast<uint32_t>(kPagesPerTile);
            const uint32_t pg = tile * kPagesPerTile + pp;
            const float sum = v[h][i];
            if (owner && row_ok[h] && pg < p.pages) {
              p.page_lse[size_t{row_global[h]} * p.pages + pg] =
                  sum > 0 ? m_run[h] + __log2f(sum) : -INFINITY;
            }
            if (owner) s_run[h] += sum;
          }
        }
      } else {
        // One reference per row and tile (its maximum): every page sum of the tile is relative
        // to it, and the row's running sum merges once per tile. A page more than 2^126 below
        // the tile's maximum flushes to zero mass, which it is to fp32 anyway.
#pragma unroll
        for (int h = 0; h < 2; ++h) {
          float mx = -INFINITY;
#pragma unroll
          for (int n = 0; n < 8; ++n) mx = fmaxf(mx, fmaxf(acc[n][2 * h], acc[n][2 * h + 1]));
          mx = QuadMax(mx);
          const float ref = mx == -INFINITY ? 0.0f : mx * p.scale_log2;
          float sums[kPagesPerTile];
          float tile_sum = 0;
#pragma unroll
          for (int pp = 0; pp < kPagesPerTile; ++pp) {
            float sum = 0;
#pragma unroll
            for (int n = pp * kNTilesPerPage; n < (pp + 1) * kNTilesPerPage; ++n) {
              sum += Ex2(fmaf(acc[n][2 * h], p.scale_log2, -ref)) +
                     Ex2(fmaf(acc[n][2 * h + 1], p.scale_log2, -ref));
            }
            sums[pp] = QuadSum(sum);
            tile_sum += sums[pp];
          }
          // Lane tig of the quad writes pages tig, tig + 4, ...: selects, not divergent
          // branches.
#pragma unroll
          for (int slot = 0; slot < (kPagesPerTile + 3) / 4; ++slot) {
            float mine = sums[slot * 4];
#pragma unroll
            for (int k = 1; k < 4; ++k) {
              if (slot * 4 + k < kPagesPerTile && tig == static_cast<uint32_t>(k)) {
                mine = sums[slot * 4 + k];
              }
            }
            const uint32_t pp = slot * 4 + tig;
            const uint32_t pg = tile * kPagesPerTile + pp;
            if (pp < kPagesPerTile && row_ok[h] && pg < p.pages) {
              p.page_lse[size_t{row_global[h]} * p.pages + pg] =
                  mine > 0 ? ref + __log2f(mine) : -INFINITY;
            }
          }
          if (tile_sum > 0) {
            const float m_new = fmaxf(m_run[h], ref);
            s_run[h] = s_run[h] * Ex2(m_run[h] - m_new) + tile_sum * Ex2(ref - m_new);
            m_run[h] = m_new;
          }
        }
      }
    };
    if constexpr (kWgmma) {
      // Warpgroup MMA (kOptWgmma): warps 4i .. 4i + 3 issue S for their 64 rows together (every
      // warp, with rows or without: wgmma is warpgroup-wide), B straight from the swizzled K
      // tile, so shared memory is read once a warpgroup instead of once a warp. Each tile's MMAs
      // run while the warps compute the tile's value norms; with kOptWgmmaPipe also while they
      // compute the previous tile's statistics (two accumulator sets). A stage is released once
      // the MMAs that read its K and the norms that read its V are done.
      float acc0[8][4], acc1[8][4];
#pragma unroll
      for (int n = 0; n < 8; ++n) {
#pragma unroll
        for (int e = 0; e < 4; ++e) acc0[n][e] = acc1[n][e] = 0.0f;
      }
      const uint32_t tiles = tile_end > tile_begin ? tile_end - tile_begin : 0u;
      auto stage_of = [&](uint32_t it) { return smem + it % G::kStages * G::kStageBytes; };
      auto wait_full = [&](uint32_t it) {
        MbarrierWait(bar_full + it % G::kStages * 8, (it / G::kStages) & 1);
      };
      if constexpr (kWgmmaPipe) {
        // Tile it's S is in cur (complete); tile it + 1's MMAs go into nxt first and run under
        // tile it's norms and statistics. Every group is waited for before the step ends: an
        // accumulator in flight across the loop's back edge, a wgmma or a wgmma wait under a
        // branch, serialize every wgmma of the kernel (ptxas C7514, C7518). So the loop takes
        // tiles in pairs, and past the block's last tile a step issues its MMAs all the same, on
        // a stale stage nobody writes any more, and never reads their result.
        auto step = [&](float(&cur)[8][4], float(&nxt)[8][4], uint32_t it) {
          const bool real = it < tiles;  // block-uniform
          if (it + 1 < tiles) wait_full(it + 1);
          IssueTileS<T, kHeadDim>(nxt, qa, SmemAddress(stage_of(it + 1)));
          const uint32_t tile = tile_begin + it, c0 = tile * kTile;
          if (real) {
            value_norms(stage_of(it), c0);
            MbarrierArrive(bar_empty + it % G::kStages * 8);
            if (warp_has_rows) tile_stats(cur, tile, c0);
          }
          WgmmaWait<0>();
          FenceAccumulators(nxt);
        };
        if (tiles > 0) wait_full(0);
        IssueTileS<T, kHeadDim>(acc0, qa, SmemAddress(stage_of(0)));
        WgmmaWait<0>();
        FenceAccumulators(acc0);
        for (uint32_t it = 0; it < tiles; it += 2) {
          step(acc0, acc1, it);
          step(acc1, acc0, it + 1);
        }
      } else {
        for (uint32_t it = 0; it < tiles; ++it) {
          wait_full(it);
          const unsigned char* stage = stage_of(it);
          const uint32_t tile = tile_begin + it, c0 = tile * kTile;
          IssueTileS<T, kHeadDim>(acc0, qa, SmemAddress(stage));
          value_norms(stage, c0);
          WgmmaWait<0>();
          FenceAccumulators(acc0);
          MbarrierArrive(bar_empty + it % G::kStages * 8);
          if (warp_has_rows) tile_stats(acc0, tile, c0);
        }
      }
    } else {
      for (uint32_t it = 0;; ++it) {
        if (!kDynamic && tile_begin + it >= tile_end) break;
        const uint32_t s = it % G::kStages;
        MbarrierWait(bar_full + s * 8, (it / G::kStages) & 1);
        const uint32_t tile =
            kDynamic ? *static_cast<volatile uint32_t*>(&stage_tile[s]) : tile_begin + it;
        if (tile == kNoTile) break;
        const unsigned char* stage = smem + s * G::kStageBytes;
        const uint32_t c0 = tile * kTile;
        value_norms(stage, c0);
        if (warp_has_rows) {  // warp-uniform
          float acc[8][4];
#pragma unroll
          for (int n = 0; n < 8; ++n) acc[n][0] = acc[n][1] = acc[n][2] = acc[n][3] = 0.0f;
          const uint32_t kbase = SmemAddress(stage) + (kSwizzle ? 0u : lm_offset);
          // B fragments double-buffered by k step: the shared-memory loads of step ks + 1 are in
          // flight while the tensor cores work on step ks.
          uint32_t b[2][4][4];
          auto load_b = [&](int ks, uint32_t(&dst)[4][4]) {
#pragma unroll
            for (int np = 0; np < 4; ++np) {
              if constexpr (kSwizzle) {
                // Lane l: row 16 np + 8 (l / 16) + l % 8, 16-byte chunk 2 ks + (l / 8) % 2.
                LdMatrixX4(kbase + (ks / 4) * (kTile * 128) + np * 16 * 128 + k_swz[ks % 4],
                           dst[np][0], dst[np][1], dst[np][2], dst[np][3]);
              } else {
                LdMatrixX4(kbase + (np * 16 * G::kRowElems + ks * 16) * 2, dst[np][0], dst[np][1],
                           dst[np][2], dst[np][3]);
              }
            }
          };
          load_b(0, b[0]);
#pragma unroll
          for (int ks = 0; ks < kKSteps; ++ks) {
            if (ks + 1 < kKSteps) load_b(ks + 1, b[(ks + 1) % 2]);
#pragma unroll
            for (int np = 0; np < 4; ++np) {
              Mma16816<T>(acc[2 * np], qa[ks], b[ks % 2][np][0], b[ks % 2][np][1]);
              Mma16816<T>(acc[2 * np + 1], qa[ks], b[ks % 2][np][2], b[ks % 2][np][3]);
            }
          }
          // The stage is read: release it to the producer before the arithmetic below.
          MbarrierArrive(bar_empty + s * 8);
          tile_stats(acc, tile, c0);
        } else {
          MbarrierArrive(bar_empty + s * 8);
        }
      }
    }
    if constexpr (kFixedRef) {
      // Every warp runs this (QuadSum is warp-wide); warps without rows hold zeros.
#pragma unroll
      for (int h = 0; h < 2; ++h) s_run[h] = QuadSum(s_run[h]);
    }
#pragma unroll
    for (int h = 0; h < 2; ++h) {
      if (warp_has_rows && tig == 0 && row_ok[h]) {
        p.row_part[size_t{row_global[h]} * gridDim.x + blockIdx.x] =
            make_float2(m_run[h], s_run[h]);
      }
    }
  }
  if constexpr (!kDynamic) {
    if (p.fused != 0) {  // grid-uniform
      static_assert(G::kBarrierOff >= kMaxWarps * 16 * kTailPages * sizeof(float),
                    "FusedTail's masses fit in the stage ring");
      FusedTail<kTpp>(p, tile_begin, tile_end, reinterpret_cast<float*>(smem));
      return;
    }
  }
  // Pass 3 may be scheduled now; it waits for this grid's completion before reading anything.
  asm volatile("griddepcontrol.launch_dependents;\n" ::: "memory");
  MergeRowParts(p, rbeg, nrows);
}

}  // namespace mma_pass

// Pass 3, one block per 16 pages and every q head, so the block finishes its pages itself: no
// partials between blocks, no atomics in global memory. A half-warp reads 16 pages of one row
// (64 contiguous bytes); the 64 half-warps take (head, slice of the window) items with 16 loads
// in flight each, and the heads' masses meet in shared memory, where each head's mass log mass
// for the entropy is taken. Measured on an H100 (bench/RESULTS.md): blocks of 32 pages used only
// half the SMs and were bound by instruction issue there, 10.4 us against ~2.7 us of reading.
// Launched as a programmatic dependent of pass 1: its blocks may start as pass 1's blocks retire
// and wait (griddepcontrol.wait) until pass 1's results are complete and visible.
constexpr int kPageMassWarps = 32;
constexpr int kPageMassPages = 16;
__global__ void __launch_bounds__(kPageMassWarps * 32)
    AttentionStatsPageMass(const float* __restrict__ page_lse, const float* __restrict__ row_lse,
                           const float* __restrict__ norm_sum, uint32_t norm_parts, uint32_t tokens,
                           uint32_t q_heads, uint32_t kv_heads, uint32_t window,
                           uint32_t tokens_per_page, uint32_t pages, float breadth_threshold,
                           PageAttentionStats* __restrict__ out) {
  asm volatile("griddepcontrol.wait;\n" ::: "memory");
  extern __shared__ float head_mass[];  // [q_heads][kPageMassPages]
  __shared__ float s_total[kPageMassPages], s_hlogh[kPageMassPages], s_norm[kPageMassPages];
  __shared__ uint32_t s_above[kPageMassPages];
  constexpr uint32_t kWorkers = kPageMassWarps * 32 / kPageMassPages;  // half-warps
  const uint32_t col = threadIdx.x % kPageMassPages, worker = threadIdx.x / kPageMassPages;
  const uint32_t pg = blockIdx.x * kPageMassPages + col;
  for (uint32_t x = threadIdx.x; x < q_heads * kPageMassPages; x += blockDim.x) head_mass[x] = 0;
  if (threadIdx.x < kPageMassPages) {
    s_total[threadIdx.x] = 0;
    s_hlogh[threadIdx.x] = 0;
    s_norm[threadIdx.x] = 0;
    s_above[threadIdx.x] = 0;
  }
  __syncthreads();
  // The value-norm parts of the block's pages, one load per thread (a serial loop of them at the
  // end of the block cost more than the whole mass walk).
  const uint32_t norm_values = kv_heads * norm_parts;
  for (uint32_t part = worker; part < norm_values; part += kWorkers) {
    if (pg < pages) atomicAdd(&s_norm[col], norm_sum[size_t{pg} * norm_values + part]);
  }
  // Few heads: several workers share a head, each a slice of the window.
  const uint32_t slices = q_heads < kWorkers ? kWorkers / q_heads : 1;
  uint32_t above = 0;
  for (uint32_t item = worker; item < q_heads * slices; item += kWorkers) {
    const uint32_t h = item / slices, slice = item % slices;
    float mass = 0;
    constexpr int kBatch = 16;
    // Row i of head h is page_lse row h * window + i; a worker walks i = slice, slice + slices...
    const float* x_ptr = page_lse + (size_t{h} * window + slice) * pages + pg;
    const float* ref_ptr = row_lse + size_t{h} * window + slice;
    const size_t x_step = size_t{slices} * pages;
    for (uint32_t i0 = slice; i0 < window; i0 += kBatch * slices) {
      float x[kBatch], ref[kBatch];
      if (pg < pages && i0 + (kBatch - 1) * slices < window) {  // the common, whole batch
#pragma unroll
        for (int k = 0; k < kBatch; ++k) {
          x[k] = x_ptr[k * x_step];
          ref[k] = ref_ptr[k * slices];
        }
      } else {
#pragma unroll
        for (int k = 0; k < kBatch; ++k) {
          const bool ok = pg < pages && i0 + k * slices < window;
          x[k] = ok ? x_ptr[k * x_step] : -INFINITY;
          ref[k] = ok ? ref_ptr[k * slices] : 0.0f;
        }
      }
      x_ptr += kBatch * x_step;
      ref_ptr += kBatch * slices;
#pragma unroll
      for (int k = 0; k < kBatch; ++k) {
        const float m = Ex2(x[k] - ref[k]);  // ex2(-inf) = 0
        mass += m;
        above += m > breadth_threshold ? 1u : 0u;
      }
    }
    atomicAdd(&head_mass[h * kPageMassPages + col], mass);
  }
  atomicAdd(&s_above[col], above);
  __syncthreads();
  float total = 0, h_log_h = 0;
  for (uint32_t h = worker; h < q_heads; h += kWorkers) {
    const float mass = head_mass[h * kPageMassPages + col];
    total += mass;
    if (mass > 0) h_log_h += mass * __logf(mass);
  }
  if (total > 0) {
    atomicAdd(&s_total[col], total);
    atomicAdd(&s_hlogh[col], h_log_h);
  }
  __syncthreads();
  if (threadIdx.x >= kPageMassPages || pg >= pages) return;
  total = s_total[col];
  h_log_h = s_hlogh[col];
  PageAttentionStats o;
  const float pairs = static_cast<float>(q_heads) * window;
  o.mass = total / pairs;
  o.breadth = s_above[col] / pairs;
  // Entropy of head_h / total over heads = log(total) - sum(head log head) / total.
  o.mass_entropy =
      (q_heads > 1 && total > 0)
          ? fminf(1.0f, fmaxf(0.0f, (logf(total) - h_log_h / total) / logf(float(q_heads))))
          : 1.0f;
  const uint32_t t0 = pg * tokens_per_page;
  const uint32_t t1 = min(tokens, t0 + tokens_per_page);
  o.value_norm = s_norm[col] / (float(t1 - t0) * kv_heads);
  out[pg] = o;
}

// log2(e) / sqrt(head_dim): exp2 of logits scaled by it is exp of the softmax's.
float ScaleLog2(uint32_t head_dim) {
  return static_cast<float>(1.4426950408889634 / std::sqrt(static_cast<double>(head_dim)));
}

uint32_t MmaTiles(const AttentionStatsShape& s) {
  return (s.tokens + mma_pass::kTile - 1) / mma_pass::kTile;
}

// The page-aligned tiled pass covers these shapes; every other valid shape takes the generic one.
bool UsesMmaPass(const AttentionStatsShape& s) {
  const bool dim = s.head_dim == 64 || s.head_dim == 128 || s.head_dim == 256;
  const uint32_t t = s.tokens_per_page;
  return dim && (t == 8 || t == 16 || t == 32 || t == 64);
}

absl::Status DeviceLimits(int& sms, int& smem_limit) {
  int device = 0;
  if (absl::Status s = CudaStatus(cudaGetDevice(&device), "cudaGetDevice"); !s.ok()) return s;
  if (absl::Status s = CudaStatus(
          cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device), "SM count");
      !s.ok()) {
    return s;
  }
  return CudaStatus(
      cudaDeviceGetAttribute(&smem_limit, cudaDevAttrMaxSharedMemoryPerBlockOptin, device),
      "shared memory limit");
}

// Sets the kernel's dynamic shared memory and returns how many of its blocks fit on one SM.
template <typename Kernel>
absl::StatusOr<int> PrepareKernel(Kernel kernel, int threads, size_t smem_bytes) {
  if (absl::Status s =
          CudaStatus(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                          static_cast<int>(smem_bytes)),
                     "cudaFuncSetAttribute(attention stats)");
      !s.ok()) {
    return s;
  }
  int per_sm = 0;
  if (absl::Status s = CudaStatus(
          cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, kernel, threads, smem_bytes),
          "occupancy of attention stats");
      !s.ok()) {
    return s;
  }
  return std::max(1, per_sm);
}

using MmaKernel = void (*)(const mma_pass::Params);

template <typename T, int kHeadDim, int kOpt>
MmaKernel MmaKernelFor(uint32_t tokens_per_page) {
  switch (tokens_per_page) {
    case 8:
      return mma_pass::AttentionStatsPass1Mma<T, kHeadDim, 8, kOpt>;
    case 16:
      return mma_pass::AttentionStatsPass1Mma<T, kHeadDim, 16, kOpt>;
    case 32:
      return mma_pass::AttentionStatsPass1Mma<T, kHeadDim, 32, kOpt>;
    default:
      return mma_pass::AttentionStatsPass1Mma<T, kHeadDim, 64, kOpt>;
  }
}

struct MmaPick {
  MmaKernel kernel = nullptr;
  MmaKernel fallback = nullptr;  // the same options without tensor maps
  size_t smem = 0;
  bool tensor_maps = false;
  bool fused_tail = false;  // kOptFusedTail, where the plan allows it
  int map_layout = 0;       // kTensorMap* below
  int launch_opts = 0;      // kOptCacheMaps
};

// Tensor maps of K and V (MakeKvTensorMap): one padded box a tile row, or kOptSwizzle's boxes
// (with or without kOptPromote256).
constexpr int kTensorMapPadded = 0;
constexpr int kTensorMapSwizzled = 1;
constexpr int kTensorMapSwizzledPromoted = 2;

// The benchmark shape's kernel with kOpt (kOptSwizzle and kOptWgmma among them) and the launch
// options of 4303; its fallback without tensor maps is 3's (19's with kOptDeep).
template <int kOpt>
MmaPick WgmmaPick() {
  using B = __nv_bfloat16;
  constexpr bool kDeep = (kOpt & mma_pass::kOptDeep) != 0;
  constexpr int kFallback = kDeep ? 19 : 3;
  return {mma_pass::AttentionStatsPass1Mma<B, 128, 16, kOpt>,
          mma_pass::AttentionStatsPass1Mma<B, 128, 16, kFallback>,
          std::max(mma_pass::Geometry<128, kDeep>::kSmemBytes,
                   mma_pass::Geometry<128, kDeep, true>::kSmemBytes),
          true,
          true,
          kTensorMapSwizzled,
          mma_pass::kOptCacheMaps};
}

// KVTIER_ATTN_OPT=<bits of mma_pass::kOpt*> picks another option set of the tiled pass for the
// benchmark's shape (bf16, head_dim 128, 16 tokens a page), for side-by-side measurements; every
// other shape, and any value not listed, takes the default (kOptDefaultWgmma where WgmmaBuilt,
// else kOptDefault).
MmaPick PickExperiment(const AttentionStatsShape& s) {
  const char* env = std::getenv("KVTIER_ATTN_OPT");
  if (env == nullptr || s.dtype != KvDType::kBF16 || s.head_dim != 128 || s.tokens_per_page != 16) {
    return {};
  }
  using B = __nv_bfloat16;
  constexpr size_t kSmem = mma_pass::Geometry<128>::kSmemBytes;
  constexpr size_t kDeepSmem = mma_pass::Geometry<128, true>::kSmemBytes;
  switch (std::atoi(env)) {
    case 0:
      return {mma_pass::AttentionStatsPass1Mma<B, 128, 16, 0>,
              mma_pass::AttentionStatsPass1Mma<B, 128, 16, 0>, kSmem, false};
    case 1:
      return {mma_pass::AttentionStatsPass1Mma<B, 128, 16, 1>,
              mma_pass::AttentionStatsPass1Mma<B, 128, 16, 1>, kSmem, false};
    case 3:
      return {mma_pass::AttentionStatsPass1Mma<B, 128, 16, 3>,
              mma_pass::AttentionStatsPass1Mma<B, 128, 16, 3>, kSmem, false};
    case 4:
      return {mma_pass::AttentionStatsPass1Mma<B, 128, 16, 4>,
              mma_pass::AttentionStatsPass1Mma<B, 128, 16, 0>, kSmem, true};
    case 7:
      return {mma_pass::AttentionStatsPass1Mma<B, 128, 16, 7>,
              mma_pass::AttentionStatsPass1Mma<B, 128, 16, 3>, kSmem, true};
    case 15:
      return {mma_pass::AttentionStatsPass1Mma<B, 128, 16, 15>,
              mma_pass::AttentionStatsPass1Mma<B, 128, 16, 3>, kSmem, true};
    case 67:  // 3 + kOptFusedTail
      return {mma_pass::AttentionStatsPass1Mma<B, 128, 16, 3>,
              mma_pass::AttentionStatsPass1Mma<B, 128, 16, 3>, kSmem, false, true};
    case 79:  // 15 + kOptFusedTail (the default until session 14's run 7)
      return {mma_pass::AttentionStatsPass1Mma<B, 128, 16, 15>,
              mma_pass::AttentionStatsPass1Mma<B, 128, 16, 3>, kSmem, true, true};
    case 207:  // 79 + kOptSwizzle (the default)
    case 463:  // 79 + kOptSwizzle + kOptPromote256
      return {mma_pass::AttentionStatsPass1Mma<B, 128, 16, 15 | mma_pass::kOptSwizzle>,
              mma_pass::AttentionStatsPass1Mma<B, 128, 16, 3>,
              std::max(kSmem, mma_pass::Geometry<128, false, true>::kSmemBytes),
              true,
              true,
              std::atoi(env) == 463 ? kTensorMapSwizzledPromoted : kTensorMapSwizzled};
    case 4303:  // 207 + kOptCacheMaps
      return {mma_pass::AttentionStatsPass1Mma<B, 128, 16, 15 | mma_pass::kOptSwizzle>,
              mma_pass::AttentionStatsPass1Mma<B, 128, 16, 3>,
              std::max(kSmem, mma_pass::Geometry<128, false, true>::kSmemBytes),
              true,
              true,
              kTensorMapSwizzled,
              mma_pass::kOptCacheMaps};
    // 4303 + kOptWgmma (+ kOptWgmmaPipe) (+ kOptDeep: one block an SM, 6 stages).
    case 4303 | mma_pass::kOptWgmma:
      return WgmmaPick<15 | mma_pass::kOptSwizzle | mma_pass::kOptWgmma>();
    case 4303 | mma_pass::kOptWgmma | mma_pass::kOptWgmmaPipe:
      return WgmmaPick<15 | mma_pass::kOptSwizzle | mma_pass::kOptWgmma |
                       mma_pass::kOptWgmmaPipe>();
    case 4303 | mma_pass::kOptWgmma | mma_pass::kOptDeep:
      return WgmmaPick<15 | mma_pass::kOptSwizzle | mma_pass::kOptWgmma | mma_pass::kOptDeep>();
    case 4303 | mma_pass::kOptWgmma | mma_pass::kOptWgmmaPipe | mma_pass::kOptDeep:
      return WgmmaPick<15 | mma_pass::kOptSwizzle | mma_pass::kOptWgmma | mma_pass::kOptWgmmaPipe |
                       mma_pass::kOptDeep>();
    case 19:
      return {mma_pass::AttentionStatsPass1Mma<B, 128, 16, 19>,
              mma_pass::AttentionStatsPass1Mma<B, 128, 16, 19>, kDeepSmem, false};
    case 31:
      return {mma_pass::AttentionStatsPass1Mma<B, 128, 16, 31>,
              mma_pass::AttentionStatsPass1Mma<B, 128, 16, 19>, kDeepSmem, true};
    case 35:
      return {mma_pass::AttentionStatsPass1Mma<B, 128, 16, 35>,
              mma_pass::AttentionStatsPass1Mma<B, 128, 16, 35>, kSmem, false};
    case 39:
      return {mma_pass::AttentionStatsPass1Mma<B, 128, 16, 39>,
              mma_pass::AttentionStatsPass1Mma<B, 128, 16, 35>, kSmem, true};
    case 47:
      return {mma_pass::AttentionStatsPass1Mma<B, 128, 16, 47>,
              mma_pass::AttentionStatsPass1Mma<B, 128, 16, 35>, kSmem, true};
    case 51:
      return {mma_pass::AttentionStatsPass1Mma<B, 128, 16, 51>,
              mma_pass::AttentionStatsPass1Mma<B, 128, 16, 51>, kDeepSmem, false};
    default:
      return {};
  }
}

// The default option set as the tiled pass's template and plan take it.
namespace mma_default {
constexpr int kOpt = mma_pass::kOptDefault & mma_pass::kKernelOpts;
constexpr int kWgmmaOpt = mma_pass::kOptDefaultWgmma & mma_pass::kKernelOpts;
constexpr int kNoMaps = kOpt & ~mma_pass::kOptBulkLoads;
constexpr bool kMaps = (kOpt & mma_pass::kOptBulkLoads) != 0;
constexpr bool kFused = (mma_pass::kOptDefault & mma_pass::kOptFusedTail) != 0;
constexpr bool kSwz = kMaps && (kOpt & mma_pass::kOptSwizzle) != 0;
constexpr int kLaunch = mma_pass::kOptDefault & mma_pass::kOptCacheMaps;
constexpr int kLayout = !kSwz ? kTensorMapPadded
                        : (mma_pass::kOptDefault & mma_pass::kOptPromote256) != 0
                            ? kTensorMapSwizzledPromoted
                            : kTensorMapSwizzled;
}  // namespace mma_default

// Whether the device code loaded for the current device has the wgmma path (built for sm_90a).
__device__ int wgmma_built = mma_pass::kHaveWgmma ? 1 : 0;

bool WgmmaBuilt() {
  int built = 0;
  if (cudaMemcpyFromSymbol(&built, wgmma_built, sizeof(built)) != cudaSuccess) {
    (void)cudaGetLastError();  // no symbol means no such code: the mma.sync default
    return false;
  }
  return built != 0;
}

// The default kernel of head_dim 64 or 128 with the tensor-map producer (kOptDefaultWgmma's where
// `wgmma`), its fallback without it, and the shared memory of whichever needs more (the
// fallback's padded tiles).
template <typename T, int kHeadDim>
MmaPick DefaultMmaPick(uint32_t tpp, bool wgmma) {
  using namespace mma_default;
  constexpr size_t kSmem = std::max(mma_pass::Geometry<kHeadDim, false, kSwz>::kSmemBytes,
                                    mma_pass::Geometry<kHeadDim>::kSmemBytes);
  MmaPick pick{MmaKernelFor<T, kHeadDim, kOpt>(tpp),
               MmaKernelFor<T, kHeadDim, kNoMaps>(tpp),
               kSmem,
               kMaps,
               kFused,
               kLayout,
               kLaunch};
  if constexpr (kSwz) {
    if (wgmma) pick.kernel = MmaKernelFor<T, kHeadDim, kWgmmaOpt>(tpp);
  }
  return pick;
}

template <typename T>
MmaPick PickMmaKernel(const AttentionStatsShape& s) {
  const uint32_t tpp = s.tokens_per_page;
  switch (s.head_dim) {
    case 64:
      return DefaultMmaPick<T, 64>(tpp, WgmmaBuilt());
    case 128: {
      if (MmaPick e = PickExperiment(s); e.kernel != nullptr) return e;
      return DefaultMmaPick<T, 128>(tpp, WgmmaBuilt());
    }
    default: {  // head_dim 256 has no tensor-map producer (see kOptBulkLoads)
      const MmaKernel k = MmaKernelFor<T, 256, mma_default::kNoMaps>(tpp);
      return {k,
              k,
              mma_pass::Geometry<256>::kSmemBytes,
              false,
              mma_default::kFused,
              0,
              mma_default::kLaunch};
    }
  }
}

// The driver's cuTensorMapEncodeTiled, or null where the driver has none.
void* TensorMapEncoder() { return CudaDriverEntry<void*>("cuTensorMapEncodeTiled"); }

// K or V as a 2-D tensor [tokens][kv_heads * head_dim] whose box is one padded stage tile, or
// (kOptSwizzle) 64 tokens x 64 elements, 128-byte swizzled.
bool MakeKvTensorMap(void* encode, const AttentionStatsShape& s, int layout, const void* base,
                     CUtensorMap* map) {
  const auto fn = reinterpret_cast<PFN_cuTensorMapEncodeTiled_v12000>(encode);
  const bool swizzled = layout != kTensorMapPadded;
  const cuuint64_t dims[2] = {cuuint64_t{s.kv_heads} * s.head_dim, s.tokens};
  const cuuint64_t strides[1] = {cuuint64_t{s.kv_heads} * s.head_dim * 2};
  const cuuint32_t box[2] = {swizzled ? 64u : s.head_dim + 8, mma_pass::kTile};
  const cuuint32_t element_strides[2] = {1, 1};
  return fn(map,
            s.dtype == KvDType::kBF16 ? CU_TENSOR_MAP_DATA_TYPE_BFLOAT16
                                      : CU_TENSOR_MAP_DATA_TYPE_FLOAT16,
            2, const_cast<void*>(base), dims, strides, box, element_strides,
            CU_TENSOR_MAP_INTERLEAVE_NONE,
            swizzled ? CU_TENSOR_MAP_SWIZZLE_128B : CU_TENSOR_MAP_SWIZZLE_NONE,
            // Padded: no L2 promotion, the box's 8 extra elements would otherwise pull in 256
            // bytes of the next head's row (measured slower with L2_256B).
            layout == kTensorMapSwizzledPromoted ? CU_TENSOR_MAP_L2_PROMOTION_L2_256B
                                                 : CU_TENSOR_MAP_L2_PROMOTION_NONE,
            CU_TENSOR_MAP_FLOAT_OOB_FILL_NONE) == CUDA_SUCCESS;
}

// Value-norm sums per (page, kv head): the tiled pass leaves one per 8 tokens.
uint32_t NormParts(const AttentionStatsShape& s) {
  return UsesMmaPass(s) ? s.tokens_per_page / 8 : 1;
}

uint32_t MmaSplits(const AttentionStatsShape& s) {
  const uint32_t rows_total = s.q_heads / s.kv_heads * s.window;
  const uint32_t max_rows = mma_pass::kMaxWarps * 16;
  return (rows_total + max_rows - 1) / max_rows;
}

using Pass1Plan = detail::AttentionPass1Plan;

// One wave of equal blocks: each block loads its queries once and fills its pipeline once, so
// fewer, longer blocks cost less, as long as every SM slot is busy. `units` are (block row,
// piece of the sequence) pairs; the answer is pieces per block.
uint32_t PerBlockForOneWave(uint64_t units, int sms, int per_sm) {
  const uint64_t slots = uint64_t(std::max(1, sms)) * uint64_t(per_sm);
  return static_cast<uint32_t>(std::max<uint64_t>(1, (units + slots - 1) / slots));
}

// Pass 1 of the tiled path (with each row's log2-sum-exp, merged by the last blocks).
absl::StatusOr<Pass1Plan> PlanMmaPass(const AttentionStatsShape& shape, int sms, int smem_limit) {
  const MmaPick pick = shape.dtype == KvDType::kBF16 ? PickMmaKernel<__nv_bfloat16>(shape)
                                                     : PickMmaKernel<__half>(shape);
  const size_t smem = pick.smem;
  if (smem > static_cast<size_t>(smem_limit)) {
    return absl::InvalidArgumentError(absl::StrCat("GPU attention stats need ", smem,
                                                   " bytes of shared memory a block, the device "
                                                   "allows ",
                                                   smem_limit));
  }
  Pass1Plan plan;
  plan.smem_bytes = smem;
  plan.threads = (mma_pass::kMaxWarps + 1) * 32;  // consumers + the producer
  plan.fallback = reinterpret_cast<const void*>(pick.fallback);
  plan.encode_tiled = pick.tensor_maps ? TensorMapEncoder() : nullptr;
  plan.tensor_maps = plan.encode_tiled != nullptr;
  plan.tensor_map_layout = pick.map_layout;
  plan.cache_tensor_maps = (pick.launch_opts & mma_pass::kOptCacheMaps) != 0;
  plan.kernel = plan.tensor_maps ? reinterpret_cast<const void*>(pick.kernel) : plan.fallback;
  // Rows of a kv head's q-head group, split evenly into blocks of at most 128 (8 warps of 16).
  const uint32_t rows_total = shape.q_heads / shape.kv_heads * shape.window;
  const uint32_t splits = MmaSplits(shape);
  plan.rows_per_block = ((rows_total + splits - 1) / splits + 15) / 16 * 16;
  auto per_sm = PrepareKernel(reinterpret_cast<MmaKernel>(plan.kernel), plan.threads, smem);
  if (!per_sm.ok()) return per_sm.status();
  int resident_per_sm = *per_sm;  // of the kernel and its fallback, the fewer
  if (plan.fallback != plan.kernel) {
    auto fallback_per_sm = PrepareKernel(pick.fallback, plan.threads, smem);
    if (!fallback_per_sm.ok()) return fallback_per_sm.status();
    resident_per_sm = std::min(resident_per_sm, *fallback_per_sm);
  }
  const uint32_t tiles = MmaTiles(shape);
  plan.per_block = PerBlockForOneWave(uint64_t{tiles} * shape.kv_heads * splits, sms, *per_sm);
  plan.grid = dim3((tiles + plan.per_block - 1) / plan.per_block, shape.kv_heads, splits);
  // The fused tail waits across blocks: only for a cooperative launch (every block resident),
  // one row split, and a grid that fits the device at once.
  if (pick.fused_tail && splits == 1) {
    int device = 0, cooperative = 0;
    if (absl::Status s = CudaStatus(cudaGetDevice(&device), "cudaGetDevice"); !s.ok()) return s;
    if (absl::Status s =
            CudaStatus(cudaDeviceGetAttribute(&cooperative, cudaDevAttrCooperativeLaunch, device),
                       "cooperative launch attribute");
        !s.ok()) {
      return s;
    }
    const uint64_t blocks = uint64_t{plan.grid.x} * plan.grid.y * plan.grid.z;
    plan.fused_tail =
        cooperative != 0 && blocks <= uint64_t(std::max(1, sms)) * uint64_t(resident_per_sm);
  }
  return plan;
}

// Pass 1 of the generic path (any tokens_per_page, head_dim a multiple of 16 up to 256).
absl::StatusOr<Pass1Plan> PlanGenericPass(const AttentionStatsShape& shape, int sms,
                                          int smem_limit) {
  const uint32_t rows_total = shape.q_heads / shape.kv_heads * shape.window;
  // At most 128 rows a block (about 87 KB of shared memory at head_dim 128). Measured on an H100
  // (bench/gpu/results/run5): splitting 128 rows into two blocks of 64 was slower (240 us against
  // 203 us), because registers, not shared memory, hold the kernel to two blocks an SM and each
  // block then pays the per-tile overhead for half the rows.
  Pass1Plan plan;
  plan.rows_per_block = std::min<uint32_t>(rows_total, 128);
  const uint32_t splits = (rows_total + plan.rows_per_block - 1) / plan.rows_per_block;
  const SmemLayout l = MakeLayout(plan.rows_per_block, shape.head_dim);
  if (l.bytes > static_cast<size_t>(smem_limit)) {
    return absl::InvalidArgumentError(
        absl::StrCat("GPU attention stats: blocks of ", l.rows, " rows need ", l.bytes,
                     " bytes of shared memory, the device allows ", smem_limit));
  }
  using Pass1Kernel = void (*)(Pass1Params);
  auto pick = [&](auto tag) -> Pass1Kernel {
    using T = decltype(tag);
    switch (shape.head_dim) {
      case 64:
        return AttentionStatsPass1<T, 64>;
      case 128:
        return AttentionStatsPass1<T, 128>;
      case 256:
        return AttentionStatsPass1<T, 256>;
      default:
        return AttentionStatsPass1<T, 0>;
    }
  };
  const Pass1Kernel kernel = shape.dtype == KvDType::kBF16 ? pick(__nv_bfloat16{}) : pick(__half{});
  plan.kernel = reinterpret_cast<const void*>(kernel);
  plan.threads = kThreads;
  plan.smem_bytes = l.bytes;
  auto per_sm = PrepareKernel(kernel, kThreads, l.bytes);
  if (!per_sm.ok()) return per_sm.status();
  const uint32_t pages = AttentionStatsPageCount(shape);
  plan.per_block = PerBlockForOneWave(uint64_t{pages} * shape.kv_heads * splits, sms, *per_sm);
  plan.grid = dim3((pages + plan.per_block - 1) / plan.per_block, shape.kv_heads, splits);
  return plan;
}

// The kernels, the grid and the pass-3 shared memory for `shape` on the current device.
absl::StatusOr<Pass1Plan> PlanLaunches(const AttentionStatsShape& shape) {
  if (shape.head_dim % 16 != 0 || shape.head_dim > 256) {
    return absl::InvalidArgumentError(
        absl::StrCat("GPU attention stats need head_dim a multiple of 16 and at most 256, got ",
                     shape.head_dim));
  }
  int sms = 0, smem_limit = 0;
  if (absl::Status s = DeviceLimits(sms, smem_limit); !s.ok()) return s;
  if (absl::Status s =
          CudaStatus(cudaFuncSetAttribute(
                         AttentionStatsPageMass, cudaFuncAttributeMaxDynamicSharedMemorySize,
                         static_cast<int>(size_t{shape.q_heads} * kPageMassPages * sizeof(float))),
                     "cudaFuncSetAttribute(attention stats pass 3)");
      !s.ok()) {
    return s;
  }
  return UsesMmaPass(shape) ? PlanMmaPass(shape, sms, smem_limit)
                            : PlanGenericPass(shape, sms, smem_limit);
}

// Launches a planned pass 1 with its (only) parameter block.
template <typename Params>
absl::Status LaunchPlanned(const Pass1Plan& plan, Params& p, cudaStream_t stream) {
  void* args[] = {&p};
  return CudaStatus(
      cudaLaunchKernel(plan.kernel, plan.grid, dim3(plan.threads), args, plan.smem_bytes, stream),
      "attention stats pass 1");
}

// The same, cooperatively: every block resident at once (the fused tail waits across blocks).
cudaError_t LaunchCooperative(const Pass1Plan& plan, mma_pass::Params& p, cudaStream_t stream) {
  void* args[] = {&p};
  return cudaLaunchCooperativeKernel(plan.kernel, plan.grid, dim3(plan.threads), args,
                                     plan.smem_bytes, stream);
}

// K's or V's tensor map for `base` (MakeKvTensorMap), from the workspace's cache where the plan
// keeps one (kOptCacheMaps) and it was made for `base`.
bool KvTensorMap(const Pass1Plan& plan, const AttentionStatsShape& shape, const void* base,
                 detail::AttentionTensorMapCache& cache, CUtensorMap* map) {
  static_assert(sizeof(CUtensorMap) == sizeof(cache.map), "the cache holds one CUtensorMap");
  if (plan.cache_tensor_maps && cache.base == base) {
    std::memcpy(map, cache.map, sizeof(*map));
    return true;
  }
  if (!MakeKvTensorMap(plan.encode_tiled, shape, plan.tensor_map_layout, base, map)) return false;
  if (plan.cache_tensor_maps) {
    std::memcpy(cache.map, map, sizeof(*map));
    cache.base = base;
  }
  return true;
}

}  // namespace

absl::StatusOr<AttentionStatsWorkspace> AttentionStatsWorkspace::Create(
    const AttentionStatsShape& shape) {
  if (absl::Status s = ValidateAttentionStatsShape(shape); !s.ok()) return s;
  AttentionStatsWorkspace w;
  w.shape_ = shape;
  const size_t pages = AttentionStatsPageCount(shape);
  const size_t rows = size_t{shape.q_heads} * shape.window;
  struct Need {
    DeviceBuffer* buffer;
    size_t bytes;
  };
  const Need needs[] = {
      {&w.page_lse_, rows * pages * sizeof(float)},
      {&w.row_lse_, rows * sizeof(float)},
      {&w.norm_sum_, pages * shape.kv_heads * NormParts(shape) * sizeof(float)},
      // At most one running (max, sum) per row and tile: the tiled pass never has more blocks
      // along the sequence than tiles.
      {&w.row_part_, UsesMmaPass(shape) ? rows * MmaTiles(shape) * sizeof(float2) : 0},
      // Finished-block counters of pass 1's last-block merges, one per (kv head, row split).
      // ... and the chunk counters of the dynamic schedule, behind them; then the fused tail's
      // arrive and depart counters (one a kv head) and its finished counters (one a block
      // column, at most one a tile).
      {&w.done_, (2 * size_t{shape.kv_heads} * MmaSplits(shape) + 2 * size_t{shape.kv_heads} +
                  (UsesMmaPass(shape) ? MmaTiles(shape) : 0)) *
                     sizeof(uint32_t)},
      // The fused tail's per (kv head, page) sums.
      {&w.kv_part_, UsesMmaPass(shape) ? size_t{shape.kv_heads} * pages * sizeof(float4) : 0},
  };
  for (const Need& n : needs) {
    auto b = DeviceBuffer::Allocate(n.bytes);
    if (!b.ok()) return b.status();
    *n.buffer = std::move(*b);
  }
  if (absl::Status s = CudaStatus(cudaMemset(w.done_.get(), 0, w.done_.bytes()), "cudaMemset");
      !s.ok()) {
    return s;
  }
  absl::StatusOr<Pass1Plan> plan = PlanLaunches(shape);
  if (plan.ok()) {
    w.pass1_ = *plan;
  } else {
    w.plan_status_ = plan.status();
  }
  return w;
}

absl::Status LaunchAttentionStats(const AttentionStatsShape& shape,
                                  const AttentionStatsOptions& options, const void* q,
                                  const void* k, const void* v, PageAttentionStats* out,
                                  AttentionStatsWorkspace& workspace, cudaStream_t stream) {
  if (absl::Status s = ValidateAttentionStatsShape(shape); !s.ok()) return s;
  const AttentionStatsShape& w = workspace.shape();
  if (w.tokens != shape.tokens || w.q_heads != shape.q_heads || w.kv_heads != shape.kv_heads ||
      w.head_dim != shape.head_dim || w.window != shape.window ||
      w.tokens_per_page != shape.tokens_per_page) {
    return absl::InvalidArgumentError("attention stats workspace was made for another shape");
  }
  if (!workspace.plan_status_.ok()) return workspace.plan_status_;
  const Pass1Plan& plan = workspace.pass1_;
  auto* page_lse = static_cast<float*>(workspace.page_lse_.get());
  auto* row_lse = static_cast<float*>(workspace.row_lse_.get());
  auto* norm_sum = static_cast<float*>(workspace.norm_sum_.get());
  const uint32_t pages = AttentionStatsPageCount(shape);
  if (UsesMmaPass(shape)) {
    mma_pass::Params p{};
    p.q = q;
    p.k = k;
    p.v = v;
    p.tokens = shape.tokens;
    p.q_heads = shape.q_heads;
    p.kv_heads = shape.kv_heads;
    p.window = shape.window;
    p.pages = pages;
    p.rows_per_block = plan.rows_per_block;
    p.tiles_per_block = plan.per_block;
    p.scale_log2 = ScaleLog2(shape.head_dim);
    p.page_lse = page_lse;
    p.row_part = static_cast<float2*>(workspace.row_part_.get());
    p.row_lse = row_lse;
    p.norm_sum = norm_sum;
    p.done = static_cast<uint32_t*>(workspace.done_.get());
    p.next_chunk = p.done + size_t{shape.kv_heads} * MmaSplits(shape);
    Pass1Plan launch = plan;
    if (plan.tensor_maps && (!KvTensorMap(plan, shape, k, workspace.tensor_maps_[0], &p.tmap_k) ||
                             !KvTensorMap(plan, shape, v, workspace.tensor_maps_[1], &p.tmap_v))) {
      launch.kernel = plan.fallback;  // e.g. K or V not 16-byte aligned
    }
    if (plan.fused_tail) {  // pass 1 writes the pages' statistics itself: no pass 3
      p.fused = 1;
      p.breadth_threshold = options.breadth_threshold;
      p.arrive = p.next_chunk + size_t{shape.kv_heads} * MmaSplits(shape);
      p.depart = p.arrive + shape.kv_heads;
      p.finished = p.depart + shape.kv_heads;
      p.kv_part = static_cast<float4*>(workspace.kv_part_.get());
      p.out = out;
      const cudaError_t e = LaunchCooperative(launch, p, stream);
      if (e != cudaErrorCooperativeLaunchTooLarge) {
        return CudaStatus(e, "attention stats pass 1 (cooperative, fused tail)");
      }
      // Fewer SMs than the plan saw (e.g. shared through MPS): pass 1, then pass 3.
      cudaGetLastError();
      p.fused = 0;
    }
    if (absl::Status s = LaunchPlanned(launch, p, stream); !s.ok()) return s;
  } else {
    Pass1Params p{};
    p.q = q;
    p.k = k;
    p.v = v;
    p.tokens = shape.tokens;
    p.q_heads = shape.q_heads;
    p.kv_heads = shape.kv_heads;
    p.head_dim = shape.head_dim;
    p.window = shape.window;
    p.tokens_per_page = shape.tokens_per_page;
    p.pages = pages;
    p.pages_per_block = plan.per_block;
    p.rows_per_block = plan.rows_per_block;
    p.scale_log2 = ScaleLog2(shape.head_dim);
    p.page_lse = page_lse;
    p.norm_sum = norm_sum;
    if (absl::Status s = LaunchPlanned(plan, p, stream); !s.ok()) return s;
    const uint32_t rows = shape.q_heads * shape.window;
    AttentionStatsRowLse<<<rows, kThreads, 0, stream>>>(page_lse, pages, row_lse);
    if (absl::Status s = CudaStatus(cudaGetLastError(), "attention stats pass 2"); !s.ok()) {
      return s;
    }
  }
  cudaLaunchConfig_t config{};
  config.gridDim = dim3((pages + kPageMassPages - 1) / kPageMassPages);
  config.blockDim = dim3(kPageMassWarps * 32);
  config.dynamicSmemBytes = size_t{shape.q_heads} * kPageMassPages * sizeof(float);
  config.stream = stream;
  cudaLaunchAttribute attribute{};
  attribute.id = cudaLaunchAttributeProgrammaticStreamSerialization;
  attribute.val.programmaticStreamSerializationAllowed = 1;
  config.attrs = &attribute;
  config.numAttrs = 1;
  return CudaStatus(cudaLaunchKernelEx(
                        &config, AttentionStatsPageMass, static_cast<const float*>(page_lse),
                        static_cast<const float*>(row_lse), static_cast<const float*>(norm_sum),
                        NormParts(shape), shape.tokens, shape.q_heads, shape.kv_heads, shape.window,
                        shape.tokens_per_page, pages, options.breadth_threshold, out),
                    "attention stats pass 3");
}

}  // namespace kvtier::kernels
