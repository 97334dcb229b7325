// Fused attention, softmax(q kᵀ · scale) v, for f16 and bf16, as
// FlashAttention-2 keeps it: the scores, P and the output stay in each
// warp's registers as the fragments of `mma.sync` m16n8k16, and P feeds the
// P·V product straight from the fragments that held S (their layouts
// coincide), so nothing but the K and V tiles goes through shared memory.
// The WMMA kernel (flash_attention.cu) round-trips S, P and the output's
// rescaling through shared memory, and lost to candle's products at heads
// of 64 (SDXL); this one is written for those.
//
// Same interface as flash_attention.cu: a block takes the query rows of
// one (image, head), 16 or 32 per warp (`row_tiles`), and walks the keys
// 64 at a time.
// q [b, n, heads * d], k and v [b, m, heads * d], out like q; d is a
// multiple of 8, padded with zeros to DP, a multiple of 16. Scores, the
// softmax and the output accumulate in f32; P is rounded to T for P·V.
//
// Fragment coordinates (PTX ISA, mma.m16n8k16): lane = 4 g + t. A (16x16,
// row-major) registers hold rows g, g+8, g, g+8 at columns 2t (+1), 2t,
// 2t+8, 2t+8; B (16x8) registers hold rows 2t (+1) and 2t+8 (+1) of column
// g; C (16x8, f32) holds rows g and g+8 at columns 2t and 2t+1.
#include "common.cuh"
#include <stdint.h>

#define BK 64     // keys per step
#define WARPS 4
// Values of padding per shared-memory row: rows then start 4 banks apart,
// and the 32 lanes' 32-bit fragment reads fall in 32 different banks for
// every head width built here.
#define PAD 8

// Shared memory (dynamic; flash_attention.rs sizes it), in 2-byte values:
// Q [block_rows][DP + PAD], K [BK][DP + PAD], Vᵀ [DP][BK + PAD].

template <typename T> struct Mma;

template <> struct Mma<__half> {
  static __device__ __forceinline__ uint32_t pack(float lo, float hi) {
    __half2 h = __floats2half2_rn(lo, hi);  // lo in the low half
    return *reinterpret_cast<uint32_t *>(&h);
  }
  // d += a b
  static __device__ __forceinline__ void mma(float (&d)[4], const uint32_t (&a)[4], uint32_t b0,
                                             uint32_t b1) {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, "
        "{%8,%9}, {%0,%1,%2,%3};\n"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
  }
};

template <> struct Mma<__nv_bfloat16> {
  static __device__ __forceinline__ uint32_t pack(float lo, float hi) {
    __nv_bfloat162 h = __floats2bfloat162_rn(lo, hi);
    return *reinterpret_cast<uint32_t *>(&h);
  }
  static __device__ __forceinline__ void mma(float (&d)[4], const uint32_t (&a)[4], uint32_t b0,
                                             uint32_t b1) {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, "
        "{%8,%9}, {%0,%1,%2,%3};\n"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
  }
};

// Two adjacent values (the first at an even index) as one register.
template <typename T> __device__ __forceinline__ uint32_t pair(const T *p) {
  return *reinterpret_cast<const uint32_t *>(p);
}

// `rows` rows of d values (row r at src + r * stride) into dst [rows][DP +
// PAD], zeros past d and past `valid` rows; 16-byte loads by the block.
template <typename T, int DP>
__device__ void load_rows(T *dst, const T *src, long stride, int valid, int d, int rows) {
  constexpr int CHUNKS = DP / 8, S = DP + PAD;
  for (int i = threadIdx.x; i < rows * CHUNKS; i += blockDim.x) {
    const int r = i / CHUNKS, c = (i % CHUNKS) * 8;
    uint4 v = make_uint4(0, 0, 0, 0);
    if (r < valid && c < d) v = *reinterpret_cast<const uint4 *>(src + r * stride + c);
    *reinterpret_cast<uint4 *>(dst + r * S + c) = v;
  }
}

