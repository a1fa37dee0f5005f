//! Where a manifest value came from, and diagnostics that point back at it.

use std::fmt;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// The text of a manifest file, kept so errors can quote the offending line.
#[derive(Debug)]
pub struct SourceFile {
    /// Path as the user gave it.
    pub path: PathBuf,
    /// Full file contents.
    pub text: String,
}

impl SourceFile {
    /// 1-based line and column of a byte offset.
    pub fn line_col(&self, offset: usize) -> (usize, usize) {
        let offset = offset.min(self.text.len());
        let before = &self.text[..offset];
        let line = before.matches('\n').count() + 1;
        let line_start = before.rfind('\n').map_or(0, |i| i + 1);
        let col = self.text[line_start..offset].chars().count() + 1;
        (line, col)
    }

    /// The text of a 1-based line, without its newline.
    pub fn line_text(&self, line: usize) -> &str {
        self.text.lines().nth(line - 1).unwrap_or("")
    }

    /// The path for display.
    pub fn display_path(&self) -> &Path {
        &self.path
    }
}

/// Where a value was written: in the file, in a `--set` override, or filled in as a default.
#[derive(Debug, Clone)]
pub enum Origin {
    /// A byte range in the manifest file.
    File(Arc<SourceFile>, Range<usize>),
    /// A `--set key=value` argument on the command line.
    Override(String),
    /// No position: the whole manifest (e.g. a required table that is absent).
    Manifest(Arc<SourceFile>),
}

/// One problem found in a manifest, with its position and an optional fix.
#[derive(Debug, Clone)]
pub struct Diagnostic {
    /// What is wrong, in one sentence.
    pub message: String,
    /// Where it is.
    pub origin: Origin,
    /// How to fix it ("did you mean `threshold`?").
    pub help: Option<String>,
}

impl Diagnostic {
    /// A diagnostic without help text.
    pub fn new(message: impl Into<String>, origin: &Origin) -> Self {
        Diagnostic { message: message.into(), origin: origin.clone(), help: None }
    }

    /// Attach a help line.
    pub fn with_help(mut self, help: impl Into<String>) -> Self {
        self.help = Some(help.into());
        self
    }

    /// Attach a help line if there is one.
    pub fn with_help_opt(mut self, help: Option<String>) -> Self {
        self.help = help;
        self
    }
}

impl fmt::Display for Diagnostic {
    /// Renders `error: ...`, a `--> file:line:col` pointer, the quoted line with a caret, and help.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "error: {}", self.message)?;
        match &self.origin {
            Origin::File(src, range) => {
                let (line, col) = src.line_col(range.start);
                let text = src.line_text(line);
                let width = range.len().max(1).min(text.chars().count().saturating_sub(col - 1).max(1));
                let gutter = line.to_string().len();
                writeln!(f, "{:>gutter$}--> {}:{line}:{col}", "", src.display_path().display())?;
                writeln!(f, "{:>gutter$} |", "")?;
                writeln!(f, "{line} | {text}")?;
                write!(f, "{:>gutter$} | {}{}", "", " ".repeat(col - 1), "^".repeat(width))?;
            }
            Origin::Override(arg) => write!(f, "  --> command line: --set {arg}")?,
            Origin::Manifest(src) => write!(f, "  --> {}", src.display_path().display())?,
        }
        if let Some(help) = &self.help {
            write!(f, "\n  = help: {help}")?;
        }
        Ok(())
    }
}

/// Every problem found in one manifest; validation collects them all before failing.
#[derive(Debug, Clone)]
pub struct Diagnostics(pub Vec<Diagnostic>);

impl fmt::Display for Diagnostics {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, d) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
                writeln!(f)?;
            }
            write!(f, "{d}")?;
        }
        if self.0.len() > 1 {
            write!(f, "\n\n{} problems in the manifest", self.0.len())?;
        }
        Ok(())
    }
}

impl std::error::Error for Diagnostics {}

/// The closest candidate to `word` by edit distance, if it is close enough to be a plausible typo.
pub fn nearest<'a>(word: &str, candidates: impl IntoIterator<Item = &'a str>) -> Option<&'a str> {
    candidates
        .into_iter()
        .map(|c| (strsim::damerau_levenshtein(word, c), c))
        .filter(|(d, c)| *d <= (c.len().max(word.len()) / 3).max(2))
        .min_by_key(|(d, _)| *d)
        .map(|(_, c)| c)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn line_and_column_are_one_based() {
        let src = SourceFile { path: "m.toml".into(), text: "a = 1\nbé = 2\n".into() };
        assert_eq!(src.line_col(0), (1, 1));
        assert_eq!(src.line_col(6), (2, 1));
        assert_eq!(src.line_col(11), (2, 5));
    }

    #[test]
    fn nearest_finds_typos_but_not_strangers() {
        let keys = ["threshold", "detector", "min_scene_len"];
        assert_eq!(nearest("treshold", keys), Some("threshold"));
        assert_eq!(nearest("min_scene_length", keys), Some("min_scene_len"));
        assert_eq!(nearest("zzz", keys), None);
    }
}
