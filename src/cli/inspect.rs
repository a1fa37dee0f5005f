//! `mugflow inspect`: what a dataset (and each of its versions), shard table or tensor file
//! holds; `mugflow vacuum`: delete old versions; `mugflow repair`: end stuck states.

use std::collections::BTreeMap;

use pipeline::format::DatasetIndex;
use pipeline::inspect::{read_table_summary, read_tensor_header, TableSummary, TensorInfo};
use pipeline::io::Location;

/// Print a summary of a dataset directory/URL or one `.parquet` / `.safetensors` file.
pub fn inspect(path: &str) -> anyhow::Result<()> {
    let rt = super::runtime()?;
    rt.block_on(async {
        let (dir, name) = match path.rsplit_once('/') {
            Some((d, n)) if n.ends_with(".parquet") || n.ends_with(".safetensors") => {
                (d.to_string(), Some(n.to_string()))
            }
            None if path.ends_with(".parquet") || path.ends_with(".safetensors") => {
                (".".to_string(), Some(path.to_string()))
            }
            _ => (path.trim_end_matches('/').to_string(), None),
        };
        let loc = Location::parse(&dir)?;
        match name {
            Some(n) if n.ends_with(".parquet") => print_table(&read_table_summary(&loc, &n).await?),
            Some(n) => print_tensors(&read_tensor_header(&loc, &n).await?),
            None => inspect_dataset(&loc).await?,
        }
        Ok(())
    })
}

async fn inspect_dataset(loc: &Location) -> anyhow::Result<()> {
    let Some(bytes) = loc.read_opt("index.json").await? else {
        anyhow::bail!("{} has no index.json: not a mugflow dataset (or no shard is committed yet)", loc.url);
    };
    let index: DatasetIndex = serde_json::from_slice(&bytes)?;
    println!("dataset   {}", loc.url);
    println!("job       {}", index.job);
    println!("version   {} (committed {})", index.version, index.created_at);
    println!("shards    {} committed", index.shards.len());
    println!("items     {}", index.items);
    println!("errors    {}", index.errors);
    println!("\nfields");
    for (name, ty) in &index.fields {
        println!("  {name:<20} {ty}");
    }
    if let Some(first) = index.shards.iter().find(|s| s.files.iter().any(|f| f.ends_with(".safetensors"))) {
        let file = first.files.iter().find(|f| f.ends_with(".safetensors")).expect("found above");
        println!("\ntensors (first item of shard {})", first.shard);
        let tensors = read_tensor_header(loc, file).await?;
        let first_id =
            tensors.first().map(|t| t.name.rsplit_once('/').map_or("", |(id, _)| id).to_string()).unwrap_or_default();
        for t in tensors.iter().filter(|t| t.name.starts_with(&format!("{first_id}/"))) {
            println!(
                "  {:<20} {:<5} {:?}",
                t.name.rsplit_once('/').map_or(t.name.as_str(), |(_, n)| n),
                t.dtype,
                t.shape
            );
        }
    }
    let mut by_stage: BTreeMap<String, usize> = BTreeMap::new();
    let mut examples = Vec::new();
    for s in &index.shards {
        for f in s.files.iter().filter(|f| f.ends_with(".errors.parquet")) {
            let t = read_table_summary(loc, f).await?;
            for row in &t.rows {
                *by_stage.entry(row.get("stage").cloned().unwrap_or_default()).or_default() += 1;
                if examples.len() < 5 {
                    examples.push(format!(
                        "  {} [{}] {}",
                        row.get("item_id").cloned().unwrap_or_default(),
                        row.get("stage").cloned().unwrap_or_default(),
                        row.get("message").cloned().unwrap_or_default()
                    ));
                }
            }
        }
    }
    println!("\nversions");
    for v in pipeline::version::list(loc).await? {
        let i = pipeline::version::load(loc, v).await?;
        println!("  v{v:<4} {}  {:>7} items  {}", i.created_at, i.items, i.changes);
    }
    if !by_stage.is_empty() {
        println!("\nerrors by stage");
        for (stage, n) in &by_stage {
            println!("  {stage:<20} {n}");
        }
        println!("\nfirst errors");
        for e in examples {
            println!("{e}");
        }
    }
    Ok(())
}

fn print_table(t: &TableSummary) {
    println!("rows      {}", t.height);
    println!("\ncolumns");
    for (name, ty) in &t.columns {
        println!("  {name:<20} {ty}");
    }
    println!("\nfirst rows");
    for row in t.rows.iter().take(5) {
        let cells: Vec<String> =
            t.columns.iter().map(|(c, _)| format!("{c}={}", row.get(c).cloned().unwrap_or_default())).collect();
        println!("  {}", cells.join("  "));
    }
}

