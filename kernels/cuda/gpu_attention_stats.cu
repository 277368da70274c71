// The attention-statistics kernel (what it computes: kernels/attention_stats.h).
//
// Pass 1, one block per (kv head, run of whole pages), one pass over K and V: the block keeps the
// window's queries of its kv head's q-head group in shared memory, and for each 64-token tile of
// K computes S = Q.K^T on the tensor cores (WMMA, bf16/fp16 in, fp32 accumulate). One thread per
// (query, q head) row walks the tile's columns keeping an online-softmax (max, sum) of the page
// it is in, and at each page end writes the page's log2-sum-exp. The same tile's V rows are read
// alongside K for their L2 norms. Nothing of size tokens x rows is ever stored: the per-page
// partials are [rows][pages] floats, 1/16 of K's bytes at 16 tokens a page.
// Pass 2 reduces each row's page partials to its log2-sum-exp over the whole sequence; pass 3,
// one thread per page, turns partials into masses, breadth and the entropy over heads.
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <mma.h>

#include <algorithm>
#include <cmath>

#include "absl/strings/str_cat.h"
#include "kernels/cuda/gpu_kernels.h"

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
  float s = 0;
#pragma unroll
  for (int j = 0; j < 8; ++j) {
    const float f = static_cast<float>(e[j]);
    s += f * f;
  }
  return s;
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

// Block = 32 pages (the lanes, so every row read is one coalesced 128-byte line) x 32 warps that
// split the q heads; the warps' partial sums meet in shared memory.
constexpr int kFinishWarps = 32;
__global__ void __launch_bounds__(kFinishWarps * 32)
    AttentionStatsFinish(const float* __restrict__ page_lse, const float* __restrict__ row_lse,
                         const float* __restrict__ norm_sum, uint32_t tokens, uint32_t q_heads,
                         uint32_t kv_heads, uint32_t window, uint32_t tokens_per_page,
                         uint32_t pages, float breadth_threshold, PageAttentionStats* out) {
  const uint32_t lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  const uint32_t pg = blockIdx.x * 32 + lane;
  float total = 0, h_log_h = 0;
  uint32_t above = 0;
  if (pg < pages) {
    for (uint32_t h = warp; h < q_heads; h += kFinishWarps) {
      float head = 0;
#pragma unroll 8
      for (uint32_t i = 0; i < window; ++i) {
        const size_t row = size_t{h} * window + i;
        const float x = page_lse[row * pages + pg];
        const float m = x == -INFINITY ? 0.0f : exp2f(x - row_lse[row]);
        head += m;
        above += m > breadth_threshold ? 1u : 0u;
      }
      total += head;
      if (head > 0) h_log_h += head * logf(head);
    }
  }
  __shared__ float s_total[kFinishWarps][32], s_hlogh[kFinishWarps][32];
  __shared__ uint32_t s_above[kFinishWarps][32];
  s_total[warp][lane] = total;
  s_hlogh[warp][lane] = h_log_h;
  s_above[warp][lane] = above;
  __syncthreads();
  if (warp != 0 || pg >= pages) return;
  for (int w = 1; w < kFinishWarps; ++w) {
    total += s_total[w][lane];
    h_log_h += s_hlogh[w][lane];
    above += s_above[w][lane];
  }
  PageAttentionStats o;
  const float pairs = static_cast<float>(q_heads) * window;
  o.mass = total / pairs;
  o.breadth = above / pairs;
  // Entropy of head_h / total over heads = log(total) - sum(head log head) / total.
  o.mass_entropy =
      (q_heads > 1 && total > 0)
          ? fminf(1.0f, fmaxf(0.0f, (logf(total) - h_log_h / total) / logf(float(q_heads))))
          : 1.0f;
  float norms = 0;
  for (uint32_t g = 0; g < kv_heads; ++g) norms += norm_sum[size_t{pg} * kv_heads + g];
  const uint32_t t0 = pg * tokens_per_page;
  const uint32_t t1 = min(tokens, t0 + tokens_per_page);
  o.value_norm = norms / (float(t1 - t0) * kv_heads);
  out[pg] = o;
}

}  // namespace

absl::StatusOr<AttentionStatsWorkspace> AttentionStatsWorkspace::Create(
    const AttentionStatsShape& shape) {
  if (absl::Status s = ValidateAttentionStatsShape(shape); !s.ok()) return s;
  AttentionStatsWorkspace w;
  w.shape_ = shape;
  const size_t pages = AttentionStatsPageCount(shape);
  const size_t rows = size_t{shape.q_heads} * shape.window;
  auto a = DeviceBuffer::Allocate(rows * pages * sizeof(float));
  if (!a.ok()) return a.status();
  auto b = DeviceBuffer::Allocate(rows * sizeof(float));
  if (!b.ok()) return b.status();
  auto c = DeviceBuffer::Allocate(pages * shape.kv_heads * sizeof(float));
  if (!c.ok()) return c.status();
  w.page_lse_ = std::move(*a);
  w.row_lse_ = std::move(*b);
  w.norm_sum_ = std::move(*c);
  return w;
}

