//! Decodes the lifecycle ring: `exec`, exit, a pid never reported, an unwind miss.
use std::mem::size_of;

use profiler_common::{ProcessEvent, EVENT_EXEC, EVENT_EXIT, EVENT_NEW_PID, EVENT_UNWIND_MISS};

/// One decoded event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lifecycle {
    /// The process replaced its image at `time_ns`.
    Exec {
        /// The process.
        pid: u32,
        /// Kernel time of the exec.
        time_ns: u64,
    },
    /// The process exited at `time_ns`.
    Exit {
        /// The process.
        pid: u32,
        /// Kernel time of the exit.
        time_ns: u64,
    },
    /// A sample came from a pid never reported before.
    NewPid {
        /// The process.
        pid: u32,
    },
    /// A table walk of this process ended outside every known mapping.
    UnwindMiss {
        /// The process.
        pid: u32,
    },
}

/// Why a record is not an event.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// Shorter than a [`ProcessEvent`].
    #[error("event record of {0} bytes is too short")]
    Short(usize),
    /// An `EVENT_*` kind this agent does not know.
    #[error("unknown event kind {0}")]
    UnknownKind(u32),
}

/// Decodes one ring record.
pub fn decode(bytes: &[u8]) -> Result<Lifecycle, DecodeError> {
    if bytes.len() < size_of::<ProcessEvent>() {
        return Err(DecodeError::Short(bytes.len()));
    }
    // SAFETY: at least size_of::<ProcessEvent>() bytes; ProcessEvent is plain integers, valid
    // for any bit pattern; read_unaligned makes no alignment assumption.
    let e: ProcessEvent = unsafe { std::ptr::read_unaligned(bytes.as_ptr().cast()) };
    Ok(match e.kind {
        EVENT_EXEC => Lifecycle::Exec {
            pid: e.pid,
            time_ns: e.time_ns,
        },
        EVENT_EXIT => Lifecycle::Exit {
            pid: e.pid,
            time_ns: e.time_ns,
        },
        EVENT_NEW_PID => Lifecycle::NewPid { pid: e.pid },
        EVENT_UNWIND_MISS => Lifecycle::UnwindMiss { pid: e.pid },
        other => return Err(DecodeError::UnknownKind(other)),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(kind: u32) -> Vec<u8> {
        let mut b = Vec::new();
        b.extend_from_slice(&0x0102_0304_0506_0708u64.to_le_bytes());
        b.extend_from_slice(&kind.to_le_bytes());
        b.extend_from_slice(&4242u32.to_le_bytes()); // pid
        b.extend_from_slice(&4243u32.to_le_bytes()); // tid
        b.extend_from_slice(&0u32.to_le_bytes());
        b
    }

    #[test]
    fn every_kind_decodes_with_its_fields() {
        let t = 0x0102_0304_0506_0708;
        assert_eq!(
            decode(&record(EVENT_EXEC)),
            Ok(Lifecycle::Exec {
                pid: 4242,
                time_ns: t
            })
        );
        assert_eq!(
            decode(&record(EVENT_EXIT)),
            Ok(Lifecycle::Exit {
                pid: 4242,
                time_ns: t
            })
        );
        assert_eq!(
            decode(&record(EVENT_NEW_PID)),
            Ok(Lifecycle::NewPid { pid: 4242 })
        );
        assert_eq!(
            decode(&record(EVENT_UNWIND_MISS)),
            Ok(Lifecycle::UnwindMiss { pid: 4242 })
        );
    }

    #[test]
    fn bad_records_are_errors() {
        assert_eq!(decode(&record(99)), Err(DecodeError::UnknownKind(99)));
        assert_eq!(
            decode(&record(EVENT_EXEC)[..23]),
            Err(DecodeError::Short(23))
        );
    }
}
