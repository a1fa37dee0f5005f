//! What the page shows, read from a dataset version: its index, the run report that made it,
//! every shard's table (aggregated into histograms, a sample of clips, the video cards) and the
//! error tables (grouped by stage and cause).

use std::collections::{BTreeMap, HashMap};

use anyhow::Context as _;
use pipeline::format::DatasetIndex;
use pipeline::inspect::{read_table_columns, TableColumns};
use pipeline::io::Location;
use pipeline::report::{id_hash, RunReport, DROPPED_EXAMPLES};

use super::{CLIP_SAMPLE, MAX_CARDS};

/// Everything the page needs, with thumbnails still to decode.
pub struct Dataset {
    /// The version's index (job, version, counts); its per-item entries are dropped once read.
    pub index: DatasetIndex,
    /// The run report of the run that committed this version, if `report.json` is that run's.
    pub run: Option<RunReport>,
    /// Rows read from the shard tables.
    pub rows: usize,
    /// Measurements of every row, for the histograms (only those the rows have).
    pub metrics: Vec<Metric>,
    /// The most common resolutions ("1920x1080") with their row counts.
    pub resolutions: Vec<(String, usize)>,
    /// Kept clips chosen for the contact sheet (a hash of the id picks them, so the same rows
    /// are shown on every build).
    pub sample: Vec<ClipSample>,
    /// What each filter dropped and why, with a few examples to show (from the run report).
    pub dropped: Vec<DroppedGroup>,
    /// Generated videos, new and changed rows first, at most [`MAX_CARDS`].
    pub cards: Vec<Card>,
    /// Generated videos not shown as cards.
    pub more_cards: usize,
    /// Error records grouped by stage and the first line of the message, most frequent first.
    pub errors: Vec<ErrorGroup>,
    /// The first [`MAX_CARDS`] error records by id as (id, stage, first line): the failed rows
    /// a catalog team reviews one by one.
    pub failed: Vec<(String, String, String)>,
}

/// One measurement of every row.
pub struct Metric {
    /// Axis title with its unit.
    pub title: &'static str,
    /// One value per row that has it.
    pub values: Vec<f64>,
}

/// A kept clip on the contact sheet.
pub struct ClipSample {
    /// Row id.
    pub id: String,
    /// Path or URL of the source video.
    pub uri: String,
    /// The frame shown (the clip's middle frame).
    pub frame: usize,
    /// Aesthetic score, if the pipeline measured it.
    pub score: Option<f64>,
    /// Motion score, if measured.
    pub motion: Option<f64>,
}

/// The items one stage dropped for one reason.
pub struct DroppedGroup {
    /// Stage label ("3:clip_filter").
    pub stage: String,
    /// The stage's reason ("static").
    pub reason: String,
    /// Items dropped for it.
    pub count: u64,
    /// A few of them, to show a frame of each.
    pub examples: Vec<ClipSample>,
}

