//! A profiled process owns its root filesystem; what it plants there must never lead the agent
//! to a host file. The agent runs without `CAP_CHECKPOINT_RESTORE` and `CAP_SYS_ADMIN`, as in
//! a least-privilege deployment, so `/proc/PID/map_files` is refused and mapped files are
//! reached through `/proc/PID/root`.
mod common;

use std::{
    ffi::CString,
    os::unix::{ffi::OsStrExt as _, fs::symlink},
    path::Path,
};

use common::*;

/// The agent without the capabilities that open `map_files`.
const NO_MAP_FILES: &[&str] = &[
    "setpriv",
    "--bounding-set",
    "-sys_admin,-checkpoint_restore",
    "--inh-caps",
    "-sys_admin,-checkpoint_restore",
    "--",
];

/// Counts opens and reads of `path` while it lives.
struct OpenWatch {
    fd: i32,
}

impl OpenWatch {
    fn new(path: &Path) -> OpenWatch {
        // SAFETY: plain syscalls; the descriptor is owned by the returned value.
        let fd = unsafe { libc::inotify_init1(libc::IN_NONBLOCK | libc::IN_CLOEXEC) };
        assert!(fd >= 0, "inotify_init1");
        let c = CString::new(path.as_os_str().as_bytes()).unwrap();
        // SAFETY: `c` is a valid NUL-terminated path for the duration of the call.
        let wd =
            unsafe { libc::inotify_add_watch(fd, c.as_ptr(), libc::IN_OPEN | libc::IN_ACCESS) };
        assert!(wd >= 0, "inotify_add_watch");
        OpenWatch { fd }
    }

    /// Events seen so far.
    fn events(&self) -> usize {
        let mut buf = [0u8; 4096];
        let mut n = 0;
        loop {
            // SAFETY: reads into a buffer we own, of the length given.
            let got = unsafe { libc::read(self.fd, buf.as_mut_ptr().cast(), buf.len()) };
            if got <= 0 {
                return n;
            }
            let mut off = 0;
            while off < got as usize {
                // SAFETY: the kernel wrote whole `inotify_event` records, possibly unaligned.
                let event: libc::inotify_event =
                    unsafe { std::ptr::read_unaligned(buf[off..].as_ptr().cast()) };
                off += std::mem::size_of::<libc::inotify_event>() + event.len as usize;
                n += 1;
            }
        }
    }
}

impl Drop for OpenWatch {
    fn drop(&mut self) {
        // SAFETY: closes the descriptor this value owns.
        unsafe { libc::close(self.fd) };
    }
}

#[test]
fn a_link_planted_in_a_process_root_never_reaches_the_host_file() {
    require_root();
    let _serial = serial();
    let dir = tempfile::tempdir().unwrap();
    let exe = build_c(dir.path(), "chroot_burn", &["-O1", "-ldl"]);
    let libs = dir.path().join("lib");
    std::fs::create_dir(&libs).unwrap();
    let lib = build_c_as(&libs, "libburn", "libburn.so", &["-O1", "-shared", "-fPIC"]);
    // The host file the process would like the agent to read: a real library with symbols
    // of its own, so reading it would also show in the profile.
    let host = dir.path().join("host");
    std::fs::create_dir(&host).unwrap();
    let secret = build_c_as(
        &host,
        "libburn",
        "libsecret.so",
        &[
            "-O1",
            "-shared",
            "-fPIC",
            "-Dlib_leaf=host_secret_leaf",
            "-Dlib_outer=host_secret_outer",
        ],
    );
    // Inside the new root, the library's host path is an absolute link to the host file.
    let root = dir.path().join("root");
    let planted = root.join(lib.strip_prefix("/").unwrap());
    std::fs::create_dir_all(planted.parent().unwrap()).unwrap();
    symlink(&secret, &planted).unwrap();
    // And at the executable's path lies another file, a copy of the host file: opened inside
    // the root, it must be refused because it is not the mapped file.
    let planted_exe = root.join(exe.strip_prefix("/").unwrap());
    std::fs::create_dir_all(planted_exe.parent().unwrap()).unwrap();
    std::fs::copy(&secret, &planted_exe).unwrap();

    let watch = OpenWatch::new(&secret);
    let out = dir.path().join("out");
    let root_arg = root.to_str().unwrap();
    let lib_arg = lib.to_str().unwrap();
    let run = profile_pid(
        Gated::start(&exe, &[root_arg, lib_arg, "2"]),
        &out,
        Profiling {
            wrapper: NO_MAP_FILES,
            ..Profiling::default()
        },
    );

    let samples = run.samples();
    let count: i64 = samples.iter().map(|s| s.count).sum();
    assert!(count > 100, "only {count} samples");
    let t = run.totals();
    assert!(
        t["map_files_refused"] > 0,
        "map_files was not refused: the test did not exercise the root path: {t:?}"
    );
    assert_eq!(
        watch.events(),
        0,
        "the host file was opened or read through the planted link"
    );
    assert!(
        t["mapped_file_replaced"] > 0,
        "the file planted at the executable's path was not refused: {t:?}"
    );
    for s in &samples {
        assert!(
            !s.frames
                .iter()
                .any(|(f, m)| f.contains("host_secret") || m.contains("libsecret")),
            "a frame from the host file: {:?}",
            s.frames
        );
    }
    // Control: the watch does see the file opened when something opens it.
    std::fs::read(&secret).unwrap();
    assert!(watch.events() > 0, "the open watch does not work");
}
