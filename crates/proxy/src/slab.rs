//! Read buffers for a bulk splice direction, mapped from the kernel directly rather than taken
//! from the allocator (docs/performance.md, "Page faults").
//!
//! A bulk direction reads 256 KiB at a time, and each chunk stays alive until h2 has sent it:
//! up to a stream window's worth (1 MiB) is in flight. From the allocator, every read took a
//! fresh 256 KiB buffer, and glibc gave each one back to the kernel as soon as it was freed, so
//! each page was faulted in (and zeroed) again for every 4 KiB moved. A direction here keeps
//! up to [`MAX_SLABS`] anonymous mappings of its own: a chunk read into one hands the slab back
//! when the last reference to it is dropped, and the next read reuses it, already faulted in.
//! When the direction ends, its slabs are unmapped, so nothing stays resident after the
//! transfer, whatever the allocator would have kept.

use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex, Weak};
use std::task::{Context, Poll};

use bytes::Bytes;
use memmap2::MmapMut;
use tokio::io::{AsyncRead, ReadBuf};

/// One slab's size: a bulk read's size (`splice::MAX_READ_CHUNK`).
pub(crate) const SLAB: usize = 256 * 1024;
/// Slabs one direction maps at most: enough for the 1 MiB stream window in flight and the
/// read being made. Past this, reads use the allocator.
pub(crate) const MAX_SLABS: usize = 8;

/// The free slabs of one direction; chunks hold a weak reference, so a chunk outliving its
/// direction unmaps its slab instead.
type FreeList = Arc<Mutex<Vec<MmapMut>>>;

/// One direction's slabs.
pub(crate) struct Slabs {
    free: FreeList,
    /// How many this direction has mapped (free or held by chunks).
    mapped: usize,
}

impl Slabs {
    pub(crate) fn new() -> Self {
        Slabs {
            free: Arc::new(Mutex::new(Vec::new())),
            mapped: 0,
        }
    }

    /// A slab no chunk holds any more, or a new one while fewer than [`MAX_SLABS`] are mapped;
    /// `None` when all are in flight or the kernel refuses a mapping.
    fn take(&mut self) -> Option<MmapMut> {
        if let Some(slab) = self.free.lock().ok().and_then(|mut free| free.pop()) {
            return Some(slab);
        }
        if self.mapped >= MAX_SLABS {
            return None;
        }
        let slab = MmapMut::map_anon(SLAB).ok()?;
        self.mapped += 1;
        Some(slab)
    }

    fn put_back(&self, slab: MmapMut) {
        if let Ok(mut free) = self.free.lock() {
            free.push(slab);
        }
    }

    /// Reads at most `want` bytes (capped at [`SLAB`]) from `reader` into a slab; the chunk
    /// gives the slab back when it is dropped. `None` when no slab is free: the caller reads
    /// into the heap instead.
    pub(crate) fn poll_read<R: AsyncRead + ?Sized>(
        &mut self,
        reader: Pin<&mut R>,
        cx: &mut Context<'_>,
        want: usize,
    ) -> Option<Poll<io::Result<Option<Bytes>>>> {
        let mut slab = self.take()?;
        let mut buf = ReadBuf::new(&mut slab[..want.min(SLAB)]);
        let result = match reader.poll_read(cx, &mut buf) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Ready(Ok(())) => Poll::Ready(Ok(buf.filled().len())),
        };
        Some(match result {
            Poll::Ready(Ok(len)) if len > 0 => Poll::Ready(Ok(Some(Bytes::from_owner(Chunk {
                slab: Some(slab),
                len,
                home: Arc::downgrade(&self.free),
            })))),
            other => {
                self.put_back(slab);
                other.map_ok(|_| None)
            }
        })
    }
}

/// The bytes of one read, in the slab they were read into.
struct Chunk {
    /// `None` only while being dropped.
    slab: Option<MmapMut>,
    len: usize,
    home: Weak<Mutex<Vec<MmapMut>>>,
}

impl AsRef<[u8]> for Chunk {
    fn as_ref(&self) -> &[u8] {
        self.slab.as_deref().map_or(&[], |s| &s[..self.len])
    }
}

impl Drop for Chunk {
    fn drop(&mut self) {
        if let (Some(slab), Some(home)) = (self.slab.take(), self.home.upgrade()) {
            if let Ok(mut free) = home.lock() {
                free.push(slab);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::future::poll_fn;

    /// Reads one chunk from `data` through `slabs`.
    async fn read(slabs: &mut Slabs, data: &mut &[u8], want: usize) -> Option<Option<Bytes>> {
        poll_fn(|cx| match slabs.poll_read(Pin::new(&mut *data), cx, want) {
            None => Poll::Ready(None),
            Some(p) => p.map(|r| Some(r.unwrap())),
        })
        .await
    }

    #[tokio::test]
    async fn a_dropped_chunk_gives_its_slab_back_for_the_next_read() {
        let bytes: Vec<u8> = (0..3 * SLAB).map(|i| (i % 251) as u8).collect();
        let mut data = &bytes[..];
        let mut slabs = Slabs::new();
        let first = read(&mut slabs, &mut data, SLAB).await.unwrap().unwrap();
        assert_eq!(&first[..], &bytes[..SLAB]);
        let first_ptr = first.as_ptr();
        drop(first);
        let second = read(&mut slabs, &mut data, SLAB).await.unwrap().unwrap();
        assert_eq!(&second[..], &bytes[SLAB..2 * SLAB]);
        assert_eq!(second.as_ptr(), first_ptr, "the same slab, reused");
        assert_eq!(slabs.mapped, 1);
    }

    #[tokio::test]
    async fn held_chunks_keep_their_slabs_up_to_the_bound_then_the_heap_takes_over() {
        let bytes = vec![7u8; (MAX_SLABS + 1) * 1024];
        let mut data = &bytes[..];
        let mut slabs = Slabs::new();
        let mut held = Vec::new();
        for _ in 0..MAX_SLABS {
            held.push(read(&mut slabs, &mut data, 1024).await.unwrap().unwrap());
        }
        assert_eq!(slabs.mapped, MAX_SLABS);
        assert!(
            read(&mut slabs, &mut data, 1024).await.is_none(),
            "all in flight"
        );
        // A chunk kept past its direction's end unmaps its slab instead of returning it.
        let survivor = held.pop().unwrap();
        drop(held);
        drop(slabs);
        assert_eq!(&survivor[..], &[7u8; 1024][..]);
        drop(survivor);
    }

    #[tokio::test]
    async fn the_end_of_the_reader_is_none_and_keeps_the_slab() {
        let mut data: &[u8] = &[];
        let mut slabs = Slabs::new();
        assert!(read(&mut slabs, &mut data, SLAB).await.unwrap().is_none());
        assert_eq!(slabs.free.lock().unwrap().len(), 1);
    }
}
