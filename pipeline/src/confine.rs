//! Confinement: the paths and URLs a job's input may name.
//!
//! A catalog row is data from outside the team: `image=/home/u/.ssh/id_rsa`, `../../etc/passwd`
//! or `http://169.254.169.254/...` must not become frame 0 of a published video. Every input's
//! `uri` must lie below one of the job's roots: the folder of the list or table file, the
//! literal base of a glob, and the prefixes in `job.allowed_roots` (local folders or URL
//! prefixes such as `s3://bucket/raw/`). Local paths are normalised (`..` resolved) and, when
//! they exist, their symlinks resolved before the check. Only local paths and the object-store
//! schemes of a root are allowed; `http(s)://` and `file://` only under a root of that scheme.
//! The rows of a mugflow dataset (`input = { dataset = ... }`) name the sources an earlier,
//! confined run read, so they are not confined again.

use std::path::{Component, Path, PathBuf};

use crate::manifest::{InputListing, InputSpec};

/// The roots a job may read below.
#[derive(Debug, Clone)]
pub struct Roots {
    /// Local roots, absolute and with symlinks resolved where they exist.
    local: Vec<PathBuf>,
    /// URL prefixes, each ending in `/`.
    urls: Vec<String>,
    /// A dataset input: not confined.
    open: bool,
}

/// `path` made absolute with `.` and `..` resolved lexically (no symlinks followed).
fn normalise(path: &Path) -> PathBuf {
    let abs = std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf());
    let mut out = PathBuf::new();
    for c in abs.components() {
        match c {
            Component::ParentDir => {
                out.pop();
            }
            Component::CurDir => {}
            other => out.push(other),
        }
    }
    out
}

/// A local path as the check sees it: normalised, then with symlinks resolved if it exists.
fn real(path: &Path) -> PathBuf {
    let n = normalise(path);
    std::fs::canonicalize(&n).unwrap_or(n)
}

/// The folder part of a listing file's path or URL.
fn parent(path: &str) -> &str {
    match path.rsplit_once('/') {
        Some(("", _)) => "/",
        Some((dir, _)) => dir,
        None => ".",
    }
}

impl Roots {
    /// The roots of a job: its listing's own folder (or glob base) and `allowed`.
    pub fn for_job(spec: &InputSpec, allowed: &[String]) -> Roots {
        let listing = match spec {
            InputSpec::Glob(g) => InputListing { glob: Some(g.clone()), ..InputListing::default() },
            InputSpec::Listing(l) => l.clone(),
        };
        let mut roots = Roots { local: Vec::new(), urls: Vec::new(), open: listing.dataset.is_some() };
        let base = match (&listing.glob, &listing.list, &listing.table) {
            (Some(g), _, _) => {
                let literal: Vec<&str> = g.split('/').take_while(|c| !c.contains(['*', '?', '[', '{'])).collect();
                Some(if literal.is_empty() { ".".to_string() } else { literal.join("/") })
            }
            (_, Some(f), _) | (_, _, Some(f)) => Some(parent(f).to_string()),
            _ => None,
        };
        for r in base.iter().chain(allowed) {
            roots.add(r);
        }
        roots
    }

    fn add(&mut self, root: &str) {
        if root.contains("://") {
            self.urls.push(format!("{}/", root.trim_end_matches('/')));
        } else {
            self.local.push(real(Path::new(if root.is_empty() { "/" } else { root })));
        }
    }

    fn describe(&self) -> String {
        let mut all: Vec<String> = self.local.iter().map(|p| p.display().to_string()).collect();
        all.extend(self.urls.iter().cloned());
        all.join(", ")
    }

