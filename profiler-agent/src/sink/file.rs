//! The file sink: profiles in a directory, with names that sort by time, written atomically,
//! and pruned by age and total size so the directory never grows without bound.
use crate::error_chain::chain;
use std::{
    io::Write as _,
    path::{Path, PathBuf},
    sync::Arc,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use anyhow::{Context as _, Result};
use tracing::{debug, warn};

use crate::{
    sink::{EncodedProfile, Sink},
    stats::{AgentCounter, AgentStats},
};

const PREFIX: &str = "cpu-";
const SUFFIX: &str = ".pb.gz";

/// How much of the output directory to keep.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Retention {
    /// Profiles older than this (by modification time) are removed.
    pub max_age: Duration,
    /// Past this many bytes of profiles, the oldest are removed.
    pub max_bytes: u64,
}

/// Writes each profile as its own file in one directory.
pub struct FileSink {
    dir: PathBuf,
    retention: Retention,
    stats: Arc<AgentStats>,
}

/// What one pruning pass removed.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Pruned {
    /// Files removed.
    pub files: u64,
    /// Their bytes.
    pub bytes: u64,
}

impl FileSink {
    /// Creates the directory if needed and proves that a profile can be written there, so a
    /// bad `--output-dir` stops the agent at start instead of losing every interval.
    pub fn open(dir: &Path, retention: Retention, stats: Arc<AgentStats>) -> Result<Self> {
        std::fs::create_dir_all(dir)
            .with_context(|| format!("cannot create the output directory {}", dir.display()))?;
        let probe = dir.join(format!(".write-probe-{}", std::process::id()));
        std::fs::write(&probe, b"probe")
            .with_context(|| format!("cannot write into the output directory {}", dir.display()))?;
        std::fs::remove_file(&probe)
            .with_context(|| format!("cannot remove files in {}", dir.display()))?;
        let sink = FileSink {
            dir: dir.to_path_buf(),
            retention,
            stats,
        };
        sink.remove_stale_temporaries();
        Ok(sink)
    }

    /// Removes profiles past the retention limits, judged at `now`.
    pub fn prune(&self, now: SystemTime) -> Pruned {
        let mut files = self.profiles();
        // Oldest first: names sort by time.
        files.sort_by(|a, b| a.0.cmp(&b.0));
        let mut total: u64 = files.iter().map(|f| f.1).sum();
        let mut pruned = Pruned::default();
        for (path, len, modified) in files {
            let too_old = now
                .duration_since(modified)
                .is_ok_and(|age| age > self.retention.max_age);
            if !too_old && total <= self.retention.max_bytes {
                continue;
            }
            match std::fs::remove_file(&path) {
                Ok(()) => {
                    total -= len;
                    pruned.files += 1;
                    pruned.bytes += len;
                }
                Err(error) => {
                    debug!(path = %path.display(), error = %chain(&error), "cannot prune an old profile")
                }
            }
        }
        self.stats
            .add(AgentCounter::OutputFilesPruned, pruned.files);
        self.stats
            .add(AgentCounter::OutputBytesPruned, pruned.bytes);
        pruned
    }

    /// This sink's own profiles in the directory: (path, bytes, modified).
    fn profiles(&self) -> Vec<(PathBuf, u64, SystemTime)> {
        let Ok(entries) = std::fs::read_dir(&self.dir) else {
            return Vec::new();
        };
        entries
            .filter_map(|e| {
                let e = e.ok()?;
                let name = e.file_name();
                let name = name.to_str()?;
                if !(name.starts_with(PREFIX) && name.ends_with(SUFFIX)) {
                    return None;
                }
                let meta = e.metadata().ok()?;
                meta.is_file()
                    .then(|| Some((e.path(), meta.len(), meta.modified().ok()?)))?
            })
            .collect()
    }

