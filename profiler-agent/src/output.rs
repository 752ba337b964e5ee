//! Writes profiles into the output directory with names that sort by time.
use std::{
    io::Write as _,
    path::{Path, PathBuf},
    time::{SystemTime, UNIX_EPOCH},
};

use anyhow::{Context as _, Result};

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
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let path = dir.join(name);
    let tmp = dir.join(format!(".{name}.tmp"));
    let mut f =
        std::fs::File::create(&tmp).with_context(|| format!("creating {}", tmp.display()))?;
    f.write_all(bytes)
        .with_context(|| format!("writing {}", tmp.display()))?;
    f.sync_data().ok();
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
        let mut x: u64 = 0x9e3779b97f4a7c15;
        for _ in 0..100 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let secs = x % 8_000_000_000;
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
}
