//! The house rules of `stages/src`, read from the sources: no stage module imports another stage
//! module (what two stages share lives in `video/`, `row.rs` or `checkpoints.rs`), no two
//! modules import each other, directly or around a longer circle, and only `video/` uses FFmpeg.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

/// A module's path below the crate root (`["video", "decode"]`; empty for lib.rs).
type ModPath = Vec<String>;

/// The modules of a source tree and what each one's code names.
struct Tree {
    /// Every module with a file, and that file's text.
    files: BTreeMap<ModPath, String>,
}

impl Tree {
    /// Every `.rs` file below `src`, keyed by its module path.
    fn read(src: &Path) -> Tree {
        let mut files = BTreeMap::new();
        let mut dirs = vec![src.to_path_buf()];
        while let Some(dir) = dirs.pop() {
            for entry in std::fs::read_dir(&dir).unwrap() {
                let path = entry.unwrap().path();
                if path.is_dir() {
                    dirs.push(path);
                } else if path.extension().is_some_and(|e| e == "rs") {
                    let rel = path.strip_prefix(src).unwrap().with_extension("");
                    let mut module: ModPath = rel.iter().map(|c| c.to_string_lossy().into_owned()).collect();
                    if matches!(module.last().map(String::as_str), Some("lib" | "mod")) {
                        module.pop();
                    }
                    files.insert(module, std::fs::read_to_string(&path).unwrap());
                }
            }
        }
        Tree { files }
    }

    /// The same from `(module path, text)` pairs, for the checker's own tests.
    fn from_texts(texts: &[(&str, &str)]) -> Tree {
        let files = texts
            .iter()
            .map(|(m, t)| (m.split("::").filter(|s| !s.is_empty()).map(String::from).collect(), t.to_string()))
            .collect();
        Tree { files }
    }

    /// The top-level modules that are stages: those whose files implement `StageConfig`.
    fn stages(&self) -> BTreeSet<String> {
        self.files
            .iter()
            .filter(|(m, text)| !m.is_empty() && text.contains("impl StageConfig for"))
            .map(|(m, _)| m[0].clone())
            .collect()
    }

    /// The longest module prefix of `path` that has a file (the module a path points into).
    fn module_of(&self, path: &[String]) -> Option<ModPath> {
        (0..=path.len()).rev().map(|n| path[..n].to_vec()).find(|p| self.files.contains_key(p))
    }

    /// The modules each module's code names (`crate::`, `super::`, or a child's name), itself
    /// excluded.
    fn edges(&self) -> BTreeMap<ModPath, BTreeSet<ModPath>> {
        self.files
            .iter()
            .map(|(module, text)| {
                let targets = named_paths(module, text, &self.children(module))
                    .into_iter()
                    .filter_map(|p| self.module_of(&p))
                    .filter(|t| t != module)
                    .collect();
                (module.clone(), targets)
            })
            .collect()
    }

    /// The names of `module`'s child modules.
    fn children(&self, module: &ModPath) -> Vec<String> {
        self.files
            .keys()
            .filter(|m| m.len() == module.len() + 1 && m.starts_with(module))
            .map(|m| m[module.len()].clone())
            .collect()
    }

    /// Every `stage -> other stage` import, as "a imports b" lines.
    fn sibling_stage_imports(&self) -> Vec<String> {
        let stages = self.stages();
        let mut found = Vec::new();
        for (from, targets) in self.edges() {
            let Some(own) = from.first().filter(|s| stages.contains(*s)) else { continue };
            for to in targets {
                if to.first().is_some_and(|t| t != own && stages.contains(t)) {
                    found.push(format!("{} imports {}", name(&from), name(&to)));
                }
            }
        }
        found
    }

    /// The import circles, each as "a -> b -> a".
    fn circles(&self) -> Vec<String> {
        let edges = self.edges();
        let mut found = BTreeSet::new();
        for start in edges.keys() {
            // Depth-first walk from `start`; a path back to it is a circle (reported once, from its
            // smallest module).
            let mut stack = vec![(start.clone(), vec![start.clone()])];
            let mut seen = BTreeSet::new();
            while let Some((at, path)) = stack.pop() {
                for next in edges.get(&at).into_iter().flatten() {
                    if next == start {
                        if path.iter().all(|m| m >= start) {
                            let names: Vec<String> = path.iter().chain([start]).map(name).collect();
                            found.insert(names.join(" -> "));
                        }
                    } else if seen.insert(next.clone()) {
                        stack.push((next.clone(), path.iter().cloned().chain([next.clone()]).collect()));
                    }
                }
            }
        }
        found.into_iter().collect()
    }
}

/// A module path as Rust spells it.
fn name(module: &ModPath) -> String {
    if module.is_empty() {
        "crate".into()
    } else {
        format!("crate::{}", module.join("::"))
    }
}

