//! The heap behind h2's received DATA frames, kept between frames (docs/performance.md,
//! "Frames the heap gave back").
//!
//! h2 reads every received DATA frame into a new buffer of about 64 KiB: the previous frames
//! are still held by the splice until they are written to the app, so its read buffer cannot be
//! reused. The splice then frees up to 256 KiB of frames at once, and a connection may hold its
//! whole 4 MiB receive window of them. glibc gives the top of a heap back to the kernel
//! (`madvise(MADV_DONTNEED)`) as soon as more than its trim threshold sits free there, which is
//! 128 KiB in a new process. So each freed run of frames went back to the kernel, the next
//! frames faulted every page in again, and a sidecar took one page fault per 4 KiB received.
//!
//! glibc raises that threshold by itself: when it frees a block it had mapped on its own (one
//! above its mmap threshold, 128 KiB at first), the mmap threshold becomes that block's size
//! and the trim threshold twice that (mallopt(3), "M_MMAP_THRESHOLD"). A process that has once
//! freed a large buffer therefore stops faulting, and one that has not yet keeps faulting: the
//! same sidecar took 17 or 220,000 faults per GB, depending on what it had freed before.
//! [`settle`] frees one block of [`SETTLE_BLOCK`] at start-up, so every process starts in the
//! state glibc reaches by itself once it has freed a buffer that size: without unsafe code, and
//! without overriding a threshold the operator set (`GLIBC_TUNABLES` or `MALLOC_*_` variables
//! turn the dynamic adjustment off, and the block is then simply freed). Under another
//! allocator (musl's, in the image) it is one allocation and one free, nothing more.

/// The block freed at start-up. glibc then serves blocks up to this size from its heaps, and
/// gives the top of a heap back only past twice this, 4 MiB. Measured (docs/performance.md,
/// "Frames the heap gave back"): a 1 MiB trim threshold still faulted on every frame in one
/// stream; 2 MiB did not in a new process, but a sidecar that had served request load first
/// gave back 2.5 MB runs of frames in four and sixteen streams (130,000–170,000 faults per
/// GB behind the gateway). 4 MiB ends both.
pub const SETTLE_BLOCK: usize = 2 * 1024 * 1024;

/// Allocates and frees one [`SETTLE_BLOCK`]. Call once, first thing in `main`.
pub fn settle() {
    // black_box: the allocation must really happen, not be optimised away with its free.
    drop(std::hint::black_box(Vec::<u8>::with_capacity(SETTLE_BLOCK)));
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Minor page faults taken by the calling thread (`/proc/thread-self/stat`, field 10).
    fn thread_minor_faults() -> u64 {
        let stat = std::fs::read_to_string("/proc/thread-self/stat").expect("read stat");
        // The command name (field 2) is in parentheses and may hold spaces; count after it.
        let after = &stat[stat.rfind(')').expect("comm") + 2..];
        after
            .split(' ')
            .nth(7)
            .expect("minflt")
            .parse()
            .expect("number")
    }

    /// What the proxy does with received frames: 40 buffers of a DATA frame's size (2.6 MB, the
    /// size of the runs a loaded sidecar gave back) are filled, then all freed together, over
    /// and over. After `settle`, the heap keeps the freed pages, so only the first round faults
    /// them in.
    #[test]
    fn frames_freed_together_are_not_faulted_in_again() {
        // In a process of its own: other tests' threads share glibc's arenas, and their frees
        // could trim the top of the heap this test measures.
        const CHILD: &str = "WARD_HEAP_TEST_CHILD";
        if std::env::var_os(CHILD).is_none() {
            let name = "heap::tests::frames_freed_together_are_not_faulted_in_again";
            let out = std::process::Command::new(std::env::current_exe().unwrap())
                .args(["--exact", name, "--test-threads=1", "--nocapture"])
                .env(CHILD, "1")
                .output()
                .unwrap();
            let stdout = String::from_utf8_lossy(&out.stdout);
            let stderr = String::from_utf8_lossy(&out.stderr);
            assert!(
                out.status.success() && stdout.contains("1 passed"),
                "{stdout}{stderr}"
            );
            return;
        }
        const FRAMES: usize = 40;
        settle();
        // A new thread: its own arena, untouched by other tests.
        let faults = std::thread::spawn(|| {
            let round = || {
                let frames: Vec<Vec<u8>> = (0..FRAMES)
                    .map(|i| {
                        let mut v = Vec::with_capacity(64 * 1024 + 9);
                        v.resize(64 * 1024 + 9, i as u8);
                        v
                    })
                    .collect();
                drop(std::hint::black_box(frames));
            };
            round();
            let before = thread_minor_faults();
            for _ in 0..50 {
                round();
            }
            thread_minor_faults() - before
        })
        .join()
        .expect("thread");
        // Given back each time, 50 rounds would fault 50 × 40 × 17 pages (34,000).
        assert!(faults < 1_000, "{faults} minor faults in 50 rounds");
    }
}
