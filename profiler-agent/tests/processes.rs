//! Process tracking against a fake /proc tree: normalization of real binaries, and the fault
//! paths (vanished process, unreadable or bogus binary) that must be counted, not fatal.
use std::{fs, path::Path, process::Command};

use std::sync::Arc;

use profiler_agent::{
    process::{Processes, UserFrame},
    stats::{AgentCounter, AgentStats},
};
use symbolizer::{Binary, Symbolizer, SymbolizerConfig};

/// `MAJOR:MINOR INODE` of `path` as `/proc/PID/maps` prints them: the agent opens a mapped
/// file only if it is the one the maps name.
fn dev_ino(path: &Path) -> String {
    use std::os::unix::fs::MetadataExt as _;
    let m = fs::metadata(path).unwrap();
    format!(
        "{:02x}:{:02x} {}",
        libc::major(m.dev()),
        libc::minor(m.dev()),
        m.ino()
    )
}

fn nm_symbol(exe: &Path, name: &str) -> u64 {
    let out = Command::new("nm").arg(exe).output().expect("nm (binutils)");
    let text = String::from_utf8_lossy(&out.stdout);
    let line = text
        .lines()
        .find(|l| l.ends_with(&format!(" {name}")))
        .unwrap_or_else(|| panic!("{name} not in nm output"));
    u64::from_str_radix(line.split_whitespace().next().unwrap(), 16).unwrap()
}

fn fake_process(root: &Path, pid: u32, comm: &str, maps: &str) {
    let dir = root.join(pid.to_string());
    fs::create_dir_all(&dir).unwrap();
    fs::write(dir.join("comm"), format!("{comm}\n")).unwrap();
    fs::write(dir.join("maps"), maps).unwrap();
}

/// Builds a PIE with gcc, "maps" it at a random-looking base the way the loader would, and
/// checks that every function address normalizes back to its ELF address and symbol.
#[test]
fn pie_addresses_normalize_to_elf_addresses() {
    let tmp = tempfile::tempdir().unwrap();
    let exe = tmp.path().join("chain");
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/chain.c");
    assert!(Command::new("gcc")
        .args(["-O0", "-pie", "-fPIE", "-o"])
        .arg(&exe)
        .arg(&src)
        .status()
        .unwrap()
        .success());
    let binary = Binary::open(&exe).unwrap();
    let text = binary
        .load_segments()
        .iter()
        .find(|s| s.executable)
        .copied()
        .expect("executable PT_LOAD");

    let root = tmp.path().join("proc");
    let pid = 4242;
    let base = 0x5555_5555_0000u64;
    // The loader maps the executable segment at base + p_vaddr, page-aligned, at file offset p_offset & !0xfff.
    let seg_start = (base + text.p_vaddr) & !0xfff;
    let seg_end = (base + text.p_vaddr + text.p_memsz + 0xfff) & !0xfff;
    let in_root = root.join(pid.to_string()).join("root/usr/bin");
    fs::create_dir_all(&in_root).unwrap();
    fs::copy(&exe, in_root.join("chain")).unwrap();
    let maps = format!(
        "{seg_start:x}-{seg_end:x} r-xp {:08x} {} /usr/bin/chain\n5555a0000000-5555a0021000 rw-p 00000000 00:00 0 [heap]\n7ffc00000000-7ffc00002000 r-xp 00000000 00:00 0 [vdso]\n",
        text.p_offset & !0xfff,
        dev_ino(&in_root.join("chain"))
    );
    fake_process(&root, pid, "chain", &maps);

    let stats = Arc::new(AgentStats::default());
    let mut procs = Processes::new(&root, stats.clone());
    let mut symbolizer = Symbolizer::new(SymbolizerConfig::default());
    for name in ["leaf", "middle", "outer", "main"] {
        let elf_addr = nm_symbol(&exe, name);
        let frames = procs.normalize(pid, 0, &[base + elf_addr + 1]);
        let UserFrame::Binary { binary, vaddr } = &frames[0] else {
            panic!("{name}: {frames:?}")
        };
        assert_eq!(*vaddr, elf_addr + 1, "{name}");
        let info = procs.binary(*binary).unwrap();
        assert_eq!(info.path, "/usr/bin/chain");
        let looked = symbolizer.symbolize(&info.binary, &[*vaddr]).unwrap();
        assert_eq!(looked[0].as_ref().unwrap()[0].function, name);
    }
    assert_eq!(procs.process_name(pid), "chain");
    let vdso = procs.normalize(pid, 0, &[0x7ffc00000010]);
    assert!(
        matches!(&vdso[0], UserFrame::Region { name, offset: 0x10 } if &**name == "[vdso]"),
        "{vdso:?}"
    );

    // A walk that reached the heap or unmapped memory read data as return addresses: the
    // stack is cut there, counted, and what the walk found beyond is dropped. The sampled PC
    // itself is always kept, wherever it is.
    let leaf = base + nm_symbol(&exe, "leaf") + 1;
    let middle = base + nm_symbol(&exe, "middle") + 1;
    let main = base + nm_symbol(&exe, "main") + 1;
    for garbage in [0x5555_a000_0100u64, 0x726f_6620_7369] {
        let before = stats.get(AgentCounter::UserStacksOutsideCode);
        let frames = procs.normalize(pid, 0, &[leaf, middle, garbage, main]);
        assert_eq!(frames.len(), 2, "{garbage:#x}: {frames:?}");
        assert_eq!(
            stats.get(AgentCounter::UserStacksOutsideCode),
            before + 1,
            "{garbage:#x}"
        );
    }
    let in_heap = procs.normalize(pid, 0, &[0x5555_a000_0100, middle, main]);
    assert_eq!(in_heap.len(), 3, "{in_heap:?}");

    // The binary vanishes from disk: frames already opened keep normalizing.
    fs::remove_file(in_root.join("chain")).unwrap();
    let again = procs.normalize(pid, 0, &[base + nm_symbol(&exe, "leaf")]);
    assert!(matches!(again[0], UserFrame::Binary { .. }), "{again:?}");
    assert_eq!(stats.get(AgentCounter::BinaryOpenFailed), 0);
}

