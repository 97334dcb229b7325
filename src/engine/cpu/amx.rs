//! bf16 products on Intel AMX tiles (Sapphire Rapids and later). One
//! `tdpbf16ps` multiplies a 16 x 32 bf16 tile by a 32 x 16 one into 16 x 16
//! f32 sums: 8192 multiply-adds, where one AVX512-BF16 instruction does 32
//! (and, on these CPUs, no faster than two f32 FMAs).
//!
//! The operands are [`super::bf16`]'s. The right one's panels (`[k/2][32]`
//! bf16 pairs) are already what a right tile loads: 16 pairs of k by 16
//! columns, at a row stride of 128 bytes. A left tile loads 16 rows of 16
//! pairs each, so the left operand's blocks (`[k/2][8 rows]`) are laid
//! out in groups of 16 rows first (`Rows`), once per product (per head,
//! for attention's keys and values).
//!
//! Rust's AMX intrinsics are not stable, so the instructions are inline
//! assembly; Linux hands out the tile registers to a process that asks
//! (`arch_prctl(ARCH_REQ_XCOMP_PERM)`), once.

use std::arch::asm;
use std::arch::x86_64::*;
use std::ops::Range;
use std::sync::OnceLock;

use rayon::prelude::*;

use super::bf16::{PackedLhs, PackedRhs, LHS_BLOCK, RHS_PANEL, ROW_GROUP};
use super::f32_products::{self, Addends, Bias, Tile};
use super::pairs;

/// Rows of a tile, and pairs of k in a tile's row.
const TILE: usize = ROW_GROUP;
// A left tile's rows are `pairs`' rows.
const _: () = assert!(TILE == pairs::PAIRS);
/// Rows per kernel pass: two left tiles against the panel's two right ones.
const ROWS: usize = 2 * TILE;

/// Whether this CPU and OS run AMX bf16 tiles, and `ATELIER_CPU_AMX=0`
/// does not turn them off (to compare with the AVX512-BF16 kernel).
pub fn available() -> bool {
    static AVAILABLE: OnceLock<bool> = OnceLock::new();
    *AVAILABLE.get_or_init(|| {
        let off = std::env::var_os("ATELIER_CPU_AMX").is_some_and(|v| v == "0");
        !off && super::bf16::available() && tiles_granted()
    })
}

/// CPUID says AMX-TILE and AMX-BF16, and Linux lets this process use the
/// tile registers (it refuses where it cannot save them).
#[cfg(target_os = "linux")]
fn tiles_granted() -> bool {
    const ARCH_REQ_XCOMP_PERM: libc::c_long = 0x1023;
    const XFEATURE_XTILEDATA: libc::c_long = 18;
    // Leaf 7, EDX: bit 22 AMX-BF16, bit 24 AMX-TILE.
    let edx = __cpuid_count(7, 0).edx;
    if edx & (1 << 22) == 0 || edx & (1 << 24) == 0 {
        return false;
    }
    // SAFETY: a request for a permission; it touches no memory of ours.
    unsafe {
        libc::syscall(
            libc::SYS_arch_prctl,
            ARCH_REQ_XCOMP_PERM,
            XFEATURE_XTILEDATA,
        ) == 0
    }
}

#[cfg(not(target_os = "linux"))]
fn tiles_granted() -> bool {
    false
}

/// A left operand's rows as bf16 pairs, in the left tiles' shape: groups
/// of 16 rows, each `[pairs / 16][16 rows][16 pairs]`, so that one tile is
/// 1 KiB in a row and the hardware prefetcher follows the loads (with rows
/// of all the pairs, each tile read 16 lines far apart). Pairs are padded
/// with zeros to a multiple of 16, rows to whole groups and one group
/// more, so that every tile loads whole.
pub(super) struct Rows {
    pairs: usize,
    data: Vec<u32>,
}

/// Pairs in one tile (16 rows of 16).
const TILE_PAIRS: usize = TILE * TILE;

impl Rows {
    /// The index of row `r`, pair `p` in its group of rows.
    #[inline(always)]
    fn at(r: usize, p: usize) -> usize {
        (p / TILE) * TILE_PAIRS + (r % TILE) * TILE + p % TILE
    }

