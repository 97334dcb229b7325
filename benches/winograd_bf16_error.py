#!/usr/bin/env python3
# How bf16 rounding of Winograd's transformed operands grows with the tile:
# F(m x m, 3x3) for m = 2, 3, 4 (Toom-Cook on the given points) against
# im2col in bf16, on random 640- and 1280-channel layers at 16x16. The
# transformed kernel U and input V are rounded to bf16, as atelier's bf16
# products take them; everything else is f64. Why the CPU's bf16 path
# stops at F(2x2) (src/engine/cpu/conv/winograd/bf16_products.rs).
#
#   python3 benches/winograd_bf16_error.py      (numpy)
import numpy as np
rng = np.random.default_rng(0)

def bf16(x):
    x = np.asarray(x, np.float32)
    u = x.view(np.uint32).astype(np.uint64)
    u = (u + 0x7FFF + ((u >> 16) & 1)) & 0xFFFF0000
    return u.astype(np.uint32).view(np.float32).astype(np.float64)

def toom_cook(m, points, r=3):
    """Aᵀ, G and Bᵀ of F(m, r) on `points` and ∞."""
    n = m + r - 1
    p = np.array(points, np.float64)
    AT = np.zeros((m, n)); G = np.zeros((n, r))
    for j in range(n - 1):
        AT[:, j] = p[j] ** np.arange(m)
        f = np.prod([p[j] - p[l] for l in range(n - 1) if l != j])
        G[j] = p[j] ** np.arange(r) / f
    AT[m - 1, n - 1] = 1; G[n - 1, r - 1] = 1
    # BT from the identity sum_j AT[i,j] G[j,k] BT[j,l] = [l == i + k]
    rows, rhs = [], []
    for i in range(m):
        for k in range(r):
            for l in range(n):
                row = np.zeros((n, n))
                for j in range(n):
                    row[j, l] = AT[i, j] * G[j, k]
                rows.append(row.ravel()); rhs.append(1.0 if l == i + k else 0.0)
    rows, rhs = np.array(rows), np.array(rhs)
    BT = np.linalg.lstsq(rows, rhs, rcond=None)[0]
    assert np.allclose(rows @ BT, rhs), f"no exact Bᵀ for F({m}, {r}) on {points}"
    return AT, G, BT.reshape(n, n)

def conv_ref(x, w):  # x [C,H,W], w [K,C,3,3], padding 1
    _, H, W = x.shape
    xp = np.pad(x, ((0, 0), (1, 1), (1, 1)))
    out = np.zeros((w.shape[0], H, W))
    for a in range(3):
        for b in range(3):
            out += np.einsum('kc,chw->khw', w[:, :, a, b], xp[:, a:a + H, b:b + W])
    return out

def winograd(x, w, m, points):
    AT, G, BT = toom_cook(m, points)
    n = m + 2
    C, H, W = x.shape
    th, tw = -(-H // m), -(-W // m)
    xp = np.zeros((C, th * m + 2, tw * m + 2)); xp[:, 1:H + 1, 1:W + 1] = x
    U = bf16(np.einsum('ia,kcab,jb->kcij', G, w, G))
    out = np.zeros((w.shape[0], th * m, tw * m))
    for ty in range(th):
        for tx in range(tw):
            d = xp[:, ty * m:ty * m + n, tx * m:tx * m + n]
            V = bf16(np.einsum('ia,cab,jb->cij', BT, d, BT))
            M = np.einsum('kcij,cij->kij', U, V)
            out[:, ty * m:(ty + 1) * m, tx * m:(tx + 1) * m] = np.einsum('ai,kij,bj->kab', AT, M, AT)
    return out[:, :H, :W], (np.abs(AT).max(), np.abs(G).max(), np.abs(BT).max())

def rel_rms(err, want):
    return np.sqrt((err ** 2).mean()) / np.sqrt((want ** 2).mean())

for C in (640, 1280):
    x = rng.standard_normal((C, 16, 16))
    w = rng.standard_normal((8, C, 3, 3)) / np.sqrt(9 * C)
    want = conv_ref(x, w)
    scale = np.abs(want).max()
    im2col = conv_ref(bf16(x), bf16(w))
    print(f"C={C} im2col bf16: max {np.abs(im2col - want).max() / scale:.4f}, "
          f"rms {rel_rms(im2col - want, want):.4f}")
    for m, pts in [(2, [0, 1, -1]), (3, [0, 1, -1, 2]), (3, [0, 1, -1, 0.5]),
                   (4, [0, 1, -1, 2, -2]), (4, [0, 1, -1, 0.5, -0.5])]:
        got, mags = winograd(x, w, m, pts)
        err = got - want
        print(f"  F({m}x{m}) points {pts}: max {np.abs(err).max() / scale:.4f}, "
              f"rms {rel_rms(err, want):.4f}, "
              f"|AT|,|G|,|BT| max {mags[0]:.2f} {mags[1]:.3f} {mags[2]:.2f}")

# The up-convolution (3x3 on a nearest-2x-upsampled map), as
# src/engine/cpu/conv/winograd/bf16_upsampled.rs computes it in bf16: each
# output phase a 2x2 kernel folded from the 3x3 one, run as F(2x2, 2x2) on
# 0, 1, ∞ from the map before upsampling; against im2col and F(2x2, 3x3)
# in bf16 on the upsampled map.
FOLD = np.array([[[1, 0, 0], [0, 1, 1]], [[1, 1, 0], [0, 0, 1]]], np.float64)
G2 = np.array([[1, 0], [1, 1], [0, 1]], np.float64)
BT2 = np.array([[1, -1, 0], [0, 1, 0], [0, -1, 1]], np.float64)
AT2 = np.array([[1, 1, 0], [0, 1, 1]], np.float64)

def sub_pixel(x, w):
    C, H, W = x.shape
    xp = np.zeros((C, H + 4, W + 4)); xp[:, 1:H + 1, 1:W + 1] = x
    out = np.zeros((w.shape[0], 2 * H + 4, 2 * W + 4))
    for a in range(2):
        for b in range(2):
            R, S = G2 @ FOLD[a], G2 @ FOLD[b]
            U = bf16(np.einsum('ia,kcab,jb->kcij', R, w, S))
            for ty in range(-(-H // 2)):
                for tx in range(-(-W // 2)):
                    d = xp[:, 2 * ty + a:2 * ty + a + 3, 2 * tx + b:2 * tx + b + 3]
                    V = bf16(np.einsum('ia,cab,jb->cij', BT2, d, BT2))
                    Y = np.einsum('ai,kij,bj->kab', AT2, np.einsum('kcij,cij->kij', U, V), AT2)
                    for i in range(2):
                        for j in range(2):
                            out[:, 2 * (2 * ty + i) + a, 2 * (2 * tx + j) + b] = Y[:, i, j]
    return out[:, :2 * H, :2 * W]

for C in (640, 1280):
    x = rng.standard_normal((C, 8, 8))
    w = rng.standard_normal((8, C, 3, 3)) / np.sqrt(9 * C)
    big = x.repeat(2, axis=1).repeat(2, axis=2)
    want = conv_ref(big, w)
    scale = np.abs(want).max()
    for name, got in [("im2col bf16, upsampled", conv_ref(bf16(big), bf16(w))),
                      ("F(2x2) bf16, upsampled", winograd(big, w, 2, [0, 1, -1])[0]),
                      ("sub-pixel F(2x2, 2x2) bf16", sub_pixel(x, w))]:
        err = got - want
        print(f"C={C} up-convolution 8 -> 16, {name}: max {np.abs(err).max() / scale:.4f}, "
              f"rms {rel_rms(err, want):.4f}")
