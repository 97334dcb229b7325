//! The process's allocator: the system's, with every allocation of
//! [`ALIGNED_FROM`] bytes or more starting on a 64-byte cache line.
//!
//! glibc's malloc aligns to 16 bytes, so three buffers in four began
//! inside a cache line, and every 64-byte load and store of the AVX-512
//! kernels (a weight panel's rows, a tile of the output) then touched two
//! lines. Placed on a line (a probe that put the weight, the input and
//! the output at chosen offsets, one thread, an Ice Lake Xeon): 512 x 640
//! -> 5120 ran at 134-138 GFLOP/s against 116-117 with all three 16 bytes
//! past one, 2048 x 1280 -> 320 at 132 against 109-113; the weight's
//! offset alone cost 5-12%, the output's 5-8%.
//!
//! A placed block is the system's (malloc, calloc, realloc) one line
//! longer, the caller's bytes from its first line boundary, the system's
//! pointer kept just before them. So calloc's fresh pages stay untouched
//! until written, and realloc can still grow a block in place: asked of
//! the system at 64-byte alignment instead (posix_memalign, then a
//! memset for zeroed blocks), `atelier bench`'s peak for SD 1.5 at 256 px
//! rose from 4490 to 4875 MiB; this way it reads 4481-4513. Types that ask
//! for more than a line, and blocks under [`ALIGNED_FROM`], take the
//! system's own path.

use std::alloc::{GlobalAlloc, Layout, System};

/// Allocations of this many bytes or more start on a cache line.
const ALIGNED_FROM: usize = 4096;
/// Bytes in a cache line, as x86-64 CPUs have them.
pub(crate) const CACHE_LINE: usize = 64;
/// Where the system's pointer is kept, just before the caller's.
const HEADER: usize = size_of::<usize>();

struct CacheLineAligned;

#[global_allocator]
static ALLOCATOR: CacheLineAligned = CacheLineAligned;

/// Whether a block of `layout` is placed on a cache line here (a function
/// of the layout alone, so the same at each call for one block).
fn placed(layout: Layout) -> bool {
    (ALIGNED_FROM..=isize::MAX as usize - CACHE_LINE).contains(&layout.size())
        && layout.align() <= CACHE_LINE
}

/// The system's block for a placed block of `size` bytes: a line more.
fn system_layout(size: usize) -> Layout {
    // SAFETY: a placed size is at most isize::MAX less a line, and 8 is a
    // power of two.
    unsafe { Layout::from_size_align_unchecked(size + CACHE_LINE, HEADER) }
}

/// How far into a system block at `raw` the caller's bytes start: the
/// first line boundary with room for the [`HEADER`] before it, at most 64
/// bytes in (the system's blocks are aligned to at least 8).
fn start_in(raw: *mut u8) -> usize {
    (raw as usize + HEADER).next_multiple_of(CACHE_LINE) - raw as usize
}

/// The caller's pointer into the system's block `raw` (null stays null),
/// `raw` kept in its header.
///
/// # Safety
/// `raw` is null or a block of [`system_layout`].
unsafe fn on_a_line(raw: *mut u8) -> *mut u8 {
    if raw.is_null() {
        return raw;
    }
    // SAFETY: the start is inside the block's extra line, the header's 8
    // bytes between raw and it.
    unsafe {
        let ptr = raw.add(start_in(raw));
        ptr.cast::<*mut u8>().sub(1).write(raw);
        ptr
    }
}

/// The system's block behind a placed pointer.
///
/// # Safety
/// `ptr` came from [`on_a_line`].
unsafe fn system_block(ptr: *mut u8) -> *mut u8 {
    // SAFETY: on_a_line wrote it there.
    unsafe { ptr.cast::<*mut u8>().sub(1).read() }
}

