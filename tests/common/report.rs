//! Checks of a dataset's `report.html`: the numbers against `report.json`, the embedded
//! thumbnails, the videos the cards point at, and (where Chromium is installed, as
//! scripts/setup.sh does) the page as a browser shows it: no errors, every image and video loaded.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use base64::Engine as _;

/// The attributes of every start tag `<name ... marker ...>` in `html`.
pub fn tags(html: &str, start: &str) -> Vec<BTreeMap<String, String>> {
    let mut out = Vec::new();
    let mut rest = html;
    while let Some(at) = rest.find(start) {
        let tag = &rest[at..];
        let end = tag.find('>').expect("tag ends");
        out.push(attributes(&tag[..end]));
        rest = &tag[end..];
    }
    out
}

fn attributes(tag: &str) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    let mut rest = tag;
    while let Some(eq) = rest.find("=\"") {
        let name = rest[..eq].rsplit(|c: char| c.is_whitespace()).next().unwrap_or_default().to_string();
        let value_end = rest[eq + 2..].find('"').expect("attribute value ends");
        let value = &rest[eq + 2..eq + 2 + value_end];
        out.insert(
            name,
            value
                .replace("&quot;", "\"")
                .replace("&#39;", "'")
                .replace("&lt;", "<")
                .replace("&gt;", ">")
                .replace("&amp;", "&"),
        );
        rest = &rest[eq + 2 + value_end + 1..];
    }
    out
}

/// What a page showed, for the test to assert on further.
pub struct Checked {
    /// The page.
    pub html: String,
    /// Ids of the kept clips on the contact sheet.
    pub clips: Vec<String>,
    /// (id, reason) of the dropped clips shown.
    pub dropped: Vec<(String, String)>,
    /// Ids of the video cards, in page order.
    pub cards: Vec<String>,
}

/// Check `page` (default: `<out>/report.html`) of the dataset at `out`: its funnel equals
/// `report.json`'s stages, every contact-sheet image is a JPEG that decodes, every card's video
/// exists, and the browser (if any) loads it all without an error; a screenshot is left next to
/// the page.
pub fn check(out: &Path, page: Option<&Path>) -> Checked {
    let page = page.map_or_else(|| out.join("report.html"), Path::to_path_buf);
    let html = std::fs::read_to_string(&page).unwrap_or_else(|e| panic!("{}: {e}", page.display()));
    let report: serde_json::Value = serde_json::from_slice(&std::fs::read(out.join("report.json")).unwrap()).unwrap();
    let funnel = tags(&html, "<tr data-stage=");
    let funnel: Vec<_> = funnel.iter().filter(|t| t.contains_key("data-in")).collect();
    let stages = report["stages"].as_array().unwrap();
    let version: u64 = tags(&html, "<p class=\"meta\" data-version=")[0]["data-version"].parse().unwrap();
    if report["version"].as_u64() != Some(version) {
        assert!(funnel.is_empty(), "report.json is version {}'s run, the page version {version}'s", report["version"]);
    } else {
        assert_eq!(funnel.len(), stages.len(), "one funnel row per stage");
    }
    for (row, s) in funnel.iter().zip(stages) {
        assert_eq!(row["data-stage"], s["stage"].as_str().unwrap());
        for (attr, key) in [("data-in", "items_in"), ("data-out", "items_out"), ("data-errors", "errors")] {
            assert_eq!(row[attr], s[key].to_string(), "{attr} of {}", row["data-stage"]);
        }
    }
    let (mut clips, mut dropped) = (Vec::new(), Vec::new());
    for figure in html.split("<figure class=\"clip\"").skip(1) {
        let figure = &figure[..figure.find("</figure>").unwrap()];
        let attrs = attributes(&figure[..figure.find('>').unwrap()]);
        let id = attrs["data-id"].clone();
        let img = tags(figure, "<img ");
        let src = img.first().map(|i| i["src"].clone()).unwrap_or_else(|| panic!("clip {id} has no image: {figure}"));
        let jpeg = base64::engine::general_purpose::STANDARD
            .decode(src.strip_prefix("data:image/jpeg;base64,").expect("an embedded JPEG"))
            .unwrap();
        let decoded = image::load_from_memory_with_format(&jpeg, image::ImageFormat::Jpeg).unwrap();
        assert!(decoded.width() > 0 && decoded.height() > 0, "{id}");
        match attrs.get("data-dropped") {
            Some(reason) => dropped.push((id, reason.clone())),
            None => clips.push(id),
        }
    }
    let cards: Vec<String> = tags(&html, "<article class=\"card\"").iter().map(|t| t["data-id"].clone()).collect();
    let videos = tags(&html, "<video ");
    assert_eq!(videos.len(), cards.len(), "one video per card");
    for v in &videos {
        let src = page.parent().unwrap().join(&v["src"]);
        assert!(src.is_file(), "a card's video {} does not exist", src.display());
    }
    if let Some(chromium) = chromium() {
        in_browser(&chromium, &page, &html, clips.len() + dropped.len() + 3 * cards.len(), videos.len());
    } else {
        eprintln!("note: no chromium on PATH; the page was not checked in a browser (scripts/setup.sh installs it)");
    }
    Checked { html, clips, dropped, cards }
}