    /// Rows for `m` rows of `k`, each group of 16 filled by `lay_out(group,
    /// its pairs)` (zeroed first), in parallel where there are many.
    fn laid_out(m: usize, k: usize, lay_out: impl Fn((usize, &mut [u32])) + Sync + Send) -> Self {
        let pairs = k.div_ceil(2).next_multiple_of(TILE);
        let groups = m.div_ceil(TILE) + 1;
        let mut data = vec![0u32; groups * TILE * pairs];
        if m * pairs >= PARALLEL_LAYOUT {
            data.par_chunks_mut(TILE * pairs)
                .enumerate()
                .for_each(lay_out);
        } else {
            data.chunks_mut(TILE * pairs).enumerate().for_each(lay_out);
        }
        Self { pairs, data }
    }

    /// Rows `rows` of `lhs` (starting at a multiple of [`LHS_BLOCK`]).
    pub(super) fn new(lhs: &PackedLhs, rows: Range<usize>) -> Self {
        assert!(
            rows.start.is_multiple_of(LHS_BLOCK) && rows.end <= lhs.m(),
            "rows {rows:?}"
        );
        let lhs_pairs = lhs.k().div_ceil(2);
        let blocks = rows.len().div_ceil(LHS_BLOCK);
        let first = rows.start / LHS_BLOCK;
        Self::laid_out(rows.len(), lhs.k(), |(g, dst)| {
            for half in 0..TILE / LHS_BLOCK {
                let b = g * (TILE / LHS_BLOCK) + half;
                if b < blocks {
                    // SAFETY: dst is one group of rows, `pairs` >=
                    // lhs_pairs each; this module's CPUs have AVX-512.
                    unsafe {
                        transpose_block(lhs.block(first + b), lhs_pairs, half * LHS_BLOCK, dst)
                    }
                }
            }
        })
    }

    /// `lhs` `[m, k]` at (pointer, row stride, column stride) in floats,
    /// rounded to bf16 (nearest even) as [`PackedLhs::new`] rounds it.
    ///
    /// # Safety
    /// Every element at those strides lies inside its buffer; [`available`].
    pub(super) unsafe fn from_f32(m: usize, k: usize, lhs: (*const f32, usize, usize)) -> Self {
        let (ptr, rs, cs) = (lhs.0 as usize, lhs.1, lhs.2);
        if rs == 1 && cs != 1 {
            // A map's channels: 16 pixels of 32 channels per tile.
            return Self::laid_out(m, k, |(g, dst)| {
                let (first, rows) = (g * TILE, TILE.min(m.saturating_sub(g * TILE)));
                for (block, tile) in dst.chunks_exact_mut(TILE_PAIRS).enumerate() {
                    let channels = (2 * TILE).min(k.saturating_sub(block * 2 * TILE));
                    if rows == 0 || channels == 0 {
                        break;
                    }
                    // SAFETY: pixels first..first + rows of those channels
                    // (the caller's promise); one tile of 16 rows of 16
                    // pairs.
                    unsafe {
                        let src = (ptr as *const f32).add(first + block * 2 * TILE * cs);
                        pairs::planes_to_rows(src, cs, channels, rows, tile.as_mut_ptr())
                    }
                }
            });
        }
        Self::laid_out(m, k, |(g, dst)| {
            for r in g * TILE..((g + 1) * TILE).min(m) {
                // SAFETY: row r of lhs, k elements at the caller's strides;
                // dst is its group of rows.
                unsafe { round_row((ptr as *const f32).add(r * rs), cs, k, r, dst) }
            }
        })
    }

    /// Pairs per row (k's pairs padded to whole tiles).
    pub(super) fn pairs(&self) -> usize {
        self.pairs
    }

    /// Tile `block` of pairs of rows `first..first + 16` (`first` a
    /// multiple of 16).
    #[inline(always)]
    fn tile(&self, first: usize, block: usize) -> *const u32 {
        self.data[(first / TILE) * TILE * self.pairs + block * TILE_PAIRS..].as_ptr()
    }
}

/// Below this many pairs the rows are laid out on the calling thread.
const PARALLEL_LAYOUT: usize = 1 << 15;

