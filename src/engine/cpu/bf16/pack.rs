//! Packing for the bf16 products: the right operand (a weight) rounded to
//! bf16 once, in panels of [`NR`] columns of pairs; the left operand
//! (activations) rounded to pairs of 8-row blocks at each call, from a
//! strided matrix or, by a caller, a pair of columns at a time.

#[cfg(target_arch = "x86_64")]
use std::arch::x86_64::*;

use rayon::prelude::*;

use super::{to_bf16, MR, NR};

/// A `[k, n]` right operand rounded to bf16 and packed for [`product`](super::product).
/// It is made from its transpose ([`PackedRhs::from_transposed`]), the
/// layout weights are stored in, from its columns
/// ([`PackedRhs::from_columns`]), or written a panel at a time in place
/// ([`PackedRhs::zeros`], [`PackedRhs::panel_mut`]). A GEGLU projection's
/// weight is packed gated ([`PackedRhs::gated_from_transposed`]): its
/// products store `n / 2` gated values instead of `n` sums.
pub struct PackedRhs {
    pub(super) k: usize,
    pub(super) n: usize,
    /// `[panel][k/2][NR]` bf16 pairs (the even k in the lower half); zeros
    /// past `k` and `n`.
    data: Vec<u32>,
    /// Each panel's columns are 16 values `a` and their 16 gates `b`
    /// ([`gated_column`]); a product stores `a · gelu(b)`.
    pub(super) gated: bool,
}

/// The column of a GEGLU projection's `[k, n]` weight (outputs `[a | b]`,
/// `n / 2` each) that a gated [`PackedRhs`] (or gated f32 panels, whose
/// panels are as wide) holds at column `j`: each panel
/// takes 16 columns of `a`, then the same 16 of `b`, so that a value and
/// its gate meet in one tile of sums.
pub fn gated_column(j: usize, n: usize) -> usize {
    let (panel, within) = (j / NR, j % NR);
    let half = NR / 2;
    match within < half {
        true => panel * half + within,
        false => n / 2 + panel * half + within - half,
    }
}

/// The columns of a GEGLU projection's `[k, n]` weight, given its
/// transpose `w_t` (`[n, k]`, row-major), in the order gated packings hold
/// them (bf16's and f32's panels alike): column `j` is `w_t`'s row
/// [`gated_column`]`(j, n)`. `n` must be a multiple of the panel width.
pub fn gated_columns<'a>(w_t: &'a [f32], k: usize, n: usize) -> impl Fn(usize) -> &'a [f32] + Sync {
    assert!(n.is_multiple_of(NR), "a gated weight of {n} columns");
    assert_eq!(w_t.len(), k * n, "w_t of [{n}, {k}]");
    move |j| &w_t[gated_column(j, n) * k..][..k]
}

/// Below this many elements an operand is packed on the calling thread
/// (attention packs small ones inside its own parallel tasks).
const PARALLEL_PACKING: usize = 1 << 16;

impl PackedRhs {
    /// Packs the `[k, n]` operand whose transpose `rhs_t` `[n, k]` is given
    /// row-major: a checkpoint's `[out, in]` weight, a convolution's `[K,
    /// C*kh*kw]` kernel.
    pub fn from_transposed(rhs_t: &[f32], k: usize, n: usize) -> Self {
        assert_eq!(rhs_t.len(), k * n, "rhs_t of [{n}, {k}]");
        Self::from_columns(k, n, |j| &rhs_t[j * k..][..k])
    }

    /// [`from_transposed`](Self::from_transposed) for a GEGLU projection
    /// (`[a | b]`, `n / 2` columns each, `n` a multiple of [`RHS_PANEL`](super::RHS_PANEL)),
    /// gated: products with it store `a · gelu(b)`, `[m, n / 2]`, and its
    /// bias goes in [`gated_column`]'s order.
    pub fn gated_from_transposed(rhs_t: &[f32], k: usize, n: usize) -> Self {
        let mut packed = Self::from_columns(k, n, gated_columns(rhs_t, k, n));
        packed.gated = true;
        packed
    }