absl::Status LaunchAttentionStats(const AttentionStatsShape& shape,
                                  const AttentionStatsOptions& options, const void* q,
                                  const void* k, const void* v, PageAttentionStats* out,
                                  AttentionStatsWorkspace& workspace, cudaStream_t stream) {
  if (absl::Status s = ValidateAttentionStatsShape(shape); !s.ok()) return s;
  const AttentionStatsShape& w = workspace.shape();
  if (w.tokens != shape.tokens || w.q_heads != shape.q_heads || w.kv_heads != shape.kv_heads ||
      w.window != shape.window || w.tokens_per_page != shape.tokens_per_page) {
    return absl::InvalidArgumentError("attention stats workspace was made for another shape");
  }
  if (shape.head_dim % 16 != 0 || shape.head_dim > 256) {
    return absl::InvalidArgumentError(
        absl::StrCat("GPU attention stats need head_dim a multiple of 16 and at most 256, got ",
                     shape.head_dim));
  }
  const uint32_t group = shape.q_heads / shape.kv_heads;
  const uint32_t rows_total = group * shape.window;
  // At most 128 rows a block (about 87 KB of shared memory at head_dim 128). Measured on an H100
  // (bench/gpu/results/run5): splitting 128 rows into two blocks of 64 was slower (240 us against
  // 203 us), because registers, not shared memory, hold the kernel to two blocks an SM and each
  // block then pays the per-tile overhead for half the rows.
  const uint32_t rows_per_block = std::min<uint32_t>(rows_total, 128);
  const uint32_t splits = (rows_total + rows_per_block - 1) / rows_per_block;
  const SmemLayout l = MakeLayout(rows_per_block, shape.head_dim);
  int device = 0, sms = 0, smem_limit = 0;
  if (absl::Status s = CudaStatus(cudaGetDevice(&device), "cudaGetDevice"); !s.ok()) return s;
  cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device);
  cudaDeviceGetAttribute(&smem_limit, cudaDevAttrMaxSharedMemoryPerBlockOptin, device);
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
  if (absl::Status s =
          CudaStatus(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                          static_cast<int>(l.bytes)),
                     "cudaFuncSetAttribute(attention stats)");
      !s.ok()) {
    return s;
  }
  int per_sm = 1;
  cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, kernel, kThreads, l.bytes);
  const uint32_t pages = AttentionStatsPageCount(shape);
  // One wave of equal blocks: each (kv head, run of pages) block reloads the queries once, so
  // fewer, longer blocks cost less, as long as every SM slot is busy.
  const uint64_t slots = static_cast<uint64_t>(std::max(1, sms)) * std::max(1, per_sm);
  uint32_t per_block = static_cast<uint32_t>(
      std::max<uint64_t>(1, (uint64_t{pages} * shape.kv_heads * splits + slots - 1) / slots));
  const uint32_t blocks_x = (pages + per_block - 1) / per_block;

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
  p.pages_per_block = per_block;
  p.rows_per_block = rows_per_block;
  p.scale_log2 =
      static_cast<float>(1.4426950408889634 / std::sqrt(static_cast<double>(shape.head_dim)));
  p.page_lse = static_cast<float*>(workspace.page_lse_.get());
  p.norm_sum = static_cast<float*>(workspace.norm_sum_.get());
  kernel<<<dim3(blocks_x, shape.kv_heads, splits), kThreads, l.bytes, stream>>>(p);
  if (absl::Status s = CudaStatus(cudaGetLastError(), "attention stats pass 1"); !s.ok()) {
    return s;
  }
  const uint32_t rows = shape.q_heads * shape.window;
  AttentionStatsRowLse<<<rows, kThreads, 0, stream>>>(
      p.page_lse, pages, static_cast<float*>(workspace.row_lse_.get()));
  if (absl::Status s = CudaStatus(cudaGetLastError(), "attention stats pass 2"); !s.ok()) {
    return s;
  }
  AttentionStatsFinish<<<(pages + 31) / 32, kFinishWarps * 32, 0, stream>>>(
      p.page_lse, static_cast<const float*>(workspace.row_lse_.get()), p.norm_sum, shape.tokens,
      shape.q_heads, shape.kv_heads, shape.window, shape.tokens_per_page, pages,
      options.breadth_threshold, out);
  return CudaStatus(cudaGetLastError(), "attention stats pass 3");
}

}  // namespace kvtier::kernels
