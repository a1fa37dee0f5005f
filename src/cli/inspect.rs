//! `mugflow inspect`: what a dataset, shard table or tensor file holds.

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
