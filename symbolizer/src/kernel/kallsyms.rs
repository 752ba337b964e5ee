//! `/proc/kallsyms` parsing: text symbols (`t`/`T`), with their `[module]`, sorted by address.

use std::path::Path;

use crate::{Error, Miss};

/// A symbol without a successor cannot be bounded by the table; past this offset it is a miss.
const LAST_SYMBOL_SPAN: u64 = 1 << 20;

/// The kernel's text symbols from `/proc/kallsyms`, sorted by address.
#[derive(Debug, Default)]
pub struct Kallsyms {
    /// Concatenated names; entries point into it so 200k symbols cost a few MiB.
    names: String,
    /// Concatenated module names.
    modules: String,
    entries: Vec<Entry>,
}

#[derive(Debug, Clone, Copy)]
struct Entry {
    addr: u64,
    name: (u32, u32),
    /// `(0, 0)` for the core kernel.
    module: (u32, u32),
}

/// The symbol containing a kernel address.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KernelSymbol<'a> {
    /// The symbol's name.
    pub name: &'a str,
    /// The module it belongs to; `None` for the core kernel.
    pub module: Option<&'a str>,
    /// The address's distance from the symbol's start.
    pub offset: u64,
}

impl Kallsyms {
    /// Reads and parses a kallsyms file (normally `/proc/kallsyms`).
    pub fn load(path: &Path) -> Result<Self, Error> {
        let text = std::fs::read_to_string(path).map_err(|source| Error::Io {
            path: path.to_path_buf(),
            source,
        })?;
        Ok(Self::parse(&text))
    }

    /// Parses kallsyms text. Malformed lines are skipped; all-zero addresses (kptr_restrict)
    /// give an empty table, so every lookup is [`Miss::NoSymbols`].
    pub fn parse(text: &str) -> Self {
        let mut k = Kallsyms::default();
        let mut last_module: Option<(&str, (u32, u32))> = None;
        for line in text.lines() {
            let mut parts = line.split_ascii_whitespace();
            let (Some(addr), Some(kind), Some(name)) = (parts.next(), parts.next(), parts.next())
            else {
                continue;
            };
            if !matches!(kind, "t" | "T") {
                continue;
            }
            let Ok(addr) = u64::from_str_radix(addr, 16) else {
                continue;
            };
            if addr == 0 {
                continue;
            }
            let module = match parts
                .next()
                .and_then(|m| m.strip_prefix('['))
                .and_then(|m| m.strip_suffix(']'))
            {
                None => (0, 0),
                Some(m) => match last_module {
                    Some((prev, range)) if prev == m => range,
                    _ => {
                        let range = push(&mut k.modules, m);
                        last_module = Some((m, range));
                        range
                    }
                },
            };
            let name = push(&mut k.names, name);
            k.entries.push(Entry { addr, name, module });
        }
        k.entries.sort_by_key(|e| e.addr);
        k
    }

    /// The number of text symbols.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// No text symbols: an empty file, or addresses hidden by `kptr_restrict`.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The nearest symbol at or below `addr`, bounded by the next symbol's address.
    pub fn lookup(&self, addr: u64) -> Result<KernelSymbol<'_>, Miss> {
        if self.entries.is_empty() {
            return Err(Miss::NoSymbols);
        }
        let i = self.entries.partition_point(|e| e.addr <= addr);
        if i == 0 {
            return Err(Miss::UnknownAddress);
        }
        let e = self.entries[i - 1];
        let offset = addr - e.addr;
        if i == self.entries.len() && offset >= LAST_SYMBOL_SPAN {
            return Err(Miss::UnknownAddress);
        }
        let module = (e.module != (0, 0)).then(|| get(&self.modules, e.module));
        Ok(KernelSymbol {
            name: get(&self.names, e.name),
            module,
            offset,
        })
    }
}

fn get(s: &str, r: (u32, u32)) -> &str {
    s.get(r.0 as usize..r.1 as usize).unwrap_or("")
}