/// Row `r`'s `k` floats at `step` apart as bf16 pairs into its group of
/// rows `dst`, 16 at a time where they are consecutive.
#[target_feature(enable = "avx512f,avx512bf16,avx512vl")]
unsafe fn round_row(src: *const f32, step: usize, k: usize, r: usize, dst: &mut [u32]) {
    let mut i = 0;
    if step == 1 {
        while i + 16 <= k {
            let at = Rows::at(r, i / 2);
            assert!(at + 8 <= dst.len());
            // SAFETY: floats i..i + 16 of the row; 8 pairs of dst (checked).
            unsafe {
                let bf16 = _mm512_cvtneps_pbh(_mm512_loadu_ps(src.add(i)));
                _mm256_storeu_si256(
                    dst.as_mut_ptr().add(at) as *mut __m256i,
                    std::mem::transmute::<__m256bh, __m256i>(bf16),
                );
            }
            i += 16;
        }
    }
    for i in (i..k).step_by(2) {
        // SAFETY: elements i and i + 1 (when < k) of the row.
        let (even, odd) = unsafe {
            let odd = if i + 1 < k {
                *src.add((i + 1) * step)
            } else {
                0.0
            };
            (*src.add(i * step), odd)
        };
        dst[Rows::at(r, i / 2)] =
            super::bf16::to_bf16(even) as u32 | (super::bf16::to_bf16(odd) as u32) << 16;
    }
}

/// One block `[pairs][LHS_BLOCK]` as rows `first..first + LHS_BLOCK` of
/// the group of rows `dst`, eight pairs at a time.
#[target_feature(enable = "avx512f,avx512vl")]
unsafe fn transpose_block(block: &[u32], pairs: usize, first: usize, dst: &mut [u32]) {
    assert!(block.len() >= pairs * LHS_BLOCK);
    let mut p = 0;
    while p + 8 <= pairs {
        // SAFETY: pairs p..p + 8 of the block, 8 rows each (checked above).
        let v: [__m256; 8] = std::array::from_fn(|i| unsafe {
            _mm256_loadu_ps(block.as_ptr().add((p + i) * LHS_BLOCK) as *const f32)
        });
        for (r, row) in f32_products::transpose8(v).into_iter().enumerate() {
            let at = Rows::at(first + r, p);
            assert!(at + 8 <= dst.len());
            // SAFETY: 8 pairs of dst (checked).
            unsafe { _mm256_storeu_ps(dst.as_mut_ptr().add(at) as *mut f32, row) };
        }
        p += 8;
    }
    for p in p..pairs {
        for r in 0..LHS_BLOCK {
            dst[Rows::at(first + r, p)] = block[p * LHS_BLOCK + r];
        }
    }
}

/// The tile registers' shapes (`ldtilecfg`'s 64 bytes): palette 1, all
/// eight tiles 16 rows of 64 bytes. tmm0-3 sums (rows 0-15 and 16-31 by
/// columns 0-15 and 16-31), tmm4-5 left tiles, tmm6-7 right tiles.
#[repr(C, align(64))]
struct TileConfig {
    palette: u8,
    start_row: u8,
    reserved: [u8; 14],
    bytes_per_row: [u16; 16],
    rows: [u8; 16],
}

const CONFIG: TileConfig = TileConfig {
    palette: 1,
    start_row: 0,
    reserved: [0; 14],
    bytes_per_row: [64, 64, 64, 64, 64, 64, 64, 64, 0, 0, 0, 0, 0, 0, 0, 0],
    rows: [16, 16, 16, 16, 16, 16, 16, 16, 0, 0, 0, 0, 0, 0, 0, 0],
};

