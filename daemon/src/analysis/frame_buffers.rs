//! Recycled byte buffers for decoded frames.
//!
//! Owns: keeping the RGB buffers of an analysis's sampled frames once it is done, and handing them to
//! the next decode. A fresh buffer is mapped in page by page as the decoder's pipe is copied into it
//! (80 frames of 512×512 are ~15,000 page faults, each zeroing a page and charging the cgroup, under
//! the pipe's lock, so ffmpeg's next write spins meanwhile); a recycled one is already resident.
//!
//! Bounded by bytes: beyond [`FrameBuffers::DEFAULT_MAX_BYTES`] (or the bound given) a returned buffer
//! is freed. A buffer's old contents never reach a new frame: the decoder hands a frame over only once
//! its whole buffer was written (see `decode::FrameSink`).

use std::sync::Mutex;

/// A bounded store of frame buffers, shared by the analyses of one analyser.
#[derive(Debug)]
pub struct FrameBuffers {
    free: Mutex<Vec<Vec<u8>>>,
    max_bytes: usize,
}

impl Default for FrameBuffers {
    fn default() -> Self {
        Self::new(Self::DEFAULT_MAX_BYTES)
    }
}

impl FrameBuffers {
    /// What the daemon keeps: two analyses' worth of 80 frames of 512×512.
    pub const DEFAULT_MAX_BYTES: usize = 128 << 20;

    /// A store keeping at most `max_bytes` of buffers (0: recycling off).
    pub fn new(max_bytes: usize) -> Self {
        FrameBuffers {
            free: Mutex::new(Vec::new()),
            max_bytes,
        }
    }

    /// A buffer of exactly `len` bytes, recycled when one fits, else freshly zeroed. Its contents are
    /// unspecified: the caller overwrites all of it.
    pub fn take(&self, len: usize) -> Vec<u8> {
        let recycled = {
            let mut free = self.lock();
            // Buffers of another frame size (a previous video's) are freed rather than kept around
            // or used at several times the size needed.
            loop {
                match free.pop() {
                    Some(buf) if buf.capacity() >= len && buf.capacity() <= len.saturating_mul(2) => {
                        break Some(buf);
                    }
                    Some(_) => continue,
                    None => break None,
                }
            }
        };
        match recycled {
            Some(mut buf) => {
                buf.resize(len, 0);
                buf
            }
            None => vec![0; len],
        }
    }

    /// Keeps `buffers` for later decodes, as far as the bound allows; the rest is freed.
    pub fn recycle(&self, buffers: impl IntoIterator<Item = Vec<u8>>) {
        let mut free = self.lock();
        let mut held: usize = free.iter().map(Vec::capacity).sum();
        for buf in buffers {
            let size = buf.capacity();
            if size == 0 || held.saturating_add(size) > self.max_bytes {
                continue;
            }
            held += size;
            free.push(buf);
        }
    }

    /// Bytes held for reuse.
    pub fn held_bytes(&self) -> usize {
        self.lock().iter().map(Vec::capacity).sum()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<Vec<u8>>> {
        // A panic while holding the lock leaves a plain list of buffers: still usable.
        self.free
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;

    #[test]
    fn a_returned_buffer_is_reused_without_a_new_allocation() {
        let buffers = FrameBuffers::new(1 << 20);
        let first = buffers.take(1000);
        let address = first.as_ptr();
        buffers.recycle([first]);
        assert_eq!(buffers.held_bytes(), 1000);
        let again = buffers.take(1000);
        assert_eq!(again.as_ptr(), address, "the same allocation comes back");
        assert_eq!(again.len(), 1000);
        assert_eq!(buffers.held_bytes(), 0);
    }

    #[test]
    fn the_bound_frees_what_does_not_fit() {
        let buffers = FrameBuffers::new(2500);
        buffers.recycle((0..4).map(|_| vec![0u8; 1000]));
        assert_eq!(buffers.held_bytes(), 2000, "two of four fit in 2500 bytes");
        let off = FrameBuffers::new(0);
        off.recycle([vec![1u8; 10]]);
        assert_eq!(off.held_bytes(), 0);
    }

    #[test]
    fn buffers_of_another_size_are_freed_not_used() {
        let buffers = FrameBuffers::new(1 << 20);
        buffers.recycle([vec![7u8; 100], vec![7u8; 10_000]]);
        // Too big (over twice the length) and too small are both dropped; a fresh zeroed one is made.
        let fresh = buffers.take(1000);
        assert_eq!(fresh, vec![0u8; 1000]);
        assert_eq!(buffers.held_bytes(), 0);
        // A slightly larger one is resized to the length asked for.
        buffers.recycle([vec![7u8; 1500]]);
        assert_eq!(buffers.take(1200).len(), 1200);
    }
}