    /// Packs the `[k, n]` operand whose column `j` is `column(j)`, `k`
    /// floats. Each panel reads its 32 columns in order, so no transposed
    /// copy is made first.
    pub fn from_columns<'a>(
        k: usize,
        n: usize,
        column: impl Fn(usize) -> &'a [f32] + Sync,
    ) -> Self {
        let mut packed = Self::zeros(k, n);
        let pairs = packed.pairs();
        let fill = |(panel, dst): (usize, &mut [u32])| {
            for j in 0..NR.min(n - panel * NR) {
                let column = column(panel * NR + j);
                assert_eq!(column.len(), k, "column {} of [{k}, {n}]", panel * NR + j);
                pack_column(column, j, dst);
            }
        };
        let data = &mut packed.data;
        if k * n >= PARALLEL_PACKING {
            data.par_chunks_mut(pairs * NR).enumerate().for_each(fill);
        } else {
            data.chunks_mut(pairs * NR).enumerate().for_each(fill);
        }
        packed
    }

    /// A `[k, n]` operand of zeros, to be filled a panel at a time
    /// ([`PackedRhs::panel_mut`]).
    pub fn zeros(k: usize, n: usize) -> Self {
        let data = vec![0u32; n.div_ceil(NR) * k.div_ceil(2) * NR];
        Self {
            k,
            n,
            data,
            gated: false,
        }
    }

    /// Columns `panel * RHS_PANEL..` as `[k/2][RHS_PANEL]` bf16 pairs (u32
    /// each, the even row in the lower half); columns past `n` and the odd
    /// row past an odd `k` must stay zero.
    pub fn panel_mut(&mut self, panel: usize) -> &mut [u32] {
        let len = self.pairs() * NR;
        &mut self.data[panel * len..][..len]
    }

    pub fn k(&self) -> usize {
        self.k
    }

    /// Columns (of sums, before a gated weight's gate).
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

    /// Output columns each panel stores.
    pub(in crate::engine::cpu) fn panel_outputs(&self) -> usize {
        match self.gated {
            true => NR / 2,
            false => NR,
        }
    }

    pub(super) fn pairs(&self) -> usize {
        self.k.div_ceil(2)
    }

    /// Columns `panel * RHS_PANEL..` as [`panel_mut`](Self::panel_mut) lays them out.
    pub(in crate::engine::cpu) fn panel(&self, panel: usize) -> &[u32] {
        let len = self.pairs() * NR;
        &self.data[panel * len..][..len]
    }
}

/// Column `j` of a panel (`[k/2][NR]` pairs) from its `k` floats.
fn pack_column(column: &[f32], j: usize, panel: &mut [u32]) {
    let mut start = 0;
    #[cfg(target_arch = "x86_64")]
    if super::available() {
        // SAFETY: the CPU has the instructions; the writes stay inside the
        // panel, which holds k/2 rows of NR.
        start = unsafe { pack_column_x86(column, j, panel) };
    }
    let k = column.len();
    for i in (start..k).step_by(2) {
        let odd = if i + 1 < k { column[i + 1] } else { 0.0 };
        panel[(i / 2) * NR + j] = pair_bits(column[i], odd);
    }
}

/// [`pack_column`] for the whole groups of 16 floats; returns where the
/// rest starts.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bf16,avx512vl")]
unsafe fn pack_column_x86(column: &[f32], j: usize, panel: &mut [u32]) -> usize {
    let mut i = 0;
    while i + 16 <= column.len() {
        // SAFETY: floats i..i + 16 are inside the column.
        let pairs: [u32; 8] = unsafe {
            std::mem::transmute(_mm512_cvtneps_pbh(_mm512_loadu_ps(column.as_ptr().add(i))))
        };
        for (q, pair) in pairs.into_iter().enumerate() {
            panel[(i / 2 + q) * NR + j] = pair;
        }
        i += 16;
    }
    i
}

/// `dst[j] = (even[j], odd[j])` as bf16 pairs for `j < dst.len()`, as far
/// as the rows reach (the rest is zero).
fn interleave(even: &[f32], odd: &[f32], dst: &mut [u32]) {
    let len = dst.len().min(even.len()).min(odd.len());
    let mut start = 0;
    #[cfg(target_arch = "x86_64")]
    if super::available() {
        while start + 8 <= len {
            // SAFETY: 8 floats of each row from `start` and 8 pairs of dst
            // are inside them; the CPU has the instructions.
            unsafe {
                interleave8_x86(
                    (even.as_ptr().add(start), odd.as_ptr().add(start)),
                    0xff,
                    dst.as_mut_ptr().add(start),
                )
            };
            start += 8;
        }
    }
    for j in start..len {
        dst[j] = pair_bits(even[j], odd[j]);
    }
    dst[len..].fill(0);
}

