//! Run attempts on record: `_attempts/<attempt>.json` says which host and process run an
//! attempt, so that a later run (or `mugflow repair`) can tell a dead attempt's leftovers from a
//! live one's.

use std::path::Path;
use std::time::Duration;

use crate::cluster::Cluster;
use crate::io::Location;
use crate::PipelineError;

/// The folder of attempt records under the output location.
pub const ATTEMPTS_DIR: &str = "_attempts";

/// Write `_attempts/<attempt>.json`: which host and process run this attempt.
pub async fn record(out: &Location, attempt: &str, cluster: &Cluster) -> Result<(), PipelineError> {
    let body = serde_json::json!({
        "attempt": attempt,
        "host": hostname(),
        "pid": std::process::id(),
        "worker": cluster.to_string(),
        "started_at": humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string(),
    });
    out.write(&format!("{ATTEMPTS_DIR}/{attempt}.json"), serde_json::to_vec_pretty(&body).expect("json")).await
}

/// This machine's name, as attempt records and upload intents store it.
pub fn hostname() -> String {
    std::env::var("HOSTNAME")
        .ok()
        .or_else(|| std::fs::read_to_string("/etc/hostname").ok().map(|h| h.trim().to_string()))
        .unwrap_or_else(|| "localhost".into())
}

/// True when process `pid` of this host is gone.
pub fn process_gone(pid: u64) -> bool {
    !Path::new(&format!("/proc/{pid}")).exists()
}

/// Whether an upload staging file `name` (relative to the local output `dir`), `age` old, was
/// left by a dead writer: a file under an attempt's folder when that attempt's process (on this
/// host) is gone, any other staging file (of a small put: journal, version, index) once it is an
/// hour old, another host's attempt's after a day. Live workers' files are never dead.
pub fn staging_file_dead(dir: &Path, name: &str, age: Duration) -> bool {
    let Some(attempt) = name.split('/').find(|c| crate::names::is_attempt_id(c)) else {
        return age > Duration::from_secs(3600);
    };
    let record = std::fs::read(dir.join(ATTEMPTS_DIR).join(format!("{attempt}.json")))
        .ok()
        .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok());
    match record {
        Some(r) if r["host"] == hostname().as_str() => r["pid"].as_u64().is_some_and(process_gone),
        // Another host's attempt: only its age tells.
        Some(_) => age > Duration::from_secs(24 * 3600),
        None => age > Duration::from_secs(3600),
    }
}
