//! Loads the eBPF program, attaches it to every CPU and reads its counters.
use crate::error_chain::chain;
use std::mem::size_of;

use anyhow::{anyhow, Context as _, Result};
use aya::{
    maps::{HashMap, MapData, PerCpuArray, RingBuf},
    programs::{
        perf_event::{PerfEventConfig, PerfEventScope, SamplePolicy, SoftwareEvent},
        PerfEvent, RawTracePoint,
    },
    Ebpf, EbpfLoader,
};
use profiler_common::{names, ContextConfig, Counter, RawSample, PROGRAM_NAME};

use tracing::{debug, info, warn};

use crate::{bpf::mapped_rows::MappedRows, enrich::unwind_tables::UnwindMaps};

/// Bytes one record takes in the ring: the sample plus the kernel's 8-byte record header.
pub const RECORD_BYTES: u64 = (size_of::<RawSample>() as u64 + 8 + 7) & !7;
const PAGE: u64 = 4096;
const MIN_RING_BYTES: u64 = 16 * PAGE;

/// Ring size for a one-second burst on every CPU, doubled, as a power-of-two number of pages.
pub fn ring_buffer_bytes(frequency: u64, cpus: u64, requested: Option<u64>) -> u64 {
    let wanted = requested.unwrap_or_else(|| frequency * cpus * RECORD_BYTES * 2);
    let floor = if requested.is_some() {
        PAGE
    } else {
        MIN_RING_BYTES
    };
    wanted.max(floor).next_power_of_two()
}

/// The kernel counters summed over CPUs, indexed by `Counter as usize`.
pub type KernelCounters = [u64; Counter::COUNT as usize];

/// What to load: the flags that shape the program and its maps.
#[derive(Debug, Clone, Copy)]
pub struct ProgramOptions<'a> {
    /// Samples per second per CPU.
    pub frequency: u64,
    /// Only these processes are sampled (empty: all).
    pub pids: &'a [u32],
    /// `--ring-buffer-bytes`, if given.
    pub ring_request: Option<u64>,
    /// Size of the unwind-row array; `None` disables unwind tables.
    pub unwind_rows: Option<u32>,
    /// Read trace contexts (needs the BTF offset of `task_struct.thread.fsbase`).
    pub trace_context: bool,
}

/// The loaded, attached program.
pub struct LoadedProgram {
    ebpf: Ebpf,
    counters: PerCpuArray<MapData, u64>,
    /// CPUs the perf event is attached to.
    pub attached_cpus: Vec<u32>,
    /// CPUs it could not be attached to (logged, counted, not fatal).
    pub failed_cpus: Vec<u32>,
    /// The ring's size.
    pub ring_bytes: u64,
    /// The verifier's processed-instruction count, when the kernel reports it.
    pub verified_insns: Option<u32>,
}

/// What `load_and_attach` hands over besides the program: the ring, the per-process
/// trace-context map (None when kernel BTF could not give the thread-pointer offset, so no
/// context is read), and the unwind-table maps (None with `unwind_rows == None`).
pub struct LoadedMaps {
    /// Samples from the kernel.
    pub ring: RingBuf<MapData>,
    /// Lifecycle events and requests; `None` when the tracepoints could not be attached.
    pub events: Option<RingBuf<MapData>>,
    /// Per-process trace-context configuration.
    pub contexts: Option<HashMap<MapData, u32, ContextConfig>>,
    /// Unwind tables and mappings.
    pub unwind: Option<UnwindMaps>,
}

/// Raises RLIMIT_MEMLOCK; kernels before 5.11 charge BPF maps against it. Newer kernels
/// charge the memory cgroup instead, so a failure here only matters if loading fails later.
fn raise_memlock() {
    let rlim = libc::rlimit {
        rlim_cur: libc::RLIM_INFINITY,
        rlim_max: libc::RLIM_INFINITY,
    };
    // SAFETY: setrlimit reads the struct we pass and has no other effect on memory.
    let ret = unsafe { libc::setrlimit(libc::RLIMIT_MEMLOCK, &rlim) };
    if ret != 0 {
        debug!(error = %std::io::Error::last_os_error(), "could not raise RLIMIT_MEMLOCK (not needed on kernels >= 5.11)");
    }
}

