//! Reads the trace context of the interrupted thread: Go pprof labels through the goroutine,
//! or an OpenTelemetry thread-context record through native TLS. Every read is a
//! `bpf_probe_read_*`, so garbage memory yields a counted miss, never a fault.
use core::ffi::c_void;

use aya_ebpf::helpers::generated::{
    bpf_get_current_task, bpf_probe_read_kernel, bpf_probe_read_user,
};
use profiler_common::{
    ContextConfig, Counter, RawContext, RawLabel, CONFIG_FLAG_REQUIRE_SAMPLED, CONTEXT_FLAG_IDS,
    CONTEXT_FLAG_TRUNCATED, CONTEXT_SOURCE_GO, CONTEXT_SOURCE_OTEL, GO_LABELS_MAP, GO_LABELS_SLICE,
    LABEL_KEY_LEN, LABEL_VALUE_LEN, MAX_LABELS,
};

use crate::{
    count,
    user_memory::{read_into, read_u64},
};

/// Set by the agent from kernel BTF: offsetof(task_struct, thread.fsbase).
#[no_mangle]
static TASK_FSBASE_OFFSET: u64 = 0;

/// The user thread pointer (fsbase) of the current task.
#[inline(always)]
fn thread_pointer() -> Option<u64> {
    // SAFETY: a volatile read of a frozen .rodata global.
    let off = unsafe { core::ptr::read_volatile(&TASK_FSBASE_OFFSET) };
    if off == 0 {
        return None;
    }
    // SAFETY: bpf_get_current_task has no preconditions.
    let task = unsafe { bpf_get_current_task() };
    let mut fsbase: u64 = 0;
    // SAFETY: probe read of 8 bytes from the current task_struct into a local.
    let ret = unsafe {
        bpf_probe_read_kernel(
            &mut fsbase as *mut u64 as *mut c_void,
            8,
            (task + off) as *const c_void,
        )
    };
    (ret == 0 && fsbase != 0).then_some(fsbase)
}

/// Copies a string of `len` bytes at `ptr` into `dst`, cut to `CAP`; returns the kept length.
#[inline(always)]
fn copy_str<const CAP: usize>(dst: &mut [u8; CAP], ptr: u64, len: u64, truncated: &mut bool) -> u8 {
    if len > CAP as u64 {
        *truncated = true;
    }
    let kept = if len > CAP as u64 { CAP as u64 } else { len };
    if kept == 0 {
        return 0;
    }
    // The compiler keeps `kept` on the stack (it is also the return value), and verifiers up
    // to 6.1 forget a spilled register's bounds on reload. So the size is loaded on its own
    // and bounded again right at the call, where no spill can come between.
    // SAFETY: a volatile read of a local.
    let size = unsafe { core::ptr::read_volatile(&kept) };
    if size == 0 || size > CAP as u64 {
        return 0;
    }
    // SAFETY: size <= CAP, the size of `dst`.
    let ret = unsafe {
        bpf_probe_read_user(
            dst.as_mut_ptr() as *mut c_void,
            size as u32,
            ptr as *const c_void,
        )
    };
    if ret == 0 {
        kept as u8
    } else {
        0
    }
}

#[inline(always)]
fn copy_label(out: &mut RawLabel, kv: &[u64; 4], truncated: &mut bool) {
    out.key_len = copy_str(&mut out.key, kv[0], kv[1], truncated);
    out.value_len = copy_str(&mut out.value, kv[2], kv[3], truncated);
}

/// Fills `ctx` for the current thread according to its process's config.
#[inline(always)]
pub fn capture(cfg: &ContextConfig, ctx: &mut RawContext) {
    ctx.source = 0;
    ctx.flags = 0;
    ctx.n_labels = 0;
    let Some(tp) = thread_pointer() else {
        count(Counter::ContextReadError);
        return;
    };
    let slot = (tp as i64).wrapping_add(cfg.tls_offset) as u64;
    if cfg.source == CONTEXT_SOURCE_GO as u32 {
        go_labels(cfg, slot, ctx);
    } else if cfg.source == CONTEXT_SOURCE_OTEL as u32 {
        otel_record(cfg, slot, ctx);
    }
}

/// OTEP 4947: the TLS slot holds a pointer to `{trace_id[16], span_id[8], valid, trace_flags, ..}`.
#[inline(always)]
fn otel_record(cfg: &ContextConfig, slot: u64, ctx: &mut RawContext) {
    let Some(record) = read_u64(slot) else {
        count(Counter::ContextReadError);
        return;
    };
    if record == 0 {
        return; // no active span on this thread
    }
    // One snapshot of {trace_id, span_id, valid, trace_flags}, read twice: a writer on another
    // CPU may be mid-update, and a torn copy must never become a label.
    let mut first = [0u64; 4];
    let mut second = [0u64; 4];
    if !read_into(&mut first, record) || !read_into(&mut second, record) {
        count(Counter::ContextReadError);
        return;
    }
    if first != second {
        count(Counter::ContextInvalid);
        return;
    }
    let status = first[3].to_le_bytes();
    if status[0] != 1 {
        count(Counter::ContextInvalid);
        return;
    }
    if cfg.flags & CONFIG_FLAG_REQUIRE_SAMPLED != 0 && status[1] & 1 == 0 {
        count(Counter::ContextUnsampled);
        return;
    }
    ctx.trace_id[..8].copy_from_slice(&first[0].to_le_bytes());
    ctx.trace_id[8..].copy_from_slice(&first[1].to_le_bytes());
    ctx.span_id = first[2].to_le_bytes();
    ctx.trace_flags = status[1];
    ctx.flags = CONTEXT_FLAG_IDS;
    ctx.source = CONTEXT_SOURCE_OTEL;
    count(Counter::ContextCaptured);
}

