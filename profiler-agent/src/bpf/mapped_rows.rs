//! The unwind-row array mapped into the agent's memory (`BPF_F_MMAPABLE`): loading a table
//! is a memory copy instead of one `bpf_map_update_elem` syscall per row, which dominated
//! the agent's start on hosts with many binaries.
use std::os::fd::{AsFd as _, AsRawFd as _};

use anyhow::{bail, Context as _, Result};
use aya::maps::MapData;
use profiler_common::unwind::UnwindRow;

/// The row array, writable from the agent.
pub struct MappedRows {
    ptr: *mut UnwindRow,
    rows: u32,
    bytes: usize,
    /// Keeps the map (and so the mapping's backing memory) alive.
    _map: MapData,
}

impl MappedRows {
    /// Maps the whole array of `rows` entries.
    pub fn new(map: MapData, rows: u32) -> Result<Self> {
        // SAFETY: sysconf has no preconditions.
        let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) }.max(1) as usize;
        let bytes = (rows as usize * size_of::<UnwindRow>()).div_ceil(page) * page;
        let fd = map.fd().as_fd().as_raw_fd();
        // SAFETY: a fresh shared mapping of the map's fd, no address hint; the kernel checks
        // the length against the array's size. The result is checked before use.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                bytes,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                fd,
                0,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(std::io::Error::last_os_error()).context("mmap of the unwind-row array");
        }
        Ok(MappedRows {
            ptr: ptr.cast(),
            rows,
            bytes,
            _map: map,
        })
    }

    /// Copies `rows` to index `first` on.
    pub fn write(&mut self, first: u32, rows: &[UnwindRow]) -> Result<()> {
        let end = u64::from(first) + rows.len() as u64;
        if end > u64::from(self.rows) {
            bail!("rows {first}..{end} outside the array of {}", self.rows);
        }
        // SAFETY: the range was checked to lie inside the mapped array, which lives as long as
        // `self`; UnwindRow is plain data, and the kernel only reads these rows.
        let dst =
            unsafe { std::slice::from_raw_parts_mut(self.ptr.add(first as usize), rows.len()) };
        dst.copy_from_slice(rows);
        Ok(())
    }
}

// SAFETY: the mapping is owned by this value alone (no other pointer to it escapes), so moving
// it to another thread moves sole access with it; the kernel's concurrent reads of the rows
// are the same from any thread.
unsafe impl Send for MappedRows {}

impl Drop for MappedRows {
    fn drop(&mut self) {
        // SAFETY: unmapping exactly the region mapped in `new`, which nothing else refers to.
        unsafe { libc::munmap(self.ptr.cast(), self.bytes) };
    }
}
