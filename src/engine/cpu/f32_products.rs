//! f32 matrix products on AVX-512 against a right operand in panels of
//! [`PANEL`] columns (`[k][PANEL]` each): a linear layer's weight, packed
//! once when the model loads; im2col's unfolded input, unfolded into them;
//! attention's block of queries and its probabilities.
//!
//! The gemm crate packs both operands at every call; on a Zen 5 core (two
//! 512-bit FMA pipes) it ran the UNet's linear layers at 280-380 GFLOP/s on
//! two cores, where an 8 x 32 kernel on operands in cache reaches about
//! 470. Here the weight is packed once, the activations are read where they
//! lie (8 rows broadcast per step, from tokens or from a map's channels),
//! and the bias and residual are added as the kernel stores its tile, so
//! the output is written once and never read back.
//!
//! One packing serves both sides of a product: `x · W` ([`product`], the
//! panels as the right operand, `x` broadcast 8 rows at a time (6 in
//! wide tiles, [`TileShape`]); its tile is stored transposed where the
//! output is a map's channels) and `Wᵀ · x` ([`product_transposed`], 8 of
//! the panels' columns broadcast as the left operand's rows, 32 columns of
//! `x` packed at a time, or 6 by 64), for a map's
//! channels to its channels: read in place, the channels of a large map
//! are a page apart, and the VAE's 256 -> 128 at 256 x 256 ran at 114
//! GFLOP/s that way, 188 packed.

#[cfg(target_arch = "x86_64")]
use std::arch::x86_64::*;

use rayon::prelude::*;

#[cfg(target_arch = "x86_64")]
use super::cache_lines::CACHE_LINE;
use super::SharedMut;

/// Columns per panel: two 16-lane registers.
pub const PANEL: usize = 32;
// Gated panels take bf16's column order, which assumes its panel width.
const _: () = assert!(PANEL == super::bf16::RHS_PANEL);
/// Rows of a kernel tile: 8 x 2 accumulators of 16 lanes (of 32
/// registers, the rest hold the right operand and the broadcasts).
const MR: usize = 8;
/// Rows of [`TileShape::Wide`]'s tile, two panels wide: 6 x 4
/// accumulators, with the four right-operand registers and the broadcast
/// 29 of the 32.
const WIDE_ROWS: usize = 6;
/// Rows per task of [`product`]: a task's rows stay in L2 while each of
/// its panels goes by (64 rows and 4 panels measured the same); a
/// multiple of both tiles' rows.
const ROWS_PER_TASK: usize = 120;
/// Rows per task of [`product`] in wide tiles against at most
/// [`STREAMED_PANELS`] panels, where the rows are a convolution's kernel
/// streamed from memory (see [`product_in`]); a multiple of both tiles'.
const STREAMED_ROWS_PER_TASK: usize = 48;
/// Panels (columns / [`PANEL`]) up to which [`STREAMED_ROWS_PER_TASK`]
/// applies.
const STREAMED_PANELS: usize = 4;
/// Depth of [`TileShape::Wide`]'s steps through k: two panels of 128
/// rows are 32 KiB.
const K_CHUNK: usize = 128;
/// Panels per task of [`product`].
const PANELS_PER_TASK: usize = 2;
/// Columns (of `rhs`'s rows) and panels per task of
/// [`product_transposed`]: each block of 32 columns (or pair of them) is
/// packed once and goes by the task's 128 output rows, 8 (or 6) at a time
/// (64 x 4 and 32 x all measured no faster in narrow tiles).
const COLUMNS_PER_TASK: usize = 4 * PANEL;
const TRANSPOSED_PANELS_PER_TASK: usize = 4;

/// Whether this CPU runs these products: x86-64 with AVX-512F and VL (every
/// AVX-512 CPU since Skylake-SP). Elsewhere
/// the linear layers keep the gemm crate.
pub fn available() -> bool {
    #[cfg(target_arch = "x86_64")]
    return is_x86_feature_detected!("avx512f") && is_x86_feature_detected!("avx512vl");
    #[cfg(not(target_arch = "x86_64"))]
    false
}

/// Whether the f32 products go through this module: [`available`], unless
/// `ATELIER_CPU_PRODUCTS=gemm` keeps the gemm crate's (an A/B baseline;
/// read once).
pub fn enabled() -> bool {
    static ENABLED: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *ENABLED.get_or_init(|| {
        available() && std::env::var("ATELIER_CPU_PRODUCTS").map_or(true, |v| v != "gemm")
    })
}

/// The tile [`product`] computes at a time: [`MR`] rows of one panel, or
/// [`WIDE_ROWS`] rows of two.
///
/// Measured on an Intel Ice Lake Xeon (2026-12-07, one core, operands in
/// L1): a kernel step took about four cycles more than its FMAs need at two
/// a cycle, so the tile with more FMAs per step went faster: 8 x 32 (16
/// FMAs) at 128 GFLOP/s, 12 x 32 at 143, 14 x 32 at 148, 6 x 64 (24) at
/// 155-164, of the core's 190. In the layers, where the two panels come
/// from L2 unless k is taken in [`K_CHUNK`]s, the wide tiles ran the
/// UNet's linear shapes 7-25% faster (both tiles alternated per call);
/// in [`product_transposed`] (6 output channels by 64 pixels, k whole)
/// the UNet's and VAE's 1x1 convolutions 9-20% faster.
/// AMD CPUs keep 8 x 32, what they were measured on (a Zen 4 core, one
/// 512-bit FMA a cycle, ran it at 116 GFLOP/s of 128); 6 x 64 was not
/// measured there.
#[derive(Clone, Copy, Debug, PartialEq)]
enum TileShape {
    Narrow,
    Wide,
}

impl TileShape {
    /// Wide on Intel CPUs, narrow elsewhere; `ATELIER_CPU_F32_TILE=8x32`
    /// or `6x64` picks one (an A/B switch; read once).
    fn chosen() -> Self {
        static SHAPE: std::sync::OnceLock<TileShape> = std::sync::OnceLock::new();
        *SHAPE.get_or_init(|| match std::env::var("ATELIER_CPU_F32_TILE").as_deref() {
            Ok("8x32") => Self::Narrow,
            Ok("6x64") => Self::Wide,
            _ if is_intel() => Self::Wide,
            _ => Self::Narrow,
        })
    }
}