/// One generated video.
pub struct Card {
    /// Row id.
    pub id: String,
    /// "new", "changed" or "" (carried over unchanged from the previous version).
    pub status: &'static str,
    /// The MP4, relative to the output location.
    pub video_file: String,
    /// Frames in the MP4.
    pub frames: usize,
    /// (label, value) pairs shown under the video: prompt, seed, aspect, length, steps.
    pub fields: Vec<(&'static str, String)>,
    /// Seconds per step of the row's generation (`generate_s`, `decode_s`, ...).
    pub timings: Vec<(String, f64)>,
}

/// Errors of one stage with the same cause.
pub struct ErrorGroup {
    /// Stage label ("1:load_image").
    pub stage: String,
    /// First line of the message.
    pub cause: String,
    /// Records in the group.
    pub count: usize,
    /// A few item ids.
    pub examples: Vec<String>,
}

/// Numeric columns read from the shard tables.
const NUMBERS: &[&str] = &[
    "clip_start_s",
    "clip_end_s",
    "duration_s",
    "width",
    "height",
    "clip_fps",
    "fps",
    "aesthetic_score",
    "motion",
    "clip_start_frame",
    "clip_end_frame",
    "seed",
    "steps",
    "video_frames",
    "video_width",
    "video_height",
    "video_fps",
    "generate_s",
    "decode_s",
    "enhance_s",
];
/// Text columns read from the shard tables.
const TEXTS: &[&str] = &["id", "uri", "video_file", "prompt", "aspect", "length"];
/// Columns holding seconds spent on a generated row, shown on its card.
const TIMINGS: &[&str] = &["generate_s", "decode_s", "enhance_s"];

/// Read what the page of `version` (default: the latest) shows.
pub async fn collect(loc: &Location, version: Option<u64>) -> anyhow::Result<Dataset> {
    let mut index = match version {
        Some(v) => pipeline::version::load(loc, v).await?,
        None => pipeline::version::latest(loc)
            .await?
            .with_context(|| format!("{} has no committed version (is it a mugflow output?)", loc.url))?,
    };
    let run = run_report(loc, index.version).await?;
    let mut acc = Accumulator::default();
    for shard in &index.shards {
        let table = read_table_columns(loc, &shard.table, NUMBERS, TEXTS).await?;
        // Generated videos: what changed decides which cards are kept while reading.
        if acc.status.is_none() && table.texts.contains_key("video_file") {
            acc.status = Some(changed_ids(loc, &index).await);
        }
        acc.add(&table);
        if let Some(file) = &shard.error_file {
            acc.add_errors(&read_table_columns(loc, file, &[], &["item_id", "stage", "message"]).await?);
        }
    }
    for shard in &mut index.shards {
        shard.done = Vec::new();
    }
    Ok(acc.finish(index, run))
}

/// The run report of the run that committed `version`: `report.json`, or the sum of the
/// workers' `report-rank-*.json` of a distributed run.
async fn run_report(loc: &Location, version: u64) -> anyhow::Result<Option<RunReport>> {
    let mut reports: Vec<RunReport> = Vec::new();
    if let Some(bytes) = loc.read_opt("report.json").await? {
        reports.push(serde_json::from_slice(&bytes).context("report.json is not a mugflow run report")?);
    } else {
        for name in loc.list("").await?.iter().filter(|n| n.starts_with("report-rank-") && n.ends_with(".json")) {
            let bytes = loc.read(name).await?;
            reports.push(serde_json::from_slice(&bytes).with_context(|| format!("{name} is not a run report"))?);
        }
    }
    let mut reports = reports.into_iter().filter(|r| !r.stages.is_empty());
    let Some(mut total) = reports.next() else { return Ok(None) };
    for r in reports {
        for (t, s) in total.stages.iter_mut().zip(&r.stages) {
            let (t, s) = (&mut t.counters, &s.counters);
            (t.items_in, t.items_out, t.errors, t.busy_s) =
                (t.items_in + s.items_in, t.items_out + s.items_out, t.errors + s.errors, t.busy_s + s.busy_s);
            for (reason, n) in &s.dropped {
                *t.dropped.entry(reason.clone()).or_default() += n;
            }
        }
        for (t, s) in total.stages.iter_mut().zip(r.stages) {
            for (reason, examples) in s.dropped_examples {
                let kept = t.dropped_examples.entry(reason).or_default();
                kept.extend(examples);
                kept.sort_by_key(|e| (id_hash(&e.id), e.id.clone()));
                kept.truncate(DROPPED_EXAMPLES);
            }
        }
        total.version = total.version.max(r.version);
    }
    // A later run that found nothing to do leaves the stages empty; a report of another version
    // would show the wrong funnel.
    Ok((total.version == Some(version)).then_some(total))
}

/// Ids of the input items this version added ("new") or recomputed ("changed") relative to the
/// version it was built on; empty when there is none (every row of a first version is new).
async fn changed_ids(loc: &Location, index: &DatasetIndex) -> HashMap<String, &'static str> {
    let keys = |i: &DatasetIndex| -> HashMap<String, String> {
        i.shards.iter().flat_map(|s| s.done.iter().map(|d| (d.id.clone(), d.key.clone()))).collect()
    };
    let before = match index.parent {
        // A vacuumed parent: nothing to compare with.
        Some(p) => match pipeline::version::load(loc, p).await {
            Ok(parent) => keys(&parent),
            Err(_) => return HashMap::new(),
        },
        None => HashMap::new(),
    };
    keys(index)
        .into_iter()
        .filter_map(|(id, key)| match before.get(&id) {
            None => Some((id, "new")),
            Some(k) if *k != key => Some((id, "changed")),
            Some(_) => None,
        })
        .collect()
}

