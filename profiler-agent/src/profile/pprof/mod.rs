//! pprof output: the generated protobuf types and a builder with interning and dense ids.
pub mod builder;

#[allow(clippy::all, missing_docs)]
pub mod proto {
    include!(concat!(env!("OUT_DIR"), "/perftools.profiles.rs"));
}

use std::io::Write as _;

use flate2::{write::GzEncoder, Compression};
use prost::Message as _;

/// Serializes and gzips a profile, as every pprof consumer expects.
pub fn encode_gzip(profile: &proto::Profile) -> std::io::Result<Vec<u8>> {
    let raw = profile.encode_to_vec();
    let mut gz = GzEncoder::new(
        Vec::with_capacity(raw.len() / 4 + 64),
        Compression::default(),
    );
    gz.write_all(&raw)?;
    gz.finish()
}

/// Adds comments to a finished profile (their strings go at the end of the string table).
pub fn append_comments(profile: &mut proto::Profile, comments: &[String]) {
    for c in comments {
        profile.comment.push(profile.string_table.len() as i64);
        profile.string_table.push(c.clone());
    }
}

/// Inverse of [`encode_gzip`]; used by tests and tools.
pub fn decode_gzip(bytes: &[u8]) -> anyhow::Result<proto::Profile> {
    use std::io::Read as _;
    let mut raw = Vec::new();
    flate2::read::GzDecoder::new(bytes).read_to_end(&mut raw)?;
    Ok(proto::Profile::decode(raw.as_slice())?)
}