/// Whether the CPU's vendor string is Intel's.
fn is_intel() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        let id = __cpuid(0);
        let vendor = [id.ebx, id.edx, id.ecx].map(u32::to_le_bytes);
        vendor.concat() == b"GenuineIntel"
    }
    #[cfg(not(target_arch = "x86_64"))]
    false
}

/// A `[k, n]` operand in panels of [`PANEL`] columns, `[panel][k][PANEL]`,
/// zeros past `n`: owned (a weight), or borrowed (a convolution's unfolded
/// input, packed into scratch at each call).
pub struct Panels<Data = Vec<f32>> {
    k: usize,
    n: usize,
    data: Data,
    /// A GEGLU projection's weight in [`super::bf16::gated_column`]'s
    /// order: [`product`] stores `a · gelu(b)`, `n / 2` columns.
    gated: bool,
}

/// Floats in the panels of a `[k, n]` operand.
pub fn packed_len(k: usize, n: usize) -> usize {
    n.div_ceil(PANEL) * k * PANEL
}

impl Panels {
    /// Packs the `[k, n]` operand whose transpose `w_t` (`[n, k]`,
    /// row-major) is given: a checkpoint's `[out, in]` weight.
    pub fn from_transposed(w_t: &[f32], k: usize, n: usize) -> Self {
        assert_eq!(w_t.len(), k * n, "w_t of [{n}, {k}]");
        Self::from_columns(k, n, |j| &w_t[j * k..][..k])
    }

    /// [`from_transposed`](Self::from_transposed) for a GEGLU projection
    /// (`n` columns `[a | b]`, a multiple of [`PANEL`]), its columns in
    /// [`super::bf16::gated_column`]'s order: products with it store `a ·
    /// gelu(b)`, `[m, n / 2]`, as bf16's gated weights do.
    pub fn gated_from_transposed(w_t: &[f32], k: usize, n: usize) -> Self {
        Self {
            gated: true,
            ..Self::from_columns(k, n, super::bf16::gated_columns(w_t, k, n))
        }
    }

    /// Column `j` of the `[k, n]` operand is `column(j)`.
    fn from_columns<'a>(k: usize, n: usize, column: impl Fn(usize) -> &'a [f32] + Sync) -> Self {
        let mut data = vec![0f32; packed_len(k, n)];
        data.par_chunks_mut(k * PANEL)
            .enumerate()
            .for_each(|(panel, dst)| {
                for j in 0..PANEL.min(n - panel * PANEL) {
                    for (p, &x) in column(panel * PANEL + j).iter().enumerate() {
                        dst[p * PANEL + j] = x;
                    }
                }
            });
        Self {
            k,
            n,
            data,
            gated: false,
        }
    }
}

impl<'a> Panels<&'a [f32]> {
    /// `data` as the panels of a `[k, n]` operand, packed already.
    pub fn packed(k: usize, n: usize, data: &'a [f32]) -> Self {
        assert_eq!(data.len(), packed_len(k, n), "panels of [{k}, {n}]");
        Self {
            k,
            n,
            data,
            gated: false,
        }
    }
}

impl<Data: AsRef<[f32]>> Panels<Data> {
    pub fn k(&self) -> usize {
        self.k
    }

    /// Columns of sums (before a gated weight's gate).
    pub fn n(&self) -> usize {
        self.n
    }

    /// Columns a product with it stores: `n`, or `n / 2` gated.
    pub fn outputs(&self) -> usize {
        match self.gated {
            true => self.n / 2,
            false => self.n,
        }
    }

    /// Columns a product stores per panel.
    fn panel_outputs(&self) -> usize {
        match self.gated {
            true => PANEL / 2,
            false => PANEL,
        }
    }

    fn panel(&self, panel: usize) -> &[f32] {
        &self.data.as_ref()[panel * self.k * PANEL..][..self.k * PANEL]
    }
}

/// What the kernel adds to its sums as it stores them: `bias` (one value
/// per output column of [`product`], per output row of
/// [`product_transposed`]) and `residual`, a buffer laid out as `dst`.
#[derive(Clone, Copy, Default)]
pub struct Addends<'a> {
    pub bias: Option<&'a [f32]>,
    pub residual: Option<*const f32>,
}

/// `dst[m, n] = lhs[m, k] · w + bias + residual`; `dst` and `lhs` given as
/// (pointer, row stride, column stride) in floats, `dst` with one of its
/// strides 1; in parallel.
///
/// # Safety
/// Every element of `dst`, `lhs` (and the residual, at `dst`'s strides)
/// lies inside its buffer, no other thread touches `dst` meanwhile, a bias
/// has `n` values, and the CPU has [`available`].
pub unsafe fn product(
    m: usize,
    dst: (*mut f32, usize, usize),
    lhs: (*const f32, usize, usize),
    w: &Panels<impl AsRef<[f32]> + Sync>,
    addends: Addends,
) {
    // SAFETY: as the caller promises.
    unsafe { product_in(TileShape::chosen(), m, dst, lhs, w, addends) }
}