    /// Why `uri` may not be read, naming the rule; `Ok` when it lies below a root.
    pub fn check(&self, uri: &str) -> Result<(), String> {
        if self.open {
            return Ok(());
        }
        let fix = "add its folder (or URL prefix) to job.allowed_roots to read it";
        match uri.split_once("://") {
            Some((scheme, rest)) => {
                if rest.split('/').any(|seg| seg == "..") {
                    return Err(format!("`{uri}` climbs out with `..`; write the path without it"));
                }
                if self.urls.iter().any(|r| uri.starts_with(r.as_str())) {
                    return Ok(());
                }
                if !self.urls.iter().any(|r| r.starts_with(&format!("{scheme}://"))) {
                    return Err(format!(
                        "the scheme `{scheme}://` of `{uri}` is not allowed for this job (allowed: {}); \
                         list a `{scheme}://...` prefix in job.allowed_roots to allow it",
                        self.describe()
                    ));
                }
                Err(format!("`{uri}` is outside the allowed roots ({}); {fix}", self.describe()))
            }
            None => {
                let lexical = normalise(Path::new(uri));
                let resolved = real(Path::new(uri));
                let inside = |p: &Path| self.local.iter().any(|r| p.starts_with(r));
                if inside(&resolved) {
                    return Ok(());
                }
                if inside(&lexical) {
                    return Err(format!(
                        "`{uri}` is a link to {}, outside the allowed roots ({}); {fix}",
                        resolved.display(),
                        self.describe()
                    ));
                }
                if Path::new(uri).components().any(|c| c == Component::ParentDir) {
                    return Err(format!(
                        "`{uri}` climbs out of the allowed roots ({}) with `..`; {fix}",
                        self.describe()
                    ));
                }
                Err(format!("`{uri}` is outside the allowed roots ({}); {fix}", self.describe()))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table_roots(dir: &Path, allowed: &[&str]) -> Roots {
        let spec = InputSpec::Listing(InputListing {
            table: Some(format!("{}/catalog.csv", dir.display())),
            ..InputListing::default()
        });
        Roots::for_job(&spec, &allowed.iter().map(|s| s.to_string()).collect::<Vec<_>>())
    }

    #[test]
    fn paths_below_the_catalog_pass_and_the_rest_name_the_rule() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        std::fs::create_dir(d.join("images")).unwrap();
        std::fs::write(d.join("images/a.png"), b"x").unwrap();
        let roots = table_roots(d, &[]);
        assert_eq!(roots.check(&format!("{}/images/a.png", d.display())), Ok(()));
        assert_eq!(roots.check(&format!("{}/images/missing.png", d.display())), Ok(()), "missing files fail later");

        let e = roots.check("/etc/passwd").unwrap_err();
        assert!(e.contains("`/etc/passwd` is outside the allowed roots") && e.contains("job.allowed_roots"), "{e}");
        let e = roots.check(&format!("{}/images/../../../etc/passwd", d.display())).unwrap_err();
        assert!(e.contains("climbs out of the allowed roots"), "{e}");
        std::os::unix::fs::symlink("/etc/hostname", d.join("images/link.png")).unwrap();
        let e = roots.check(&format!("{}/images/link.png", d.display())).unwrap_err();
        assert!(e.contains("is a link to /etc/hostname, outside"), "{e}");
        let e = roots.check("http://169.254.169.254/latest/meta-data").unwrap_err();
        assert!(e.contains("the scheme `http://`") && e.contains("is not allowed"), "{e}");
        let e = roots.check("file:///etc/passwd").unwrap_err();
        assert!(e.contains("the scheme `file://`"), "{e}");
    }

    #[test]
    fn allowed_roots_open_local_folders_and_url_prefixes() {
        let dir = tempfile::tempdir().unwrap();
        let roots = table_roots(dir.path(), &["/usr/share", "s3://bucket/raw/"]);
        assert_eq!(roots.check("/usr/share/doc"), Ok(()));
        assert_eq!(roots.check("s3://bucket/raw/v/1.mp4"), Ok(()));
        let e = roots.check("s3://bucket/private/1.mp4").unwrap_err();
        assert!(e.contains("outside the allowed roots"), "{e}");
        let e = roots.check("s3://bucket/raw/../private/1.mp4").unwrap_err();
        assert!(e.contains("climbs out with `..`"), "{e}");
        let e = roots.check("s3://bucket/rawx/1.mp4").unwrap_err();
        assert!(e.contains("outside"), "a prefix is a folder, not a string prefix: {e}");
    }

    #[test]
    fn a_glob_is_confined_to_its_base_and_a_dataset_is_not_confined() {
        let glob = Roots::for_job(&InputSpec::Glob("/data/videos/**/*.mp4".into()), &[]);
        assert_eq!(glob.check("/data/videos/a/b.mp4"), Ok(()));
        assert!(glob.check("/data/other/b.mp4").is_err());
        let spec = InputSpec::Listing(InputListing { dataset: Some("out/curate".into()), ..InputListing::default() });
        assert_eq!(Roots::for_job(&spec, &[]).check("/anywhere/x.mp4"), Ok(()));
    }
}