// SAFETY: a placed block (decided by its layout alone) is a system block
// a line longer, freed through its header; every other block is the
// system's own.
unsafe impl GlobalAlloc for CacheLineAligned {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: as the caller promises (a non-zero size).
        unsafe {
            match placed(layout) {
                true => on_a_line(System.alloc(system_layout(layout.size()))),
                false => System.alloc(layout),
            }
        }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        // SAFETY: as the caller promises.
        unsafe {
            match placed(layout) {
                true => on_a_line(System.alloc_zeroed(system_layout(layout.size()))),
                false => System.alloc_zeroed(layout),
            }
        }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: ptr was allocated here with this layout.
        unsafe {
            match placed(layout) {
                true => System.dealloc(system_block(ptr), system_layout(layout.size())),
                false => System.dealloc(ptr, layout),
            }
        }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: new_size is non-zero and fits at layout's alignment (the
        // caller's promise).
        let new_layout = unsafe { Layout::from_size_align_unchecked(new_size, layout.align()) };
        // SAFETY (all below): ptr was allocated here with `layout`.
        match (placed(layout), placed(new_layout)) {
            (false, false) => unsafe { System.realloc(ptr, layout, new_size) },
            (true, true) => unsafe {
                // The system's realloc, which may grow the block in place;
                // the bytes move within it when its start's offset from a
                // line changes.
                let raw = system_block(ptr);
                let offset = ptr as usize - raw as usize;
                let grown =
                    System.realloc(raw, system_layout(layout.size()), new_size + CACHE_LINE);
                if grown.is_null() {
                    return grown;
                }
                // Moved before the header is written, which may lie
                // inside the bytes' old place.
                let start = start_in(grown);
                if start != offset {
                    let kept = layout.size().min(new_size);
                    std::ptr::copy(grown.add(offset), grown.add(start), kept);
                }
                on_a_line(grown)
            },
            // Across ALIGNED_FROM: a fresh block of the other kind.
            _ => unsafe {
                let moved = self.alloc(new_layout);
                if !moved.is_null() {
                    std::ptr::copy_nonoverlapping(ptr, moved, layout.size().min(new_size));
                    self.dealloc(ptr, layout);
                }
                moved
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn offset<T>(v: &[T]) -> usize {
        v.as_ptr() as usize % CACHE_LINE
    }

    #[test]
    fn large_buffers_start_on_a_cache_line() {
        // Several at once, so that malloc's 16-byte placement would have
        // put most of them off a line.
        let buffers: Vec<Vec<f32>> = (0..16).map(|i| vec![1.0; 1024 + 7 * i]).collect();
        for b in &buffers {
            assert_eq!(offset(b), 0, "a buffer of {} floats", b.len());
        }
        let zeros: Vec<Vec<u8>> = (0..16).map(|i| vec![0; ALIGNED_FROM + i]).collect();
        assert!(zeros
            .iter()
            .all(|z| offset(z) == 0 && z.iter().all(|&b| b == 0)));
        // A type that asks for more than a line gets what it asks for.
        #[repr(align(256))]
        struct Wide([u8; 256]);
        let wide: Vec<Vec<Wide>> = (0..8)
            .map(|_| (0..20).map(|_| Wide([3; 256])).collect())
            .collect();
        assert!(wide
            .iter()
            .all(|w| (w.as_ptr() as usize).is_multiple_of(256) && w[19].0[255] == 3));
    }

    #[test]
    fn a_buffer_keeps_its_contents_as_it_grows_and_shrinks() {
        let mut v: Vec<u32> = (0..100).collect();
        let mut others = Vec::new();
        // Across ALIGNED_FROM (a fresh block), then grown step by step
        // (the system's realloc, the start's offset in its block changing
        // as blocks move), shrunk within the placed sizes, then below.
        for end in (2000..60_000).step_by(3001).chain([20_000, 1500, 50]) {
            match end > v.len() {
                true => v.extend(v.len() as u32..end as u32),
                false => v.truncate(end),
            }
            v.shrink_to_fit();
            // Allocations between the steps, so blocks cannot always grow
            // where they are.
            others.push(vec![0u8; 5000]);
            assert!(
                v.len() * 4 < ALIGNED_FROM || offset(&v) == 0,
                "{} values",
                v.len()
            );
            assert!(
                v.iter().enumerate().all(|(i, &x)| x == i as u32),
                "{} values",
                v.len()
            );
        }
    }
}
