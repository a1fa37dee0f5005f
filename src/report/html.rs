//! The page itself: one HTML document with inline CSS and SVG and embedded thumbnails, readable
//! offline and from an object store (no script, no font, no request but the videos beside it).
//! Elements carry `data-*` attributes with the raw numbers, so tests and scripts can check them.

use std::fmt::Write as _;

use super::charts;
use super::collect::Dataset;
use super::frames::{Thumb, Thumbs};

const CSS: &str = "body{font:14px/1.4 system-ui,sans-serif;margin:0 auto;max-width:1280px;padding:16px;color:#222}\
h1{font-size:22px;margin:0 0 4px}h3{font-size:15px;margin:14px 0 6px}h2{font-size:18px;margin:28px 0 8px;border-bottom:1px solid #ddd}\
.meta{color:#555}table{border-collapse:collapse}td,th{padding:3px 10px;border-bottom:1px solid #eee;text-align:right}\
td:first-child,th:first-child,.why{text-align:left}.bar{display:inline-block;height:10px;background:#3b6ea8;vertical-align:middle}\
.charts{display:flex;flex-wrap:wrap;gap:8px}.sheet{display:flex;flex-wrap:wrap;gap:6px}\
figure{margin:0;width:192px;font-size:11px;color:#444;overflow-wrap:anywhere}figure img{display:block;max-width:192px;max-height:192px}\
.cards{display:grid;grid-template-columns:repeat(auto-fill,minmax(520px,1fr));gap:12px}\
.card{border:1px solid #ddd;border-radius:6px;padding:8px}.card .frames{display:flex;gap:4px}\
.card img{max-width:160px;max-height:160px}.card video{width:100%;max-height:320px;background:#000;margin-top:4px}\
.card dl{display:grid;grid-template-columns:auto 1fr;gap:2px 10px;margin:6px 0 0}.card dt{color:#666}\
.tag{font-size:11px;padding:1px 6px;border-radius:8px;background:#e3f0d8;color:#2c5e12;margin-left:6px}\
.missing{width:160px;height:90px;background:#f3f3f3;color:#a00;font-size:11px;padding:4px;box-sizing:border-box;overflow:hidden}\
.err td{text-align:left;vertical-align:top}";

/// Render the page.
pub fn page(data: &Dataset, thumbs: &Thumbs, media_base: &str) -> String {
    let i = &data.index;
    let mut h = String::with_capacity(1 << 20);
    let _ = write!(
        h,
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>{job} v{v} — mugflow report</title>\
         <style>{CSS}</style></head><body>\n<h1>{job} — version {v}</h1>\
         <p class=\"meta\" data-version=\"{v}\" data-items=\"{items}\" data-errors=\"{errors}\">committed {created}; {items} row(s), {errors} error record(s), \
         {shards} shard(s); changes: {changes}</p>\n",
        job = esc(&i.job),
        v = i.version,
        created = esc(&i.created_at),
        items = i.items,
        errors = i.errors,
        shards = i.shards.len(),
        changes = esc(&i.changes.to_string()),
    );
    funnel(&mut h, data);
    distributions(&mut h, data);
    contact_sheet(&mut h, data, thumbs);
    dropped(&mut h, data, thumbs);
    cards(&mut h, data, thumbs, media_base);
    errors(&mut h, data);
    h.push_str("</body></html>\n");
    h
}

/// Stage funnel from the run report: in, out, errors, dropped and why.
fn funnel(h: &mut String, data: &Dataset) {
    h.push_str("<h2>Funnel</h2>\n");
    let Some(run) = &data.run else {
        h.push_str("<p class=\"meta\">No run report of this version (report.json describes another run).</p>\n");
        return;
    };
    let _ = writeln!(
        h,
        "<p class=\"meta\">{} run: {} input item(s), {} item(s) written, {} error record(s), {:.1} s; {}.</p>",
        esc(&run.status),
        run.input_items,
        run.items_written,
        run.errors,
        run.wall_s,
        esc(&run.worker)
    );
    h.push_str(
        "<table class=\"funnel\"><tr><th>stage</th><th>in</th><th>out</th><th>errors</th><th>dropped</th>\
         <th class=\"why\">why dropped</th><th>carried over</th><th>busy s</th><th></th></tr>\n",
    );
    let widest = run.stages.iter().map(|s| s.counters.items_in.max(s.counters.items_out)).max().unwrap_or(1).max(1);
    for s in &run.stages {
        let c = &s.counters;
        // Fan-out stages (scene_split) emit more than they take: nothing is dropped there.
        let dropped = c.items_in.saturating_sub(c.items_out + c.errors);
        let why: Vec<String> = c.dropped.iter().map(|(r, n)| format!("{} {n}", esc(r))).collect();
        let _ = writeln!(
            h,
            "<tr data-stage=\"{st}\" data-in=\"{i}\" data-out=\"{o}\" data-errors=\"{e}\" data-dropped=\"{dropped}\">\
             <td>{st}</td><td>{i}</td><td>{o}</td><td>{e}</td><td>{dropped}</td><td class=\"why\">{why}</td><td>{carried}</td>\
             <td>{busy:.2}</td><td><span class=\"bar\" style=\"width:{w}px\"></span></td></tr>",
            st = esc(&c.stage),
            i = c.items_in,
            o = c.items_out,
            e = c.errors,
            why = why.join(", "),
            carried = c.carried,
            busy = c.busy_s,
            w = (c.items_out * 240 / widest).max(1),
        );
    }
    h.push_str("</table>\n");
}