// BK rows of d values into dst transposed, [DP][BK + PAD], zeros past d and
// past `valid` rows (P is 0 there, and 0 times uninitialised memory could be
// NaN). A warp takes 32 consecutive rows at one column chunk, so its 2-byte
// stores land in 16 consecutive words.
template <typename T, int DP>
__device__ void load_transposed(T *dst, const T *src, long stride, int valid, int d) {
  constexpr int CHUNKS = DP / 8, S = BK + PAD;
  for (int i = threadIdx.x; i < BK * CHUNKS; i += blockDim.x) {
    const int r = i % BK, c = (i / BK) * 8;
    uint4 v = make_uint4(0, 0, 0, 0);
    if (r < valid && c < d) v = *reinterpret_cast<const uint4 *>(src + r * stride + c);
    const T *values = reinterpret_cast<const T *>(&v);
#pragma unroll
    for (int j = 0; j < 8; ++j) dst[(c + j) * S + r] = values[j];
  }
}

// Query-row tiles of 16 per warp: two where the registers allow
// (heads up to 80 wide), so that each K and V fragment read from shared
// memory feeds two products, as FlashAttention-2 does, at the price of
// occupancy (254 registers at 64 wide, against 115 with one tile); one for
// wider heads, whose output fragments would otherwise pass the 255
// registers a thread has. Both are built up to 80 wide (`mma` and `mma1`
// kernels) until a GPU says which wins.
template <int DP> __host__ __device__ constexpr int row_tiles() { return DP <= 80 ? 2 : 1; }

// Query rows per block with MT tiles per warp (flash_attention.rs launches
// n / this blocks).
template <int MT> __host__ __device__ constexpr int block_rows() { return WARPS * 16 * MT; }