/// `dst = a[rows] · rhs[.., panels] + addends` on the calling thread, as
/// [`super::bf16::product_part`] (whose layout `dst`, the bias and the
/// residual follow, from the element of `a`'s row `rows.start` and the
/// first column of `panels.start`); `rows` of `a` hold the product's rows
/// and start at a multiple of 16.
///
/// # Safety
/// As `product_part`, for that part of `dst`; [`available`] is true.
#[target_feature(enable = "avx512f,avx512vl")]
pub(super) unsafe fn product(
    dst: (*mut f32, usize, usize),
    a: &Rows,
    rows: Range<usize>,
    rhs: &PackedRhs,
    panels: Range<usize>,
    addends: Addends,
) {
    assert!(available(), "AMX products on a CPU without AMX");
    assert!(
        rows.start.is_multiple_of(TILE)
            && a.data.len() >= (rows.end.next_multiple_of(TILE) + TILE) * a.pairs,
        "rows {rows:?}"
    );
    let (rhs_pairs, full_blocks) = (rhs.k().div_ceil(2), rhs.k().div_ceil(2) / TILE);
    assert!(
        rhs_pairs.next_multiple_of(TILE) == a.pairs,
        "the operands' inner sizes"
    );
    let (ptr, dst_rs, dst_cs) = dst;
    // The right operand's last pairs, padded to a whole tile with zeros.
    let mut tail = [0u32; TILE * RHS_PANEL];
    // The four tiles of sums, as rows of a panel.
    let mut sums = [0f32; ROWS * RHS_PANEL];
    let _tiles = Tiles::configure();
    for panel in panels.clone() {
        let b = rhs.panel(panel);
        let cols = RHS_PANEL.min(rhs.n() - panel * RHS_PANEL);
        let tail_pairs = rhs_pairs - full_blocks * TILE;
        tail[..tail_pairs * RHS_PANEL].copy_from_slice(&b[full_blocks * TILE * RHS_PANEL..]);
        for r0 in rows.clone().step_by(ROWS) {
            // SAFETY: each tile loads 16 rows of 64 bytes: left rows r0..r0
            // + 32 of `a.pairs` (padded to whole tiles), the panel's pairs
            // of whole tiles and the padded tail; the sums go into 32 rows
            // of 32 floats.
            unsafe {
                zero_sums();
                for block in 0..full_blocks {
                    let right = b.as_ptr().add(block * TILE * RHS_PANEL);
                    if r0 == rows.start && block + PREFETCH_AHEAD < full_blocks {
                        prefetch_step(right.add(PREFETCH_AHEAD * TILE * RHS_PANEL));
                    }
                    multiply_add([a.tile(r0, block), a.tile(r0 + TILE, block)], right);
                }
                if tail_pairs > 0 {
                    let left = [a.tile(r0, full_blocks), a.tile(r0 + TILE, full_blocks)];
                    multiply_add(left, tail.as_ptr());
                }
                store_sums(sums.as_mut_ptr(), 4);
            }
            let row = r0 - rows.start;
            let panel_in_part = panel - panels.start;
            let (col, out_col) = (
                panel_in_part * RHS_PANEL,
                panel_in_part * rhs.panel_outputs(),
            );
            for g in (0..ROWS.min(rows.end - r0)).step_by(8) {
                let tile_sums: [[__m512; 2]; 8] = std::array::from_fn(|r| {
                    let at = (g + r) * RHS_PANEL;
                    // SAFETY: 32 floats of row g + r of the sums.
                    unsafe {
                        [
                            _mm512_loadu_ps(sums.as_ptr().add(at)),
                            _mm512_loadu_ps(sums.as_ptr().add(at + 16)),
                        ]
                    }
                });
                // SAFETY: the tile (row + g.., out_col..) is inside dst and
                // the residual up to the last row and the panel's outputs,
                // and the bias has `cols` from col (the caller's promise).
                unsafe {
                    let offset = (row + g) * dst_rs + out_col * dst_cs;
                    let tile = Tile {
                        dst: ptr.add(offset),
                        strides: (dst_rs, dst_cs),
                        bias: addends.bias.map(|b| Bias::PerColumn(&b[col..col + cols])),
                        residual: addends.residual.map(|r| r.add(offset)),
                        size: [8.min(rows.end - r0 - g), cols],
                    };
                    super::bf16::store(&tile_sums, &tile, rhs);
                }
            }
        }
    }
}

/// Steps of a product (16 pairs of k, 2 KiB of a right panel) that a pass
/// which reads the right operand first prefetches ahead of its products.
/// Where the left operand is short the right one comes from memory once
/// per call and bounds the product (SD 1.5's 3x3 1280 -> 1280 at 4x4: 29
/// MiB for 0.9 GFLOP); the prefetch took its 11 calls per UNet call from
/// 18.3-18.9 ms to 17.1-17.5 (2 ahead and 4 alike, 12 no faster than none).
pub(super) const PREFETCH_AHEAD: usize = 4;

/// Asks for the 2 KiB of one step of a right panel at `at` in L1.
#[inline(always)]
pub(super) fn prefetch_step(at: *const u32) {
    for line in 0..TILE * RHS_PANEL / 16 {
        // SAFETY: a prefetch reads nothing and faults on nothing.
        unsafe { _mm_prefetch::<_MM_HINT_T0>(at.wrapping_add(16 * line) as *const i8) };
    }
}