/// Go: g from TLS, then g.m.curg (so samples on g0 or gsignal still get the user goroutine),
/// then curg.labels in the version's layout.
#[inline(always)]
fn go_labels(cfg: &ContextConfig, slot: u64, ctx: &mut RawContext) {
    let labels = match go_label_set(cfg, slot) {
        Ok(Some(labels)) => labels,
        Ok(None) => return,
        Err(()) => {
            count(Counter::ContextReadError);
            return;
        }
    };
    let mut truncated = false;
    let n = if cfg.go_labels_layout == GO_LABELS_SLICE {
        go_slice_labels(labels, ctx, &mut truncated)
    } else if cfg.go_labels_layout == GO_LABELS_MAP {
        go_map_labels(labels, ctx, &mut truncated)
    } else {
        None
    };
    let Some(n) = n else {
        count(Counter::ContextReadError);
        return;
    };
    ctx.n_labels = n;
    ctx.source = CONTEXT_SOURCE_GO;
    if truncated {
        ctx.flags |= CONTEXT_FLAG_TRUNCATED;
        count(Counter::LabelsTruncated);
    }
    if n > 0 {
        count(Counter::ContextCaptured);
    }
}

/// Follows g → g.m → m.curg → curg.labels. `Ok(None)` when a link is NULL: a thread Go does
/// not run goroutines on, an idle M, or a goroutine without labels. `Err` when a read fails.
#[inline(always)]
fn go_label_set(cfg: &ContextConfig, slot: u64) -> Result<Option<u64>, ()> {
    let mut ptr = read_u64(slot).ok_or(())?;
    for offset in [cfg.go_g_m, cfg.go_m_curg, cfg.go_g_labels] {
        if ptr == 0 {
            return Ok(None);
        }
        ptr = read_u64(ptr + offset as u64).ok_or(())?;
    }
    Ok((ptr != 0).then_some(ptr))
}

/// Go 1.24+: `labels` points at a slice header of `{key, value string}` pairs.
#[inline(always)]
fn go_slice_labels(labels: u64, ctx: &mut RawContext, truncated: &mut bool) -> Option<u8> {
    let mut header = [0u64; 2];
    if !read_into(&mut header, labels) {
        return None;
    }
    let (ptr, len) = (header[0], header[1]);
    if len > MAX_LABELS as u64 {
        *truncated = true;
    }
    let mut n = 0u8;
    for i in 0..MAX_LABELS {
        if i as u64 >= len {
            break;
        }
        let mut kv = [0u64; 4];
        if !read_into(&mut kv, ptr + (i * 32) as u64) {
            return None;
        }
        copy_label(&mut ctx.labels[i], &kv, truncated);
        n += 1;
    }
    Some(n)
}

/// Go 1.19, 1.21–1.23: `labels` points at a map variable, which points at the hmap. Label sets are
/// small, so only the first bucket is read (B == 0 holds up to 8 entries); more is counted
/// as truncation.
#[inline(always)]
fn go_map_labels(labels: u64, ctx: &mut RawContext, truncated: &mut bool) -> Option<u8> {
    let hmap = read_u64(labels)?;
    if hmap == 0 {
        return Some(0);
    }
    let mut head = [0u64; 3]; // count, flags/B/noverflow/hash0, buckets
    if !read_into(&mut head, hmap) {
        return None;
    }
    let b = (head[1] >> 8) & 0xff;
    if b != 0 {
        *truncated = true;
    }
    let bucket = head[2];
    let mut tophash = [0u8; 8];
    if !read_into(&mut tophash, bucket) {
        return None;
    }
    let mut n = 0usize;
    // An index loop on purpose: the iterator form clippy suggests made the verifier process
    // 252k instructions instead of 77k (measured on 6.18).
    #[allow(clippy::needless_range_loop)]
    for i in 0..8usize {
        // 0 and 1 mark empty slots; 2..=4 evacuated ones.
        if tophash[i] < 5 {
            continue;
        }
        let mut k = [0u64; 2];
        let mut v = [0u64; 2];
        if !read_into(&mut k, bucket + 8 + (i * 16) as u64)
            || !read_into(&mut v, bucket + 8 + 128 + (i * 16) as u64)
        {
            return None;
        }
        let idx = n & (MAX_LABELS - 1);
        copy_label(&mut ctx.labels[idx], &[k[0], k[1], v[0], v[1]], truncated);
        n += 1;
    }
    Some(n as u8)
}

const _: () =
    assert!(MAX_LABELS.is_power_of_two() && LABEL_KEY_LEN <= 127 && LABEL_VALUE_LEN <= 127);
