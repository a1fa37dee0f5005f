//! Row fields several stages read the same way: a clip's frame range, a catalog row's prompt and
//! seed. Stages share these here instead of importing each other.

use pipeline::{Item, StageError};

/// The row's `prompt` (an error record when missing).
pub(crate) fn prompt(item: &Item) -> Result<String, StageError> {
    item.get("prompt")
        .and_then(pipeline::Value::as_str)
        .map(str::to_string)
        .ok_or_else(|| StageError::msg("the row has no `prompt`"))
}

/// The row's `seed`: an integer, a whole number as text, or `default` when empty or absent.
pub(crate) fn seed(item: &Item, default: u64) -> Result<u64, StageError> {
    match item.get("seed") {
        Some(v) if v.as_i64().is_some() => Ok(v.as_i64().unwrap_or_default() as u64),
        Some(pipeline::Value::Str(s)) if !s.trim().is_empty() => {
            s.trim().parse().map_err(|_| StageError::msg(format!("the row's seed `{s}` is not a whole number")))
        }
        _ => Ok(default),
    }
}

/// The clip's frame range, or the whole video when the item is not a clip.
pub(crate) fn clip_range(item: &Item) -> (usize, Option<usize>) {
    let frame = |name: &str| item.get(name).and_then(pipeline::Value::as_i64).map(|v| v.max(0) as usize);
    (frame("clip_start_frame").unwrap_or(0), frame("clip_end_frame"))
}
