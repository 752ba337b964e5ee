//! What binutils says about a binary, as a reference that shares nothing with the crate's
//! tables and walker: function extents from `nm -S` and call instructions from `objdump -d`.

use std::collections::HashMap;
use std::process::Command;

/// One ELF file's functions and calls, by ELF vaddr.
pub struct CallSites {
    /// (start, end, name) of each sized function symbol, sorted by start.
    functions: Vec<(u64, u64, String)>,
    /// Address right after each call instruction -> the call's target when it is direct.
    returns: HashMap<u64, Option<String>>,
}

impl CallSites {
    /// Runs `nm` and `objdump` on `path` (demangled names, as `nm --demangle` gives them).
    pub fn load(path: &str) -> CallSites {
        let mut functions = Vec::new();
        for dynamic in [false, true] {
            let mut cmd = Command::new("nm");
            cmd.args(["--defined-only", "--demangle", "--print-size"]);
            if dynamic {
                cmd.arg("-D");
            }
            for line in output(cmd.arg(path)).lines() {
                // "addr size type name", the name possibly with spaces; unsized symbols have
                // no size field and are skipped.
                let mut it = line.splitn(4, ' ');
                let (Some(addr), Some(size), Some(kind), Some(name)) =
                    (it.next(), it.next(), it.next(), it.next())
                else {
                    continue;
                };
                if !matches!(kind, "t" | "T" | "W" | "w" | "i") {
                    continue;
                }
                let (Ok(addr), Ok(size)) =
                    (u64::from_str_radix(addr, 16), u64::from_str_radix(size, 16))
                else {
                    continue;
                };
                functions.push((addr, addr + size, base_name(name).to_owned()));
            }
        }
        functions.sort();
        functions.dedup_by_key(|f| f.0);
        let mut returns = HashMap::new();
        let disasm = output(Command::new("objdump").args(["-d", "-w", "-C"]).arg(path));
        for line in disasm.lines() {
            // "  addr:\tbytes \tmnemonic operands"
            let mut parts = line.split('\t');
            let (Some(addr), Some(bytes), Some(insn)) = (parts.next(), parts.next(), parts.next())
            else {
                continue;
            };
            let Some(Ok(addr)) = addr
                .trim()
                .strip_suffix(':')
                .map(|a| u64::from_str_radix(a, 16))
            else {
                continue;
            };
            let mut words = insn.split_whitespace();
            if !words.next().is_some_and(|m| m.starts_with("call")) {
                continue;
            }
            let len = bytes.split_whitespace().count() as u64;
            // Direct: "call   1139 <leaf>"; indirect: "call   *%rax", "call   *0x10(%rip) # ...".
            let target = words
                .next()
                .filter(|op| !op.starts_with('*'))
                .and_then(|_| {
                    let start = insn.find('<')? + 1;
                    let end = insn.rfind('>')?;
                    Some(base_name(&insn[start..end]).to_owned())
                });
            returns.insert(addr + len, target);
        }
        assert!(
            !functions.is_empty() && !returns.is_empty(),
            "nm/objdump found no functions or no calls in {path}"
        );
        CallSites { functions, returns }
    }

    /// The sized function symbol containing `vaddr`.
    pub fn function_at(&self, vaddr: u64) -> Option<&str> {
        let i = self.functions.partition_point(|f| f.0 <= vaddr);
        let (start, end, name) = self.functions.get(i.checked_sub(1)?)?;
        (*start..*end).contains(&vaddr).then_some(name.as_str())
    }

    /// `Some(target)` when the instruction ending right before `ret_addr` is a call: the
    /// callee's name for a direct call, `None` for an indirect one.
    pub fn call_before(&self, ret_addr: u64) -> Option<Option<&str>> {
        self.returns.get(&ret_addr).map(Option::as_deref)
    }
}

/// Every symbol's address (local ones included, `.L` labels not), by name, from `nm`.
pub fn symbol_addresses(path: &str) -> HashMap<String, u64> {
    output(Command::new("nm").arg(path))
        .lines()
        .filter_map(|line| {
            let mut it = line.split_whitespace();
            let (addr, _, name) = (it.next()?, it.next()?, it.next()?);
            Some((name.to_owned(), u64::from_str_radix(addr, 16).ok()?))
        })
        .collect()
}

/// A symbol without its `@plt` or `@@GLIBC_2.2.5` suffix. (A call into the middle of a
/// function keeps its `+0x..` and so names no function.)
fn base_name(name: &str) -> &str {
    name.split('@').next().unwrap_or(name)
}

fn output(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}
