//! Any text given as a manifest (with its first line as a `--set` override) is either a plan or
//! a list of diagnostics that render; it never panics.
#![no_main]

use std::path::Path;
use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use pipeline::manifest::Manifest;

fuzz_target!(|data: &[u8]| {
    static REGISTRY: OnceLock<pipeline::Registry> = OnceLock::new();
    let registry = REGISTRY.get_or_init(stages::registry);
    let Ok(text) = std::str::from_utf8(data) else { return };
    let (first, rest) = text.split_once('\n').unwrap_or(("", text));
    let sets = if first.is_empty() { Vec::new() } else { vec![first.to_string()] };
    let env = |name: &str| (name == "HOME").then(|| "/home/fuzz".to_string());
    match Manifest::from_text(Path::new("fuzz.toml"), rest.to_string(), &sets, &env) {
        Ok(m) => match pipeline::Plan::from_manifest(&m, registry) {
            Ok(plan) => drop(plan.render(None)),
            Err(d) => drop(d.to_string()),
        },
        Err(d) => drop(d.to_string()),
    }
});
