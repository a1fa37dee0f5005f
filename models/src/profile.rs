//! Per-op timings of a forward pass, for finding where GPU time goes (`MUGFLOW_PROFILE=1`): each
//! named span synchronises the device before and after and adds its wall time to that name's
//! total, so a span's time is its kernels' time plus their launch latency. Off by default, at
//! the cost of one relaxed check per span; with it on, the forward is slower by the lost overlap of
//! launches and kernels, so the breakdown is read as shares, not as the forward's time.

use std::sync::{Mutex, OnceLock};
use std::time::Instant;

use candle_core::{Device, Result};

/// Accumulated (name, seconds, calls) in first-seen order.
static TOTALS: Mutex<Vec<(&'static str, f64, u64)>> = Mutex::new(Vec::new());

/// Whether `MUGFLOW_PROFILE=1` is set (read once).
pub fn enabled() -> bool {
    static ON: OnceLock<bool> = OnceLock::new();
    *ON.get_or_init(|| std::env::var("MUGFLOW_PROFILE").is_ok_and(|v| v == "1"))
}

/// Runs `f`, adding its synchronised wall time to `name` when profiling is on.
pub fn span<T>(dev: &Device, name: &'static str, f: impl FnOnce() -> Result<T>) -> Result<T> {
    if !enabled() {
        return f();
    }
    dev.synchronize()?;
    let start = Instant::now();
    let out = f()?;
    dev.synchronize()?;
    let seconds = start.elapsed().as_secs_f64();
    let mut totals = TOTALS.lock().unwrap_or_else(|e| e.into_inner());
    match totals.iter_mut().find(|(n, ..)| *n == name) {
        Some(entry) => {
            entry.1 += seconds;
            entry.2 += 1;
        }
        None => totals.push((name, seconds, 1)),
    }
    Ok(out)
}

/// The accumulated spans as a table (name, calls, seconds, share of the spans' sum), and resets
/// them; `None` when profiling is off or nothing was timed.
pub fn take_report(title: &str) -> Option<String> {
    let totals = std::mem::take(&mut *TOTALS.lock().unwrap_or_else(|e| e.into_inner()));
    if totals.is_empty() {
        return None;
    }
    let sum: f64 = totals.iter().map(|t| t.1).sum();
    let mut out = format!("per-op time of {title} (MUGFLOW_PROFILE=1, synchronised spans)\n");
    out += &format!("{:<28} {:>7} {:>10} {:>7}\n", "op", "calls", "seconds", "share");
    for (name, seconds, calls) in &totals {
        out += &format!("{name:<28} {calls:>7} {seconds:>10.4} {:>6.1}%\n", 100.0 * seconds / sum);
    }
    out += &format!("{:<28} {:>7} {sum:>10.4} {:>6.1}%\n", "sum", "", 100.0);
    Some(out)
}
