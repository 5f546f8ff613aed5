//! The allocator dht-node runs with (and join-load, which the join benchmarks measure it by):
//! dlmalloc, behind one mutex.
//!
//! musl's allocator hands freed memory back to the kernel at once: a worker process made 64
//! `mmap` and 43 `munmap` calls over its life, about 45 of them during its join; dlmalloc keeps
//! freed memory for reuse (8 and 2). `dlmalloc::GlobalDlmalloc` guards its heap with a pthread
//! mutex, two calls into musl per allocation (3% of a join storm's CPU); std's mutex takes an
//! uncontended lock with one atomic operation, inline.

use std::alloc::{GlobalAlloc, Layout};
use std::sync::{Mutex, MutexGuard};

/// `#[global_allocator] static ALLOCATOR: NodeAllocator = NodeAllocator;` in a binary.
pub struct NodeAllocator;

struct Heap(dlmalloc::Dlmalloc);

// SAFETY: the heap's pointers are into memory it owns, and it is only reached through HEAP's
// lock, by one thread at a time.
unsafe impl Send for Heap {}

static HEAP: Mutex<Heap> = Mutex::new(Heap(dlmalloc::Dlmalloc::new()));

fn heap() -> MutexGuard<'static, Heap> {
    // Nothing panics while the lock is held, so the heap cannot be left half-changed.
    HEAP.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

// SAFETY: each method hands its arguments, under the lock, to the dlmalloc method with the same
// contract (sizes and alignments as `GlobalAlloc` passes them).
unsafe impl GlobalAlloc for NodeAllocator {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        unsafe { heap().0.malloc(layout.size(), layout.align()) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        unsafe { heap().0.calloc(layout.size(), layout.align()) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { heap().0.free(ptr, layout.size(), layout.align()) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        unsafe { heap().0.realloc(ptr, layout.size(), layout.align(), new_size) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn allocates_zeroes_grows_and_frees_from_several_threads() {
        let threads: Vec<_> = (0..4u8)
            .map(|thread| {
                std::thread::spawn(move || {
                    for size in [1usize, 24, 4096, 300_000] {
                        let layout = Layout::from_size_align(size, 64).unwrap();
                        unsafe {
                            let zeroed = NodeAllocator.alloc_zeroed(layout);
                            assert!(!zeroed.is_null() && zeroed as usize % 64 == 0);
                            assert!((0..size).all(|i| *zeroed.add(i) == 0));
                            zeroed.write_bytes(thread, size);
                            let grown = NodeAllocator.realloc(zeroed, layout, size * 2);
                            assert!((0..size).all(|i| *grown.add(i) == thread), "kept on realloc");
                            let grown_layout = Layout::from_size_align(size * 2, 64).unwrap();
                            NodeAllocator.dealloc(grown, grown_layout);
                        }
                    }
                })
            })
            .collect();
        for thread in threads {
            thread.join().unwrap();
        }
    }
}