fn print_tensors(tensors: &[TensorInfo]) {
    println!("tensors   {}", tensors.len());
    for t in tensors {
        println!("  {:<40} {:<5} {:?}", t.name, t.dtype, t.shape);
    }
}

/// `mugflow inspect DATASET --diff A B`: input items added, removed and changed from A to B.
pub fn diff(path: &str, a: u64, b: u64) -> anyhow::Result<()> {
    let rt = super::runtime()?;
    rt.block_on(async {
        let loc = Location::parse(path.trim_end_matches('/'))?;
        let keys = |i: &DatasetIndex| -> BTreeMap<String, String> {
            i.shards.iter().flat_map(|s| s.done.iter().map(|d| (d.id.clone(), d.key.clone()))).collect()
        };
        let (ka, kb) = (keys(&pipeline::version::load(&loc, a).await?), keys(&pipeline::version::load(&loc, b).await?));
        let added: Vec<&String> = kb.keys().filter(|id| !ka.contains_key(*id)).collect();
        let removed: Vec<&String> = ka.keys().filter(|id| !kb.contains_key(*id)).collect();
        let changed: Vec<&String> =
            kb.iter().filter(|(id, k)| ka.get(*id).is_some_and(|ka| ka != *k)).map(|(id, _)| id).collect();
        let unchanged = kb.len() - added.len() - changed.len();
        println!(
            "v{a} -> v{b}: {} added, {} removed, {} changed, {unchanged} unchanged",
            added.len(),
            removed.len(),
            changed.len()
        );
        for (what, ids) in [("added", &added), ("removed", &removed), ("changed", &changed)] {
            for id in ids.iter() {
                println!("  {what:<8} {id}");
            }
        }
        Ok(())
    })
}

/// `mugflow vacuum`.
pub fn vacuum(path: &str, keep: usize, older_than: &str, dry_run: bool) -> anyhow::Result<()> {
    let older_than: std::time::Duration = humantime::parse_duration(older_than)
        .map_err(|e| anyhow::anyhow!("--older-than {older_than:?}: {e} (write e.g. 30m, 1h, 7days, 0s)"))?;
    let rt = super::runtime()?;
    rt.block_on(async {
        let loc = Location::parse(path.trim_end_matches('/'))?;
        let r = pipeline::vacuum::vacuum(&loc, keep, older_than, dry_run).await?;
        let verb = if dry_run { "would delete" } else { "deleted" };
        for f in &r.deleted_files {
            println!("{verb} {f}");
        }
        println!(
            "{verb} version(s) {:?} and {} file(s), {} bytes; kept version(s) {:?}",
            r.deleted_versions,
            r.deleted_files.len(),
            r.deleted_bytes,
            r.kept_versions
        );
        Ok(())
    })
}

/// `mugflow repair`.
pub fn repair(path: &str, dry_run: bool) -> anyhow::Result<()> {
    let rt = super::runtime()?;
    rt.block_on(async {
        let loc = Location::parse(path.trim_end_matches('/'))?;
        let found = pipeline::repair::repair(&loc, dry_run).await?;
        for f in &found {
            let action = match (&f.fix, dry_run) {
                (pipeline::repair::Fix::Quarantine(to), true) => format!("would move it to {to}"),
                (pipeline::repair::Fix::Quarantine(to), false) => format!("moved it to {to}"),
                (pipeline::repair::Fix::Delete, true) => "would delete it".into(),
                (pipeline::repair::Fix::Delete, false) => "deleted it".into(),
                (pipeline::repair::Fix::AbortUpload(_), true) => "would abort the upload and delete this record".into(),
                (pipeline::repair::Fix::AbortUpload(_), false) => "aborted the upload, deleted this record".into(),
            };
            println!("{}: {}; {action}", f.name, f.problem);
        }
        if found.is_empty() && loc.list("").await.map_or(true, |names| names.is_empty()) {
            // A mistyped path reads as an empty output; saying "nothing to repair" would hide it.
            anyhow::bail!("{} holds nothing: no dataset there to repair (check the path)", loc.url);
        }
        match (found.len(), dry_run) {
            (0, _) => println!("nothing to repair in {}", loc.url),
            (n, true) => println!("{n} problem(s) found; run again without --dry-run to fix them"),
            (n, false) => println!("{n} problem(s) fixed; run the job again to finish it"),
        }
        Ok(())
    })
}