/// [`product`] in tiles of `shape`.
///
/// # Safety
/// As [`product`].
unsafe fn product_in(
    shape: TileShape,
    m: usize,
    dst: (*mut f32, usize, usize),
    lhs: (*const f32, usize, usize),
    w: &Panels<impl AsRef<[f32]> + Sync>,
    addends: Addends,
) {
    assert!(available(), "f32 panel products need AVX-512");
    assert!(
        !w.gated || (addends.residual.is_none() && dst.2 == 1),
        "a gated product into rows, with no residual"
    );
    let panels = w.n.div_ceil(PANEL);
    // In wide tiles a task reads its rows a chunk of k at a time, row
    // after row. Against few panels (a small map's unfolded columns, the
    // rows its convolution's kernel, read from memory once or twice) 120
    // rows were that many streams of 512 bytes, which the prefetchers did
    // not keep up with: with 48 rows a task 1280 x 11520 x 32 (a 4x4 map's
    // 1280 -> 1280 channels) took 4.8-5.0 ms instead of 7.5, x 64 and x 128
    // ran 10-20% faster, on an Ice Lake Xeon (a probe); level from 256
    // columns up, and in narrow tiles, whose k is whole.
    let rows_per_task = match shape == TileShape::Wide && panels <= STREAMED_PANELS {
        true => STREAMED_ROWS_PER_TASK,
        false => ROWS_PER_TASK,
    };
    let panel_tasks = panels.div_ceil(PANELS_PER_TASK);
    // Consecutive tasks (which run on the same thread, as rayon splits
    // the range) share the larger operand's part: its panels when the
    // weight is larger than the activations, else its rows. Row-major
    // order ran 512 x 640 -> 5120 at 231 GFLOP/s, panel-major at 392.
    let panel_major = w.n > m;
    let row_tasks = match panel_major {
        true => row_tasks_merging_a_small_rest(m, rows_per_task),
        false => m.div_ceil(rows_per_task),
    };
    let (dst_at, lhs_at) = (dst.0 as usize, lhs.0 as usize);
    let (bias, residual) = (addends.bias, addends.residual.map(|r| r as usize));
    (0..row_tasks * panel_tasks)
        .into_par_iter()
        .for_each(|task| {
            let (rt, pt) = match panel_major {
                true => (task % row_tasks, task / row_tasks),
                false => (task / panel_tasks, task % panel_tasks),
            };
            let end = match rt + 1 == row_tasks {
                true => m,
                false => (rt + 1) * rows_per_task,
            };
            let rows = rt * rows_per_task..end;
            let panels = pt * PANELS_PER_TASK..((pt + 1) * PANELS_PER_TASK).min(panels);
            let dst = (dst_at as *mut f32, dst.1, dst.2);
            let lhs = (lhs_at as *const f32, lhs.1, lhs.2);
            let addends = Addends {
                bias,
                residual: residual.map(|r| r as *const f32),
            };
            // In panel-major order the first row task reads its panels
            // from memory; the tasks after it find them in cache.
            let first_reader = panel_major && rt == 0;
            // SAFETY: as the caller promises; only this task writes these
            // rows and panels of dst.
            unsafe { product_part(dst, lhs, w, addends, (rows, panels), (shape, first_reader)) };
        });
}

/// How many tasks of `rows_per_task` rows [`product_in`] cuts `m` rows
/// into in panel-major order, the last taking the rest: a remainder under
/// a quarter of a task joins the task before, which saves the panels a
/// pass. 128 tokens in 120-row tasks left one of 8 rows, which read each
/// panel pair again, from L3 where the pair outgrows L2: one task of 128
/// ran 128 x 5120 -> 1280 (SDXL's feed-forward out at 8x8) about 7%
/// faster on an Ice Lake Xeon (median of 14 alternated pairs in a noisy
/// spell, 12 of them faster). In row-major order a small remainder only
/// re-reads its own rows, and stays a task of its own.
fn row_tasks_merging_a_small_rest(m: usize, rows_per_task: usize) -> usize {
    (m / rows_per_task + usize::from(m % rows_per_task >= rows_per_task / 4)).max(1)
}

/// [`product`] on the calling thread, for callers that share out the work
/// themselves.
///
/// # Safety
/// As [`product`].
pub unsafe fn product_on_this_thread(
    m: usize,
    dst: (*mut f32, usize, usize),
    lhs: (*const f32, usize, usize),
    w: &Panels<impl AsRef<[f32]>>,
    addends: Addends,
) {
    assert!(available(), "f32 panel products need AVX-512");
    let part = (0..m, 0..w.n.div_ceil(PANEL));
    // SAFETY: as the caller promises.
    unsafe { product_part(dst, lhs, w, addends, part, (TileShape::chosen(), false)) };
}

/// The tiles of [`product`] in `rows` and `panels`: with wide tiles, two
/// panels at a time (an odd one left over in narrow tiles). With
/// `prefetch`, each chunk of k asks for the panels' next one
/// ([`prefetch_share`]).
///
/// # Safety
/// As [`product`], for those rows and panels of `dst`.
// With the features on, the closures below (which inherit them) inline
// the kernels and intrinsics: the UNet's linear shapes ran 16-22% faster
// on an Ice Lake Xeon than without (old and new alternated per call).
#[cfg_attr(target_arch = "x86_64", target_feature(enable = "avx512f,avx512vl"))]
unsafe fn product_part(
    dst: (*mut f32, usize, usize),
    lhs: (*const f32, usize, usize),
    w: &Panels<impl AsRef<[f32]>>,
    addends: Addends,
    (rows, panels): (std::ops::Range<usize>, std::ops::Range<usize>),
    (shape, prefetch): (TileShape, bool),
) {
    assert!(
        addends.bias.is_none_or(|b| b.len() == w.n),
        "bias of {}",
        w.n
    );
    // With wide tiles k goes in chunks whose two panels stay in L1 while
    // the row tiles go by (an odd panel's narrow tiles take the same
    // chunks). A tile's sums before its last chunk wait in the thread's
    // `PARTIAL_SUMS` (the next chunk starts from them), so the tile is
    // stored once, with its addends or its gate, after the last.
    let chunk = match shape {
        TileShape::Wide => K_CHUNK,
        TileShape::Narrow => w.k.max(1),
    };
    let chunks = w.k.max(1).div_ceil(chunk);
    let mut panel = panels.start;
    while panel < panels.end {
        let pair = shape == TileShape::Wide && panel + 1 < panels.end;
        let height = if pair { WIDE_ROWS } else { MR };
        #[cfg(target_arch = "x86_64")]
        PARTIAL_SUMS.with_borrow_mut(|partial| {
            if chunks > 1 {
                partial.resize(
                    rows.len().div_ceil(height) * PARTIAL_SLOT,
                    _mm512_setzero_ps(),
                );
            }
            for (c, k0) in (0..w.k.max(1)).step_by(chunk).enumerate() {
                let kc = chunk.min(w.k - k0);
                let last = c + 1 == chunks;
                for (t, r0) in rows.clone().step_by(height).enumerate() {
                    let tile_rows = height.min(rows.end - r0);
                    if prefetch && !last {
                        let next = k0 + kc..(k0 + kc + chunk).min(w.k);
                        let share = (t, rows.len().div_ceil(height));
                        for p in panel..panel + 1 + usize::from(pair) {
                            prefetch_share(
                                &w.panel(p)[next.start * PANEL..next.end * PANEL],
                                share,
                            );
                        }
                    }
                    // Rows past the tile repeat its last one (read, never stored).
                    let row = |r: usize| {
                        lhs.0
                            .wrapping_add((r0 + r.min(tile_rows - 1)) * lhs.1 + k0 * lhs.2)
                    };
                    let store_panel = |sums: &[[__m512; 2]; MR], panel: usize| {
                        let col = panel * PANEL;
                        let cols = PANEL.min(w.n - col);
                        let at = r0 * dst.1 + panel * w.panel_outputs() * dst.2;
                        let tile = Tile {
                            dst: dst.0.wrapping_add(at),
                            strides: (dst.1, dst.2),
                            residual: addends.residual.map(|r| r.wrapping_add(at)),
                            bias: addends.bias.map(|b| Bias::PerColumn(&b[col..col + cols])),
                            size: [tile_rows, cols],
                        };
                        // SAFETY: the tile of dst is inside it (the caller's
                        // promise), on a CPU with AVX-512F.
                        unsafe {
                            match w.gated {
                                true => super::geglu::store_gated(sums, &tile),
                                false => store(sums, &tile),
                            }
                        }
                    };
                    // The first chunk starts from zero, the others from
                    // the sums the one before left in the tile's slot.
                    let slot = match chunks {
                        1 => &mut [][..],
                        _ => &mut partial[t * PARTIAL_SLOT..][..PARTIAL_SLOT],
                    };
                    let start = |i: usize| match c {
                        0 => _mm512_setzero_ps(),
                        _ => slot[i],
                    };
                    // SAFETY: rows r0.. of lhs are inside it (the caller's
                    // promise), each panel holds k rows of PANEL, on a CPU
                    // with AVX-512F.
                    unsafe {
                        if pair {
                            let b = (
                                w.panel(panel)[k0 * PANEL..].as_ptr(),
                                w.panel(panel + 1)[k0 * PANEL..].as_ptr(),
                            );
                            let acc =
                                std::array::from_fn(|r| std::array::from_fn(|j| start(4 * r + j)));
                            let sums =
                                wide_tile_sums(acc, (std::array::from_fn(row), lhs.2), b, kc);
                            if last {
                                let [left, right] = panel_halves(&sums);
                                store_panel(&left, panel);
                                store_panel(&right, panel + 1);
                            } else {
                                slot.copy_from_slice(sums.as_flattened());
                            }
                        } else {
                            let b = (w.panel(panel)[k0 * PANEL..].as_ptr(), PANEL);
                            let acc =
                                std::array::from_fn(|r| std::array::from_fn(|j| start(2 * r + j)));
                            let sums =
                                tile_sums_onto(acc, (std::array::from_fn(row), lhs.2), b, kc);
                            match last {
                                true => store_panel(&sums, panel),
                                false => slot[..2 * MR].copy_from_slice(sums.as_flattened()),
                            }
                        }
                    }
                }
            }
        });
        // product refuses to run without AVX-512, so elsewhere this is
        // never reached.
        #[cfg(not(target_arch = "x86_64"))]
        let _ = (&rows, height, chunks, dst, lhs, &addends, prefetch);
        panel += if pair { 2 } else { 1 };
    }
}