/// Histograms of every measurement the rows have, and the most common resolutions.
fn distributions(h: &mut String, data: &Dataset) {
    if data.metrics.is_empty() {
        return;
    }
    let _ = writeln!(
        h,
        "<h2>Distributions</h2>\n<p class=\"meta\">Over all {} row(s).</p><div class=\"charts\">",
        data.rows
    );
    for m in &data.metrics {
        match charts::histogram(m.title, &m.values) {
            Ok(svg) => {
                let _ = write!(h, "<div class=\"chart\" data-metric=\"{}\">{svg}</div>", esc(m.title));
            }
            Err(e) => {
                let _ = write!(h, "<p class=\"missing\">{}: {}</p>", esc(m.title), esc(&e.to_string()));
            }
        }
    }
    h.push_str("</div>\n");
    if !data.resolutions.is_empty() {
        h.push_str("<table class=\"resolutions\"><tr><th>resolution</th><th>rows</th></tr>");
        for (r, n) in &data.resolutions {
            let _ = write!(h, "<tr><td>{r}</td><td>{n}</td></tr>");
        }
        h.push_str("</table>\n");
    }
}

/// One frame of each sampled kept clip, with its id and scores.
fn contact_sheet(h: &mut String, data: &Dataset, thumbs: &Thumbs) {
    if data.sample.is_empty() {
        return;
    }
    let _ = writeln!(
        h,
        "<h2>Kept clips</h2>\n<p class=\"meta\">The middle frame of {} of {} kept clip(s).</p><div class=\"sheet\">",
        data.sample.len(),
        data.rows
    );
    for c in &data.sample {
        let mut caption = esc(&c.id);
        if let Some(s) = c.score {
            let _ = write!(caption, "<br>aesthetic {s:.2}");
        }
        if let Some(m) = c.motion {
            let _ = write!(caption, " · motion {m:.2}");
        }
        let _ = write!(h, "<figure class=\"clip\" data-id=\"{}\">", esc(&c.id));
        image(h, thumbs.clips.get(&c.id), &c.id);
        let _ = write!(h, "<figcaption>{caption}</figcaption></figure>");
    }
    h.push_str("</div>\n");
}

/// A frame of a few clips each filter dropped, per reason.
fn dropped(h: &mut String, data: &Dataset, thumbs: &Thumbs) {
    if data.dropped.iter().all(|d| d.examples.is_empty()) {
        return;
    }
    h.push_str("<h2>Dropped clips</h2>\n");
    for d in data.dropped.iter().filter(|d| !d.examples.is_empty()) {
        let _ = writeln!(
            h,
            "<h3>{}: {} ({} dropped, {} shown)</h3><div class=\"sheet\">",
            esc(&d.stage),
            esc(&d.reason),
            d.count,
            d.examples.len()
        );
        for c in &d.examples {
            let _ = write!(h, "<figure class=\"clip\" data-id=\"{}\" data-dropped=\"{}\">", esc(&c.id), esc(&d.reason));
            image(h, thumbs.clips.get(&c.id), &c.id);
            let _ = write!(h, "<figcaption>{}<br>frame {}</figcaption></figure>", esc(&c.id), c.frame);
        }
        h.push_str("</div>\n");
    }
}