/// The absolute paths `text` (the file of `module`) names through `crate::`, `super::` or one of
/// its `children`, grouped imports (`use crate::{a, b::{c, d}}`) expanded. Comments are skipped;
/// `super` inside the file's inline `mod tests` means the file's own module.
fn named_paths(module: &ModPath, text: &str, children: &[String]) -> Vec<Vec<String>> {
    let code: String =
        text.lines().map(|l| l.split_once("//").map_or(l, |(code, _)| code)).collect::<Vec<_>>().join("\n");
    let inline_at = code.find("#[cfg(test)]").unwrap_or(code.len());
    let mut out = Vec::new();
    let bytes = code.as_bytes();
    let ident = |c: u8| c.is_ascii_alphanumeric() || c == b'_';
    let mut i = 0;
    while i < code.len() {
        let starts_word = (i == 0 || !(ident(bytes[i - 1]) || bytes[i - 1] == b':')) && ident(bytes[i]);
        if !starts_word {
            i += 1;
            continue;
        }
        let end = i + code[i..].find(|c: char| !(c.is_ascii_alphanumeric() || c == '_')).unwrap_or(code.len() - i);
        let word = &code[i..end];
        let base: Option<ModPath> = match word {
            "crate" => Some(Vec::new()),
            "super" if i >= inline_at => Some(module.clone()),
            "super" => Some(module[..module.len().saturating_sub(1)].to_vec()),
            w if children.iter().any(|c| c == w) => Some(module.iter().cloned().chain([w.to_string()]).collect()),
            _ => None,
        };
        match base {
            Some(base) if code[end..].starts_with("::") => {
                let (paths, len) = expand(&code[end + 2..]);
                out.extend(paths.into_iter().map(|p| base.iter().cloned().chain(p).collect()));
                i = end + 2 + len;
            }
            _ => i = end,
        }
    }
    out
}

/// The paths at the start of `s` (after a `::`): `a::b::C` or a `{...}` group, with how many
/// bytes they took. `super::super::x` keeps `super` segments for the caller to ignore: none of
/// ours climbs twice.
fn expand(s: &str) -> (Vec<Vec<String>>, usize) {
    let mut segments = Vec::new();
    let mut i = 0;
    loop {
        let rest = &s[i..];
        if let Some(group) = rest.strip_prefix('{') {
            let (mut depth, mut close) = (1, 0);
            for (j, c) in group.char_indices() {
                depth += match c {
                    '{' => 1,
                    '}' => -1,
                    _ => 0,
                };
                if depth == 0 {
                    close = j;
                    break;
                }
            }
            let inner = &group[..close];
            let mut paths = Vec::new();
            let (mut depth, mut from) = (0, 0);
            for (j, c) in inner.char_indices().chain([(inner.len(), ',')]) {
                match c {
                    '{' => depth += 1,
                    '}' => depth -= 1,
                    ',' if depth == 0 => {
                        let part = inner[from..j].trim();
                        if !part.is_empty() && part != "self" && part != "*" {
                            let part = part.split(" as ").next().unwrap_or(part);
                            let (sub, _) = expand(&format!("{part} "));
                            paths.extend(sub.into_iter().map(|p| segments.iter().cloned().chain(p).collect()));
                        } else if part == "self" || part == "*" {
                            paths.push(segments.clone());
                        }
                        from = j + 1;
                    }
                    _ => {}
                }
            }
            return (paths, i + 1 + close + 1);
        }
        let len = rest.find(|c: char| !(c.is_ascii_alphanumeric() || c == '_')).unwrap_or(rest.len());
        if len == 0 {
            return (vec![segments], i);
        }
        segments.push(rest[..len].to_string());
        i += len;
        if s[i..].starts_with("::") {
            i += 2;
        } else {
            return (vec![segments], i);
        }
    }
}

fn source_tree() -> Tree {
    Tree::read(&Path::new(env!("CARGO_MANIFEST_DIR")).join("src"))
}

/// No stage module names another stage module: shared code lives in `video/`, `row.rs` or
/// `checkpoints.rs`, so a stage can be read, moved or deleted alone.
#[test]
fn no_stage_imports_another_stage() {
    let tree = source_tree();
    assert!(tree.stages().len() >= 10, "the checker found too few stages: {:?}", tree.stages());
    let found = tree.sibling_stage_imports();
    assert!(found.is_empty(), "stage modules import each other:\n{}", found.join("\n"));
}

/// No two modules of `stages/src` import each other, directly or around a longer circle.
#[test]
fn no_import_circle() {
    let found = source_tree().circles();
    assert!(found.is_empty(), "import circles in stages/src:\n{}", found.join("\n"));
}

/// Only `video/` talks to FFmpeg: stages call its decoder, encoder and probe instead.
#[test]
fn only_video_uses_ffmpeg() {
    let tree = source_tree();
    let outside: Vec<String> = tree
        .files
        .iter()
        .filter(|(m, text)| m.first().is_none_or(|top| top != "video") && text.contains("ffmpeg"))
        .map(|(m, _)| name(m))
        .collect();
    assert!(outside.is_empty(), "modules outside video/ that use FFmpeg: {outside:?}");
}

/// The checker sees grouped, nested, `super` and child imports, and the two faults it exists for.
#[test]
fn checker_finds_sibling_imports_and_circles() {
    let tree = Tree::from_texts(&[
        ("", "mod a; mod b; mod video; mod row;\nfn r() { a::AConfig::f(); }"),
        ("a", "use crate::{row, video::{decode::X, probe}};\nimpl StageConfig for AConfig {}"),
        ("b", "use crate::a::helper; // crate::row::x in a comment\nimpl StageConfig for BConfig {}"),
        ("video", "pub mod decode; pub mod probe;"),
        ("video::decode", "use super::probe::E;"),
        ("video::probe", "fn f() { crate::video::decode::g(); }\n#[cfg(test)]\nmod tests { use super::*; }"),
        ("row", "pub fn clip_range() {}"),
    ]);
    assert_eq!(tree.sibling_stage_imports(), ["crate::b imports crate::a"]);
    assert_eq!(tree.circles(), ["crate::video::decode -> crate::video::probe -> crate::video::decode"]);
    let edges = tree.edges();
    let names =
        |m: &str| edges[&m.split("::").map(String::from).collect::<Vec<_>>()].iter().map(name).collect::<Vec<_>>();
    assert_eq!(names("a"), ["crate::row", "crate::video::decode", "crate::video::probe"]);
    assert_eq!(edges[&Vec::new()].iter().map(name).collect::<Vec<_>>(), ["crate::a"]);
}