impl LoadedProgram {
    /// Loads the program with the given filter and ring size, and attaches it to every online CPU.
    /// A CPU that fails to attach is logged and counted; only failing on all CPUs is an error.
    /// `unwind_rows` sizes the unwind-table row array; None disables tables.
    pub fn load_and_attach(opts: ProgramOptions<'_>) -> Result<(Self, LoadedMaps)> {
        let ProgramOptions {
            frequency,
            pids,
            ring_request,
            unwind_rows,
            trace_context,
        } = opts;
        raise_memlock();
        let cpus = aya::util::online_cpus()
            .map_err(|(what, e)| anyhow::Error::new(e).context(what))
            .context("listing online CPUs")?;
        let ring_bytes = ring_buffer_bytes(frequency, cpus.len() as u64, ring_request);
        let ring_u32 = u32::try_from(ring_bytes).context("ring buffer size above 4 GiB")?;
        let filter_enabled: u8 = u8::from(!pids.is_empty());
        let wakeup_bytes: u64 = (ring_bytes / 4).max(RECORD_BYTES);
        let fsbase_offset = match trace_context.then(crate::bpf::btf::task_fsbase_offset) {
            None => 0,
            Some(Ok(off)) => off,
            Some(Err(error)) => {
                warn!(
                    error = format!("{error:#}"),
                    "no task_struct.thread.fsbase offset from BTF; trace contexts disabled"
                );
                0
            }
        };
        let mut ebpf = EbpfLoader::new()
            .map_max_entries(names::SAMPLES, ring_u32)
            // One row when disabled: the map must exist, but nothing is ever written to it.
            .map_max_entries(names::UNWIND_ROWS, unwind_rows.unwrap_or(1))
            .override_global(names::FILTER_ENABLED, &filter_enabled, true)
            .override_global(names::WAKEUP_BYTES, &wakeup_bytes, true)
            .override_global(names::TASK_FSBASE_OFFSET, &fsbase_offset, true)
            .load(aya::include_bytes_aligned!(concat!(
                env!("OUT_DIR"),
                "/profiler"
            )))
            .context("loading the eBPF object")?;

        if !pids.is_empty() {
            let mut filter: HashMap<_, u32, u8> = HashMap::try_from(
                ebpf.map_mut(names::FILTER_PIDS)
                    .context("FILTER_PIDS map missing")?,
            )?;
            for &pid in pids {
                filter
                    .insert(pid, 1, 0)
                    .with_context(|| format!("adding pid {pid} to the filter"))?;
            }
        }

        // Lifecycle first, so processes started while the sampler attaches are not missed.
        let lifecycle = match attach_lifecycle(&mut ebpf) {
            Ok(()) => true,
            Err(error) => {
                warn!(
                    error = format!("{error:#}"),
                    "no process lifecycle events; new processes are found at their first sample"
                );
                false
            }
        };
        let program: &mut PerfEvent = ebpf
            .program_mut(PROGRAM_NAME)
            .context("eBPF program missing from the object")?
            .try_into()?;
        program
            .load()
            .context("the verifier rejected the program")?;
        let verified_insns = program
            .info()
            .ok()
            .and_then(|i| i.verified_instruction_count());
        let mut attached_cpus = Vec::new();
        let mut failed_cpus = Vec::new();
        for cpu in cpus {
            match program.attach(
                PerfEventConfig::Software(SoftwareEvent::CpuClock),
                PerfEventScope::AllProcessesOneCpu { cpu },
                SamplePolicy::Frequency(frequency),
                false,
            ) {
                Ok(_) => attached_cpus.push(cpu),
                Err(error) => {
                    warn!(cpu, error = %chain(&error), "attach failed on this CPU; profiling goes on without it");
                    failed_cpus.push(cpu);
                }
            }
        }
        if attached_cpus.is_empty() {
            return Err(anyhow!("could not attach to any CPU"));
        }
        let ring = RingBuf::try_from(
            ebpf.take_map(names::SAMPLES)
                .context("SAMPLES map missing")?,
        )?;
        let counters = PerCpuArray::try_from(
            ebpf.take_map(names::COUNTERS)
                .context("COUNTERS map missing")?,
        )?;
        let contexts = HashMap::try_from(
            ebpf.take_map(names::CONTEXT_CONFIG)
                .context("CONTEXT_CONFIG map missing")?,
        )?;
        let contexts = (fsbase_offset != 0).then_some(contexts);
        let events = match lifecycle {
            true => Some(RingBuf::try_from(
                ebpf.take_map(names::EVENTS).context("EVENTS map missing")?,
            )?),
            false => None,
        };
        let unwind = match unwind_rows {
            Some(rows) => Some(take_unwind_maps(&mut ebpf, rows)?),
            None => None,
        };
        info!(
            cpus = attached_cpus.len(),
            failed = failed_cpus.len(),
            frequency,
            ring_bytes,
            verified_insns,
            "attached"
        );
        let program = LoadedProgram {
            ebpf,
            counters,
            attached_cpus,
            failed_cpus,
            ring_bytes,
            verified_insns,
        };
        Ok((
            program,
            LoadedMaps {
                ring,
                events,
                contexts,
                unwind,
            },
        ))
    }