/// The drop reasons of every stage of a run, with their examples.
fn dropped_groups(run: &RunReport) -> Vec<DroppedGroup> {
    let mut groups = Vec::new();
    for s in &run.stages {
        for (reason, &count) in &s.counters.dropped {
            let examples = s.dropped_examples.get(reason).map(Vec::as_slice).unwrap_or_default();
            groups.push(DroppedGroup {
                stage: s.counters.stage.clone(),
                reason: reason.clone(),
                count,
                examples: examples
                    .iter()
                    .map(|e| ClipSample {
                        id: e.id.clone(),
                        uri: e.uri.clone(),
                        frame: e.frame,
                        score: None,
                        motion: None,
                    })
                    .collect(),
            });
        }
    }
    groups
}

/// Running aggregates over the shard tables.
#[derive(Default)]
struct Accumulator {
    rows: usize,
    metrics: BTreeMap<&'static str, Vec<f64>>,
    resolutions: HashMap<(i64, i64), usize>,
    /// (hash of the id, clip), at most twice the sample size between trims.
    sample: Vec<(u64, ClipSample)>,
    /// "new" or "changed" by input id (set once a table with videos shows up).
    status: Option<HashMap<String, &'static str>>,
    /// The cards to show so far, at most twice [`MAX_CARDS`] between trims.
    cards: Vec<Card>,
    /// Every generated row.
    videos: usize,
    errors: HashMap<(String, String), (usize, Vec<String>)>,
    failed: Vec<(String, String, String)>,
}

impl Accumulator {
    fn add(&mut self, t: &TableColumns) {
        self.rows += t.height;
        let num = |name: &str, i: usize| t.numbers.get(name).and_then(|c| c[i]);
        let text = |name: &str, i: usize| t.texts.get(name).and_then(|c| c[i].clone());
        for i in 0..t.height {
            let duration = match (num("clip_start_s", i), num("clip_end_s", i)) {
                (Some(a), Some(b)) => Some(b - a),
                _ => num("duration_s", i),
            };
            let (width, height) = (
                num("width", i).or_else(|| num("video_width", i)),
                num("height", i).or_else(|| num("video_height", i)),
            );
            let fps = num("clip_fps", i).or_else(|| num("fps", i)).or_else(|| num("video_fps", i));
            for (title, value) in [
                ("clip duration (s)", duration),
                ("height (px)", height),
                ("frame rate (fps)", fps),
                ("aesthetic score", num("aesthetic_score", i)),
                ("motion (grey levels per frame)", num("motion", i)),
                ("generation time (s)", num("generate_s", i)),
            ] {
                if let Some(v) = value.filter(|v| v.is_finite()) {
                    self.metrics.entry(title).or_default().push(v);
                }
            }
            if let (Some(w), Some(h)) = (width, height) {
                *self.resolutions.entry((w as i64, h as i64)).or_default() += 1;
            }
            let id = text("id", i).unwrap_or_default();
            if let Some(video_file) = text("video_file", i) {
                self.add_card(t, i, id, video_file);
            } else if let Some(uri) = text("uri", i) {
                let (start, end) = (num("clip_start_frame", i).unwrap_or(0.0), num("clip_end_frame", i).unwrap_or(1.0));
                let clip = ClipSample {
                    frame: ((start + end) / 2.0).floor().max(0.0) as usize,
                    score: num("aesthetic_score", i),
                    motion: num("motion", i),
                    id,
                    uri,
                };
                self.sample.push((id_hash(&clip.id), clip));
                if self.sample.len() >= 2 * CLIP_SAMPLE {
                    self.trim_sample();
                }
            }
        }
    }

    fn add_card(&mut self, t: &TableColumns, i: usize, id: String, video_file: String) {
        let num = |name: &str| t.numbers.get(name).and_then(|c| c[i]);
        let text = |name: &str| t.texts.get(name).and_then(|c| c[i].clone());
        let mut fields = vec![("prompt", text("prompt").unwrap_or_default())];
        fields.extend(num("seed").map(|s| ("seed", format!("{s:.0}"))));
        fields.extend(text("aspect").map(|a| ("aspect", a)));
        fields.extend(text("length").map(|l| ("length", l)));
        fields.extend(num("steps").map(|s| ("steps", format!("{s:.0}"))));
        let timings = TIMINGS.iter().filter_map(|c| num(c).map(|v| (c.to_string(), v))).collect();
        let frames = num("video_frames").unwrap_or(1.0).max(1.0) as usize;
        let status = self.status.as_ref().and_then(|s| s.get(&id).copied()).unwrap_or("");
        self.cards.push(Card { id, status, video_file, frames, fields, timings });
        self.videos += 1;
        if self.cards.len() >= 2 * MAX_CARDS {
            self.trim_cards();
        }
    }

