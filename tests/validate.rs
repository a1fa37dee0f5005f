//! `mugflow validate` and `mugflow stages`: manifests are checked before any work, with errors
//! that name file:line:column and suggest the fix.

mod common;

use common::{manifest, run};

#[test]
fn every_bundled_manifest_validates() {
    let mut n = 0;
    for e in std::fs::read_dir(common::root().join("manifests")).unwrap() {
        let p = e.unwrap().path();
        if p.extension().is_some_and(|x| x == "toml") {
            // A manifest reading an earlier job's dataset (reencode) cannot list it in a fresh clone.
            let reads_dataset = std::fs::read_to_string(&p).unwrap().contains("input = { dataset");
            let mut args = vec!["validate", p.to_str().unwrap()];
            if reads_dataset {
                args.push("--offline");
            }
            let (code, out, err) = run(&args);
            assert_eq!(code, 0, "{}:\n{out}\n{err}", p.display());
            assert!(out.contains("is valid"), "{out}");
            n += 1;
        }
    }
    assert!(n >= 1);
}

#[test]
fn validate_prints_the_resolved_plan() {
    let (code, out, _) = run(&["validate", "manifests/demo.toml", "--set", "stage.probe.parallelism=3"]);
    assert_eq!(code, 0);
    assert!(out.contains("[1] probe  (parallelism 3)"), "{out}");
    assert!(out.contains("require_video = true  (default)"), "{out}");
    assert!(out.contains("adds   container: str, duration_s: float"), "{out}");
    assert!(out.contains("inputs: 10 items in 3 shard(s) of up to 4"), "{out}");
    assert!(out.contains("[2] write  (sink)"), "{out}");
}

const HEAD: &str = "[job]\nname = \"t\"\ninput = \"tests/data/videos/*\"\noutput = \"out/t\"\n";

#[test]
fn a_misspelt_key_names_the_position_and_the_fix() {
    let dir = tempfile::tempdir().unwrap();
    let m = manifest(
        dir.path(),
        "typo.toml",
        &format!("{HEAD}\n[[stage]]\nkind = \"probe\"\nrequire_vidoe = false\n\n[[stage]]\nkind = \"write\"\n"),
    );
    let (code, out, err) = run(&["validate", m.to_str().unwrap()]);
    assert_eq!(code, 2, "{out}{err}");
    assert!(err.contains("unknown key `require_vidoe` in stage 1 (`probe`)"), "{err}");
    assert!(err.contains("typo.toml:8:1"), "{err}");
    assert!(err.contains("did you mean `require_video`?"), "{err}");
}

#[test]
fn wrong_types_bad_units_and_unknown_kinds_are_all_reported() {
    let dir = tempfile::tempdir().unwrap();
    let text = "[job]\nname = \"t\"\ninput = \"x/*\"\noutput = \"o\"\nshard_size = \"4\"\nitem_timeout = \"12parsecs\"\nmemory_budget = \"lots\"\nmax_error_rate = 2.0\n\n[[stage]]\nkind = \"prob\"\n\n[[stage]]\nkind = \"write\"\nformat = \"mugv\"\n";
    let m = manifest(dir.path(), "bad.toml", text);
    let (code, _, err) = run(&["validate", m.to_str().unwrap()]);
    assert_eq!(code, 2);
    for needle in [
        "`shard_size` in [job] must be an integer, found a string",
        "write the number without quotes: 4",
        "bad.toml:5:14",
        "unknown duration unit `parsecs`",
        "bad.toml:6:16",
        "is not a size",
        "`max_error_rate` in [job] must be between 0 and 1, found 2",
        "unknown stage kind `prob`",
        "did you mean \"probe\"?",
        "bad.toml:11:8",
        "`format` in stage 2 (`write`) has an invalid value `mugv`",
        "one of: \"mugflow\"",
    ] {
        assert!(err.contains(needle), "missing `{needle}` in:\n{err}");
    }
}

#[test]
fn missing_job_keys_and_pipeline_shape_are_checked() {
    let dir = tempfile::tempdir().unwrap();
    let m = manifest(
        dir.path(),
        "shape.toml",
        "[job]\nname = \"t\"\ninput = \"x/*\"\n\n[[stage]]\nkind = \"write\"\n\n[[stage]]\nkind = \"probe\"\n",
    );
    let (code, _, err) = run(&["validate", "--offline", m.to_str().unwrap()]);
    assert_eq!(code, 2);
    assert!(err.contains("missing required key `output` in [job]"), "{err}");
    assert!(err.contains("stage 1 (`write`) writes output and must be the last stage"), "{err}");
    assert!(err.contains("the last stage (`probe`) does not write anything"), "{err}");
}

#[test]
fn overrides_and_environment_are_applied_and_checked() {
    let (code, out, _) = run(&["validate", "manifests/demo.toml", "--set", "job.shard_size=5"]);
    assert_eq!(code, 0);
    assert!(out.contains("shard_size = 5"), "{out}");
    assert!(out.contains("in 2 shard(s) of up to 5"), "{out}");

    let (code, _, err) = run(&["validate", "manifests/demo.toml", "--set", "stage.prob.parallelism=2"]);
    assert_eq!(code, 2);
    assert!(err.contains("no stage matches `prob`") && err.contains("did you mean `stage.probe`?"), "{err}");

    let (code, _, err) = run(&["validate", "manifests/demo.toml", "--set", "job.shard_size=many"]);
    assert_eq!(code, 2);
    assert!(err.contains("--set job.shard_size=many"), "{err}");

    let out = common::mugflow(&["validate", "--offline", "manifests/demo.toml"])
        .env("MUGFLOW_OUT", "/data/x")
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&out.stdout).contains("output = \"/data/x\""));
}

#[test]
fn a_field_nothing_provides_fails_before_the_run() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("t.csv"), "path,caption\na.mp4,hello\n").unwrap();
    let text = format!(
        "[job]\nname = \"t\"\ninput = {{ table = \"{}/t.csv\" }}\noutput = \"o\"\n\n[[stage]]\nkind = \"write\"\n",
        dir.path().display()
    );
    let m = manifest(dir.path(), "ok.toml", &text);
    let (code, out, err) = run(&["validate", m.to_str().unwrap()]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("inputs: 1 items"), "{out}");
}

#[test]
fn stages_lists_every_stage_from_the_schema() {
    let (code, out, _) = run(&["stages"]);
    assert_eq!(code, 0);
    assert!(out.contains("probe\n  Read container and stream metadata with FFmpeg"), "{out}");
    assert!(out.contains("require_video"), "{out}");
    assert!(out.contains("format             \"mugflow\""), "{out}");
    let (code, _, err) = run(&["stages", "prob"]);
    assert_eq!(code, 1);
    assert!(err.contains("did you mean `probe`?"), "{err}");
    let (code, out, _) = run(&["stages", "--format", "markdown"]);
    assert_eq!(code, 0);
    assert!(out.contains("## `probe`") && out.contains("| `require_video` | boolean | `true` |"), "{out}");
}

#[test]
fn the_stage_reference_in_docs_is_current() {
    let (code, out, _) = run(&["stages", "--format", "markdown"]);
    assert_eq!(code, 0);
    let docs = std::fs::read_to_string(common::root().join("docs/STAGES.md")).unwrap();
    assert!(docs == out, "docs/STAGES.md is stale: run `mugflow stages --format markdown > docs/STAGES.md`");
}
