//! Histograms as inline SVG, drawn with plotters' SVG backend.

use plotters::prelude::*;

/// Bars per histogram.
const BINS: usize = 24;
/// Size of one chart, pixels.
const SIZE: (u32, u32) = (380, 220);

/// An SVG histogram of `values` (finite, at least one) under `title`.
pub fn histogram(title: &str, values: &[f64]) -> Result<String, Box<dyn std::error::Error>> {
    let (lo, hi) = values.iter().fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), &v| (lo.min(v), hi.max(v)));
    // One distinct value still gets a visible bar.
    let (lo, hi) = if hi > lo { (lo, hi) } else { (lo - 0.5, hi + 0.5) };
    let width = (hi - lo) / BINS as f64;
    let mut counts = [0u32; BINS];
    for &v in values {
        counts[(((v - lo) / width) as usize).min(BINS - 1)] += 1;
    }
    let top = counts.iter().copied().max().unwrap_or(1).max(1);
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, SIZE).into_drawing_area();
        root.fill(&WHITE)?;
        let mut chart = ChartBuilder::on(&root)
            .caption(format!("{title} — {} values", values.len()), ("sans-serif", 14))
            .margin(8)
            .x_label_area_size(28)
            .y_label_area_size(48)
            .build_cartesian_2d(lo..hi, 0u32..top + top / 10 + 1)?;
        chart.configure_mesh().disable_x_mesh().x_labels(6).y_labels(5).label_style(("sans-serif", 11)).draw()?;
        let bar = RGBColor(0x3b, 0x6e, 0xa8).filled();
        chart.draw_series(counts.iter().enumerate().filter(|(_, &c)| c > 0).map(|(i, &c)| {
            let x0 = lo + i as f64 * width;
            Rectangle::new([(x0, 0), (x0 + width, c)], bar)
        }))?;
        root.present()?;
    }
    Ok(svg)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_histogram_is_an_svg_with_one_bar_per_filled_bin() {
        let svg = histogram("motion", &[1.0, 1.0, 2.0, 9.5]).unwrap();
        assert!(svg.starts_with("<svg") && svg.trim_end().ends_with("</svg>"), "{svg}");
        assert!(svg.contains("motion — 4 values"), "{svg}");
        let bars = svg.matches("fill=\"#3B6EA8\"").count();
        assert_eq!(bars, 3, "{svg}");
        assert!(histogram("one value", &[3.0]).unwrap().contains("<rect"));
    }
}
