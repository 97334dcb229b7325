// im2col for a convolution done as one batched matrix product that lands in
// NCHW: x [b, c, h, w] -> col [b, c·k·k, oh·ow], row (ci, ky, kx) holding
// the input each output pixel sees through that tap, 0 in the padding.
// Then weight [co, c·k·k] x col [b, c·k·k, oh·ow] is [b, co, oh·ow].
//
// candle's im2col writes [b, oh, ow, c, k, k] (so its product lands in
// NHWC and is transposed after), and each thread finds its place with five
// 64-bit divisions; here a block row is one (image, tap): one 32-bit
// division per value, and consecutive threads read and write consecutive
// pixels.
#include "common.cuh"

// Grid: x over output pixels, y = c·k·k taps, z = images.
template <typename T>
__device__ void im2col(const T *x, T *col, int channels, int h, int w, int oh, int ow, int k,
                       int stride, int pad) {
  const int tap = blockIdx.y, image = blockIdx.z;
  const int ci = tap / (k * k), ky = tap % (k * k) / k, kx = tap % k;
  const int pixels = oh * ow;
  const T *src = x + ((long)image * channels + ci) * h * w;
  T *dst = col + ((long)image * gridDim.y + tap) * pixels;
  for (int p = blockIdx.x * blockDim.x + threadIdx.x; p < pixels; p += gridDim.x * blockDim.x) {
    const int oy = p / ow, ox = p - oy * ow;
    const int iy = oy * stride - pad + ky, ix = ox * stride - pad + kx;
    dst[p] = iy >= 0 && iy < h && ix >= 0 && ix < w ? src[iy * w + ix] : from_f32<T>(0.f);
  }
}

#define IM2COL(NAME, T)                                                                      \
  extern "C" __global__ void NAME(const T *x, T *col, int channels, int h, int w, int oh,   \
                                  int ow, int k, int stride, int pad) {                      \
    im2col<T>(x, col, channels, h, w, oh, ow, k, stride, pad);                               \
  }

IM2COL(im2col_f32, float)
IM2COL(im2col_f16, __half)
IM2COL(im2col_bf16, __nv_bfloat16)