/// Asks for share `i` of `n` of the cache lines of `data` (into L2).
///
/// A panel's next chunk of k, asked for while the row tiles go through
/// its current one, by the first task to read the panel (in panel-major
/// order, where the weight comes from memory): in-process alternation on
/// an Ice Lake Xeon, 128 x 1280 -> 10240 (SDXL's feed-forward at 8x8)
/// 15.2-15.4 -> 14.4-14.8 ms, 128 x 1280 -> 1280 4-5% faster, 128 x 5120
/// -> 1280 1-4%, 512 x 640 -> 5120 and 2048 x 320 -> 2560 level. Asked
/// for by every task, the shapes whose panels stay in cache (2048 x 320 ->
/// 2560, im2col's unfolded input) ran 1-6% slower. Narrow tiles take k
/// whole, so they never ask.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
fn prefetch_share(data: &[f32], (i, n): (usize, usize)) {
    let lines = size_of_val(data).div_ceil(CACHE_LINE);
    let base = data.as_ptr().cast::<i8>();
    for line in i * lines / n..(i + 1) * lines / n {
        // A prefetch reads nothing, whatever its address.
        _mm_prefetch::<_MM_HINT_T1>(base.wrapping_add(CACHE_LINE * line));
    }
}

/// Registers of a tile's sums in [`PARTIAL_SUMS`]: a wide tile's 6 x 4
/// (a narrow tile's 8 x 2 take the first 16).
#[cfg(target_arch = "x86_64")]
const PARTIAL_SLOT: usize = 4 * WIDE_ROWS;

