//! Kernel struct offsets from BTF. Rust eBPF programs cannot emit CO-RE relocations, so the
//! agent resolves the offsets it needs here and hands them to the program as globals.
use anyhow::{anyhow, bail, Context as _, Result};
use btf_rs::{Btf, Type};
use tracing::debug;

/// Byte offset of a member reached by `path` from struct `root`, descending through
/// anonymous structs and unions on the way.
pub fn member_offset(btf: &Btf, root: &str, path: &[&str]) -> Result<u64> {
    let mut ty = btf
        .resolve_types_by_name(root)
        .with_context(|| format!("no type {root} in BTF"))?
        .into_iter()
        .find(|t| matches!(t, Type::Struct(_)))
        .ok_or_else(|| anyhow!("{root} is not a struct"))?;
    let mut offset_bits = 0u64;
    for name in path {
        let (bits, member_ty) = find_member(btf, &ty, name, 0)?
            .ok_or_else(|| anyhow!("{root} has no member {name}"))?;
        offset_bits += bits;
        ty = member_ty;
    }
    if !offset_bits.is_multiple_of(8) {
        bail!("{root}.{} is a bitfield", path.join("."));
    }
    Ok(offset_bits / 8)
}

fn find_member(btf: &Btf, ty: &Type, name: &str, depth: u32) -> Result<Option<(u64, Type)>> {
    if depth > 8 {
        return Ok(None);
    }
    let members = match ty {
        Type::Struct(s) | Type::Union(s) => &s.members,
        _ => return Ok(None),
    };
    for m in members {
        let mname = btf.resolve_name(m).unwrap_or_default();
        let mty = resolve_typedefs(btf, btf.resolve_chained_type(m)?)?;
        if mname == name {
            return Ok(Some((u64::from(m.bit_offset()), mty)));
        }
        if mname.is_empty() {
            if let Some((inner, t)) = find_member(btf, &mty, name, depth + 1)? {
                return Ok(Some((u64::from(m.bit_offset()) + inner, t)));
            }
        }
    }
    Ok(None)
}

fn resolve_typedefs(btf: &Btf, mut ty: Type) -> Result<Type> {
    for _ in 0..16 {
        ty = match &ty {
            Type::Typedef(t) => btf.resolve_chained_type(t)?,
            Type::Const(t) => btf.resolve_chained_type(t)?,
            Type::Volatile(t) => btf.resolve_chained_type(t)?,
            _ => return Ok(ty),
        };
    }
    Ok(ty)
}

/// offsetof(task_struct, thread.fsbase) on the running kernel.
pub fn task_fsbase_offset() -> Result<u64> {
    member_offset(&vmlinux_btf()?, "task_struct", &["thread", "fsbase"])
}

const VMLINUX_BTF: &str = "/sys/kernel/btf/vmlinux";

/// The running kernel's BTF, decoded on demand from a mapping: the agent needs two structs
/// of ~100k types, and a full parse would cost start-up time. sysfs BTF can be mapped only
/// on recent kernels (6.12 and older refuse with ENODEV); there a copy in a memfd is mapped.
fn vmlinux_btf() -> Result<Btf> {
    match Btf::from_file_with_backend(VMLINUX_BTF, btf_rs::Backend::Mmap) {
        Ok(btf) => Ok(btf),
        Err(error) => {
            debug!(error = %error, "kernel BTF cannot be mapped; mapping a copy");
            mapped_copy(std::path::Path::new(VMLINUX_BTF))
        }
    }
}

/// BTF from a memfd copy of `path`, read with plain reads.
pub fn mapped_copy(path: &std::path::Path) -> Result<Btf> {
    use std::os::fd::AsRawFd as _;
    let fd = rustix::fs::memfd_create("kernel-btf", rustix::fs::MemfdFlags::CLOEXEC)
        .context("memfd_create for a copy of kernel BTF")?;
    let mut copy = std::fs::File::from(fd);
    let mut source =
        std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
    std::io::copy(&mut source, &mut copy)
        .with_context(|| format!("copying {} to a memfd", path.display()))?;
    // btf-rs opens by path; the memfd's /proc/self/fd link reopens the same file.
    let by_fd = format!("/proc/self/fd/{}", copy.as_raw_fd());
    Btf::from_file_with_backend(&by_fd, btf_rs::Backend::Mmap)
        .with_context(|| format!("decoding the copy of {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `bits_offset` of `member` in the struct `name`, from bpftool's raw dump.
    fn bpftool_bits(dump: &str, name: &str, member: &str) -> u64 {
        let header = format!("STRUCT '{name}' size=");
        let body = dump
            .lines()
            .skip_while(|l| !l.contains(&header))
            .skip(1)
            .take_while(|l| l.starts_with('\t'));
        let needle = format!("'{member}' type_id=");
        body.filter_map(|l| l.trim().strip_prefix(&needle))
            .find_map(|rest| rest.split_once("bits_offset=")?.1.parse().ok())
            .unwrap_or_else(|| panic!("bpftool shows no {name}.{member}"))
    }

    /// Both ways of opening kernel BTF give bpftool's offsets.
    #[test]
    fn offsets_match_bpftool_through_the_mapping_and_the_copy() {
        let out = std::process::Command::new("bpftool")
            .args(["btf", "dump", "file", VMLINUX_BTF])
            .output()
            .expect("bpftool (Debian package bpftool; cargo xtask setup --test-tools)");
        assert!(out.status.success());
        let dump = String::from_utf8_lossy(&out.stdout);
        let fsbase = (bpftool_bits(&dump, "task_struct", "thread")
            + bpftool_bits(&dump, "thread_struct", "fsbase"))
            / 8;
        let direct = Btf::from_file_with_backend(VMLINUX_BTF, btf_rs::Backend::Mmap)
            .expect("this kernel maps sysfs BTF");
        let copy = mapped_copy(std::path::Path::new(VMLINUX_BTF)).unwrap();
        for btf in [&direct, &copy] {
            assert_eq!(
                member_offset(btf, "task_struct", &["thread", "fsbase"]).unwrap(),
                fsbase
            );
            for member in ["pid", "tgid", "mm"] {
                assert_eq!(
                    member_offset(btf, "task_struct", &[member]).unwrap(),
                    bpftool_bits(&dump, "task_struct", member) / 8,
                    "{member}"
                );
            }
        }
    }
}