/// The 8 pairs `(even[r], odd[r])` as bf16 into `dst[0..8]`; rows outside
/// `mask` are zeros, and are not read.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bf16,avx512vl")]
unsafe fn interleave8_x86((even, odd): (*const f32, *const f32), mask: u8, dst: *mut u32) {
    // SAFETY: the caller's promise: the masked rows are readable and dst
    // holds 8 pairs.
    unsafe { store_pairs8(load8(even, mask), load8(odd, mask), dst) }
}

/// 8 floats (those in `mask`, the others zero and not read) as 8 bf16.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bf16,avx512vl")]
unsafe fn load8(ptr: *const f32, mask: u8) -> __m128i {
    // SAFETY: the caller's promise: the masked floats are readable.
    round8(unsafe { _mm256_maskz_loadu_ps(mask, ptr) })
}

/// Two rows of 8 bf16 as their 8 pairs (the even row's in the lower
/// halves) into `dst[0..8]`.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bf16,avx512vl")]
unsafe fn store_pairs8(even: __m128i, odd: __m128i, dst: *mut u32) {
    // SAFETY: the caller's promise: dst holds 8 pairs.
    unsafe {
        let at = dst as *mut __m128i;
        _mm_storeu_si128(at, _mm_unpacklo_epi16(even, odd));
        _mm_storeu_si128(at.add(1), _mm_unpackhi_epi16(even, odd));
    }
}

/// A `[m, k]` left operand rounded to bf16 pairs (u32 each, the lower half
/// the even k), `[m / LHS_BLOCK blocks][k/2][LHS_BLOCK]`: the kernel's
/// broadcasts for one pair come from one 32-byte line.
pub struct PackedLhs {
    pub(super) m: usize,
    pub(super) k: usize,
    pub(super) data: Vec<u32>,
}

/// Rows per block of a [`PackedLhs`].
pub const LHS_BLOCK: usize = MR;

impl PackedLhs {
    /// Each block of [`LHS_BLOCK`] rows filled by `fill(block, pairs)`,
    /// blocks in parallel; `pairs` is `[k/2][LHS_BLOCK]`, zeroed.
    pub fn from_blocks(m: usize, k: usize, fill: impl Fn(usize, &mut [u32]) + Sync) -> Self {
        let len = block_len(k);
        // SAFETY: each block is zeroed whole before `fill` sees it.
        unsafe {
            Self::from_blocks_unzeroed(m, k, |block, dst| {
                dst.write_bytes(0, len);
                fill(block, std::slice::from_raw_parts_mut(dst, len));
            })
        }
    }

    /// [`from_blocks`](Self::from_blocks) in memory that is not zeroed
    /// first: `fill(block, dst)` gets the block's `[k/2][LHS_BLOCK]` pairs
    /// as a pointer, and no other task writes them.
    ///
    /// # Safety
    /// `fill` writes every one of the block's pairs.
    unsafe fn from_blocks_unzeroed(
        m: usize,
        k: usize,
        fill: impl Fn(usize, *mut u32) + Sync,
    ) -> Self {
        let len = data_len(m, k);
        let mut data: Vec<u32> = Vec::with_capacity(len);
        let shared = SharedPairs(data.as_mut_ptr());
        (0..m.div_ceil(MR)).into_par_iter().for_each(|block| {
            // SAFETY: block `block`'s block_len(k) values lie inside the
            // capacity.
            fill(block, unsafe { shared.at(block * block_len(k)) })
        });
        // SAFETY: every block was written (the caller's promise).
        unsafe { data.set_len(len) };
        Self { m, k, data }
    }

    /// Filled two columns at a time, in parallel: `fill(p, pair)` puts
    /// columns `2p` and `2p + 1` through [`ColumnPair::put`], 8 rows at a
    /// time (for odd `k`, pass zeros as the last odd column).
    pub fn from_column_pairs(
        m: usize,
        k: usize,
        fill: impl Fn(usize, &mut ColumnPair) + Sync,
    ) -> Self {
        let zeros = vec![0; data_len(m, k)];
        // SAFETY: every value is initialised (rows not put stay zero).
        unsafe { Self::from_column_pairs_in(zeros, m, k, fill) }
    }