/// tmm0-3 = 0.
///
/// # Safety
/// The tiles are configured ([`CONFIG`]).
#[inline(always)]
pub(super) unsafe fn zero_sums() {
    // SAFETY: as the caller promises.
    unsafe {
        asm!(
            "tilezero tmm0",
            "tilezero tmm1",
            "tilezero tmm2",
            "tilezero tmm3",
            options(nostack, nomem)
        )
    };
}

/// Sums += two left tiles (16 rows of 16 pairs each, in a row) · 16 pairs
/// of a panel's 32 columns from `right` (rows of 32 pairs).
///
/// # Safety
/// Those tiles are readable; the tiles are configured.
#[inline(always)]
pub(super) unsafe fn multiply_add(left: [*const u32; 2], right: *const u32) {
    // SAFETY: as the caller promises.
    unsafe {
        asm!(
            "tileloadd tmm4, [{a0} + {sa}]",
            "tileloadd tmm5, [{a1} + {sa}]",
            "tileloadd tmm6, [{b0} + {sb}]",
            "tileloadd tmm7, [{b1} + {sb}]",
            "tdpbf16ps tmm0, tmm4, tmm6",
            "tdpbf16ps tmm1, tmm4, tmm7",
            "tdpbf16ps tmm2, tmm5, tmm6",
            "tdpbf16ps tmm3, tmm5, tmm7",
            a0 = in(reg) left[0],
            a1 = in(reg) left[1],
            sa = in(reg) TILE * 4,
            b0 = in(reg) right,
            b1 = in(reg) right.add(TILE),
            sb = in(reg) RHS_PANEL * 4,
            options(nostack, readonly)
        )
    };
}

/// The first `tiles` (2 or 4) of the sums into rows of 32 floats at `at`:
/// 16 or 32 rows.
///
/// # Safety
/// Those rows are writable; the tiles are configured.
#[inline(always)]
pub(super) unsafe fn store_sums(at: *mut f32, tiles: usize) {
    // SAFETY: each tile stores 16 rows of 64 bytes inside those rows.
    unsafe {
        asm!(
            "tilestored [{c0} + {s}], tmm0",
            "tilestored [{c1} + {s}], tmm1",
            c0 = in(reg) at,
            c1 = in(reg) at.add(TILE),
            s = in(reg) RHS_PANEL * 4,
            options(nostack)
        );
        if tiles == 4 {
            asm!(
                "tilestored [{c2} + {s}], tmm2",
                "tilestored [{c3} + {s}], tmm3",
                c2 = in(reg) at.add(TILE * RHS_PANEL),
                c3 = in(reg) at.add(TILE * RHS_PANEL + TILE),
                s = in(reg) RHS_PANEL * 4,
                options(nostack)
            );
        }
    }
}

/// [`store_sums`] the other way: the sums loaded from those rows.
///
/// # Safety
/// Those rows are readable; the tiles are configured.
#[inline(always)]
pub(super) unsafe fn load_sums(at: *const f32, tiles: usize) {
    // SAFETY: each tile loads 16 rows of 64 bytes inside those rows.
    unsafe {
        asm!(
            "tileloadd tmm0, [{c0} + {s}]",
            "tileloadd tmm1, [{c1} + {s}]",
            c0 = in(reg) at,
            c1 = in(reg) at.add(TILE),
            s = in(reg) RHS_PANEL * 4,
            options(nostack, readonly)
        );
        if tiles == 4 {
            asm!(
                "tileloadd tmm2, [{c2} + {s}]",
                "tileloadd tmm3, [{c3} + {s}]",
                c2 = in(reg) at.add(TILE * RHS_PANEL),
                c3 = in(reg) at.add(TILE * RHS_PANEL + TILE),
                s = in(reg) RHS_PANEL * 4,
                options(nostack, readonly)
            );
        }
    }
}

/// Sums (tmm0-1, rows 0-15) += one left tile · 16 pairs of a panel.
///
/// # Safety
/// As [`multiply_add`].
#[inline(always)]
unsafe fn multiply_add_one(left: *const u32, right: *const u32) {
    // SAFETY: as the caller promises.
    unsafe {
        asm!(
            "tileloadd tmm4, [{a0} + {sa}]",
            "tileloadd tmm6, [{b0} + {sb}]",
            "tileloadd tmm7, [{b1} + {sb}]",
            "tdpbf16ps tmm0, tmm4, tmm6",
            "tdpbf16ps tmm1, tmm4, tmm7",
            a0 = in(reg) left,
            sa = in(reg) TILE * 4,
            b0 = in(reg) right,
            b1 = in(reg) right.add(TILE),
            sb = in(reg) RHS_PANEL * 4,
            options(nostack, readonly)
        )
    };
}