    /// The kernel counters now, summed over CPUs.
    pub fn counters(&self) -> KernelCounters {
        let mut out = [0; Counter::COUNT as usize];
        for c in Counter::ALL {
            match self.counters.get(&(c as u32), 0) {
                Ok(values) => out[c as usize] = values.iter().sum(),
                Err(error) => {
                    warn!(counter = c.name(), error = %chain(&error), "reading counter failed")
                }
            }
        }
        out
    }

    /// Detaches from every CPU, so no sample is produced after this returns.
    pub fn detach(&mut self) {
        if let Some(program) = self.ebpf.program_mut(PROGRAM_NAME) {
            let program: Result<&mut PerfEvent, _> = program.try_into();
            if let Ok(program) = program {
                if let Err(error) = program.unload() {
                    warn!(error = %chain(&error), "detaching the eBPF program failed");
                }
            }
        }
    }

    /// Kernel-measured run time and count of the program, when `kernel.bpf_stats_enabled` is on.
    pub fn run_stats(&self) -> Option<(std::time::Duration, u64)> {
        let program: &PerfEvent = self.ebpf.program(PROGRAM_NAME)?.try_into().ok()?;
        let info = program.info().ok()?;
        Some((info.run_time(), info.run_count()))
    }
}

/// Loads and attaches the `sched_process_exec` and `sched_process_exit` programs, as raw
/// tracepoints: they need no tracefs mount.
fn attach_lifecycle(ebpf: &mut Ebpf) -> Result<()> {
    for (name, tracepoint) in [
        (names::EXEC_PROGRAM, "sched_process_exec"),
        (names::EXIT_PROGRAM, "sched_process_exit"),
    ] {
        let program: &mut RawTracePoint = ebpf
            .program_mut(name)
            .with_context(|| format!("{name} missing from the object"))?
            .try_into()?;
        program
            .load()
            .with_context(|| format!("the verifier rejected {name}"))?;
        program
            .attach(tracepoint)
            .with_context(|| format!("attaching to the raw tracepoint {tracepoint}"))?;
    }
    Ok(())
}

fn take_unwind_maps(ebpf: &mut Ebpf, rows: u32) -> Result<UnwindMaps> {
    let mut take = |name: &str| {
        ebpf.take_map(name)
            .with_context(|| format!("{name} map missing"))
    };
    let aya::maps::Map::Array(row_map) = take(names::UNWIND_ROWS)? else {
        return Err(anyhow!("{} is not an array map", names::UNWIND_ROWS));
    };
    Ok(UnwindMaps {
        rows: MappedRows::new(row_map, rows)?,
        tables: aya::maps::Array::try_from(take(names::UNWIND_TABLES)?)?,
        mappings: aya::maps::LpmTrie::try_from(take(names::UNWIND_MAPPINGS)?)?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ring_size_is_a_power_of_two_with_room_for_a_second() {
        for (hz, cpus) in [(19, 2), (99, 2), (999, 2), (99, 64), (10_000, 8)] {
            let bytes = ring_buffer_bytes(hz, cpus, None);
            assert!(bytes.is_power_of_two());
            assert!(bytes >= hz * cpus * RECORD_BYTES, "{hz} Hz x {cpus}");
            assert_eq!(bytes % PAGE, 0);
        }
        assert_eq!(ring_buffer_bytes(99, 2, Some(1)), PAGE);
        assert_eq!(ring_buffer_bytes(99, 2, Some(5000)), 2 * PAGE);
    }
}
