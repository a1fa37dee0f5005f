//! Progress display for `mugflow run`: indicatif bars on a terminal, plain lines in logs.

use std::io::IsTerminal;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
use pipeline::report::{Reporter, RunReport, RunStart, StageSnapshot};

use super::ProgressMode;

/// The reporter for a progress mode (`auto` picks bars on a TTY, plain lines otherwise).
pub fn reporter(mode: ProgressMode) -> Arc<dyn Reporter> {
    let mode = match mode {
        ProgressMode::Auto if std::io::stderr().is_terminal() => ProgressMode::Bars,
        ProgressMode::Auto => ProgressMode::Plain,
        m => m,
    };
    match mode {
        ProgressMode::Bars => Arc::new(Bars {
            multi: MultiProgress::with_draw_target(ProgressDrawTarget::stderr()),
            bars: Mutex::default(),
        }),
        ProgressMode::Plain => Arc::new(Plain { last: Mutex::new(None) }),
        _ => Arc::new(Quiet),
    }
}

/// What the run found and will do: the change counts against the latest version, then the work.
fn describe_start(s: &RunStart) -> String {
    let base = match s.base_version {
        Some(v) => format!("against version {v}"),
        None => "new dataset".to_string(),
    };
    format!(
        "{} ({base})\n{} item(s) in {} shard(s) to process, {} shard(s) already committed",
        s.changes, s.pending_items, s.pending_shards, s.skipped_shards
    )
}

fn rate(s: &StageSnapshot, elapsed: Duration) -> f64 {
    s.items_in as f64 / elapsed.as_secs_f64().max(1e-3)
}

/// Bars per stage.
struct Bars {
    multi: MultiProgress,
    bars: Mutex<Vec<ProgressBar>>,
}

impl Reporter for Bars {
    fn start(&self, s: &RunStart) {
        let _ = self.multi.println(describe_start(s));
        let style =
            ProgressStyle::with_template("{prefix:>14} {bar:30} {pos:>7}/{len:7} {msg} [{elapsed_precise}, eta {eta}]")
                .expect("the template is valid");
        let mut bars = self.bars.lock().expect("bars lock");
        for (i, label) in s.stages.iter().enumerate() {
            // Only the first stage's total is known; later totals grow with fan-out.
            let bar = self.multi.add(ProgressBar::new(if i == 0 { s.pending_items } else { 0 }));
            bar.set_style(style.clone());
            bar.set_prefix(label.clone());
            bars.push(bar);
        }
    }

    fn progress(&self, stages: &[StageSnapshot], elapsed: Duration) {
        let bars = self.bars.lock().expect("bars lock");
        let mut upstream_out = None;
        for (bar, s) in bars.iter().zip(stages) {
            if let Some(total) = upstream_out {
                bar.set_length(total);
            }
            bar.set_position(s.items_in);
            bar.set_message(format!("out {} err {} {:.1}/s", s.items_out, s.errors, rate(s, elapsed)));
            upstream_out = Some(s.items_out.max(s.items_in));
        }
    }

    fn shard_committed(&self, shard: usize, items: usize, errors: usize) {
        let _ = self.multi.println(format!("committed shard {shard}: {items} item(s), {errors} error(s)"));
    }

    fn finish(&self, report: &RunReport) {
        for b in self.bars.lock().expect("bars lock").drain(..) {
            b.finish_and_clear();
        }
        eprintln!("{}", report.table());
    }
}

/// A status line every few seconds, for logs and batch systems.
struct Plain {
    last: Mutex<Option<Instant>>,
}

impl Reporter for Plain {
    fn start(&self, s: &RunStart) {
        eprintln!("{}", describe_start(s));
    }

    fn progress(&self, stages: &[StageSnapshot], elapsed: Duration) {
        let mut last = self.last.lock().expect("plain lock");
        if last.is_some_and(|t| t.elapsed() < Duration::from_secs(5)) {
            return;
        }
        *last = Some(Instant::now());
        let parts: Vec<String> = stages
            .iter()
            .map(|s| {
                format!(
                    "{} in={} out={} err={} ({:.1}/s)",
                    s.stage,
                    s.items_in,
                    s.items_out,
                    s.errors,
                    rate(s, elapsed)
                )
            })
            .collect();
        eprintln!("[{:>7.1}s] {}", elapsed.as_secs_f64(), parts.join(" | "));
    }

    fn shard_committed(&self, shard: usize, items: usize, errors: usize) {
        eprintln!("committed shard {shard}: {items} item(s), {errors} error(s)");
    }

    fn finish(&self, report: &RunReport) {
        eprintln!("{}", report.table());
    }
}

/// Only the final summary.
struct Quiet;

impl Reporter for Quiet {
    fn start(&self, s: &RunStart) {
        eprintln!(
            "{} ({})",
            s.changes,
            s.base_version.map_or("new dataset".to_string(), |v| format!("against version {v}"))
        );
    }
    fn progress(&self, _: &[StageSnapshot], _: Duration) {}
    fn shard_committed(&self, _: usize, _: usize, _: usize) {}
    fn finish(&self, report: &RunReport) {
        eprintln!("{}", report.table());
    }
}
