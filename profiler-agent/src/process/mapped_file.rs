//! Opening the file behind a `/proc/PID/maps` entry, safely.
//!
//! Two ways in, best first:
//! - `/proc/PID/map_files/START-END` is the mapped file itself, even deleted or in another
//!   mount namespace, but opening it needs `CAP_CHECKPOINT_RESTORE` (or `CAP_SYS_ADMIN`).
//! - The path inside the process's root. That root and everything in it belong to the
//!   profiled process: a symlink there may point anywhere. It is resolved with
//!   `openat2(RESOLVE_IN_ROOT | RESOLVE_NO_MAGICLINKS)` from a descriptor of the root, so
//!   absolute links and `..` stay inside it and `/proc/self/…`-style magic links are refused.
//!
//! Either way the opened file must be the one the maps entry names (device and inode), so a
//! range remapped since the maps were read, or a file replaced after exec, is never taken for
//! the mapped one.
use std::{
    fs::File,
    io,
    os::{fd::AsFd, unix::fs::MetadataExt as _},
    path::{Path, PathBuf},
};

use rustix::fs::{Mode, OFlags, ResolveFlags};

use super::{file_id::FileIdentity, maps::MapEntry};
use crate::stats::{AgentCounter, AgentStats};

/// Overlayfs reports its own device for files reached through the mount, while the maps of a
/// process show the device of the layer file that is really mapped; the inode still matches.
const OVERLAYFS_SUPER_MAGIC: i64 = 0x794c_7630;

/// An open mapped file and its identity (from `fstat` of the open descriptor).
#[derive(Debug)]
pub struct MappedFile {
    /// Open for reading.
    pub file: File,
    /// Its identity, for caches.
    pub identity: FileIdentity,
    /// Which way it was opened.
    pub via: Via,
}

/// Which way a mapped file was opened.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Via {
    /// `/proc/PID/map_files/START-END`.
    MapFiles,
    /// The maps path resolved inside `/proc/PID/root`.
    Root,
}

/// Why no file could be opened for a maps entry. The variants are the fault counters.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    /// The process exited, or the mapping or file went away.
    #[error("{path} is gone")]
    Gone {
        /// The path tried last.
        path: PathBuf,
        /// What the kernel said.
        #[source]
        source: io::Error,
    },
    /// `map_files` was refused and the path inside the root could not be opened.
    #[error("{path} refused")]
    Refused {
        /// The path tried last.
        path: PathBuf,
        /// What the kernel said.
        #[source]
        source: io::Error,
    },
    /// A file was opened, but it is not the one mapped (replaced, remapped or planted).
    #[error(
        "{path} is device {found_dev:x}, inode {found_ino}; the mapping is {want_dev:x}, inode {want_ino}"
    )]
    NotTheMappedFile {
        /// What was opened.
        path: PathBuf,
        /// Its device.
        found_dev: u64,
        /// Its inode.
        found_ino: u64,
        /// The mapping's device.
        want_dev: u64,
        /// The mapping's inode.
        want_ino: u64,
    },
}

/// The fault counter for a failed open.
pub fn open_error_counter(error: &OpenError) -> AgentCounter {
    match error {
        OpenError::Gone { .. } => AgentCounter::MappedFileGone,
        OpenError::Refused { .. } => AgentCounter::MappedFileRefused,
        OpenError::NotTheMappedFile { .. } => AgentCounter::MappedFileReplaced,
    }
}

/// Opens the file mapped by `entry` of the process whose `/proc` directory is `pid_dir`.
/// A refused `map_files` open is counted in `map_files_refused`.
pub fn open_mapped(
    pid_dir: &Path,
    entry: &MapEntry,
    stats: &AgentStats,
) -> Result<MappedFile, OpenError> {
    let by_range = pid_dir
        .join("map_files")
        .join(format!("{:x}-{:x}", entry.start, entry.end));
    let first = match File::open(&by_range) {
        Ok(file) => return checked(file, entry, &by_range, Via::MapFiles),
        Err(error) => error,
    };
    if first.kind() == io::ErrorKind::PermissionDenied {
        stats.inc(AgentCounter::MapFilesRefused);
    }
    if first.kind() == io::ErrorKind::NotFound && !pid_dir.exists() {
        return Err(OpenError::Gone {
            path: by_range,
            source: first,
        });
    }
    let in_root = pid_dir
        .join("root")
        .join(entry.path.trim_start_matches('/'));
    match open_in_root(&pid_dir.join("root"), &entry.path) {
        Ok(file) => checked(file, entry, &in_root, Via::Root),
        Err(source) if source.kind() == io::ErrorKind::NotFound => Err(OpenError::Gone {
            path: in_root,
            source,
        }),
        Err(source) => Err(OpenError::Refused {
            path: in_root,
            source,
        }),
    }
}