    /// Half-written files of an agent that died mid-write.
    fn remove_stale_temporaries(&self) {
        let Ok(entries) = std::fs::read_dir(&self.dir) else {
            return;
        };
        for e in entries.flatten() {
            let name = e.file_name();
            let Some(name) = name.to_str() else { continue };
            if name.starts_with(&format!(".{PREFIX}")) && name.ends_with(".tmp") {
                if let Err(error) = std::fs::remove_file(e.path()) {
                    warn!(path = %e.path().display(), error = %chain(&error), "cannot remove a stale temporary file");
                }
            }
        }
    }
}

impl Sink for FileSink {
    fn write(&mut self, profile: &EncodedProfile) -> Result<String> {
        let name = file_name(profile.start, profile.seq);
        let path = write_atomically(&self.dir, &name, &profile.bytes)?;
        self.prune(SystemTime::now());
        Ok(path.display().to_string())
    }
}

/// `cpu-20261123T054012.123Z-000001.pb.gz`: UTC time, then a sequence number so that two
/// profiles in the same millisecond still sort in write order.
pub fn file_name(at: SystemTime, seq: u64) -> String {
    let since = at.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = since.as_secs();
    let (y, m, d) = civil_from_days((secs / 86_400) as i64);
    let rem = secs % 86_400;
    format!(
        "cpu-{y:04}{m:02}{d:02}T{:02}{:02}{:02}.{:03}Z-{seq:06}.pb.gz",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60,
        since.subsec_millis()
    )
}

/// Days since 1970-01-01 to a (year, month, day) in the proleptic Gregorian calendar.
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