template <typename T, int DP, int MT>
__device__ void flash_attention_mma(const T *q, const T *k, const T *v, T *out, int n, int m,
                                    int heads, int d, float scale_log2) {
  constexpr int S = DP + PAD, VS = BK + PAD, BQ = block_rows<MT>();
  extern __shared__ __align__(128) unsigned char shared[];
  T *qs = reinterpret_cast<T *>(shared);
  T *ks = qs + BQ * S;
  T *vts = ks + BK * S;
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int g = lane / 4, t = lane % 4;

  const int image = blockIdx.y / heads, head = blockIdx.y % heads;
  const int row0 = blockIdx.x * BQ;
  const long q_stride = (long)heads * d;  // q, k, v and out rows
  const T *q_head = q + ((long)image * n + row0) * q_stride + (long)head * d;
  const T *k_head = k + (long)image * m * q_stride + (long)head * d;
  const T *v_head = v + (long)image * m * q_stride + (long)head * d;

  load_rows<T, DP>(qs, q_head, q_stride, n - row0, d, BQ);
  __syncthreads();
  // This warp's query rows, tile mt holding rows 16 (MT warp + mt) on, as
  // A fragments, one per 16 values of the head.
  uint32_t qf[MT][DP / 16][4];
#pragma unroll
  for (int mt = 0; mt < MT; ++mt) {
    const T *qw = qs + (MT * warp + mt) * 16 * S;
#pragma unroll
    for (int kc = 0; kc < DP / 16; ++kc) {
      qf[mt][kc][0] = pair(qw + g * S + kc * 16 + 2 * t);
      qf[mt][kc][1] = pair(qw + (g + 8) * S + kc * 16 + 2 * t);
      qf[mt][kc][2] = pair(qw + g * S + kc * 16 + 8 + 2 * t);
      qf[mt][kc][3] = pair(qw + (g + 8) * S + kc * 16 + 8 + 2 * t);
    }
  }

  // Per tile, output rows g and g + 8, values dt * 8 + 2t (+1), in C
  // fragments; the rows' running maxima (log2 units) and this lane's part
  // of their sums.
  float o[MT][DP / 8][4];
  float row_max[MT][2], row_sum[MT][2];
#pragma unroll
  for (int mt = 0; mt < MT; ++mt) {
#pragma unroll
    for (int dt = 0; dt < DP / 8; ++dt) o[mt][dt][0] = o[mt][dt][1] = o[mt][dt][2] = o[mt][dt][3] = 0.f;
    row_max[mt][0] = row_max[mt][1] = -INFINITY;
    row_sum[mt][0] = row_sum[mt][1] = 0.f;
  }

  for (int key0 = 0; key0 < m; key0 += BK) {
    __syncthreads();  // every warp is done with the previous K and V
    load_rows<T, DP>(ks, k_head + (long)key0 * q_stride, q_stride, m - key0, d, BK);
    load_transposed<T, DP>(vts, v_head + (long)key0 * q_stride, q_stride, m - key0, d);
    __syncthreads();

    // S = Q Kᵀ: keys nt * 8 + 2t (+1) of rows g and g + 8 of each tile.
    float s[MT][BK / 8][4];
#pragma unroll
    for (int nt = 0; nt < BK / 8; ++nt) {
#pragma unroll
      for (int mt = 0; mt < MT; ++mt) s[mt][nt][0] = s[mt][nt][1] = s[mt][nt][2] = s[mt][nt][3] = 0.f;
      const T *key_row = ks + (nt * 8 + g) * S + 2 * t;
#pragma unroll
      for (int kc = 0; kc < DP / 16; ++kc) {
        const uint32_t b0 = pair(key_row + kc * 16), b1 = pair(key_row + kc * 16 + 8);
#pragma unroll
        for (int mt = 0; mt < MT; ++mt) Mma<T>::mma(s[mt][nt], qf[mt][kc], b0, b1);
      }
    }

#pragma unroll
    for (int mt = 0; mt < MT; ++mt) {
      // Scaled, keys past m masked; each row's maximum over its 4 lanes.
      float step_max[2] = {-INFINITY, -INFINITY};
#pragma unroll
      for (int nt = 0; nt < BK / 8; ++nt)
#pragma unroll
        for (int i = 0; i < 4; ++i) {
          const int key = key0 + nt * 8 + 2 * t + (i & 1);
          s[mt][nt][i] = key < m ? s[mt][nt][i] * scale_log2 : -INFINITY;
          step_max[i / 2] = fmaxf(step_max[i / 2], s[mt][nt][i]);
        }
      float rescale[2];
#pragma unroll
      for (int r = 0; r < 2; ++r) {
        step_max[r] = fmaxf(step_max[r], __shfl_xor_sync(0xffffffff, step_max[r], 1));
        step_max[r] = fmaxf(step_max[r], __shfl_xor_sync(0xffffffff, step_max[r], 2));
        // Every step has a key below m, so the new maximum is finite; the
        // first step's rescale is exp2(-inf) = 0, on zeros.
        const float new_max = fmaxf(row_max[mt][r], step_max[r]);
        rescale[r] = exp2f(row_max[mt][r] - new_max);
        row_max[mt][r] = new_max;
        row_sum[mt][r] *= rescale[r];
      }
#pragma unroll
      for (int dt = 0; dt < DP / 8; ++dt) {
        o[mt][dt][0] *= rescale[0];
        o[mt][dt][1] *= rescale[0];
        o[mt][dt][2] *= rescale[1];
        o[mt][dt][3] *= rescale[1];
      }
#pragma unroll
      for (int nt = 0; nt < BK / 8; ++nt)
#pragma unroll
        for (int i = 0; i < 4; ++i) {
          s[mt][nt][i] = exp2f(s[mt][nt][i] - row_max[mt][i / 2]);
          row_sum[mt][i / 2] += s[mt][nt][i];
        }
    }

    // O += P V, 16 keys at a time: the C fragments of key tiles 2kk and
    // 2kk + 1 are, packed in pairs, the A fragment of those 16 keys.
#pragma unroll
    for (int kk = 0; kk < BK / 16; ++kk) {
      uint32_t p[MT][4];
#pragma unroll
      for (int mt = 0; mt < MT; ++mt) {
        p[mt][0] = Mma<T>::pack(s[mt][2 * kk][0], s[mt][2 * kk][1]);
        p[mt][1] = Mma<T>::pack(s[mt][2 * kk][2], s[mt][2 * kk][3]);
        p[mt][2] = Mma<T>::pack(s[mt][2 * kk + 1][0], s[mt][2 * kk + 1][1]);
        p[mt][3] = Mma<T>::pack(s[mt][2 * kk + 1][2], s[mt][2 * kk + 1][3]);
      }
#pragma unroll
      for (int dt = 0; dt < DP / 8; ++dt) {
        const T *value_row = vts + (dt * 8 + g) * VS + kk * 16 + 2 * t;
        const uint32_t b0 = pair(value_row), b1 = pair(value_row + 8);
#pragma unroll
        for (int mt = 0; mt < MT; ++mt) Mma<T>::mma(o[mt][dt], p[mt], b0, b1);
      }
    }
  }

#pragma unroll
  for (int mt = 0; mt < MT; ++mt)
#pragma unroll
    for (int r = 0; r < 2; ++r) {
      float sum = row_sum[mt][r];
      sum += __shfl_xor_sync(0xffffffff, sum, 1);
      sum += __shfl_xor_sync(0xffffffff, sum, 2);
      const int q_row = row0 + (MT * warp + mt) * 16 + g + 8 * r;
      if (q_row >= n) continue;
      const float inv_sum = 1.f / sum;
      T *dst = out + ((long)image * n + q_row) * q_stride + (long)head * d;
#pragma unroll
      for (int dt = 0; dt < DP / 8; ++dt) {
        const int c = dt * 8 + 2 * t;  // d is a multiple of 8: c + 1 < d too
        if (c < d)
          *reinterpret_cast<uint32_t *>(dst + c) =
              Mma<T>::pack(o[mt][dt][2 * r] * inv_sum, o[mt][dt][2 * r + 1] * inv_sum);
      }
    }
}