/// The tile registers, configured ([`CONFIG`]) on this thread while this
/// lives; dropped, they are handed back. Not to be nested on one thread,
/// nor held across anything that may run other rayon tasks on it (their
/// own `Tiles` would hand these back).
pub(super) struct Tiles(std::marker::PhantomData<*const ()>);

impl Tiles {
    pub(super) fn configure() -> Self {
        assert!(available(), "AMX tiles on a CPU without AMX");
        // SAFETY: the configuration is 64 bytes, as ldtilecfg reads; the
        // CPU has the instruction (checked).
        unsafe { asm!("ldtilecfg [{}]", in(reg) &CONFIG, options(nostack, readonly)) };
        Self(std::marker::PhantomData)
    }
}

impl Drop for Tiles {
    fn drop(&mut self) {
        // SAFETY: hands the tiles back; nothing is read or written.
        unsafe { asm!("tilerelease", options(nostack, nomem)) };
    }
}

/// Attention's scores for one block of keys: `scores[r][..32] =
/// keys[first + r] · queries` for `r < n`, rows of 32 floats (and up to 31
/// rows more, from the padding). `queries` is one panel, `[pairs][32]`
/// for the keys' padded pairs (zeros past the head).
pub(super) fn scores(
    _: &Tiles,
    keys: &Rows,
    first: usize,
    n: usize,
    queries: &[u32],
    scores: &mut [f32],
) {
    assert!(first.is_multiple_of(TILE), "keys from {first}");
    assert!(
        queries.len() >= keys.pairs * RHS_PANEL,
        "queries of {}",
        queries.len()
    );
    assert!(
        scores.len() >= n.next_multiple_of(ROWS) * RHS_PANEL,
        "scores of {}",
        scores.len()
    );
    assert!(keys.data.len() >= (first + n.next_multiple_of(ROWS)) * keys.pairs);
    for r0 in (0..n).step_by(ROWS) {
        // SAFETY: the tiles are configured (`Tiles`); rows first + r0.. + 32
        // of keys and the query pairs are inside them, the 32 rows of
        // scores inside it (all checked above).
        unsafe {
            zero_sums();
            for block in 0..keys.pairs / TILE {
                let left = [
                    keys.tile(first + r0, block),
                    keys.tile(first + r0 + TILE, block),
                ];
                multiply_add(left, queries.as_ptr().add(block * TILE * RHS_PANEL));
            }
            store_sums(scores.as_mut_ptr().add(r0 * RHS_PANEL), 4);
        }
    }
}