#[test]
fn vanished_process_and_bogus_binary_are_counted() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("proc");
    fs::create_dir_all(&root).unwrap();
    let stats = Arc::new(AgentStats::default());
    let mut procs = Processes::new(&root, stats.clone());

    // No /proc/PID at all: the process exited before we looked.
    let frames = procs.normalize(9999, 0, &[0x401000, 0x402000]);
    assert!(
        frames
            .iter()
            .all(|f| matches!(f, UserFrame::Unmapped { .. })),
        "{frames:?}"
    );
    assert_eq!(stats.get(AgentCounter::MapsUnreadable), 1);

    // A mapping whose file is not an ELF: a region frame with the file offset, and a counter.
    let dir = root.join("77/root/opt");
    fs::create_dir_all(&dir).unwrap();
    fs::write(dir.join("junk"), b"\x7fELF but not really, truncated").unwrap();
    fs::write(dir.join("other"), b"not the mapped file").unwrap();
    fake_process(
        &root,
        77,
        "junk",
        &format!(
            "400000-401000 r-xp 00001000 {} /opt/junk\n500000-501000 r-xp 0 00:00 55 /opt/other\n",
            dev_ino(&dir.join("junk"))
        ),
    );
    let frames = procs.normalize(77, 0, &[0x400010]);
    assert!(
        matches!(&frames[0], UserFrame::Region { name, offset: 0x1010 } if &**name == "/opt/junk"),
        "{frames:?}"
    );
    assert_eq!(stats.get(AgentCounter::BinaryOpenFailed), 1);

    // A file at the mapped path that is not the mapped one (replaced after exec): not opened.
    let frames = procs.normalize(77, 0, &[0x500010]);
    assert!(
        matches!(&frames[0], UserFrame::Region { name, .. } if &**name == "/opt/other"),
        "{frames:?}"
    );
    assert_eq!(stats.get(AgentCounter::MappedFileReplaced), 1);
    assert_eq!(stats.get(AgentCounter::BinaryOpenFailed), 2);

    // Garbage in maps is an unreadable process, not a panic.
    fake_process(&root, 78, "bad", "this is not a maps file\n");
    let frames = procs.normalize(78, 0, &[0x1]);
    assert!(matches!(frames[0], UserFrame::Unmapped { .. }));
    assert_eq!(stats.get(AgentCounter::MapsUnreadable), 2);

    // Forgotten after two quiet intervals.
    procs.end_interval();
    procs.end_interval();
    procs.end_interval();
    assert_eq!(procs.tracked_processes(), 0);
}

