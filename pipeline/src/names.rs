//! Names of what a run writes: the run attempt, and per-item file names that never collide.
//!
//! Every file a run publishes contains its attempt id, so two attempts at the same work (a worker
//! that lost its lease, a requeued Slurm task, a re-run after a kill) never write the same name,
//! and nothing a committed shard names is ever overwritten. Item ids become file names through
//! [`file_stem`], which stays readable and is unique per id.

use sha2::{Digest, Sha256};

/// A new run attempt's id: the UTC start time and 6 random hex digits, e.g.
/// `20261129T093012-3fa2c1` (sorts by time, unique across hosts).
pub fn attempt_id() -> String {
    static COUNTER: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let now = std::time::SystemTime::now();
    let stamp: String = humantime::format_rfc3339_seconds(now)
        .to_string()
        .chars()
        .filter(|c| c.is_ascii_digit() || *c == 'T')
        .collect();
    // Unique enough without a random generator: host, process, time to the nanosecond, counter.
    let mut h = Sha256::new();
    h.update(std::env::var("HOSTNAME").unwrap_or_default().as_bytes());
    h.update(std::process::id().to_le_bytes());
    h.update(now.duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos()).to_le_bytes());
    h.update(COUNTER.fetch_add(1, std::sync::atomic::Ordering::Relaxed).to_le_bytes());
    format!("{stamp}-{}", &hex::encode(h.finalize())[..6])
}

/// True for a name of the shape [`attempt_id`] makes (`20261129T093012-3fa2c1`).
pub fn is_attempt_id(name: &str) -> bool {
    let b = name.as_bytes();
    b.len() == 22
        && b[8] == b'T'
        && b[15] == b'-'
        && b[..8].iter().chain(&b[9..15]).all(u8::is_ascii_digit)
        && b[16..].iter().all(|c| c.is_ascii_hexdigit())
}

/// An item id as a file name: characters other than ASCII letters, digits, `-`, `_` and `.`
/// become `_`; when that changed the id, `-` and 8 hex digits of the id's sha256 follow, so
/// that `a/b` and `a_b` (or two non-Latin ids of the same length) get different names.
pub fn file_stem(id: &str) -> String {
    let safe: String =
        id.chars().map(|c| if c.is_ascii_alphanumeric() || "-_.".contains(c) { c } else { '_' }).collect();
    if safe == id && !id.is_empty() && !id.starts_with('.') {
        return safe;
    }
    let digest = Sha256::digest(id.as_bytes());
    format!("{safe}-{}", hex::encode(&digest[..4]))
}

/// Output name of a per-item file: `<folder>/<attempt>/<file_stem(id)><suffix>`, e.g.
/// `videos/20261129T093012-3fa2c1/sku-1.mp4`.
pub fn item_file(folder: &str, attempt: &str, id: &str, suffix: &str) -> String {
    format!("{folder}/{attempt}/{}{suffix}", file_stem(id))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_that_sanitise_alike_get_different_names() {
        assert_eq!(file_stem("sku-1.v2"), "sku-1.v2");
        assert_ne!(file_stem("a/b"), file_stem("a_b"));
        assert_eq!(file_stem("a_b"), "a_b");
        assert!(file_stem("a/b").starts_with("a_b-"));
        assert_ne!(file_stem("чай"), file_stem("сок"));
        assert_ne!(file_stem(".."), "..");
    }

    #[test]
    fn attempts_differ_and_item_files_carry_them() {
        let (a, b) = (attempt_id(), attempt_id());
        assert_ne!(a, b);
        assert!(is_attempt_id(&a), "{a}");
        assert!(!is_attempt_id("videos") && !is_attempt_id("20261129T093012-3fa2cg"));
        assert_eq!(item_file("videos", "x", "a#1", ".mp4"), format!("videos/x/{}.mp4", file_stem("a#1")));
    }
}