/// Writes through a temporary file and a rename, so a reader never sees half a profile.
pub fn write_atomically(dir: &Path, name: &str, bytes: &[u8]) -> Result<PathBuf> {
    let path = dir.join(name);
    let tmp = dir.join(format!(".{name}.tmp"));
    let mut f =
        std::fs::File::create(&tmp).with_context(|| format!("creating {}", tmp.display()))?;
    f.write_all(bytes)
        .with_context(|| format!("writing {}", tmp.display()))?;
    if let Err(error) = f.sync_data() {
        debug!(path = %tmp.display(), error = %chain(&error), "sync failed; the rename still makes it whole");
    }
    std::fs::rename(&tmp, &path).with_context(|| format!("renaming to {}", path.display()))?;
    Ok(path)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn names_sort_by_time() {
        let t = |s| UNIX_EPOCH + Duration::from_millis(s);
        assert_eq!(file_name(t(0), 1), "cpu-19700101T000000.000Z-000001.pb.gz");
        // 2026-11-23T05:40:12.345Z
        assert_eq!(
            file_name(t(1_795_412_412_345), 7),
            "cpu-20261123T054012.345Z-000007.pb.gz"
        );
        assert_eq!(civil_from_days(11_016), (2000, 2, 29));
        // Times in increasing order (leap days, year ends, a far-future date) give names in
        // increasing byte order.
        let times = [
            0u64,
            1_000,
            86_400_000,
            951_782_400_000,
            951_868_799_999,
            1_795_412_412_345,
            5_000_000_000_000,
        ];
        let names: Vec<_> = times.iter().map(|&ms| file_name(t(ms), 0)).collect();
        assert!(names.windows(2).all(|w| w[0] < w[1]), "{names:?}");
    }

    /// The calendar conversion against date(1) over many seconds, including leap years.
    #[test]
    fn civil_dates_match_date_command() {
        let mut rng = test_support::Rng::new(0x9e3779b97f4a7c15);
        for _ in 0..100 {
            let secs = rng.below(8_000_000_000);
            let ours = file_name(UNIX_EPOCH + Duration::from_secs(secs), 0);
            let out = std::process::Command::new("date")
                .args([
                    "-u",
                    "-d",
                    &format!("@{secs}"),
                    "+cpu-%Y%m%dT%H%M%S.000Z-000000.pb.gz",
                ])
                .output()
                .expect("date(1) from coreutils");
            assert_eq!(ours, String::from_utf8_lossy(&out.stdout).trim(), "{secs}");
        }
    }

    fn sink(dir: &Path, max_age_secs: u64, max_bytes: u64) -> (FileSink, Arc<AgentStats>) {
        let stats = Arc::new(AgentStats::default());
        let retention = Retention {
            max_age: Duration::from_secs(max_age_secs),
            max_bytes,
        };
        (
            FileSink::open(dir, retention, stats.clone()).unwrap(),
            stats,
        )
    }

    /// A profile file of `len` bytes last modified at `t`.
    fn profile_at(dir: &Path, seq: u64, t: SystemTime, len: usize) -> PathBuf {
        let path = dir.join(file_name(t, seq));
        std::fs::write(&path, vec![0u8; len]).unwrap();
        std::fs::File::options()
            .write(true)
            .open(&path)
            .unwrap()
            .set_modified(t)
            .unwrap();
        path
    }

    #[test]
    fn pruning_by_age_keeps_young_files_and_foreign_ones() {
        let dir = tempfile::tempdir().unwrap();
        let (sink, stats) = sink(dir.path(), 3600, u64::MAX);
        let now = UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        let old = profile_at(dir.path(), 1, now - Duration::from_secs(7200), 100);
        let edge = profile_at(dir.path(), 2, now - Duration::from_secs(3600), 100);
        let young = profile_at(dir.path(), 3, now - Duration::from_secs(10), 100);
        let foreign = dir.path().join("notes.txt");
        std::fs::write(&foreign, b"not ours").unwrap();
        std::fs::File::options()
            .write(true)
            .open(&foreign)
            .unwrap()
            .set_modified(now - Duration::from_secs(99_999))
            .unwrap();
        assert_eq!(
            sink.prune(now),
            Pruned {
                files: 1,
                bytes: 100
            }
        );
        assert!(!old.exists());
        assert!(edge.exists() && young.exists() && foreign.exists());
        assert_eq!(stats.get(AgentCounter::OutputFilesPruned), 1);
        assert_eq!(stats.get(AgentCounter::OutputBytesPruned), 100);
    }

    #[test]
    fn pruning_by_size_removes_the_oldest_first() {
        let dir = tempfile::tempdir().unwrap();
        let (sink, _) = sink(dir.path(), u64::MAX / 4, 250);
        let now = UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        let paths: Vec<_> = (0..5)
            .map(|i| profile_at(dir.path(), i, now - Duration::from_secs(50 - 10 * i), 100))
            .collect();
        assert_eq!(
            sink.prune(now),
            Pruned {
                files: 3,
                bytes: 300
            }
        );
        let left: Vec<bool> = paths.iter().map(|p| p.exists()).collect();
        assert_eq!(left, [false, false, false, true, true]);
    }

    #[test]
    fn writes_are_whole_and_the_directory_stays_bounded() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(".cpu-crashed.pb.gz.tmp"), b"half").unwrap();
        let (mut sink, _) = sink(dir.path(), 3600, 2500);
        assert!(!dir.path().join(".cpu-crashed.pb.gz.tmp").exists());
        for seq in 1..=10 {
            let profile = EncodedProfile {
                start: SystemTime::now(),
                end: SystemTime::now(),
                seq,
                bytes: vec![7u8; 1000],
            };
            sink.write(&profile).unwrap();
        }
        let names: Vec<String> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        assert_eq!(names.len(), 2, "{names:?}");
        assert!(names
            .iter()
            .all(|n| n.ends_with("-000009.pb.gz") || n.ends_with("-000010.pb.gz")));
    }

    #[test]
    fn an_unwritable_directory_is_refused_at_open() {
        let stats = Arc::new(AgentStats::default());
        let retention = Retention {
            max_age: Duration::from_secs(1),
            max_bytes: 1,
        };
        let err = FileSink::open(Path::new("/proc/nope"), retention, stats.clone())
            .err()
            .unwrap();
        assert!(format!("{err:#}").contains("/proc/nope"), "{err:#}");
        let file = tempfile::NamedTempFile::new().unwrap();
        let err = FileSink::open(file.path(), retention, stats).err().unwrap();
        assert!(format!("{err:#}").contains("output directory"), "{err:#}");
    }
}
