//! Reads of user memory. Every read goes through `bpf_probe_read_user`, so an unmapped or
//! garbage address becomes `None`/`false`, never a fault.
use core::{ffi::c_void, mem::size_of};

use aya_ebpf::helpers::generated::bpf_probe_read_user;

#[inline(always)]
pub fn read_u64(addr: u64) -> Option<u64> {
    let mut v: u64 = 0;
    // SAFETY: the helper writes at most 8 bytes into `v` and validates the source itself.
    let ret =
        unsafe { bpf_probe_read_user(&mut v as *mut u64 as *mut c_void, 8, addr as *const c_void) };
    (ret == 0).then_some(v)
}

/// Copies `size_of::<T>()` bytes at `addr` into `dst`; false if any byte is unreadable.
#[inline(always)]
pub fn read_into<T>(dst: *mut T, addr: u64) -> bool {
    // SAFETY: `dst` points at writable memory of size_of::<T>() bytes owned by the caller.
    unsafe {
        bpf_probe_read_user(
            dst as *mut c_void,
            size_of::<T>() as u32,
            addr as *const c_void,
        ) == 0
    }
}