/// A maps line that places `exe`'s executable segment at `base`, as the loader would, with
/// the given device and inode.
fn exec_mapping(exe: &Path, base: u64, dev_ino: &str, path: &str) -> String {
    let text = Binary::open(exe)
        .unwrap()
        .load_segments()
        .iter()
        .find(|s| s.executable)
        .copied()
        .expect("executable PT_LOAD");
    let start = (base + text.p_vaddr) & !0xfff;
    let end = (base + text.p_vaddr + text.p_memsz + 0xfff) & !0xfff;
    format!(
        "{start:x}-{end:x} r-xp {:08x} {dev_ino} {path}\n",
        text.p_offset & !0xfff
    )
}

fn gcc(src: &str, out: &Path) {
    let src = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(src);
    assert!(Command::new("gcc")
        .args(["-O0", "-pie", "-fPIE", "-o"])
        .arg(out)
        .arg(&src)
        .status()
        .unwrap()
        .success());
}

/// An inode freed and reused for another binary: a second process maps "the same" device and
/// inode, but the file now has another size and mtime. It must get its own binary, with its
/// own symbols, never the first binary's.
#[test]
fn a_recycled_inode_is_not_taken_for_the_old_binary() {
    let tmp = tempfile::tempdir().unwrap();
    let (first, second) = (tmp.path().join("chain"), tmp.path().join("deep"));
    gcc("chain.c", &first);
    gcc("deep_stack.c", &second);
    let root = tmp.path().join("proc");
    let base = 0x5555_5555_0000u64;
    // One file on disk, seen by both fake processes through hard links: rewriting it in
    // place keeps its device and inode, as a recycled inode would.
    let shared = tmp.path().join("installed");
    fs::copy(&first, &shared).unwrap();
    for (pid, exe) in [(501, &first), (502, &second)] {
        fake_process(
            &root,
            pid,
            "app",
            &exec_mapping(exe, base, &dev_ino(&shared), "/usr/bin/app"),
        );
        let bin_dir = root.join(pid.to_string()).join("root/usr/bin");
        fs::create_dir_all(&bin_dir).unwrap();
        fs::hard_link(&shared, bin_dir.join("app")).unwrap();
    }
    let stats = Arc::new(AgentStats::default());
    let mut procs = Processes::new(&root, stats.clone());
    let UserFrame::Binary { binary: old, .. } =
        procs.normalize(501, 0, &[base + nm_symbol(&first, "leaf")])[0]
    else {
        panic!("first binary not opened")
    };

    std::thread::sleep(std::time::Duration::from_millis(20));
    fs::write(&shared, fs::read(&second).unwrap()).unwrap(); // same inode, new contents
    let recurse = nm_symbol(&second, "recurse");
    let frames = procs.normalize(502, 0, &[base + recurse]);
    let UserFrame::Binary { binary: new, vaddr } = frames[0] else {
        panic!("{frames:?}")
    };
    assert_ne!(new, old, "the recycled inode reused the old binary");
    let info = procs.binary(new).unwrap();
    assert_eq!(
        info.binary.bytes().len() as u64,
        fs::metadata(&second).unwrap().len()
    );
    let mut symbolizer = Symbolizer::new(SymbolizerConfig::default());
    let looked = symbolizer.symbolize(&info.binary, &[vaddr]).unwrap();
    assert_eq!(looked[0].as_ref().unwrap()[0].function, "recurse");
    assert_eq!(stats.get(AgentCounter::BinaryOpenFailed), 0);
}

/// A pid flood within one interval: the table stays at its cap and every eviction is
/// counted; the newest process is kept.
#[test]
fn the_process_table_is_capped_and_evictions_are_counted() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("proc");
    for pid in 1000..1100 {
        fake_process(&root, pid, "flood", "");
    }
    let stats = Arc::new(AgentStats::default());
    let mut procs = Processes::new(&root, stats.clone()).with_max_processes(32);
    for pid in 1000..1100 {
        procs.normalize(pid, 0, &[0x40_1000]);
        assert!(
            procs.tracked_processes() <= 32,
            "{}",
            procs.tracked_processes()
        );
    }
    assert!(stats.get(AgentCounter::ProcessEvictions) >= 100 - 32);
    // The most recent ones are kept.
    let before = stats.get(AgentCounter::MapsUnreadable);
    procs.normalize(1099, 0, &[0x40_1000]);
    assert_eq!(
        stats.get(AgentCounter::MapsUnreadable),
        before,
        "1099 was read again"
    );
}
