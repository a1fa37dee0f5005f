//! `mugflow report`: the HTML page of a dataset version, and the one every run writes.

use std::path::{Path, PathBuf};

use pipeline::io::Location;

/// Write the page of `version` of the dataset at `output` to `out` (default: into the output).
pub fn report(output: &str, version: Option<u64>, out: Option<&Path>) -> anyhow::Result<()> {
    let rt = super::runtime()?;
    rt.block_on(async {
        let loc = Location::parse(output.trim_end_matches('/'))?;
        let Some(file) = out else {
            let name = version.map_or("report.html".to_string(), |v| format!("report-v{v}.html"));
            let page = crate::report::build(&loc, version, "").await?;
            loc.write(&name, page.into_bytes()).await?;
            println!("{}", loc.url_of(&name));
            return Ok(());
        };
        let page = crate::report::build(&loc, version, &media_base(&loc, file)).await?;
        std::fs::write(file, page).map_err(|e| anyhow::anyhow!("cannot write {}: {e}", file.display()))?;
        println!("{}", file.display());
        Ok(())
    })
}

/// After a run that committed a version: write its page to `<output>/report.html`. A page that
/// cannot be built is a warning; the dataset itself is committed either way.
pub fn after_run(rt: &tokio::runtime::Runtime, report: &pipeline::report::RunReport) {
    if report.version.is_none() {
        return;
    }
    let written = rt.block_on(async {
        let loc = Location::parse(&report.output)?;
        crate::report::write_beside(&loc).await
    });
    if let Err(e) = written {
        eprintln!("warning: {}/report.html not written: {e:#}", report.output);
    }
}

/// How a page written to `file` reaches the output's files: nothing when it lies in the output
/// folder, else the output's absolute folder (local) or its URL.
fn media_base(loc: &Location, file: &Path) -> String {
    let Some(dir) = &loc.local_dir else { return format!("{}/", loc.url) };
    let parent = file.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    let canon = |p: &Path| std::fs::canonicalize(p).unwrap_or_else(|_| PathBuf::from(p));
    if canon(parent) == canon(dir) {
        String::new()
    } else {
        format!("{}/", canon(dir).display())
    }
}