#[cfg(target_arch = "x86_64")]
thread_local! {
    /// [`product_part`]'s sums of its row tiles between chunks of k, a
    /// [`PARTIAL_SLOT`] per tile.
    static PARTIAL_SUMS: std::cell::RefCell<Vec<__m512>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// `dst[n, cols] = wᵀ[n, k] · rhs[k, cols] + bias + residual`: `rhs` and
/// `dst` given as (pointer, row stride), rows contiguous (a map's channels,
/// its pixels in a row), in parallel.
///
/// # Safety
/// Every element of `dst`, `rhs` (and the residual, at `dst`'s stride) lies
/// inside its buffer, no other thread touches `dst` meanwhile, a bias has
/// `n` values, and the CPU has [`available`].
pub unsafe fn product_transposed(
    cols: usize,
    dst: (*mut f32, usize),
    w: &Panels,
    rhs: (*const f32, usize),
    addends: Addends,
) {
    // Before the call: product_transposed_in is compiled for AVX-512.
    assert!(available(), "f32 panel products need AVX-512");
    // SAFETY: as the caller promises.
    unsafe { product_transposed_in(TileShape::chosen(), cols, dst, w, rhs, addends) }
}

/// [`product_transposed`] in tiles of `shape`: 8 output rows by a block
/// of [`PANEL`] columns, or [`WIDE_ROWS`] by two blocks.
///
/// # Safety
/// As [`product_transposed`].
#[cfg_attr(target_arch = "x86_64", target_feature(enable = "avx512f,avx512vl"))]
unsafe fn product_transposed_in(
    shape: TileShape,
    cols: usize,
    dst: (*mut f32, usize),
    w: &Panels,
    rhs: (*const f32, usize),
    addends: Addends,
) {
    assert!(!w.gated, "a gated product into columns");
    assert!(
        addends.bias.is_none_or(|b| b.len() == w.n),
        "bias of {}",
        w.n
    );
    let panels = w.n.div_ceil(PANEL);
    let column_tasks = cols.div_ceil(COLUMNS_PER_TASK);
    let panel_tasks = panels.div_ceil(TRANSPOSED_PANELS_PER_TASK);
    let (out, rhs_at) = (SharedMut(dst.0), rhs.0 as usize);
    let (bias, residual) = (addends.bias, addends.residual.map(|r| r as usize));
    (0..column_tasks * panel_tasks)
        .into_par_iter()
        .for_each(|task| {
            let (ct, pt) = (task / panel_tasks, task % panel_tasks);
            let columns = ct * COLUMNS_PER_TASK..((ct + 1) * COLUMNS_PER_TASK).min(cols);
            let outputs = pt * TRANSPOSED_PANELS_PER_TASK * PANEL
                ..((pt + 1) * TRANSPOSED_PANELS_PER_TASK * PANEL).min(w.n);
            #[cfg(target_arch = "x86_64")]
            COLUMN_BLOCK.with_borrow_mut(|block| {
                block.resize(2 * w.k * PANEL, 0.0);
                let (left, right) = block.split_at_mut(w.k * PANEL);
                let mut c0 = columns.start;
                while c0 < columns.end {
                    let pair = shape == TileShape::Wide && columns.end - c0 > PANEL;
                    let (height, width) = match pair {
                        true => (WIDE_ROWS, 2 * PANEL),
                        false => (MR, PANEL),
                    };
                    let tile_cols = width.min(columns.end - c0);
                    // SAFETY: rows 0..k of rhs hold columns c0..c0 +
                    // tile_cols (the caller's promise); each block holds k
                    // rows of PANEL.
                    unsafe {
                        let at = (rhs_at as *const f32).add(c0);
                        pack_columns((at, rhs.1), tile_cols.min(PANEL), w.k, left);
                        if pair {
                            pack_columns((at.add(PANEL), rhs.1), tile_cols - PANEL, w.k, right);
                        }
                    }
                    for o0 in outputs.clone().step_by(height) {
                        let tile_rows = height.min(outputs.end - o0);
                        // Output row o's weights: column o of its panel, a
                        // step of PANEL (rows past the tile repeat its last,
                        // never stored).
                        let column = |r: usize| {
                            let o = o0 + r.min(tile_rows - 1);
                            w.panel(o / PANEL)[o % PANEL..].as_ptr()
                        };
                        let store_block = |sums: &[[__m512; 2]; MR], block: usize| {
                            let at = o0 * dst.1 + c0 + block * PANEL;
                            let tile = Tile {
                                dst: out.ptr().wrapping_add(at),
                                strides: (dst.1, 1),
                                residual: residual.map(|r| (r as *const f32).wrapping_add(at)),
                                bias: bias.map(|b| Bias::PerRow(&b[o0..o0 + tile_rows])),
                                size: [tile_rows, PANEL.min(tile_cols - block * PANEL)],
                            };
                            // SAFETY: the tile of dst is inside it (the
                            // caller's promise), on a CPU with AVX-512F.
                            unsafe { store(sums, &tile) }
                        };
                        // SAFETY: each column holds k steps of PANEL in its
                        // panel, each block k rows of PANEL.
                        unsafe {
                            if pair {
                                let zeros = [[_mm512_setzero_ps(); 4]; WIDE_ROWS];
                                let a = (std::array::from_fn(column), PANEL);
                                let b = (left.as_ptr(), right.as_ptr());
                                let [l, r] = panel_halves(&wide_tile_sums(zeros, a, b, w.k));
                                store_block(&l, 0);
                                store_block(&r, 1);
                            } else {
                                let a = (std::array::from_fn(column), PANEL);
                                store_block(&tile_sums(a, (left.as_ptr(), PANEL), w.k), 0);
                            }
                        }
                    }
                    c0 += tile_cols;
                }
            });
            // product_transposed refuses to run without AVX-512, so
            // elsewhere this is never reached.
            #[cfg(not(target_arch = "x86_64"))]
            let _ = (&columns, &outputs, out, rhs_at, bias, residual, shape);
        });
}

#[cfg(target_arch = "x86_64")]
thread_local! {
    /// [`product_transposed`]'s columns of `rhs`, packed `[k][PANEL]` (two
    /// blocks of them for wide tiles).
    static COLUMN_BLOCK: std::cell::RefCell<Vec<f32>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// Copies `cols` columns (up to [`PANEL`]) of `k` rows of `src` (pointer,
/// row stride) into `block` `[k][PANEL]`, zeros past `cols`.
///
/// # Safety
/// The `cols` columns of each row are readable; the CPU has AVX-512F.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn pack_columns((src, rs): (*const f32, usize), cols: usize, k: usize, block: &mut [f32]) {
    let masks = column_masks(cols);
    for (p, dst) in block.chunks_exact_mut(PANEL).take(k).enumerate() {
        // SAFETY: the masked columns of row p are readable (the caller's
        // promise); dst holds PANEL floats.
        unsafe {
            let row = src.add(p * rs);
            _mm512_storeu_ps(dst.as_mut_ptr(), _mm512_maskz_loadu_ps(masks[0], row));
            _mm512_storeu_ps(
                dst.as_mut_ptr().add(16),
                _mm512_maskz_loadu_ps(masks[1], row.wrapping_add(16)),
            );
        }
    }
}

/// Load masks of the two 16-lane halves of a tile `cols` wide.
fn column_masks(cols: usize) -> [u16; 2] {
    let mask = |lanes: usize| ((1u32 << lanes.min(16)) - 1) as u16;
    [mask(cols), mask(cols.saturating_sub(16))]
}

/// The bias of a tile's columns or of its rows.
#[derive(Clone, Copy)]
pub(super) enum Bias<'a> {
    PerColumn(&'a [f32]),
    PerRow(&'a [f32]),
}

/// Where a kernel tile goes: `size` = [rows, columns] of it are stored at
/// `dst` (row stride, column stride), plus the residual at the same
/// strides and the bias. The bf16 kernel's tiles ([`super::bf16`]) are
/// stored the same way.
pub(super) struct Tile<'a> {
    pub(super) dst: *mut f32,
    pub(super) strides: (usize, usize),
    pub(super) residual: Option<*const f32>,
    pub(super) bias: Option<Bias<'a>>,
    pub(super) size: [usize; 2],
}

impl Tile<'_> {
    /// Asks for the cache lines the tile will be stored to (and its
    /// residual's, which the store reads), before the products that fill
    /// it; for the bf16 kernel, whose tiles take as little as 2,560 cycles.
    /// Stored cold, the lines were fetched only when the tile was stored:
    /// a bf16 product of 2048 tokens into 2560 channels (21 MB) took 8.84
    /// ms without this and 8.00 with it, and a bf16 UNet call at 256 px
    /// 2-3% less (per-call A/B in throwaway probes). The f32 kernel's
    /// tiles take twice as long, and its UNet calls were level with it.
    #[cfg(target_arch = "x86_64")]
    #[inline(always)]
    pub(super) fn prefetch(&self) {
        use std::arch::x86_64::{_mm_prefetch, _MM_HINT_T0};
        let ([rows, cols], (rs, cs)) = (self.size, self.strides);
        // Rows of `cols` floats, or (stored transposed) columns of `rows`.
        let (runs, stride, len) = if cs == 1 {
            (rows, rs, cols)
        } else {
            (cols, cs, rows)
        };
        let last = 4 * len - 1;
        for base in [Some(self.dst as *const f32), self.residual]
            .into_iter()
            .flatten()
        {
            for run in 0..runs {
                let start = base.wrapping_add(run * stride) as *const i8;
                // A run's first and last bytes and the line between them
                // (32 floats can span three).
                for offset in [0, 64.min(last), last] {
                    // SAFETY: a prefetch reads nothing and never faults.
                    unsafe { _mm_prefetch::<_MM_HINT_T0>(start.wrapping_add(offset)) };
                }
            }
        }
    }
}