/// Attention's `outᵀ += Vᵀ P` for one block of keys: `out_t[r][..32] +=
/// values[r] (pairs first_pair..first_pair + pairs) · probabilities` for
/// `r < rows`; `probabilities` is `[pairs][32]`, zeros past `pairs` to a
/// whole tile, and `out_t` holds `rows` rounded up to 16.
pub(super) fn accumulate(
    _: &Tiles,
    values: &Rows,
    rows: usize,
    (first_pair, pairs): (usize, usize),
    probabilities: &[u32],
    out_t: &mut [f32],
) {
    let blocks = pairs.div_ceil(TILE);
    assert!(first_pair.is_multiple_of(TILE) && first_pair + blocks * TILE <= values.pairs);
    assert!(probabilities.len() >= blocks * TILE * RHS_PANEL);
    assert!(out_t.len() >= rows.next_multiple_of(TILE) * RHS_PANEL);
    assert!(values.data.len() >= (rows.next_multiple_of(TILE) + TILE) * values.pairs);
    let mut r0 = 0;
    while r0 < rows {
        // Two tiles of rows while more than one is left, else one.
        let two = rows - r0 > TILE;
        // SAFETY: the tiles are configured (`Tiles`); the rows of out_t,
        // values and the probabilities read are inside them (checked).
        unsafe {
            let at = out_t.as_mut_ptr().add(r0 * RHS_PANEL);
            load_sums(at, if two { 4 } else { 2 });
            for block in 0..blocks {
                let right = probabilities.as_ptr().add(block * TILE * RHS_PANEL);
                let kb = first_pair / TILE + block;
                if two {
                    multiply_add([values.tile(r0, kb), values.tile(r0 + TILE, kb)], right);
                } else {
                    multiply_add_one(values.tile(r0, kb), right);
                }
            }
            store_sums(at, if two { 4 } else { 2 });
        }
        r0 += if two { ROWS } else { TILE };
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::cpu::bf16::tests::reference;
    use crate::engine::cpu::bf16::KernelLhs;
    use rand::{Rng, SeedableRng};

    /// Parts of products as Winograd asks for them (rows from inside the
    /// operand, a few panels), and whole ones from f32 rows at either
    /// stride, against the sums of the bf16-rounded operands: tails of k
    /// past a tile, of rows past a pass, of columns past a panel.
    #[test]
    fn tiles_sum_what_the_rounded_operands_sum() {
        if !available() {
            eprintln!("skipped: this CPU or OS has no AMX");
            return;
        }
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(21);
        for (m, k, n) in [(77, 77, 70), (40, 32, 32), (8, 1, 1), (130, 1000, 97)] {
            let a: Vec<f32> = (0..m * k).map(|_| rng.random_range(-2.0..2.0)).collect();
            let b: Vec<f32> = (0..k * n).map(|_| rng.random_range(-2.0..2.0)).collect();
            let b_t: Vec<f32> = (0..k * n).map(|x| b[(x % k) * n + x / k]).collect();
            let rhs = PackedRhs::from_transposed(&b_t, k, n);
            let sums = reference(&a, &b, m, k, n);
            let want = |i: usize, j: usize| sums[i * n + j];
            let check = |got: &[f32], rows: Range<usize>, cols: Range<usize>, how: &str| {
                for i in rows.clone() {
                    for j in cols.clone() {
                        let (got, want) = (got[(i - rows.start) * n + j] as f64, want(i, j));
                        assert!(
                            (got - want).abs() < 1e-4 * (1.0 + want.abs()),
                            "[{m}, {k}, {n}] {how} at ({i}, {j}): {got} vs {want}"
                        );
                    }
                }
            };
            // SAFETY: a is [m, k], row-major.
            let blocks = unsafe { PackedLhs::new(m, k, (a.as_ptr(), k, 1)) };
            let rows = Rows::new(&blocks, 0..m);
            let part = if m > 16 { 16..m } else { 0..m };
            let mut got = vec![f32::NAN; part.len() * n];
            // SAFETY: got holds the part's rows, n columns each.
            unsafe {
                let dst = (got.as_mut_ptr(), n, 1);
                let panels = 0..n.div_ceil(RHS_PANEL);
                product(dst, &rows, part.clone(), &rhs, panels, Addends::default())
            };
            check(&got, part, 0..n, "rows from 16");
            // Through bf16's dispatch, as Winograd calls it: rows from 8
            // go to the AVX512-BF16 kernel.
            let lhs = KernelLhs::new(&blocks);
            for part in [0..m, if m > 8 { 8..m } else { 0..m }] {
                let mut got = vec![f32::NAN; part.len() * n];
                // SAFETY: got holds the part's rows, n columns each.
                unsafe {
                    let panels = 0..n.div_ceil(RHS_PANEL);
                    let dst = (got.as_mut_ptr(), n, 1);
                    let none = Addends::default();
                    crate::engine::cpu::bf16::product_part(
                        dst,
                        &lhs,
                        part.clone(),
                        &rhs,
                        panels,
                        none,
                    )
                };
                check(
                    &got,
                    part.clone(),
                    0..n,
                    &format!("product_part of {part:?}"),
                );
            }
            // From f32 rows, and from f32 columns (a transposed).
            let a_t: Vec<f32> = (0..m * k).map(|x| a[(x % m) * k + x / m]).collect();
            for (src, strides) in [(&a, (k, 1)), (&a_t, (1, m))] {
                // SAFETY: src is [m, k] at these strides.
                let rows = unsafe { Rows::from_f32(m, k, (src.as_ptr(), strides.0, strides.1)) };
                let mut got = vec![f32::NAN; m * n];
                // SAFETY: got is [m, n].
                unsafe {
                    let dst = (got.as_mut_ptr(), n, 1);
                    let panels = 0..n.div_ceil(RHS_PANEL);
                    product(dst, &rows, 0..m, &rhs, panels, Addends::default())
                };
                check(&got, 0..m, 0..n, &format!("from f32 at {strides:?}"));
            }
        }
    }
}