    /// [`from_column_pairs`](Self::from_column_pairs) in `buffer`'s memory
    /// (from [`into_buffer`](Self::into_buffer)), which is not zeroed
    /// first (bf16 Winograd reuses one operand's memory across a map's
    /// bands; in perf, zeroing a fresh one showed as 5% of a 960-channel
    /// convolution).
    ///
    /// # Safety
    /// `fill` puts every row of its pair (all `m` rows, rounded up to whole
    /// blocks of [`LHS_BLOCK`]), or `buffer` already holds that many
    /// initialised values.
    pub unsafe fn from_column_pairs_in(
        buffer: Vec<u32>,
        m: usize,
        k: usize,
        fill: impl Fn(usize, &mut ColumnPair) + Sync,
    ) -> Self {
        let pairs = k.div_ceil(2);
        let len = data_len(m, k);
        let mut data = buffer;
        data.clear();
        data.reserve(len);
        let shared = SharedPairs(data.as_mut_ptr());
        (0..pairs).into_par_iter().for_each(|p| {
            let mut pair = ColumnPair {
                data: shared,
                len,
                pairs,
                p,
            };
            fill(p, &mut pair);
        });
        // SAFETY: the first len values are written (the caller's promise)
        // inside the capacity reserved above.
        unsafe { data.set_len(len) };
        Self { m, k, data }
    }

    pub fn m(&self) -> usize {
        self.m
    }

    pub fn k(&self) -> usize {
        self.k
    }

    /// The operand's memory, for [`from_column_pairs_in`](Self::from_column_pairs_in).
    pub fn into_buffer(self) -> Vec<u32> {
        self.data
    }

    /// Rows `block * LHS_BLOCK..` as `[k/2][LHS_BLOCK]` pairs, for
    /// [`tile_sums`]; rows past `m` are zeros.
    pub(in crate::engine::cpu) fn block(&self, block: usize) -> &[u32] {
        let len = block_len(self.k);
        &self.data[block * len..][..len]
    }

    /// `lhs` `[m, k]` at (pointer, row stride, column stride) in floats.
    ///
    /// # Safety
    /// Every element at those strides lies inside its buffer; the CPU has
    /// [`available`](super::available).
    pub unsafe fn new(m: usize, k: usize, lhs: (*const f32, usize, usize)) -> Self {
        let (ptr, rs, cs) = (lhs.0 as usize, lhs.1, lhs.2);
        let len = block_len(k);
        // Not zeroed first (in perf, zeroing showed as 0.5% of a bf16 UNet
        // step). SAFETY: each block is written whole: packed, with the rows
        // past m of the last one (and, off x86, where there is no packing
        // kernel, all of it) zeros.
        unsafe {
            Self::from_blocks_unzeroed(m, k, |block, dst| {
                let rows = MR.min(m - block * MR);
                if rows < MR || cfg!(not(target_arch = "x86_64")) {
                    dst.write_bytes(0, len);
                }
                let src = ptr as *const f32;
                // SAFETY: rows block * MR.. (up to m) of lhs, k elements
                // each, at the caller's strides, on a CPU with the
                // instructions; dst holds the block.
                #[cfg(target_arch = "x86_64")]
                pack_block(src.add(block * MR * rs), (rs, cs), rows, k, dst);
            })
        }
    }
}

/// Values in a [`PackedLhs`] of `m` rows by `k`: whole blocks.
fn data_len(m: usize, k: usize) -> usize {
    m.div_ceil(MR) * block_len(k)
}

/// Values in one block of [`LHS_BLOCK`] rows by `k`: `[k/2][LHS_BLOCK]`
/// pairs.
fn block_len(k: usize) -> usize {
    k.div_ceil(2) * MR
}

/// A [`PackedLhs`]'s data, shared by the tasks that fill disjoint pairs of
/// its columns or blocks of its rows.
#[derive(Clone, Copy)]
struct SharedPairs(*mut u32);
// SAFETY: each task writes only its own pair of columns or block of rows.
unsafe impl Send for SharedPairs {}
unsafe impl Sync for SharedPairs {}

impl SharedPairs {
    /// The value `offset` values in.
    ///
    /// # Safety
    /// It lies inside the allocation.
    unsafe fn at(self, offset: usize) -> *mut u32 {
        // SAFETY: the caller's promise.
        unsafe { self.0.add(offset) }
    }
}

/// Columns `2p` and `2p + 1` of a [`PackedLhs`] being made
/// ([`PackedLhs::from_column_pairs`]).
pub struct ColumnPair {
    data: SharedPairs,
    len: usize,
    pairs: usize,
    p: usize,
}