/// `Σ_p a[r][p] · b[p][..32]` for the tile's 8 rows: `a` as 8 row pointers
/// and the step between consecutive `p`, `b` as a pointer and its row
/// stride, 32 floats a row. (With masked loads the products ran at 300
/// GFLOP/s on Zen 5, without them 360-400.)
///
/// # Safety
/// `a[r] + p * step` for every `p < k` is readable, as are the masked
/// lanes of each of b's k rows; the CPU has AVX-512F.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
#[inline]
pub(super) unsafe fn tile_sums(
    a: ([*const f32; MR], usize),
    b: (*const f32, usize),
    k: usize,
) -> [[__m512; 2]; MR] {
    // SAFETY: as the caller promises.
    unsafe { tile_sums_onto([[_mm512_setzero_ps(); 2]; MR], a, b, k) }
}

/// [`tile_sums`] added to `acc`.
///
/// # Safety
/// As [`tile_sums`].
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
#[inline]
unsafe fn tile_sums_onto(
    mut acc: [[__m512; 2]; MR],
    (a, a_step): ([*const f32; MR], usize),
    (b, b_step): (*const f32, usize),
    k: usize,
) -> [[__m512; 2]; MR] {
    for p in 0..k {
        // SAFETY: as the caller promises.
        unsafe {
            let row = b.add(p * b_step);
            let (b0, b1) = (_mm512_loadu_ps(row), _mm512_loadu_ps(row.add(16)));
            let at = p * a_step;
            for (r, acc) in acc.iter_mut().enumerate() {
                let x = _mm512_set1_ps(*a[r].add(at));
                acc[0] = _mm512_fmadd_ps(x, b0, acc[0]);
                acc[1] = _mm512_fmadd_ps(x, b1, acc[1]);
            }
        }
    }
    acc
}

/// [`tile_sums_onto`] for [`WIDE_ROWS`] rows and two panels (`b`: each's
/// first row; rows of [`PANEL`] floats).
///
/// # Safety
/// As [`tile_sums`], for both panels; the CPU has AVX-512F.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
#[inline]
unsafe fn wide_tile_sums(
    mut acc: [[__m512; 4]; WIDE_ROWS],
    (a, a_step): ([*const f32; WIDE_ROWS], usize),
    (left, right): (*const f32, *const f32),
    k: usize,
) -> [[__m512; 4]; WIDE_ROWS] {
    for p in 0..k {
        // SAFETY: as the caller promises.
        unsafe {
            let (l, r) = (left.add(p * PANEL), right.add(p * PANEL));
            let b = [
                _mm512_loadu_ps(l),
                _mm512_loadu_ps(l.add(16)),
                _mm512_loadu_ps(r),
                _mm512_loadu_ps(r.add(16)),
            ];
            let at = p * a_step;
            for (row, acc) in acc.iter_mut().enumerate() {
                let x = _mm512_set1_ps(*a[row].add(at));
                for (acc, &b) in acc.iter_mut().zip(&b) {
                    *acc = _mm512_fmadd_ps(x, b, *acc);
                }
            }
        }
    }
    acc
}

/// A wide tile's sums as the two panels' tiles [`store`] takes (rows
/// past [`WIDE_ROWS`] zero, never stored).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
fn panel_halves(sums: &[[__m512; 4]; WIDE_ROWS]) -> [[[__m512; 2]; MR]; 2] {
    let mut halves = [[[_mm512_setzero_ps(); 2]; MR]; 2];
    for (r, row) in sums.iter().enumerate() {
        halves[0][r] = [row[0], row[1]];
        halves[1][r] = [row[2], row[3]];
    }
    halves
}

/// Stores a kernel tile's sums with its addends, into rows (column
/// stride 1) or, transposed, into columns (row stride 1: a map's channels
/// from tokens, each column's 8 rows contiguous).
///
/// # Safety
/// The tile's rows and columns of `dst` (and of the residual) lie inside
/// their buffers; the CPU has [`available`].
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512vl")]
pub(super) unsafe fn store(sums: &[[__m512; 2]; MR], tile: &Tile) {
    // SAFETY: as the caller promises.
    unsafe {
        match tile.strides {
            (_, 1) => store_rows(sums, tile),
            (1, _) => store_columns(sums, tile),
            strides => panic!("a tile at strides {strides:?}"),
        }
    }
}

/// [`store`] into rows.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512vl")]
unsafe fn store_rows(sums: &[[__m512; 2]; MR], tile: &Tile) {
    let ([rows, cols], rs) = (tile.size, tile.strides.0);
    let masks = column_masks(cols);
    let column_bias: [__m512; 2] = match tile.bias {
        // SAFETY: the bias has `cols` values.
        Some(Bias::PerColumn(b)) => unsafe {
            [
                _mm512_maskz_loadu_ps(masks[0], b.as_ptr()),
                _mm512_maskz_loadu_ps(masks[1], b.as_ptr().wrapping_add(16)),
            ]
        },
        _ => [_mm512_setzero_ps(); 2],
    };
    for (r, halves) in sums.iter().enumerate().take(rows) {
        let row_bias = match tile.bias {
            Some(Bias::PerRow(b)) => _mm512_set1_ps(b[r]),
            _ => _mm512_setzero_ps(),
        };
        for (half, &sum) in halves.iter().enumerate() {
            let at = r * rs + 16 * half;
            let sum = _mm512_add_ps(sum, _mm512_add_ps(column_bias[half], row_bias));
            // SAFETY: the masked lanes of row r are inside dst and the
            // residual (the caller's promise).
            unsafe {
                let sum = match tile.residual {
                    Some(res) => {
                        _mm512_add_ps(sum, _mm512_maskz_loadu_ps(masks[half], res.add(at)))
                    }
                    None => sum,
                };
                _mm512_mask_storeu_ps(tile.dst.add(at), masks[half], sum);
            }
        }
    }
}

