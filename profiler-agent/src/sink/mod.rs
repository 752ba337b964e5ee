//! Where finished profiles go. A [`Sink`] takes one encoded profile at a time on the writer
//! thread; the file sink (with retention) is the only one today, push sinks come next.
pub mod file;

use std::time::SystemTime;

use anyhow::Result;

/// One gzipped pprof profile, ready to hand over.
pub struct EncodedProfile {
    /// Start of the interval it covers.
    pub start: SystemTime,
    /// End of that interval.
    pub end: SystemTime,
    /// 1 for the first profile of this run, then 2, 3, …
    pub seq: u64,
    /// The gzipped protobuf.
    pub bytes: Vec<u8>,
}

/// A destination for profiles. Called on the writer thread only: it may block on I/O, but
/// must give up within its own bounded time and return an error rather than retry forever.
pub trait Sink: Send {
    /// Stores one profile; returns where it went, for the log.
    fn write(&mut self, profile: &EncodedProfile) -> Result<String>;
}
