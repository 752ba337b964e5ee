//! Kernel struct offsets from BTF. Rust eBPF programs cannot emit CO-RE relocations, so the
//! agent resolves the offsets it needs here and hands them to the program as globals.
use anyhow::{anyhow, bail, Context as _, Result};
use btf_rs::{Btf, Type};

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
    // Mmap backend: types are decoded on demand; we need only two structs of ~100k types.
    let btf = Btf::from_file_with_backend("/sys/kernel/btf/vmlinux", btf_rs::Backend::Mmap)
        .context("reading /sys/kernel/btf/vmlinux")?;
    member_offset(&btf, "task_struct", &["thread", "fsbase"])
}