impl ColumnPair {
    /// Rows `row..row + 8` (`row` a multiple of 8, inside the operand):
    /// `even` of column 2p, `odd` of column 2p + 1.
    #[inline(always)]
    pub fn put(&mut self, row: usize, even: &[f32; MR], odd: &[f32; MR]) {
        let mut pairs = [0; MR];
        interleave(even, odd, &mut pairs);
        // SAFETY: the slot holds 8 pairs.
        unsafe { self.slot(row).copy_from_nonoverlapping(pairs.as_ptr(), MR) };
    }

    /// [`put`](Self::put) of rows already rounded to bf16 ([`round8`]).
    ///
    /// # Safety
    /// The CPU has [`available`](super::available).
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx512f,avx512bf16,avx512vl")]
    pub unsafe fn put_bf16(&mut self, row: usize, even: __m128i, odd: __m128i) {
        // SAFETY: the slot holds 8 pairs; the CPU has the instructions.
        unsafe { store_pairs8(even, odd, self.slot(row)) }
    }

    /// [`put_bf16`](Self::put_bf16) of rows `row..row + 16`, 16 bf16 of
    /// each column.
    ///
    /// # Safety
    /// The CPU has [`available`](super::available).
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx512f,avx512bf16,avx512vl")]
    pub unsafe fn put16_bf16(&mut self, row: usize, even: __m256i, odd: __m256i) {
        // Unpacking stays within 128-bit halves: `low` holds rows 0-3 and
        // 8-11's pairs, `high` 4-7 and 12-15.
        let low = _mm256_unpacklo_epi16(even, odd);
        let high = _mm256_unpackhi_epi16(even, odd);
        // SAFETY: each slot holds 8 pairs.
        unsafe {
            _mm256_storeu_si256(
                self.slot(row) as *mut __m256i,
                _mm256_permute2x128_si256::<0x20>(low, high),
            );
            _mm256_storeu_si256(
                self.slot(row + MR) as *mut __m256i,
                _mm256_permute2x128_si256::<0x31>(low, high),
            );
        }
    }

    /// Where the 8 pairs of rows `row..row + 8` in this pair of columns go:
    /// a pointer, not a slice, as the memory may not be initialised yet.
    #[inline(always)]
    fn slot(&mut self, row: usize) -> *mut u32 {
        assert!(row.is_multiple_of(MR), "row {row}");
        let at = ((row / MR) * self.pairs + self.p) * MR;
        assert!(at + MR <= self.len, "row {row} past the operand");
        // SAFETY: pair p of block row / MR is inside the data (checked),
        // and only this task writes it.
        unsafe { self.data.0.add(at) }
    }
}

/// 8 floats rounded to bf16 (nearest even).
///
/// # Safety
/// The CPU has [`available`](super::available) (this is safe to call from functions that
/// enable the same instructions).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bf16,avx512vl")]
#[inline]
pub fn round8(x: __m256) -> __m128i {
    // SAFETY: both are 16 bytes of plain data.
    unsafe { std::mem::transmute::<__m128bh, __m128i>(_mm256_cvtneps_pbh(x)) }
}