    /// Keep the clips with the smallest id hashes: a sample independent of shard order.
    fn trim_sample(&mut self) {
        self.sample.sort_by(|a, b| a.0.cmp(&b.0).then_with(|| a.1.id.cmp(&b.1.id)));
        self.sample.truncate(CLIP_SAMPLE);
    }

    fn add_errors(&mut self, t: &TableColumns) {
        for i in 0..t.height {
            let text = |name: &str| t.texts.get(name).and_then(|c| c[i].clone()).unwrap_or_default();
            let message = text("message");
            let cause = message.lines().next().unwrap_or_default().to_string();
            let group = self.errors.entry((text("stage"), cause.clone())).or_default();
            group.0 += 1;
            if group.1.len() < 3 {
                group.1.push(text("item_id"));
            }
            self.failed.push((text("item_id"), text("stage"), cause));
        }
        if self.failed.len() > 2 * MAX_CARDS {
            self.failed.sort();
            self.failed.truncate(MAX_CARDS);
        }
    }

    /// Keep the first [`MAX_CARDS`] cards in page order: new rows, then changed ones, then the
    /// rest; by id within each.
    fn trim_cards(&mut self) {
        let rank = |s: &str| match s {
            "new" => 0,
            "changed" => 1,
            _ => 2,
        };
        self.cards.sort_by(|a, b| rank(a.status).cmp(&rank(b.status)).then_with(|| a.id.cmp(&b.id)));
        self.cards.truncate(MAX_CARDS);
    }