/// [`store`] into columns: the tile is transposed in registers 8 columns
/// at a time and stored a column's 8 rows at once. (In the bf16 kernel,
/// which stored such tiles element by element, each of a tile's 32
/// columns a page apart on the UNet's 32 x 32 maps, a 320 -> 320
/// projection onto a map took 6.0-6.5 ms where onto tokens it took
/// 0.95-1.05; stored this way 0.65-0.69.)
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512vl")]
unsafe fn store_columns(sums: &[[__m512; 2]; MR], tile: &Tile) {
    let ([rows, cols], cs) = (tile.size, tile.strides.1);
    let row_mask = ((1u32 << rows) - 1) as u8;
    for block in 0..cols.div_ceil(8) {
        // The tile's columns 8·block.. of each row.
        let rows_part: [__m256; MR] = std::array::from_fn(|r| {
            let half = _mm512_castps_pd(sums[r][block / 2]);
            match block % 2 {
                0 => _mm256_castpd_ps(_mm512_castpd512_pd256(half)),
                _ => _mm256_castpd_ps(_mm512_extractf64x4_pd::<1>(half)),
            }
        });
        let columns = transpose8(rows_part);
        for (i, &column) in columns.iter().enumerate().take(cols - 8 * block) {
            let j = 8 * block + i;
            let column = match tile.bias {
                Some(Bias::PerColumn(b)) => _mm256_add_ps(column, _mm256_set1_ps(b[j])),
                Some(Bias::PerRow(_)) => panic!("a per-row bias on a transposed tile"),
                None => column,
            };
            // SAFETY: the tile's rows of column j are inside dst and the
            // residual (the caller's promise).
            unsafe {
                let column = match tile.residual {
                    Some(res) => {
                        _mm256_add_ps(column, _mm256_maskz_loadu_ps(row_mask, res.add(j * cs)))
                    }
                    None => column,
                };
                _mm256_mask_storeu_ps(tile.dst.add(j * cs), row_mask, column);
            }
        }
    }
}