/// Chromium, if installed.
fn chromium() -> Option<PathBuf> {
    ["/usr/bin/chromium", "/usr/bin/chromium-browser"].into_iter().map(PathBuf::from).find(|p| p.is_file())
}

/// Headless Chromium as the machine allows it (root, no GPU, closed network).
fn headless(chromium: &Path, profile: &Path) -> Command {
    let mut c = Command::new(chromium);
    c.args([
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--hide-scrollbars",
        "--mute-audio",
        "--virtual-time-budget=10000",
        "--window-size=1280,1600",
        "--enable-logging=stderr",
    ]);
    c.arg(format!("--user-data-dir={}", profile.display()));
    c
}

/// Script put before the page's own content: records every error (scripts, images, videos) and,
/// once the page and the videos' metadata have loaded, writes what loaded into the DOM, which
/// `--dump-dom` prints.
const PROBE: &str = r#"<script>
window.__errors = [];
window.addEventListener('error', e => window.__errors.push((e.message || 'load error') + ' ' + ((e.target && (e.target.currentSrc || e.target.src)) || '')), true);
const __log = console.error; console.error = (...a) => { window.__errors.push(a.join(' ')); __log(...a); };
window.addEventListener('load', () => setTimeout(() => {
  const imgs = [...document.images];
  const videos = [...document.querySelectorAll('video')];
  document.body.setAttribute('data-check', JSON.stringify({
    images: imgs.filter(i => i.complete && i.naturalWidth > 0).length,
    videos: videos.filter(v => !v.error && v.readyState >= 1).length,
    errors: window.__errors,
  }));
}, 3000));
</script>"#;

fn in_browser(chromium: &Path, page: &Path, html: &str, images: usize, videos: usize) {
    let dir = page.parent().unwrap();
    let profile = tempfile::tempdir().unwrap();
    let probe = dir.join("report-probe.html");
    std::fs::write(&probe, html.replacen("<head>", &format!("<head>{PROBE}"), 1)).unwrap();
    let out = headless(chromium, profile.path())
        .arg("--dump-dom")
        .arg(format!("file://{}", probe.display()))
        .output()
        .unwrap();
    std::fs::remove_file(&probe).unwrap();
    let dom = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    let check = tags(&dom, "<body ").first().and_then(|b| b.get("data-check").cloned());
    let check: serde_json::Value =
        serde_json::from_str(&check.unwrap_or_else(|| panic!("no probe result: {stderr}"))).unwrap();
    assert_eq!(check["errors"], serde_json::json!([]), "errors in the browser");
    assert_eq!(check["images"], images, "every image loaded (naturalWidth > 0)");
    assert_eq!(check["videos"], videos, "every video's metadata loaded");
    let console: Vec<&str> = stderr.lines().filter(|l| l.contains("CONSOLE")).collect();
    assert!(console.is_empty(), "console messages: {console:?}");
    let shot = page.with_extension("png");
    let out = headless(chromium, profile.path())
        .arg(format!("--screenshot={}", shot.display()))
        .arg(format!("file://{}", page.display()))
        .output()
        .unwrap();
    assert!(shot.is_file(), "no screenshot: {}", String::from_utf8_lossy(&out.stderr));
}
