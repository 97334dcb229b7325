// Host emulation of the CUDA features flash_attention_mma.cu uses, for
// run.sh: one std::thread per CUDA thread of a 128-thread block, barriers
// for __syncthreads and warp shuffles, and mma.sync m16n8k16 (f16 in, f32
// accumulate) rebuilt from the fragments of a warp's 32 lanes by the PTX
// ISA's layouts, written out here independently of the kernel.
#pragma once
#include <barrier>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <thread>
#include <vector>
#define __device__
#define __global__
#define __host__
#define __forceinline__ inline
#define __launch_bounds__(x)
struct dim3e { int x, y, z; };
inline thread_local dim3e threadIdx, blockIdx;
inline dim3e blockDim{128, 1, 1};
inline std::barrier<> *block_barrier;
inline std::barrier<> *warp_barriers[4];
inline float warp_f[4][32];
inline uint32_t warp_regs[4][32][10];
inline unsigned char *shared_mem;
inline void __syncthreads() { block_barrier->arrive_and_wait(); }
inline float __shfl_xor_sync(unsigned, float v, int m) {
  int w = threadIdx.x / 32, l = threadIdx.x % 32;
  warp_f[w][l] = v;
  warp_barriers[w]->arrive_and_wait();
  float r = warp_f[w][l ^ m];
  warp_barriers[w]->arrive_and_wait();
  return r;
}
struct uint4 { uint32_t x, y, z, w; };
inline uint4 make_uint4(uint32_t a, uint32_t b, uint32_t c, uint32_t d) { return {a, b, c, d}; }
typedef _Float16 __half;
struct __half2 { _Float16 x, y; };
inline __half2 __floats2half2_rn(float a, float b) { return {(_Float16)a, (_Float16)b}; }
struct __nv_bfloat16 { uint16_t v; };
inline float h2f(uint32_t r, int hi) { uint16_t b = hi ? r >> 16 : r & 0xffff; _Float16 h; memcpy(&h, &b, 2); return (float)h; }
template <typename T> struct Mma;
template <> struct Mma<__half> {
  static uint32_t pack(float lo, float hi) { __half2 h = __floats2half2_rn(lo, hi); uint32_t r; memcpy(&r, &h, 4); return r; }
  // d += A B with A [16][16] and B [16][8] gathered from the warp's lanes:
  // lane 4g + t holds A rows g / g+8 at columns 2t (+1) / 2t+8 (+1), B rows
  // 2t (+1) / 2t+8 (+1) of column g, and C rows g / g+8 at columns 2t, 2t+1.
  static void mma(float (&d)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1) {
    int w = threadIdx.x / 32, l = threadIdx.x % 32;
    for (int i = 0; i < 4; ++i) warp_regs[w][l][i] = a[i];
    warp_regs[w][l][4] = b0; warp_regs[w][l][5] = b1;
    warp_barriers[w]->arrive_and_wait();
    float A[16][16], B[16][8];
    for (int lane = 0; lane < 32; ++lane) {
      int g = lane / 4, t = lane % 4;
      for (int e = 0; e < 8; ++e) {  // A element e of lane: register e/2, half e%2
        int row = (e < 2 || (e >= 4 && e < 6)) ? g : g + 8;
        int col = t * 2 + (e & 1) + (e >= 4 ? 8 : 0);
        A[row][col] = h2f(warp_regs[w][lane][e / 2], e % 2);
      }
      for (int e = 0; e < 4; ++e) {
        int k = t * 2 + (e & 1) + (e >= 2 ? 8 : 0);
        B[k][g] = h2f(warp_regs[w][lane][4 + e / 2], e % 2);
      }
    }
    warp_barriers[w]->arrive_and_wait();
    int g = l / 4, t = l % 4;
    for (int e = 0; e < 4; ++e) {
      int row = g + (e >= 2 ? 8 : 0), col = t * 2 + (e & 1);
      float acc = d[e];
      for (int k = 0; k < 16; ++k) acc += A[row][k] * B[k][col];
      d[e] = acc;
    }
  }
};
