// Group norm with its affine transform, then SiLU when asked, in one kernel:
// candle's group norm is about ten full-tensor passes (f32 casts, a reduce
// that recomputes strided indices per element, broadcast ops) and SiLU one
// more. Here one block normalises one (image, group): a contiguous run of
// channels_per_group * spatial values in NCHW.
//
// Statistics in f32 whatever the storage type, in two passes over the group
// (mean, then the mean squared deviation: no cancellation as with E[x²] -
// E[x]²), and one pass writing; the later passes mostly read from L2.
#include "common.cuh"

// x, out: [batch, channels, spatial] contiguous; weight, bias: [channels].
// Grid: batch * groups blocks.
template <typename T>
__device__ void group_norm(const T *x, const T *weight, const T *bias, T *out, int channels,
                           int spatial, int groups, float eps, int silu) {
  __shared__ float shared[32];
  const int per_group = channels / groups;
  const int n = per_group * spatial;
  const long start = (long)blockIdx.x * n;  // (image, group) runs are consecutive in NCHW
  const int first_channel = (blockIdx.x % groups) * per_group;
  const T *src = x + start;
  T *dst = out + start;
  const int stride = blockDim.x * UNROLL;

  float sum = 0.f;
  for (int base = threadIdx.x; base < n; base += stride) {
    float v[UNROLL];
#pragma unroll
    for (int u = 0; u < UNROLL; ++u) {
      const int i = base + u * blockDim.x;
      v[u] = i < n ? to_f32(src[i]) : 0.f;
    }
#pragma unroll
    for (int u = 0; u < UNROLL; ++u) sum += v[u];
  }
  const float mean = block_reduce(sum, 0.f, Sum(), shared) / (float)n;

  float squares = 0.f;
  for (int base = threadIdx.x; base < n; base += stride) {
    float v[UNROLL];
#pragma unroll
    for (int u = 0; u < UNROLL; ++u) {
      const int i = base + u * blockDim.x;
      v[u] = i < n ? to_f32(src[i]) - mean : 0.f;
    }
#pragma unroll
    for (int u = 0; u < UNROLL; ++u) squares += v[u] * v[u];
  }
  const float inv_std = rsqrtf(block_reduce(squares, 0.f, Sum(), shared) / (float)n + eps);

  for (int i = threadIdx.x; i < n; i += blockDim.x) {
    const int c = first_channel + i / spatial;
    float y = (to_f32(src[i]) - mean) * inv_std * to_f32(weight[c]) + to_f32(bias[c]);
    if (silu) y = y / (1.f + __expf(-y));
    dst[i] = from_f32<T>(y);
  }
}

#define GROUP_NORM(NAME, T)                                                                     \
  extern "C" __global__ void NAME(const T *x, const T *weight, const T *bias, T *out,          \
                                  int channels, int spatial, int groups, float eps, int silu) { \
    group_norm<T>(x, weight, bias, out, channels, spatial, groups, eps, silu);                  \
  }

GROUP_NORM(group_norm_f32, float)
GROUP_NORM(group_norm_f16, __half)
GROUP_NORM(group_norm_bf16, __nv_bfloat16)
