// Fused attention, softmax(q kᵀ · scale) v, for f16 and bf16 on tensor
// cores (WMMA), in the way of FlashAttention-2: a block takes 64 query rows
// of one (image, head) and walks the keys 64 at a time, keeping a running
// row maximum and sum, so the [n, m] score matrix never exists in memory.
// With candle's matrix products, SD 1.5's 4096-token self-attention wrote,
// re-read and rewrote 512 MB of scores per layer (and SD 2.x, in f32, 3.4 GB
// at 768 px).
//
// q [b, n, heads * d], k and v [b, m, heads * d], out like q: heads are read
// and written in place. d is a multiple of 8 (16-byte loads), padded with
// zeros to DP, a multiple of 16 (the WMMA tile). Scores, the softmax and the
// output accumulate in f32; P is rounded to T for the P·V product, as
// FlashAttention does.
#include "common.cuh"
#include <mma.h>
#include <stdint.h>

using namespace nvcuda;

#define BQ 64     // query rows per block, 16 per warp
#define BK 64     // keys per step
#define WARPS 4

// Shared memory (dynamic; flash_attention.rs sizes it), in this order:
// Q [BQ][DP], K [BK][DP], V [BK][DP] (T); per warp, S [16][BK] f32
// (overwritten by P [16][BK] in T) and O [16][DP] f32. Every part starts
// 32-byte aligned, as WMMA needs.

// rows x DP elements of T from `src` (row r at src + r * stride, d values
// each) into `dst` [rows][DP], zeros past d and past `valid` rows; 16-byte
// loads, by all threads of the block.
template <typename T, int DP>
__device__ void load_tile(T *dst, const T *src, long stride, int valid, int d, int rows) {
  constexpr int CHUNKS = DP / 8;  // 8 values of 2 bytes per 16-byte load
  for (int i = threadIdx.x; i < rows * CHUNKS; i += blockDim.x) {
    const int r = i / CHUNKS, c = (i % CHUNKS) * 8;
    uint4 v = make_uint4(0, 0, 0, 0);
    if (r < valid && c < d) v = *reinterpret_cast<const uint4 *>(src + r * stride + c);
    *reinterpret_cast<uint4 *>(dst + r * DP + c) = v;
  }
}

// A row maximum may stay behind the true one by this much (log2 units)
// before the row is rescaled: P then stays below 2^8, well inside f16 and
// bf16, and the output accumulators are rescaled only when a row's maximum
// jumps, a few times per row rather than at every step.
#define RESCALE_MARGIN 8.f

