//! The same job written to local disk, to an object store, and read back by Python's readers.

mod common;

use std::path::Path;
use std::sync::Arc;

use pipeline::io::Location;
use pipeline::manifest::Manifest;

/// Run `manifests/demo.toml` in-process with its output at `output`.
async fn run_demo(output: &str) -> pipeline::report::RunReport {
    let registry = stages::registry();
    let path = common::root().join("manifests/demo.toml");
    let text = std::fs::read_to_string(&path).unwrap();
    let sets = [format!("job.output={output}"), format!("job.input={}/*", common::videos().display())];
    let m = Manifest::from_text(&path, text, &sets, &|_| None).unwrap();
    let plan = pipeline::Plan::from_manifest(&m, &registry).unwrap();
    let opts = pipeline::RunOptions {
        reporter: Arc::new(pipeline::report::Silent),
        cluster: pipeline::cluster::Cluster::single(),
        stop: std::future::pending(),
    };
    pipeline::run(&plan, &registry, opts).await.unwrap()
}

/// The latest version's table rows, sorted by id.
async fn rows(loc: &Location) -> Vec<std::collections::BTreeMap<String, String>> {
    let mut rows = Vec::new();
    for s in pipeline::version::latest(loc).await.unwrap().unwrap().shards {
        rows.extend(pipeline::inspect::read_table_summary(loc, &s.table).await.unwrap().rows);
    }
    rows.sort_by(|a, b| a["id"].cmp(&b["id"]));
    rows
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_object_store_output_holds_the_same_dataset_as_a_local_one() {
    let dir = tempfile::tempdir().unwrap();
    let disk = dir.path().join("disk");
    let local = run_demo(disk.to_str().unwrap()).await;
    let remote = run_demo("memory://storage-test/datasets/demo").await;
    assert_eq!((local.items_written, remote.items_written), (10, 10));

    let disk_loc = Location::parse(disk.to_str().unwrap()).unwrap();
    let mem_loc = Location::parse("memory://storage-test/datasets/demo").unwrap();
    assert_eq!(rows(&disk_loc).await, rows(&mem_loc).await);
    assert_eq!(
        common::comparable_names(disk_loc.list("").await.unwrap()),
        common::comparable_names(mem_loc.list("").await.unwrap())
    );

    // Resume works the same way on the object store: a second run does nothing.
    let again = run_demo("memory://storage-test/datasets/demo").await;
    assert_eq!((again.status.as_str(), again.changes.unchanged), ("nothing to do", 10));
}

/// The README's Python lines read the latest version of a dataset with polars and pyarrow.
#[test]
fn the_readmes_python_lines_read_the_latest_version() {
    let python = std::env::var("MUGFLOW_TEST_PYTHON")
        .expect("set MUGFLOW_TEST_PYTHON to a Python with polars, pyarrow and safetensors (scripts/test.sh does)");
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("videos");
    tokio::runtime::Runtime::new().unwrap().block_on(run_demo(out.to_str().unwrap()));
    let readme = std::fs::read_to_string(common::root().join("README.md")).unwrap();
    let snippet = readme.split("```python\n").nth(1).and_then(|s| s.split("```").next()).expect("a python block");
    let snippet = snippet.replace("# pyarrow: ", "").replace("out/videos", &out.display().to_string());
    let script = format!(
        "import pyarrow as pa, pyarrow.parquet as pq\n{snippet}\n\
         t = pa.concat_tables([pq.read_table(f\"{dir}/{{s['table']}}\") for s in index['shards']])\n\
         assert df.height == 10 and t.num_rows == 10, (df, t)\nprint('readme readers ok')\n",
        dir = out.display()
    );
    let run = std::process::Command::new(python).arg("-c").arg(&script).output().unwrap();
    assert!(run.status.success(), "{script}\n{}", String::from_utf8_lossy(&run.stderr));
}

/// Python's polars, pyarrow and safetensors read a shard without conversion.
#[test]
fn python_readers_load_a_shard() {
    let python = std::env::var("MUGFLOW_TEST_PYTHON")
        .expect("set MUGFLOW_TEST_PYTHON to a Python with polars, pyarrow and safetensors (scripts/test.sh does)");
    let dir = tempfile::tempdir().unwrap();
    write_shard_with_tensors(dir.path());
    let script = r#"
import sys, json, polars as pl, pyarrow.parquet as pq, numpy as np
from safetensors import safe_open
d = sys.argv[1]
df = pl.read_parquet(f"{d}/shards/a1/shard-00000.parquet")
assert df.height == 2 and df["id"].to_list() == ["clip#0-24", "clip#24-48"], df
assert df.schema["score"] == pl.Float64 and df.schema["frames"] == pl.Int64, df.schema
t = pq.read_table(f"{d}/shards/a1/shard-00000.parquet")
assert t.column("caption").to_pylist() == ["a vase", None]
with safe_open(f"{d}/shards/a1/shard-00000.safetensors", framework="numpy") as f:
    keys = sorted(f.keys())
    assert keys == ["clip#0-24/latent", "clip#0-24/mask", "clip#24-48/latent", "clip#24-48/mask"], keys
    lat = f.get_tensor("clip#24-48/latent")
    assert lat.dtype == np.float32 and lat.shape == (2, 3), lat
    assert lat.tolist() == [[1, 2, 3], [4, 5, 6]], lat
    assert f.get_tensor("clip#0-24/mask").dtype == np.bool_
    assert f.metadata()["format"] == "mugflow"
print("python readers ok")
"#;
    let out = std::process::Command::new(python).arg("-c").arg(script).arg(dir.path()).output().unwrap();
    assert!(out.status.success(), "{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
}

fn write_shard_with_tensors(dir: &Path) {
    use pipeline::{DType, Item, ShardSink, Tensor};
    let target = pipeline::ShardTarget { shard: 0, dir: dir.to_path_buf(), attempt: "a1".into() };
    let mut w = pipeline::format::NativeShardWriter::new(&target).unwrap();
    for (i, id) in ["clip#0-24", "clip#24-48"].iter().enumerate() {
        let mut item = Item::new(*id);
        item.set("score", 4.5 + i as f64);
        item.set("frames", 24i64);
        if i == 0 {
            item.set("caption", "a vase");
        }
        let lat: Vec<u8> = (1..=6).flat_map(|x| (x as f32).to_le_bytes()).collect();
        item.tensors.insert("latent".into(), Tensor::new(DType::F32, vec![2, 3], lat.into()).unwrap());
        item.tensors.insert("mask".into(), Tensor::new(DType::Bool, vec![4], vec![1u8, 1, 0, 0].into()).unwrap());
        w.add(item).unwrap();
    }
    let files = Box::new(w).finish(&[]).unwrap();
    assert_eq!(files.files.len(), 2);
    for (local, name) in files.files {
        let to = dir.join(name);
        std::fs::create_dir_all(to.parent().unwrap()).unwrap();
        std::fs::rename(local, to).unwrap();
    }
}