    fn finish(mut self, index: DatasetIndex, run: Option<RunReport>) -> Dataset {
        self.trim_sample();
        self.trim_cards();
        let more_cards = self.videos - self.cards.len();
        let mut resolutions: Vec<(String, usize)> =
            self.resolutions.into_iter().map(|((w, h), n)| (format!("{w}x{h}"), n)).collect();
        resolutions.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
        resolutions.truncate(8);
        let mut errors: Vec<ErrorGroup> = self
            .errors
            .into_iter()
            .map(|((stage, cause), (count, examples))| ErrorGroup { stage, cause, count, examples })
            .collect();
        errors.sort_by(|a, b| b.count.cmp(&a.count).then_with(|| (&a.stage, &a.cause).cmp(&(&b.stage, &b.cause))));
        let dropped = run.iter().flat_map(dropped_groups).collect();
        self.failed.sort();
        self.failed.truncate(MAX_CARDS);
        Dataset {
            index,
            dropped,
            run,
            rows: self.rows,
            metrics: self.metrics.into_iter().map(|(title, values)| Metric { title, values }).collect(),
            resolutions,
            sample: self.sample.into_iter().map(|(_, c)| c).collect(),
            cards: self.cards,
            more_cards,
            errors,
            failed: self.failed,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn texts(cols: &[(&str, Vec<&str>)]) -> BTreeMap<String, Vec<Option<String>>> {
        cols.iter().map(|(k, v)| (k.to_string(), v.iter().map(|s| Some(s.to_string())).collect())).collect()
    }

    #[test]
    fn errors_group_by_stage_and_first_line_with_three_examples() {
        let mut acc = Accumulator::default();
        let t = TableColumns {
            height: 5,
            numbers: BTreeMap::new(),
            texts: texts(&[
                ("item_id", vec!["a", "b", "c", "d", "e"]),
                ("stage", vec!["1:probe", "1:probe", "1:probe", "1:probe", "2:scene_split"]),
                ("message", vec!["bad file\nat 1", "bad file\nat 2", "bad file", "bad file", "bad file"]),
            ]),
        };
        acc.add_errors(&t);
        let d = acc.finish(DatasetIndex::new("j", Vec::new(), Vec::new()), None);
        let groups: Vec<_> = d.errors.iter().map(|e| (e.stage.as_str(), e.cause.as_str(), e.count)).collect();
        assert_eq!(groups, [("1:probe", "bad file", 4), ("2:scene_split", "bad file", 1)]);
        assert_eq!(d.errors[0].examples, ["a", "b", "c"]);
        assert_eq!(d.failed[0], ("a".to_string(), "1:probe".to_string(), "bad file".to_string()));
        assert_eq!(d.failed.len(), 5);
    }

    #[test]
    fn the_clip_sample_is_the_same_whatever_the_order_of_the_rows() {
        let rows = |ids: Vec<String>| TableColumns {
            height: ids.len(),
            numbers: BTreeMap::from([
                ("clip_start_frame".to_string(), vec![Some(10.0); ids.len()]),
                ("clip_end_frame".to_string(), vec![Some(20.0); ids.len()]),
            ]),
            texts: BTreeMap::from([
                ("uri".to_string(), vec![Some("v.mp4".to_string()); ids.len()]),
                ("id".to_string(), ids.into_iter().map(Some).collect()),
            ]),
        };
        let ids: Vec<String> = (0..500).map(|i| format!("clip-{i}")).collect();
        let sample = |ids: Vec<String>| {
            let mut acc = Accumulator::default();
            for chunk in ids.chunks(64) {
                acc.add(&rows(chunk.to_vec()));
            }
            let d = acc.finish(DatasetIndex::new("j", Vec::new(), Vec::new()), None);
            assert_eq!(d.rows, 500);
            d.sample.iter().map(|c| (c.id.clone(), c.frame)).collect::<Vec<_>>()
        };
        let forward = sample(ids.clone());
        assert_eq!(forward.len(), CLIP_SAMPLE);
        assert!(forward.iter().all(|(_, frame)| *frame == 15), "the middle frame of each clip");
        assert_eq!(forward, sample(ids.into_iter().rev().collect()));
    }

    #[test]
    fn cards_put_new_then_changed_rows_first() {
        let mut acc = Accumulator::default();
        let t = TableColumns {
            height: 4,
            numbers: BTreeMap::from([("seed".to_string(), vec![Some(1.0), Some(2.0), None, Some(4.0)])]),
            texts: texts(&[
                ("id", vec!["a", "b", "c", "d"]),
                ("video_file", vec!["videos/a.mp4", "videos/b.mp4", "videos/c.mp4", "videos/d.mp4"]),
                ("prompt", vec!["pa", "pb", "pc", "pd"]),
            ]),
        };
        acc.status = Some(HashMap::from([("d".to_string(), "new"), ("b".to_string(), "changed")]));
        acc.add(&t);
        let d = acc.finish(DatasetIndex::new("j", Vec::new(), Vec::new()), None);
        let order: Vec<_> = d.cards.iter().map(|c| (c.id.as_str(), c.status)).collect();
        assert_eq!(order, [("d", "new"), ("b", "changed"), ("a", ""), ("c", "")]);
        assert_eq!(d.cards[0].fields, [("prompt", "pd".to_string()), ("seed", "4".to_string())]);
        assert!(d.sample.is_empty(), "generated rows are cards, not clips");
    }

    #[test]
    fn a_large_catalog_keeps_only_the_cards_it_shows() {
        let mut acc =
            Accumulator { status: Some(HashMap::from([("row-00999".to_string(), "new")])), ..Default::default() };
        for chunk in (0..1000).collect::<Vec<_>>().chunks(100) {
            let ids: Vec<String> = chunk.iter().map(|i| format!("row-{i:05}")).collect();
            let files: Vec<String> = ids.iter().map(|i| format!("videos/{i}.mp4")).collect();
            let t = TableColumns {
                height: ids.len(),
                numbers: BTreeMap::new(),
                texts: BTreeMap::from([
                    ("id".to_string(), ids.into_iter().map(Some).collect()),
                    ("video_file".to_string(), files.into_iter().map(Some).collect()),
                ]),
            };
            acc.add(&t);
            assert!(acc.cards.len() < 2 * MAX_CARDS);
        }
        let d = acc.finish(DatasetIndex::new("j", Vec::new(), Vec::new()), None);
        assert_eq!((d.cards.len(), d.more_cards), (MAX_CARDS, 1000 - MAX_CARDS));
        assert_eq!((d.cards[0].id.as_str(), d.cards[1].id.as_str()), ("row-00999", "row-00000"));
    }
}