template <typename T, int DP>
__device__ void flash_attention(const T *q, const T *k, const T *v, T *out, int n, int m,
                                int heads, int d, float scale_log2) {
  extern __shared__ __align__(128) unsigned char shared[];
  T *qs = reinterpret_cast<T *>(shared);
  T *ks = qs + BQ * DP;
  T *vs = ks + BK * DP;
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  float *ss = reinterpret_cast<float *>(vs + BK * DP) + warp * 16 * BK;
  T *ps = reinterpret_cast<T *>(ss);  // P over S, row stride BK
  float *os = reinterpret_cast<float *>(vs + BK * DP) + WARPS * 16 * BK + warp * 16 * DP;

  const int image = blockIdx.y / heads, head = blockIdx.y % heads;
  const int row0 = blockIdx.x * BQ;
  const long q_stride = (long)heads * d;  // q, k, v and out rows
  const T *q_head = q + ((long)image * n + row0) * q_stride + (long)head * d;
  const T *k_head = k + (long)image * m * q_stride + (long)head * d;
  const T *v_head = v + (long)image * m * q_stride + (long)head * d;

  load_tile<T, DP>(qs, q_head, q_stride, n - row0, d, BQ);

  // The output rows of this warp, in tensor-core accumulators.
  wmma::fragment<wmma::accumulator, 16, 16, 16, float> o[DP / 16];
#pragma unroll
  for (int j = 0; j < DP / 16; ++j) wmma::fill_fragment(o[j], 0.f);

  // Each lane owns half a row of this warp's 16 (row lane % 16, half
  // lane / 16). Its j-th value is column half * 32 + (j + row + 16 * half)
  // % 32: at each j the 32 lanes read 32 different shared-memory banks.
  const int row = lane % 16, half = lane / 16;
  float row_max = -INFINITY, row_sum = 0.f;

  for (int key0 = 0; key0 < m; key0 += BK) {
    __syncthreads();  // every warp is done with the previous K and V
    load_tile<T, DP>(ks, k_head + (long)key0 * q_stride, q_stride, m - key0, d, BK);
    load_tile<T, DP>(vs, v_head + (long)key0 * q_stride, q_stride, m - key0, d, BK);
    __syncthreads();

    // S = Q Kᵀ for this warp's 16 rows and the step's 64 keys.
#pragma unroll
    for (int kb = 0; kb < BK / 16; ++kb) {
      wmma::fragment<wmma::accumulator, 16, 16, 16, float> acc;
      wmma::fill_fragment(acc, 0.f);
#pragma unroll
      for (int kk = 0; kk < DP / 16; ++kk) {
        wmma::fragment<wmma::matrix_a, 16, 16, 16, T, wmma::row_major> a;
        wmma::fragment<wmma::matrix_b, 16, 16, 16, T, wmma::col_major> b;
        wmma::load_matrix_sync(a, qs + warp * 16 * DP + kk * 16, DP);
        wmma::load_matrix_sync(b, ks + kb * 16 * DP + kk * 16, DP);
        wmma::mma_sync(acc, a, b, acc);
      }
      wmma::store_matrix_sync(ss + kb * 16, acc, BK, wmma::mem_row_major);
    }
    __syncwarp();

    // Online softmax.
    float p[BK / 2];
    float step_max = -INFINITY;
#pragma unroll
    for (int j = 0; j < BK / 2; ++j) {
      const int col = half * (BK / 2) + ((j + row + 16 * half) & (BK / 2 - 1));
      p[j] = key0 + col < m ? ss[row * BK + col] * scale_log2 : -INFINITY;
      step_max = fmaxf(step_max, p[j]);
    }
    step_max = fmaxf(step_max, __shfl_xor_sync(0xffffffff, step_max, 16));
    // Both lanes of a row take the same decision. The first step always
    // moves the maximum off -inf (each step has a key); O is zero then.
    float rescale = 1.f;
    const bool moved = step_max > row_max + RESCALE_MARGIN;
    if (moved) {
      rescale = exp2f(row_max - step_max);
      row_sum *= rescale;
      row_max = step_max;
    }
    float step_sum = 0.f;
#pragma unroll
    for (int j = 0; j < BK / 2; ++j) {
      p[j] = exp2f(p[j] - row_max);
      step_sum += p[j];
    }
    row_sum += step_sum + __shfl_xor_sync(0xffffffff, step_sum, 16);
    __syncwarp();  // all of S is read before P overwrites it
#pragma unroll
    for (int j = 0; j < BK / 2; ++j) {
      const int col = half * (BK / 2) + ((j + row + 16 * half) & (BK / 2 - 1));
      ps[row * BK + col] = from_f32<T>(p[j]);
    }
    // Rows whose maximum moved scale their output so far, through shared
    // memory (the accumulators' register layout is the hardware's).
    if (__any_sync(0xffffffff, moved && key0 > 0)) {
#pragma unroll
      for (int j = 0; j < DP / 16; ++j)
        wmma::store_matrix_sync(os + j * 16, o[j], DP, wmma::mem_row_major);
      __syncwarp();
      if (moved)
        for (int c = half * (DP / 2); c < (half + 1) * (DP / 2); ++c) os[row * DP + c] *= rescale;
      __syncwarp();
#pragma unroll
      for (int j = 0; j < DP / 16; ++j)
        wmma::load_matrix_sync(o[j], os + j * 16, DP, wmma::mem_row_major);
    }
    __syncwarp();

    // O += P V.
#pragma unroll
    for (int kb = 0; kb < BK / 16; ++kb) {
      wmma::fragment<wmma::matrix_a, 16, 16, 16, T, wmma::row_major> a;
      wmma::load_matrix_sync(a, ps + kb * 16, BK);
#pragma unroll
      for (int j = 0; j < DP / 16; ++j) {
        wmma::fragment<wmma::matrix_b, 16, 16, 16, T, wmma::row_major> b;
        wmma::load_matrix_sync(b, vs + kb * 16 * DP + j * 16, DP);
        wmma::mma_sync(o[j], a, b, o[j]);
      }
    }
    __syncwarp();  // P is read before the next step's S overwrites it
  }

#pragma unroll
  for (int j = 0; j < DP / 16; ++j)
    wmma::store_matrix_sync(os + j * 16, o[j], DP, wmma::mem_row_major);
  __syncwarp();
  const int q_row = row0 + warp * 16 + row;
  if (q_row < n) {
    const float inv_sum = 1.f / row_sum;
    T *dst = out + ((long)image * n + q_row) * q_stride + (long)head * d;
    for (int c = half * (DP / 2); c < (half + 1) * (DP / 2) && c < d; ++c)
      dst[c] = from_f32<T>(os[row * DP + c] * inv_sum);
  }
}

#define FLASH_ATTENTION(NAME, T, DP)                                                        \
  extern "C" __global__ void __launch_bounds__(WARPS * 32)                                 \
      NAME(const T *q, const T *k, const T *v, T *out, int n, int m, int heads, int d,     \
           float scale_log2) {                                                             \
    flash_attention<T, DP>(q, k, v, out, n, m, heads, d, scale_log2);                      \
  }

#define FLASH_ATTENTION_WIDTHS(T, SUFFIX)                     \
  FLASH_ATTENTION(flash_attention_d48_##SUFFIX, T, 48)        \
  FLASH_ATTENTION(flash_attention_d64_##SUFFIX, T, 64)        \
  FLASH_ATTENTION(flash_attention_d80_##SUFFIX, T, 80)        \
  FLASH_ATTENTION(flash_attention_d96_##SUFFIX, T, 96)        \
  FLASH_ATTENTION(flash_attention_d128_##SUFFIX, T, 128)      \
  FLASH_ATTENTION(flash_attention_d160_##SUFFIX, T, 160)

FLASH_ATTENTION_WIDTHS(__half, f16)
// bf16 tensor-core fragments need sm_80 or newer; where the build targets
// older GPUs these kernels are absent and attention runs candle's products.
#if !defined(__CUDA_ARCH__) || __CUDA_ARCH__ >= 800
FLASH_ATTENTION_WIDTHS(__nv_bfloat16, bf16)
#endif
