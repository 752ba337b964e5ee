//! One identity for a file, shared by every cache keyed by "which binary is this".
use std::{fs::Metadata, io, os::unix::fs::MetadataExt as _, path::Path};

/// Device and inode, plus size and modification time: an inode freed and reused for another
/// file (a package upgrade, a container layer) then gets a new identity, so no cache hands out
/// the old binary's symbols, unwind table, Go offsets or failure mark.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct FileIdentity {
    /// `st_dev` of the file itself (not of a `/proc` link to it).
    pub dev: u64,
    /// `st_ino`.
    pub ino: u64,
    /// `st_size`.
    pub size: u64,
    /// `st_mtime` in nanoseconds.
    pub mtime_ns: i64,
}

impl FileIdentity {
    /// The identity of what `path` leads to; `/proc/PID/map_files/…` and `/proc/PID/exe` are
    /// followed to the mapped file.
    pub fn of(path: &Path) -> io::Result<FileIdentity> {
        std::fs::metadata(path).map(|m| FileIdentity::from_metadata(&m))
    }

    /// The identity described by `meta`.
    pub fn from_metadata(meta: &Metadata) -> FileIdentity {
        FileIdentity {
            dev: meta.dev(),
            ino: meta.ino(),
            size: meta.size(),
            mtime_ns: meta.mtime().saturating_mul(1_000_000_000) + meta.mtime_nsec(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::{fs::File, io::Write as _, time::Duration};

    /// A file rewritten in place keeps its device and inode; it must still read as a new file.
    #[test]
    fn rewriting_in_place_changes_the_identity() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("bin");
        std::fs::write(&path, b"first binary").unwrap();
        let first = FileIdentity::of(&path).unwrap();
        std::thread::sleep(Duration::from_millis(20));
        let mut f = File::create(&path).unwrap(); // truncates: same inode
        f.write_all(b"second, longer binary").unwrap();
        drop(f);
        let second = FileIdentity::of(&path).unwrap();
        assert_eq!((first.dev, first.ino), (second.dev, second.ino));
        assert_ne!(first, second);
    }
}