/// Fills one block of a [`PackedLhs`] from its columns: `column(d)` is
/// [`LHS_BLOCK`] floats of column d, one per row (row r at `ptr + r`),
/// with a mask of the rows to read (the others are zero, and are not
/// touched: the pointer may run off its buffer there), or None for a
/// column of zeros.
///
/// # Safety
/// Each row the masks select lies inside its buffer; the CPU has
/// [`available`](super::available).
pub unsafe fn pack_block_from_columns(
    k: usize,
    dst: &mut [u32],
    column: impl Fn(usize) -> Option<(*const f32, u8)>,
) {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: as the caller promises.
    unsafe {
        pack_columns_x86(k, dst, column)
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bf16,avx512vl")]
unsafe fn pack_columns_x86(
    k: usize,
    dst: &mut [u32],
    column: impl Fn(usize) -> Option<(*const f32, u8)>,
) {
    let load = |d: usize| -> __m128i {
        match (d < k).then(|| column(d)).flatten() {
            // SAFETY: the masked rows are inside their buffer (the
            // caller's promise); masked-off lanes are not read.
            Some((ptr, mask)) => unsafe { load8(ptr, mask) },
            None => _mm_setzero_si128(),
        }
    };
    for p in 0..k.div_ceil(2) {
        // SAFETY: dst holds [k/2][MR] u32.
        unsafe { store_pairs8(load(2 * p), load(2 * p + 1), dst.as_mut_ptr().add(p * MR)) };
    }
}

/// `rows` rows of `src` (k floats each, at `(row stride, column stride)`)
/// as bf16 pairs into `dst` `[k/2][MR]` (the last pair of an odd `k`
/// with a zero); rows past `rows` are not written.
///
/// # Safety
/// Those rows of `src` are readable, `dst` holds `k.div_ceil(2) * MR`
/// writable pairs; the CPU has [`available`](super::available).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bf16,avx512vl")]
unsafe fn pack_block(
    src: *const f32,
    (rs, cs): (usize, usize),
    rows: usize,
    k: usize,
    dst: *mut u32,
) {
    let full_pairs = k / 2;
    if rs == 1 && rows == MR {
        // Column-major (im2col's columns): each k is MR consecutive
        // floats; two of them make the block's MR pairs.
        for p in 0..full_pairs {
            // SAFETY: columns 2p and 2p + 1, rows 0..MR, are inside lhs.
            unsafe {
                let (even, odd) = (src.add(2 * p * cs), src.add((2 * p + 1) * cs));
                interleave8_x86((even, odd), 0xff, dst.add(p * MR));
            }
        }
    } else if cs == 1 {
        // Row-major (tokens): 16 floats of a row are 8 pairs in order.
        // A whole block's rows take 32 pairs at a time, transposed in
        // registers; a row at a time, each pair was a store of its own.
        let mut done = 0;
        if rows == MR {
            while done + 32 <= full_pairs {
                // SAFETY: 64 floats from 2 * done of each of the MR rows
                // are inside lhs; dst holds [k/2][MR].
                unsafe { pairs32_x86(src.add(2 * done), rs, dst.add(done * MR)) };
                done += 32;
            }
        }
        for r in 0..rows {
            let row = src.wrapping_add(r * rs);
            let mut p = done;
            while p + 8 <= full_pairs {
                // SAFETY: 16 floats from 2p are inside the row.
                let pairs: [u32; 8] = unsafe {
                    std::mem::transmute(_mm512_cvtneps_pbh(_mm512_loadu_ps(row.add(2 * p))))
                };
                for (q, pair) in pairs.into_iter().enumerate() {
                    // SAFETY: pair p + q < k/2 of row r < MR.
                    unsafe { dst.add((p + q) * MR + r).write(pair) };
                }
                p += 8;
            }
            for p in p..full_pairs {
                // SAFETY: elements 2p and 2p + 1 are inside the row; pair p
                // of row r is inside dst.
                unsafe {
                    let (even, odd) = (*row.add(2 * p), *row.add(2 * p + 1));
                    dst.add(p * MR + r).write(pair_bits(even, odd));
                }
            }
        }
    } else {
        for r in 0..rows {
            for p in 0..full_pairs {
                // SAFETY: elements 2p and 2p + 1 of row r are inside lhs;
                // pair p of row r is inside dst.
                unsafe {
                    let (even, odd) = (
                        *src.add(r * rs + 2 * p * cs),
                        *src.add(r * rs + (2 * p + 1) * cs),
                    );
                    dst.add(p * MR + r).write(pair_bits(even, odd));
                }
            }
        }
    }
    if k % 2 == 1 {
        for r in 0..rows {
            // SAFETY: the last element of row r is inside lhs, its last
            // pair inside dst.
            unsafe {
                let last = *src.add(r * rs + (k - 1) * cs);
                dst.add(full_pairs * MR + r).write(pair_bits(last, 0.0));
            }
        }
    }
}

/// Pairs `0..32` of the [`MR`] rows at `src` (row stride `rs` floats) into
/// `dst` `[32][MR]`: each row's 64 floats rounded to 32 pairs in two
/// vectors, the block's 16 vectors transposed, so that one pair's rows lie
/// together (pairs `q` and `16 + q` in the two halves of column `q`).
///
/// # Safety
/// 64 floats of each row are readable, `dst` holds `32 * MR` pairs; the
/// CPU has AVX512-BF16.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bf16,avx512vl")]
unsafe fn pairs32_x86(src: *const f32, rs: usize, dst: *mut u32) {
    let rows: [__m512; 16] = std::array::from_fn(|i| {
        let (r, half) = (i % MR, i / MR);
        // SAFETY: floats 32 * half.. + 32 of row r (the caller's promise).
        let (low, high) = unsafe {
            let at = src.add(r * rs + 32 * half);
            (_mm512_loadu_ps(at), _mm512_loadu_ps(at.add(16)))
        };
        // The first 16 bf16 are `low`'s: its 8 pairs in order.
        // SAFETY: both are 64 bytes of plain data.
        unsafe { std::mem::transmute::<__m512bh, __m512>(_mm512_cvtne2ps_pbh(high, low)) }
    });
    for (q, column) in super::super::pairs::transpose16(rows)
        .into_iter()
        .enumerate()
    {
        let column = _mm512_castps_si512(column);
        // SAFETY: pairs q and 16 + q of dst (the caller's promise).
        unsafe {
            _mm256_storeu_si256(
                dst.add(q * MR) as *mut __m256i,
                _mm512_castsi512_si256(column),
            );
            _mm256_storeu_si256(
                dst.add((16 + q) * MR) as *mut __m256i,
                _mm512_extracti64x4_epi64::<1>(column),
            );
        }
    }
}

/// Two floats as one u32 of bf16 bits, the first in the lower half.
fn pair_bits(even: f32, odd: f32) -> u32 {
    to_bf16(even) as u32 | (to_bf16(odd) as u32) << 16
}

#[cfg(test)]
mod tests {
    use super::super::available;
    use super::*;
    use rand::{Rng, SeedableRng};

    #[test]
    fn the_right_operand_packs_the_same_from_columns_or_panels() {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(12);
        // Odd k (the last odd row must be ignored), n past a panel, and
        // lengths that leave tails after the 16- and 8-wide conversions.
        for (k, n) in [(37, 70), (1, 1), (64, 160), (40, 33), (2, 7)] {
            let b: Vec<f32> = (0..k * n).map(|_| rng.random_range(-2.0..2.0)).collect();
            let b_t: Vec<f32> = (0..k * n).map(|x| b[(x % k) * n + x / k]).collect();
            let columns = PackedRhs::from_transposed(&b_t, k, n);
            // As the bf16 attention fills its probabilities: pair rows of
            // panels, written in place.
            let pairs = k.div_ceil(2);
            let mut panels = PackedRhs::zeros(k, n);
            for panel in 0..n.div_ceil(NR) {
                let dst = panels.panel_mut(panel);
                for p in 0..pairs {
                    for j in (panel * NR..n).take(NR) {
                        let odd = b.get((2 * p + 1) * n + j).copied().unwrap_or(0.0);
                        dst[p * NR + j % NR] = pair_bits(b[2 * p * n + j], odd);
                    }
                }
            }
            for i in 0..k {
                for j in 0..n {
                    let at = ((j / NR) * pairs + i / 2) * NR + j % NR;
                    let bits = (columns.data[at] >> (16 * (i % 2))) as u16;
                    assert_eq!(bits, to_bf16(b[i * n + j]), "[{k}, {n}] at ({i}, {j})");
                }
            }
            assert!(
                columns.data == panels.data,
                "[{k}, {n}]: the two packings differ"
            );
        }
    }

    #[test]
    fn the_left_operand_packs_the_same_from_rows_or_column_pairs() {
        if !available() {
            eprintln!("skipped: this CPU has no AVX512-BF16");
            return;
        }
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(13);
        // Odd k (the last odd column comes as zeros), one block or several;
        // rows of 32 pairs and more (transposed in registers, where the
        // block is whole) and their tails of 8 pairs and fewer.
        for (m, k) in [(8, 1), (24, 7), (16, 40), (16, 83), (13, 147)] {
            let a: Vec<f32> = (0..m * k).map(|_| rng.random_range(-2.0..2.0)).collect();
            // SAFETY: a is [m, k] row-major.
            let rows = unsafe { PackedLhs::new(m, k, (a.as_ptr(), k, 1)) };
            let pairs = PackedLhs::from_column_pairs(m, k, |p, pair| {
                for row in (0..m).step_by(MR) {
                    let column = |c: usize| -> [f32; MR] {
                        std::array::from_fn(|r| match c < k && row + r < m {
                            true => a[(row + r) * k + c],
                            false => 0.0,
                        })
                    };
                    pair.put(row, &column(2 * p), &column(2 * p + 1));
                }
            });
            assert!(
                rows.data == pairs.data,
                "[{m}, {k}]: the two packings differ"
            );
        }
    }
}
