//! Parsing of `/proc/PID/maps`.
use std::{io, num::ParseIntError, path::Path};

/// One line of `/proc/PID/maps`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MapEntry {
    /// First address.
    pub start: u64,
    /// One past the last address.
    pub end: u64,
    /// Mapped with execute permission.
    pub executable: bool,
    /// Offset into the backing file of `start`.
    pub offset: u64,
    /// Device of the backing file, major number.
    pub dev_major: u32,
    /// Device minor number.
    pub dev_minor: u32,
    /// Inode of the backing file; 0 for anonymous memory.
    pub inode: u64,
    /// The backing path, a pseudo name such as `[vdso]`, or empty for anonymous memory.
    pub path: String,
}

impl MapEntry {
    /// Backed by a real file (not anonymous, not a kernel pseudo mapping).
    pub fn is_file(&self) -> bool {
        self.inode != 0 && self.path.starts_with('/')
    }
    /// `addr` lies inside.
    pub fn contains(&self, addr: u64) -> bool {
        self.start <= addr && addr < self.end
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
/// Why `/proc/PID/maps` did not parse.
pub enum ParseError {
    /// A line ended early.
    #[error("line {line}: missing field {field}")]
    Missing {
        /// 1-based line number.
        line: usize,
        /// The field that was expected.
        field: &'static str,
    },
    /// A field is not a number.
    #[error("line {line}: bad number")]
    Number {
        /// 1-based line number.
        line: usize,
        /// Why it did not parse.
        #[source]
        source: ParseIntError,
    },
    /// A range that ends before it starts.
    #[error("line {line}: range ends before it starts")]
    Inverted {
        /// 1-based line number.
        line: usize,
    },
    /// Two entries overlap: the kernel hands the file out in chunks, and the mappings changed
    /// between two of them.
    #[error("mappings overlap at {addr:#x}: they changed while being read")]
    Torn {
        /// Start of the later of the two entries.
        addr: u64,
    },
}

/// Why the maps of a process could not be had.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    /// The file could not be read (the process exited, mostly).
    #[error("cannot read {path}")]
    Io {
        /// The maps file.
        path: std::path::PathBuf,
        /// What the kernel said.
        #[source]
        source: io::Error,
    },
    /// The text did not parse, or kept changing under every read.
    #[error("cannot parse {path}")]
    Parse {
        /// The maps file.
        path: std::path::PathBuf,
        /// Why.
        #[source]
        source: ParseError,
    },
}

/// A consistent read of a maps file, and how many reads were torn before it.
#[derive(Debug)]
pub struct MapsRead {
    /// The entries, sorted by start, non-overlapping.
    pub entries: Vec<MapEntry>,
    /// Reads thrown away because the mappings changed during them.
    pub torn_reads: u32,
}

/// Reads found torn are retried this many times before the read fails.
const TORN_RETRIES: u32 = 2;

/// Reads and parses `path` (a `/proc/PID/maps`), reading again when the mappings changed
/// during a read.
pub fn read_maps(path: &Path) -> Result<MapsRead, ReadError> {
    let mut torn_reads = 0;
    loop {
        let text = std::fs::read_to_string(path).map_err(|source| ReadError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        match parse_maps(&text) {
            Ok(entries) => {
                return Ok(MapsRead {
                    entries,
                    torn_reads,
                })
            }
            Err(ParseError::Torn { .. }) if torn_reads < TORN_RETRIES => torn_reads += 1,
            Err(source) => {
                return Err(ReadError::Parse {
                    path: path.to_path_buf(),
                    source,
                })
            }
        }
    }
}

/// Parses the whole file; the entries come back sorted by start address, and never overlap.
pub fn parse_maps(text: &str) -> Result<Vec<MapEntry>, ParseError> {
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let entry = parse_line(i + 1, line)?;
        if entry.end < entry.start {
            return Err(ParseError::Inverted { line: i + 1 });
        }
        out.push(entry);
    }
    out.sort_by_key(|m| m.start);
    if let Some(pair) = out.windows(2).find(|w| w[1].start < w[0].end) {
        return Err(ParseError::Torn {
            addr: pair[1].start,
        });
    }
    Ok(out)
}

fn parse_line(line_no: usize, line: &str) -> Result<MapEntry, ParseError> {
    let missing = |field| ParseError::Missing {
        line: line_no,
        field,
    };
    let number = |source| ParseError::Number {
        line: line_no,
        source,
    };
    let mut rest = line;
    let mut next_field = |field| {
        let s = rest.trim_start();
        let end = s.find(' ').unwrap_or(s.len());
        let (word, tail) = s.split_at(end);
        rest = tail;
        if word.is_empty() {
            Err(missing(field))
        } else {
            Ok(word)
        }
    };
    let range = next_field("range")?;
    let perms = next_field("perms")?;
    let offset = next_field("offset")?;
    let dev = next_field("dev")?;
    let inode = next_field("inode")?;
    // The path may contain spaces; it is everything after the inode, trimmed.
    let path = rest.trim().to_string();

    let (start, end) = range.split_once('-').ok_or_else(|| missing("range end"))?;
    let (major, minor) = dev.split_once(':').ok_or_else(|| missing("dev minor"))?;
    Ok(MapEntry {
        start: u64::from_str_radix(start, 16).map_err(number)?,
        end: u64::from_str_radix(end, 16).map_err(number)?,
        executable: perms.as_bytes().get(2) == Some(&b'x'),
        offset: u64::from_str_radix(offset, 16).map_err(number)?,
        dev_major: u32::from_str_radix(major, 16).map_err(number)?,
        dev_minor: u32::from_str_radix(minor, 16).map_err(number)?,
        inode: inode.parse().map_err(number)?,
        path,
    })
}

/// The mapping that contains `addr`, by binary search over entries sorted by start.
pub fn find(maps: &[MapEntry], addr: u64) -> Option<&MapEntry> {
    maps.get(find_index(maps, addr)?)
}

/// Index of the mapping that contains `addr`, for callers that keep per-mapping state.
pub fn find_index(maps: &[MapEntry], addr: u64) -> Option<usize> {
    let idx = maps.partition_point(|m| m.start <= addr).checked_sub(1)?;
    maps.get(idx)?.contains(addr).then_some(idx)
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAMPLE: &str = "\
55d4c8a00000-55d4c8a02000 r--p 00000000 fe:01 1835042                    /usr/bin/cat
55d4c8a02000-55d4c8a07000 r-xp 00002000 fe:01 1835042                    /usr/bin/cat
7f1e2c000000-7f1e2c021000 rw-p 00000000 00:00 0 
7f1e2c200000-7f1e2c228000 r-xp 00028000 fe:01 1835 /opt/my app/lib with space.so
7ffd1a7f0000-7ffd1a7f2000 r-xp 00000000 00:00 0                          [vdso]
ffffffffff600000-ffffffffff601000 --xp 00000000 00:00 0                  [vsyscall]
";

    #[test]
    fn parses_real_lines() {
        let maps = parse_maps(SAMPLE).unwrap();
        assert_eq!(maps.len(), 6);
        assert_eq!(maps[1].start, 0x55d4c8a02000);
        assert!(maps[1].executable && !maps[0].executable);
        assert_eq!(maps[1].offset, 0x2000);
        assert_eq!(
            (maps[1].dev_major, maps[1].dev_minor, maps[1].inode),
            (0xfe, 1, 1835042)
        );
        assert_eq!(maps[3].path, "/opt/my app/lib with space.so");
        assert!(maps[3].is_file());
        assert!(!maps[2].is_file() && maps[2].path.is_empty());
        assert!(!maps[4].is_file());
        assert_eq!(maps[4].path, "[vdso]");
    }

    #[test]
    fn find_respects_bounds() {
        let maps = parse_maps(SAMPLE).unwrap();
        assert_eq!(find(&maps, 0x55d4c8a02000).unwrap().offset, 0x2000);
        assert_eq!(find(&maps, 0x55d4c8a06fff).unwrap().offset, 0x2000);
        assert!(find(&maps, 0x55d4c8a07000).is_none());
        assert!(find(&maps, 0x1000).is_none());
        assert!(find(&maps, u64::MAX).is_none());
    }

    #[test]
    fn bad_lines_are_errors_not_panics() {
        for bad in [
            "",
            "zz-10 r-xp 0 fe:01 1",
            "10-20",
            "10-20 r-xp 0 fe01 1 /x",
            "10 r-xp 0 fe:01 1",
            "20-10 r-xp 0 fe:01 1 /x",
        ] {
            let r = parse_maps(bad);
            if !bad.is_empty() {
                assert!(r.is_err(), "{bad:?}");
            }
        }
    }

    /// The kernel serves maps in chunks; a mapping that moved between two of them shows up
    /// twice, overlapping its neighbour. Such a read is an error, not a silent mix.
    #[test]
    fn overlapping_entries_are_a_torn_read() {
        let torn = "\
1000-3000 r-xp 0 fe:01 1 /a
2000-4000 r-xp 0 fe:01 2 /b
";
        assert_eq!(parse_maps(torn), Err(ParseError::Torn { addr: 0x2000 }));
        let adjacent = "1000-2000 r-xp 0 fe:01 1 /a\n2000-3000 r-xp 0 fe:01 2 /b\n";
        assert_eq!(parse_maps(adjacent).unwrap().len(), 2);
    }

    #[test]
    fn reading_a_real_maps_file() {
        let read = read_maps(Path::new("/proc/self/maps")).unwrap();
        assert!(read.entries.iter().any(|m| m.executable && m.is_file()));
        assert!(matches!(
            read_maps(Path::new("/proc/0/maps")),
            Err(ReadError::Io { .. })
        ));
    }
}