/// `path` resolved as if `root` were `/`: no symlink, `..` or magic link leads out of it.
/// Opened non-blocking, so a FIFO planted there cannot hold the caller.
pub fn open_in_root(root: &Path, path: impl AsRef<Path>) -> io::Result<File> {
    let root_fd = rustix::fs::open(
        root,
        OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    )?;
    let fd = rustix::fs::openat2(
        root_fd.as_fd(),
        path.as_ref(),
        OFlags::RDONLY | OFlags::CLOEXEC | OFlags::NOCTTY | OFlags::NONBLOCK,
        Mode::empty(),
        ResolveFlags::IN_ROOT | ResolveFlags::NO_MAGICLINKS,
    )?;
    Ok(File::from(fd))
}

fn checked(file: File, entry: &MapEntry, path: &Path, via: Via) -> Result<MappedFile, OpenError> {
    let meta = file.metadata().map_err(|source| OpenError::Gone {
        path: path.to_path_buf(),
        source,
    })?;
    let want_dev = libc::makedev(entry.dev_major, entry.dev_minor);
    let same_inode = meta.ino() == entry.inode;
    let same_device = meta.dev() == want_dev || (same_inode && is_overlay(&file));
    if !(same_inode && same_device) {
        return Err(OpenError::NotTheMappedFile {
            path: path.to_path_buf(),
            found_dev: meta.dev(),
            found_ino: meta.ino(),
            want_dev,
            want_ino: entry.inode,
        });
    }
    Ok(MappedFile {
        identity: FileIdentity::from_metadata(&meta),
        file,
        via,
    })
}

fn is_overlay(file: &File) -> bool {
    rustix::fs::fstatfs(file).is_ok_and(|s| s.f_type == OVERLAYFS_SUPER_MAGIC)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    fn entry_for(path: &Path, maps_path: &str) -> MapEntry {
        let meta = std::fs::metadata(path).unwrap();
        MapEntry {
            start: 0x1000,
            end: 0x2000,
            executable: true,
            offset: 0,
            dev_major: libc::major(meta.dev()),
            dev_minor: libc::minor(meta.dev()),
            inode: meta.ino(),
            path: maps_path.into(),
        }
    }

    /// A fake `/proc/PID` whose `root` is a real directory: absolute links planted in it must
    /// resolve inside it, never on the host.
    #[test]
    fn links_in_the_root_stay_in_the_root() {
        let host = tempfile::tempdir().unwrap();
        let secret = host.path().join("secret");
        std::fs::write(&secret, b"host file").unwrap();
        let pid_dir = host.path().join("proc/1");
        let root = pid_dir.join("root");
        std::fs::create_dir_all(root.join("lib")).unwrap();
        symlink(&secret, root.join("lib/libx.so")).unwrap();
        symlink("../../../../secret", root.join("lib/liby.so")).unwrap();

        for name in ["libx.so", "liby.so"] {
            let err = open_in_root(&root, format!("/lib/{name}")).unwrap_err();
            assert_eq!(err.kind(), io::ErrorKind::NotFound, "{name}: {err}");
        }
        // The same target planted inside the root is found there.
        let inside = root.join("lib/real.so");
        std::fs::write(&inside, b"in the root").unwrap();
        symlink("/lib/real.so", root.join("lib/libz.so")).unwrap();
        let entry = entry_for(&inside, "/lib/libz.so");
        let opened = open_mapped(&pid_dir, &entry, &AgentStats::default()).unwrap();
        assert_eq!(opened.via, Via::Root);
    }

    #[test]
    fn a_file_other_than_the_mapped_one_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let pid_dir = dir.path().join("proc/1");
        let root = pid_dir.join("root");
        std::fs::create_dir_all(root.join("bin")).unwrap();
        let old = root.join("bin/old");
        std::fs::write(&old, b"the mapped binary").unwrap();
        let entry = entry_for(&old, "/bin/app");
        std::fs::write(root.join("bin/app"), b"a replacement").unwrap();
        match open_mapped(&pid_dir, &entry, &AgentStats::default()) {
            Err(OpenError::NotTheMappedFile { want_ino, .. }) => assert_eq!(want_ino, entry.inode),
            other => panic!("expected a mismatch, got {other:?}"),
        }
    }

    #[test]
    fn a_vanished_process_is_gone() {
        let dir = tempfile::tempdir().unwrap();
        let entry = entry_for(dir.path(), "/bin/app");
        assert!(matches!(
            open_mapped(&dir.path().join("proc/77"), &entry, &AgentStats::default()),
            Err(OpenError::Gone { .. })
        ));
    }
}