#define FLASH_ATTENTION_MMA(NAME, T, DP, MT)                                                \
  extern "C" __global__ void __launch_bounds__(WARPS * 32)                                 \
      NAME(const T *q, const T *k, const T *v, T *out, int n, int m, int heads, int d,     \
           float scale_log2) {                                                             \
    flash_attention_mma<T, DP, MT>(q, k, v, out, n, m, heads, d, scale_log2);              \
  }

// flash_attention_mma_d<W>_<type>: `row_tiles` tiles per warp;
// flash_attention_mma1_d<W>_<type>: one, for the widths where that differs.
#define FLASH_ATTENTION_MMA_WIDTHS(T, SUFFIX)                             \
  FLASH_ATTENTION_MMA(flash_attention_mma_d48_##SUFFIX, T, 48, row_tiles<48>())         \
  FLASH_ATTENTION_MMA(flash_attention_mma_d64_##SUFFIX, T, 64, row_tiles<64>())         \
  FLASH_ATTENTION_MMA(flash_attention_mma_d80_##SUFFIX, T, 80, row_tiles<80>())         \
  FLASH_ATTENTION_MMA(flash_attention_mma_d96_##SUFFIX, T, 96, row_tiles<96>())         \
  FLASH_ATTENTION_MMA(flash_attention_mma_d128_##SUFFIX, T, 128, row_tiles<128>())       \
  FLASH_ATTENTION_MMA(flash_attention_mma_d160_##SUFFIX, T, 160, row_tiles<160>())       \
  FLASH_ATTENTION_MMA(flash_attention_mma1_d48_##SUFFIX, T, 48, 1)        \
  FLASH_ATTENTION_MMA(flash_attention_mma1_d64_##SUFFIX, T, 64, 1)        \
  FLASH_ATTENTION_MMA(flash_attention_mma1_d80_##SUFFIX, T, 80, 1)

// m16n8k16 needs sm_80 or newer; where the build targets older GPUs these
// kernels are absent and attention runs the WMMA kernel or candle's products.
#if !defined(__CUDA_ARCH__) || __CUDA_ARCH__ >= 800
FLASH_ATTENTION_MMA_WIDTHS(__half, f16)
FLASH_ATTENTION_MMA_WIDTHS(__nv_bfloat16, bf16)
#endif
