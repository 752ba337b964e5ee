//! Stops a live process with ptrace and copies what an in-kernel unwinder would see: the user
//! registers, the stack memory above rsp and the executable mappings.

use profiler_unwind::Regs;
use std::io;
use std::os::unix::fs::FileExt;

/// How much stack to copy above rsp.
const MAX_STACK: u64 = 1 << 20;
/// The x86-64 ABI's red zone below rsp.
const RED_ZONE: u64 = 128;

#[derive(Clone, Debug)]
pub struct Mapping {
    pub start: u64,
    pub end: u64,
    pub offset: u64,
    pub executable: bool,
    pub path: Option<String>,
}

/// A stopped thread's registers and stack, usable after the process is gone.
#[derive(Clone, Debug)]
pub struct Capture {
    pub regs: Regs,
    pub stack_start: u64,
    pub stack: Vec<u8>,
    pub maps: Vec<Mapping>,
}

impl Capture {
    /// 8 bytes of captured stack at `addr`, as `bpf_probe_read_user` would read them.
    pub fn read_u64(&self, addr: u64) -> Option<u64> {
        let off = usize::try_from(addr.checked_sub(self.stack_start)?).ok()?;
        let bytes = self.stack.get(off..off.checked_add(8)?)?;
        Some(u64::from_le_bytes(bytes.try_into().ok()?))
    }
}

/// Attaches to `pid` (single-threaded), copies its state and lets it run again.
pub fn capture(pid: i32) -> io::Result<Capture> {
    // SAFETY: PTRACE_ATTACH takes no pointers; we are root and `pid` is our own child.
    if unsafe { libc::ptrace(libc::PTRACE_ATTACH, pid, 0usize, 0usize) } != 0 {
        return Err(io::Error::last_os_error());
    }
    let result = stopped_state(pid);
    // SAFETY: PTRACE_DETACH with signal 0 takes no pointers.
    unsafe { libc::ptrace(libc::PTRACE_DETACH, pid, 0usize, 0usize) };
    result
}

fn stopped_state(pid: i32) -> io::Result<Capture> {
    let mut status = 0;
    // SAFETY: `status` is a valid out-pointer for the duration of the call.
    if unsafe { libc::waitpid(pid, &mut status, libc::__WALL) } != pid || !libc::WIFSTOPPED(status)
    {
        return Err(io::Error::other(format!("waitpid: status {status:#x}")));
    }
    // SAFETY: user_regs_struct is plain integers, so all-zero is a valid value.
    let mut raw: libc::user_regs_struct = unsafe { std::mem::zeroed() };
    // SAFETY: PTRACE_GETREGS writes one user_regs_struct to the pointer, which is valid.
    if unsafe { libc::ptrace(libc::PTRACE_GETREGS, pid, 0usize, &mut raw as *mut _) } != 0 {
        return Err(io::Error::last_os_error());
    }
    let regs = Regs {
        rip: raw.rip,
        rsp: raw.rsp,
        rbp: raw.rbp,
    };
    let maps = read_maps(pid)?;
    let stack_map = maps
        .iter()
        .find(|m| m.start <= regs.rsp && regs.rsp < m.end)
        .ok_or_else(|| io::Error::other("rsp outside every mapping"))?;
    // Include the 128-byte red zone below rsp: epilogue CFI (e.g. glibc's after `pop %rbp`)
    // can still point a saved register just below rsp, and the kernel's probe read reaches it.
    let start = regs.rsp.saturating_sub(RED_ZONE).max(stack_map.start);
    let len = (stack_map.end - start).min(MAX_STACK + RED_ZONE);
    let mut stack = vec![0u8; len as usize];
    std::fs::File::open(format!("/proc/{pid}/mem"))?.read_exact_at(&mut stack, start)?;
    Ok(Capture {
        regs,
        stack_start: start,
        stack,
        maps,
    })
}

pub fn read_maps(pid: i32) -> io::Result<Vec<Mapping>> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/maps"))?;
    let mut maps = Vec::new();
    for line in text.lines() {
        let mut fields = line.split_whitespace();
        let (Some(range), Some(perms), Some(offset), Some(_dev), Some(_inode)) = (
            fields.next(),
            fields.next(),
            fields.next(),
            fields.next(),
            fields.next(),
        ) else {
            continue;
        };
        let path = fields
            .next()
            .filter(|p| p.starts_with('/'))
            .map(str::to_owned);
        let Some((start, end)) = range.split_once('-') else {
            continue;
        };
        let hex = |s: &str| u64::from_str_radix(s, 16).map_err(io::Error::other);
        maps.push(Mapping {
            start: hex(start)?,
            end: hex(end)?,
            offset: hex(offset)?,
            executable: perms.as_bytes().get(2) == Some(&b'x'),
            path,
        });
    }
    Ok(maps)
}

/// Kills the child when dropped, so a failing test leaves nothing running.
pub struct Running(pub std::process::Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Runs `exe` and captures it `samples` times, 5-30 ms apart at random.
pub fn sample_process(exe: &std::path::Path, samples: usize) -> Vec<Capture> {
    use std::time::{Duration, SystemTime};
    let child = Running(
        std::process::Command::new(exe)
            .stdout(std::process::Stdio::null())
            .spawn()
            .unwrap(),
    );
    let pid = child.0.id() as i32;
    std::thread::sleep(Duration::from_millis(50));
    let mut seed = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64
        | 1;
    (0..samples)
        .map(|_| {
            // xorshift: sample times differ between runs without a rand dependency.
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            std::thread::sleep(Duration::from_millis(5 + seed % 25));
            capture(pid).expect("ptrace capture")
        })
        .collect()
}