/// A card per generated video: three frames, the video, its parameters and timings.
fn cards(h: &mut String, data: &Dataset, thumbs: &Thumbs, media_base: &str) {
    if data.cards.is_empty() {
        return;
    }
    let _ = writeln!(h, "<h2>Videos</h2>\n<p class=\"meta\">New and changed rows first.</p><div class=\"cards\">");
    for c in &data.cards {
        let _ = write!(h, "<article class=\"card\" data-id=\"{}\"><b>{}</b>", esc(&c.id), esc(&c.id));
        if !c.status.is_empty() {
            let _ = write!(h, "<span class=\"tag\">{}</span>", c.status);
        }
        h.push_str("<div class=\"frames\">");
        let frames = thumbs.cards.get(&c.id);
        for k in 0..3 {
            image(h, frames.and_then(|f| f.get(k)), &c.id);
        }
        let src = esc(&url_path(&format!("{media_base}{}", c.video_file)));
        let _ = write!(h, "</div><video controls muted preload=\"metadata\" src=\"{src}\"></video><dl>");
        for (label, value) in &c.fields {
            let _ = write!(h, "<dt>{label}</dt><dd>{}</dd>", esc(value));
        }
        let timings: Vec<String> = c.timings.iter().map(|(k, v)| format!("{} {v:.2}", esc(k))).collect();
        if !timings.is_empty() {
            let _ = write!(h, "<dt>timings</dt><dd>{}</dd>", timings.join(" · "));
        }
        h.push_str("</dl></article>\n");
    }
    h.push_str("</div>\n");
    if data.more_cards > 0 {
        let _ = writeln!(h, "<p class=\"meta\">{} more video(s) not shown.</p>", data.more_cards);
    }
    if !data.failed.is_empty() {
        let _ = writeln!(
            h,
            "<h3>Failed rows ({} of {})</h3><table class=\"err failed\"><tr><th>id</th><th>stage</th><th>cause</th></tr>",
            data.failed.len(),
            data.index.errors
        );
        for (id, stage, cause) in &data.failed {
            let _ = writeln!(
                h,
                "<tr data-id=\"{0}\"><td>{0}</td><td>{1}</td><td>{2}</td></tr>",
                esc(id),
                esc(stage),
                esc(cause)
            );
        }
        h.push_str("</table>\n");
    }
}

/// Error records grouped by stage and cause.
fn errors(h: &mut String, data: &Dataset) {
    h.push_str("<h2>Errors</h2>\n");
    if data.errors.is_empty() {
        h.push_str("<p class=\"meta\">None.</p>\n");
        return;
    }
    h.push_str("<table class=\"err\"><tr><th>stage</th><th>cause</th><th>count</th><th>examples</th></tr>\n");
    for e in &data.errors {
        let examples: Vec<String> = e.examples.iter().map(|x| esc(x)).collect();
        let _ = writeln!(
            h,
            "<tr data-stage=\"{st}\" data-count=\"{n}\"><td>{st}</td><td>{cause}</td><td>{n}</td><td>{ex}</td></tr>",
            st = esc(&e.stage),
            cause = esc(&e.cause),
            n = e.count,
            ex = examples.join(", ")
        );
    }
    h.push_str("</table>\n");
}

/// An embedded thumbnail, or a box saying why there is none.
fn image(h: &mut String, thumb: Option<&Thumb>, id: &str) {
    match thumb {
        Some(Ok(uri)) => {
            let _ = write!(h, "<img src=\"{uri}\" alt=\"{}\">", esc(id));
        }
        Some(Err(why)) => {
            let _ = write!(h, "<div class=\"missing\">no frame: {}</div>", esc(why));
        }
        None => h.push_str("<div class=\"missing\">no frame</div>"),
    }
}

/// A file path as a URL path: the characters a URL gives a meaning to (or cannot hold) are
/// percent-encoded, so that `#`, `?`, `%` and spaces in a file name still reach the file.
fn url_path(path: &str) -> String {
    let mut out = String::with_capacity(path.len());
    for b in path.bytes() {
        match b {
            b'#' | b'?' | b'%' | b' ' | b'"' | b'<' | b'>' | b'\\' | 0..=0x1f | 0x7f..=0xff => {
                let _ = write!(out, "%{b:02X}");
            }
            _ => out.push(b as char),
        }
    }
    out
}

/// Escape text for HTML content and attribute values.
fn esc(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for ch in text.chars() {
        match ch {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn video_paths_become_url_paths() {
        assert_eq!(url_path("videos/a b#1?x%.mp4"), "videos/a%20b%231%3Fx%25.mp4");
        assert_eq!(url_path("/data/café.mp4"), "/data/caf%C3%A9.mp4");
    }

    #[test]
    fn text_is_escaped_for_content_and_attributes() {
        assert_eq!(
            esc("<a href=\"x\">Tom & Jerry's</a>"),
            "&lt;a href=&quot;x&quot;&gt;Tom &amp; Jerry&#39;s&lt;/a&gt;"
        );
    }
}