/// The 8 x 8 transpose of 8 rows of 8 floats: pairs interleaved, then
/// quadruples, then 128-bit halves exchanged.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx")]
pub(super) fn transpose8(v: [__m256; 8]) -> [__m256; 8] {
    let t: [__m256; 8] = std::array::from_fn(|i| {
        let (a, b) = (v[2 * (i / 2)], v[2 * (i / 2) + 1]);
        match i % 2 {
            0 => _mm256_unpacklo_ps(a, b),
            _ => _mm256_unpackhi_ps(a, b),
        }
    });
    // u[4g + j]: rows 4g..4g + 4, columns j, j + 4 (within each half).
    let u: [__m256; 8] = std::array::from_fn(|i| {
        let (g, j) = (i / 4, i % 4);
        let (a, b) = (t[4 * g + j / 2], t[4 * g + 2 + j / 2]);
        match j % 2 {
            0 => _mm256_shuffle_ps::<0x44>(a, b),
            _ => _mm256_shuffle_ps::<0xee>(a, b),
        }
    });
    std::array::from_fn(|c| match c / 4 {
        0 => _mm256_permute2f128_ps::<0x20>(u[c], u[4 + c]),
        _ => _mm256_permute2f128_ps::<0x31>(u[c - 4], u[c]),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};

    /// `x · w + bias + residual` in f64, for x `[m, k]` and w `[k, n]`
    /// row-major.
    fn reference(
        x: &[f32],
        w: &[f32],
        [m, k, n]: [usize; 3],
        bias: &[f32],
        res: &[f32],
    ) -> Vec<f64> {
        let mut out = vec![0f64; m * n];
        for i in 0..m {
            for j in 0..n {
                let sum: f64 = (0..k)
                    .map(|p| x[i * k + p] as f64 * w[p * n + j] as f64)
                    .sum();
                out[i * n + j] = sum + bias[j] as f64 + res[i * n + j] as f64;
            }
        }
        out
    }

    /// [`product_in`] in parallel, or [`product_part`] over all of it on
    /// this thread.
    ///
    /// # Safety
    /// As [`product`].
    unsafe fn run_product(
        parallel: bool,
        shape: TileShape,
        m: usize,
        dst: (*mut f32, usize, usize),
        lhs: (*const f32, usize, usize),
        w: &Panels,
        addends: Addends,
    ) {
        // SAFETY: as the caller promises.
        unsafe {
            match parallel {
                true => product_in(shape, m, dst, lhs, w, addends),
                false => {
                    let part = (0..m, 0..w.n.div_ceil(PANEL));
                    product_part(dst, lhs, w, addends, part, (shape, false))
                }
            }
        }
    }

    /// Within f32 rounding of a sum of `k` terms of random sign, whose
    /// error grows as √k.
    fn close(got: f32, want: f64, k: usize) -> bool {
        let terms = (k as f64 / 64.0).sqrt().max(1.0);
        (got as f64 - want).abs() < 1e-5 * (1.0 + want.abs()) * terms
    }

    #[test]
    fn both_products_match_the_sums_in_every_layout() {
        if !available() {
            eprintln!("skipped: this CPU has no AVX-512");
            return;
        }
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(21);
        let mut random =
            |len: usize| -> Vec<f32> { (0..len).map(|_| rng.random_range(-2.0..2.0)).collect() };
        // Tails everywhere (rows past a tile, columns past a panel, a
        // partial group of 8 output rows, an odd panel after the wide
        // tiles' pairs, a part of K_CHUNK), shapes over several tasks, and
        // a remainder of rows that joins the task before (125 = 120 + 5).
        for [m, k, n] in [
            [13, 37, 70],
            [1, 1, 1],
            [72, 64, 160],
            [130, 40, 33],
            [65, 9, 8],
            [20, 300, 130],
            [125, 20, 200],
        ] {
            let (x, w, bias, res) = (random(m * k), random(k * n), random(n), random(m * n));
            let want = reference(&x, &w, [m, k, n], &bias, &res);
            let w_t: Vec<f32> = (0..k * n).map(|i| w[(i % k) * n + i / k]).collect();
            let panels = Panels::from_transposed(&w_t, k, n);
            let transpose = |a: &[f32], rows: usize, cols: usize| -> Vec<f32> {
                (0..rows * cols)
                    .map(|i| a[(i % rows) * cols + i / rows])
                    .collect()
            };
            let x_t = transpose(&x, m, k);
            let res_t = transpose(&res, m, n);
            for with_addends in [false, true] {
                let addends = |res: &[f32]| match with_addends {
                    true => Addends {
                        bias: Some(&bias),
                        residual: Some(res.as_ptr()),
                    },
                    false => Addends::default(),
                };
                let want = |i: usize, j: usize| match with_addends {
                    true => want[i * n + j],
                    false => want[i * n + j] - bias[j] as f64 - res[i * n + j] as f64,
                };
                // x as tokens or as channels; out as tokens or channels.
                for (lhs, lhs_strides) in [(&x, (k, 1)), (&x_t, (1, m))] {
                    for (dst_strides, residual) in [((n, 1), &res), ((1, m), &res_t)] {
                        // In parallel, and on this thread; in both tiles.
                        let both = [TileShape::Narrow, TileShape::Wide];
                        for (parallel, shape) in
                            [true, false].into_iter().flat_map(|p| both.map(|s| (p, s)))
                        {
                            let mut dst = vec![f32::NAN; m * n];
                            let dst_at = (dst.as_mut_ptr(), dst_strides.0, dst_strides.1);
                            let lhs_at = (lhs.as_ptr(), lhs_strides.0, lhs_strides.1);
                            let addends = addends(residual);
                            // SAFETY: the buffers are [m, k] and [m, n] at
                            // the strides given.
                            unsafe {
                                run_product(parallel, shape, m, dst_at, lhs_at, &panels, addends)
                            };
                            for i in 0..m {
                                for j in 0..n {
                                    let got = dst[i * dst_strides.0 + j * dst_strides.1];
                                    assert!(
                                        close(got, want(i, j), k),
                                        "[{m}, {k}, {n}] x {lhs_strides:?} out {dst_strides:?} parallel {parallel} {shape:?} at ({i}, {j}): {got} vs {}",
                                        want(i, j)
                                    );
                                }
                            }
                        }
                    }
                }
                // outᵀ [n, m] = wᵀ · xᵀ, rows of xᵀ and outᵀ contiguous; in
                // both tiles.
                for shape in [TileShape::Narrow, TileShape::Wide] {
                    let mut dst = vec![f32::NAN; m * n];
                    // SAFETY: xᵀ is [k, m] and dst [n, m], row-major.
                    unsafe {
                        product_transposed_in(
                            shape,
                            m,
                            (dst.as_mut_ptr(), m),
                            &panels,
                            (x_t.as_ptr(), m),
                            addends(&res_t),
                        )
                    };
                    for i in 0..m {
                        for j in 0..n {
                            let got = dst[j * m + i];
                            assert!(
                                close(got, want(i, j), k),
                                "[{m}, {k}, {n}] transposed {shape:?} at ({j}, {i}): {got} vs {}",
                                want(i, j)
                            );
                        }
                    }
                }
            }
        }
    }

    /// `a · gelu(b)` in f64 for sums `a`, `b` (erf's GELU, as
    /// `super::super::geglu`).
    fn gated(a: f64, b: f64) -> f64 {
        a * 0.5 * b * (1.0 + candle_core::cpu::erf::erf_f64(b / 2f64.sqrt()))
    }

    #[test]
    fn a_gated_product_matches_its_sums_then_the_gate() {
        if !available() {
            eprintln!("skipped: this CPU has no AVX-512");
            return;
        }
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(22);
        let mut random =
            |len: usize| -> Vec<f32> { (0..len).map(|_| rng.random_range(-1.0..1.0)).collect() };
        // k over several chunks of K_CHUNK with a partial last one, two
        // pairs of panels; an odd panel after a pair (narrow tiles in the
        // wide shape); rows over several tasks with a partial tile.
        for [m, k, n] in [[20, 300, 128], [13, 37, 96], [130, 260, 64]] {
            let (x, w_t, bias) = (random(m * k), random(n * k), random(n));
            let half = n / 2;
            // Sums of the natural columns: a is 0..half, b half..n.
            let sum = |i: usize, j: usize| -> f64 {
                let row = &x[i * k..][..k];
                let column = &w_t[j * k..][..k];
                row.iter()
                    .zip(column)
                    .map(|(&x, &w)| x as f64 * w as f64)
                    .sum::<f64>()
                    + bias[j] as f64
            };
            let panels = Panels::gated_from_transposed(&w_t, k, n);
            let packed_bias: Vec<f32> = (0..n)
                .map(|j| bias[super::super::bf16::gated_column(j, n)])
                .collect();
            let addends = Addends {
                bias: Some(&packed_bias),
                residual: None,
            };
            for shape in [TileShape::Narrow, TileShape::Wide] {
                for parallel in [true, false] {
                    let mut dst = vec![f32::NAN; m * half];
                    let dst_at = (dst.as_mut_ptr(), half, 1);
                    let lhs_at = (x.as_ptr(), k, 1);
                    // SAFETY: x is [m, k] and dst [m, n / 2], row-major.
                    unsafe { run_product(parallel, shape, m, dst_at, lhs_at, &panels, addends) };
                    for i in 0..m {
                        for j in 0..half {
                            let (a, b) = (sum(i, j), sum(i, half + j));
                            let want = gated(a, b);
                            // Each sum within `close`'s bound, carried
                            // through the gate (whose slope in b is at
                            // most about 1.13 |a|).
                            let terms = (k as f64 / 64.0).sqrt().max(1.0);
                            let (ea, eb) = (
                                1e-5 * (1.0 + a.abs()) * terms,
                                1e-5 * (1.0 + b.abs()) * terms,
                            );
                            let bound = 1e-6 + ea * b.abs() + 1.2 * eb * a.abs();
                            let got = dst[i * half + j] as f64;
                            assert!(
                                (got - want).abs() < bound,
                                "[{m}, {k}, {n}] {shape:?} parallel {parallel} at ({i}, {j}): {got} vs {want}"
                            );
                        }
                    }
                }
            }
        }
    }
}