fn push(buf: &mut String, s: &str) -> (u32, u32) {
    let start = buf.len() as u32;
    buf.push_str(s);
    (start, buf.len() as u32)
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAMPLE: &str = "\
ffffffff81000000 T _stext
ffffffff81000000 T _text
ffffffff81001000 t do_one_initcall
ffffffff81002000 D some_data
ffffffff81003000 T schedule
0000000000000000 A fixed_percpu_data
ffffffffc0001000 t nf_hook [nf_tables]
ffffffffc0001100 T nft_do_chain [nf_tables]
garbage line
ffffffffc0002000 t ext4_foo\t[ext4]
";

    #[test]
    fn lookups() {
        let k = Kallsyms::parse(SAMPLE);
        assert_eq!(k.len(), 7);
        let s = k.lookup(0xffffffff81001010).unwrap();
        assert_eq!(
            (s.name, s.module, s.offset),
            ("do_one_initcall", None, 0x10)
        );
        // data symbols do not bound text symbols
        assert_eq!(
            k.lookup(0xffffffff81002010).unwrap().name,
            "do_one_initcall"
        );
        let s = k.lookup(0xffffffffc0001104).unwrap();
        assert_eq!(
            (s.name, s.module, s.offset),
            ("nft_do_chain", Some("nf_tables"), 4)
        );
        assert_eq!(k.lookup(0xffffffffc0002001).unwrap().module, Some("ext4"));
        assert_eq!(k.lookup(0x1000), Err(Miss::UnknownAddress));
        assert_eq!(
            k.lookup(0xffffffffc0002000 + LAST_SYMBOL_SPAN),
            Err(Miss::UnknownAddress)
        );
    }

    #[test]
    fn restricted_kallsyms_has_no_symbols() {
        let k = Kallsyms::parse("0000000000000000 T _stext\n0000000000000000 t foo\n");
        assert!(k.is_empty());
        assert_eq!(k.lookup(0xffffffff81000000), Err(Miss::NoSymbols));
    }

    /// The live table. The suite runs as root, so `/proc/kallsyms` must be readable and show
    /// real addresses: an unreadable or all-zero table fails here instead of passing vacuously.
    #[test]
    fn real_kallsyms() {
        let path = Path::new("/proc/kallsyms");
        let k = Kallsyms::load(path).unwrap_or_else(|e| {
            let cause = std::error::Error::source(&e).map_or(String::new(), ToString::to_string);
            panic!("{e}: {cause} (the suite runs as root)")
        });
        let text = std::fs::read_to_string(path).unwrap();
        // Text symbols with a visible address, counted without the parser.
        let visible: Vec<(u64, &str)> = text
            .lines()
            .filter_map(|l| {
                let f: Vec<&str> = l.split_whitespace().collect();
                let addr = u64::from_str_radix(f.first()?, 16).ok()?;
                let name = *f.get(2)?;
                (matches!(f.get(1), Some(&("t" | "T"))) && addr != 0).then_some((addr, name))
            })
            .collect();
        assert!(
            !visible.is_empty(),
            "{} hides addresses (kptr_restrict = {:?}) although the suite runs as root",
            path.display(),
            std::fs::read_to_string("/proc/sys/kernel/kptr_restrict").map(|s| s.trim().to_owned())
        );
        assert_eq!(k.len(), visible.len(), "parsed vs visible text symbols");
        let &(addr, _) = visible
            .iter()
            .find(|(_, n)| *n == "schedule")
            .expect("schedule in kallsyms");
        // Any text symbol at the same address is an equally right answer.
        let aliases: Vec<&str> = visible
            .iter()
            .filter(|(a, _)| *a == addr)
            .map(|(_, n)| *n)
            .collect();
        let s = k.lookup(addr + 1).unwrap();
        assert_eq!(s.offset, 1);
        assert!(
            aliases.contains(&s.name),
            "{} not among {aliases:?}",
            s.name
        );
    }
}
