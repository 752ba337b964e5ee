//! Function symbols sorted by address, with nearest-containing-symbol lookup.

use object::{Object, ObjectSection, ObjectSymbol, SectionIndex, SymbolKind, SymbolSection};

use crate::Miss;

/// One function symbol, with its resolved extent `[start, end)`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ElfSymbol {
    /// `st_value`: the first address.
    pub start: u64,
    /// One past the last address: `start + st_size`, or for a zero-size symbol the next
    /// symbol's start, bounded by its section's end.
    pub end: u64,
    /// The raw (mangled) name.
    pub name: Box<str>,
    /// `st_size` was non-zero; such symbols win over zero-size ones at the same place.
    sized: bool,
    global: bool,
}

/// The function symbols of one binary, from `.symtab` and `.dynsym` merged.
#[derive(Debug, Default)]
pub struct ElfSymbols {
    syms: Vec<ElfSymbol>,
    /// `max_end[i]` = largest `end` among `syms[..=i]`; bounds the backward scan in `lookup`.
    max_end: Vec<u64>,
}

impl ElfSymbols {
    /// The function (text) symbols of both tables that are defined in a section, with a name and
    /// a non-zero address; a symbol present in both tables is kept once.
    pub fn from_object(obj: &object::File<'_>) -> Self {
        let mut raw = Vec::new();
        let mut zero_sized_sections = Vec::new();
        for sym in obj.symbols().chain(obj.dynamic_symbols()) {
            if sym.kind() != SymbolKind::Text {
                continue;
            }
            let SymbolSection::Section(section) = sym.section() else {
                continue;
            };
            let Ok(name) = sym.name() else { continue };
            if name.is_empty() || sym.address() == 0 {
                continue;
            }
            raw.push((
                sym.address(),
                sym.size(),
                name,
                section,
                sym.is_global() || sym.is_weak(),
            ));
            if sym.size() == 0 {
                zero_sized_sections.push(section);
            }
        }
        zero_sized_sections.sort_unstable_by_key(|s| s.0);
        zero_sized_sections.dedup();
        let section_end = |idx: SectionIndex| -> Option<u64> {
            let s = obj.section_by_index(idx).ok()?;
            s.address().checked_add(s.size())
        };
        let section_ends: Vec<(SectionIndex, Option<u64>)> = zero_sized_sections
            .iter()
            .map(|&s| (s, section_end(s)))
            .collect();

        raw.sort_by(|a, b| a.0.cmp(&b.0).then(b.1.cmp(&a.1)));
        // The same function often appears in both tables: keep one.
        raw.dedup_by(|b, a| a.0 == b.0 && a.1 == b.1 && a.2 == b.2);

        // next_start[i]: the first start greater than raw[i]'s (linear, even with many aliases).
        let mut next_start = vec![None; raw.len()];
        for i in (0..raw.len().saturating_sub(1)).rev() {
            next_start[i] = if raw[i + 1].0 > raw[i].0 {
                Some(raw[i + 1].0)
            } else {
                next_start[i + 1]
            };
        }
        let mut syms = Vec::with_capacity(raw.len());
        for (i, &(start, size, name, section, global)) in raw.iter().enumerate() {
            let end = if size != 0 {
                start.saturating_add(size)
            } else {
                // A zero-size symbol runs to the next symbol, but not past its section.
                let next = next_start[i];
                let sec_end = section_ends
                    .binary_search_by_key(&section.0, |(s, _)| s.0)
                    .ok()
                    .and_then(|k| section_ends[k].1);
                match (next, sec_end) {
                    (Some(n), Some(e)) => n.min(e),
                    (Some(n), None) => n,
                    (None, Some(e)) => e,
                    (None, None) => start.saturating_add(1),
                }
                .max(start.saturating_add(1))
            };
            syms.push(ElfSymbol {
                start,
                end,
                name: name.into(),
                sized: size != 0,
                global,
            });
        }
        Self::from_sorted(syms)
    }

    fn from_sorted(syms: Vec<ElfSymbol>) -> Self {
        let mut max_end = Vec::with_capacity(syms.len());
        let mut m = 0;
        for s in &syms {
            m = m.max(s.end);
            max_end.push(m);
        }
        ElfSymbols { syms, max_end }
    }

    /// The number of symbols.
    pub fn len(&self) -> usize {
        self.syms.len()
    }

    /// No function symbols at all.
    pub fn is_empty(&self) -> bool {
        self.syms.is_empty()
    }

    /// The symbols, by ascending start address.
    pub fn iter(&self) -> impl Iterator<Item = &ElfSymbol> {
        self.syms.iter()
    }

    /// The innermost symbol containing `addr`: the greatest start among those that contain it;
    /// at equal starts, a sized symbol beats a zero-size one and a global beats a local.
    pub fn lookup(&self, addr: u64) -> Result<&ElfSymbol, Miss> {
        if self.syms.is_empty() {
            return Err(Miss::NoSymbols);
        }
        let upper = self.syms.partition_point(|s| s.start <= addr);
        let mut best: Option<&ElfSymbol> = None;
        for i in (0..upper).rev() {
            if self.max_end[i] <= addr {
                break;
            }
            let s = &self.syms[i];
            if addr >= s.end {
                continue;
            }
            match best {
                None => best = Some(s),
                Some(b) if b.start == s.start && (s.sized, s.global) > (b.sized, b.global) => {
                    best = Some(s)
                }
                Some(b) if b.start != s.start => break,
                _ => {}
            }
        }
        best.ok_or(Miss::UnknownAddress)
    }

    /// Address of the symbol named exactly `name` (first match).
    pub fn address_of(&self, name: &str) -> Option<u64> {
        self.syms.iter().find(|s| &*s.name == name).map(|s| s.start)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sym(start: u64, end: u64, name: &str, sized: bool) -> ElfSymbol {
        ElfSymbol {
            start,
            end,
            name: name.into(),
            sized,
            global: true,
        }
    }

    #[test]
    fn nested_and_gaps() {
        let t = ElfSymbols::from_sorted(vec![
            sym(0x100, 0x200, "outer", true),
            sym(0x140, 0x150, "label", false),
            sym(0x300, 0x310, "f", true),
        ]);
        assert_eq!(&*t.lookup(0x100).unwrap().name, "outer");
        assert_eq!(&*t.lookup(0x145).unwrap().name, "label");
        assert_eq!(&*t.lookup(0x150).unwrap().name, "outer");
        assert_eq!(&*t.lookup(0x1ff).unwrap().name, "outer");
        assert_eq!(t.lookup(0x200), Err(Miss::UnknownAddress));
        assert_eq!(t.lookup(0xff), Err(Miss::UnknownAddress));
        assert_eq!(&*t.lookup(0x30f).unwrap().name, "f");
        assert_eq!(t.lookup(0x310), Err(Miss::UnknownAddress));
        assert_eq!(ElfSymbols::default().lookup(1), Err(Miss::NoSymbols));
    }

    #[test]
    fn sized_wins_at_same_start() {
        let t = ElfSymbols::from_sorted(vec![
            sym(0x100, 0x180, "alias", false),
            sym(0x100, 0x120, "real", true),
        ]);
        assert_eq!(&*t.lookup(0x110).unwrap().name, "real");
        assert_eq!(&*t.lookup(0x130).unwrap().name, "alias");
    }
}
