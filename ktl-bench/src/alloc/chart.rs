//! The chart of the allocator benchmark, as SVG: one panel per thread
//! count, in each a group of bars per workload, one bar per allocator, its
//! median time over ktl's (ktl = 1.0; lower is faster), with the fastest
//! and slowest run (over ktl's median) as a whisker.
//!
//! As in the charts of `ktl bench`, text is written as SVG text that the
//! viewer lays out (no font is loaded), and every failure is a message.

use super::report::{ALLOCATORS, OURS, Summary};
use plotters::element::DashedPathElement;
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};

/// The font of every text.
const FONT: &str = "sans-serif";

/// The allocators' colours, in [`ALLOCATORS`] order: ktl's is the blue of
/// the other charts.
const COLORS: [RGBColor; 4] = [
    RGBColor(31, 119, 180),
    RGBColor(150, 150, 150),
    RGBColor(255, 127, 14),
    RGBColor(44, 160, 44),
];

/// The colour of `allocator`.
fn color(allocator: &str) -> RGBColor {
    ALLOCATORS
        .iter()
        .position(|a| *a == allocator)
        .map_or(RGBColor(120, 120, 120), |i| COLORS[i])
}

/// A drawing error, as a message.
fn drawing<E: std::fmt::Display>(e: E) -> String {
    format!("cannot draw the chart: {e}")
}

/// The chart of `summaries` as an SVG document: a panel per entry of
/// `threads`, the workloads of `workloads` in order along each.
pub fn chart(
    summaries: &[Summary],
    workloads: &[String],
    threads: &[usize],
    subtitle: &str,
) -> Result<String, String> {
    let allocators: Vec<&str> = ALLOCATORS
        .iter()
        .copied()
        .filter(|a| summaries.iter().any(|s| s.allocator == *a))
        .collect();
    // (workload, threads, allocator) -> (median, min, max) over ktl's median.
    let bar = |w: &str, t: usize, a: &str| -> Option<(f64, f64, f64)> {
        let find = |a: &str| {
            summaries
                .iter()
                .find(|s| s.workload == w && s.threads == t && s.allocator == a)
        };
        let ours = find(OURS)?.median_s;
        let s = find(a)?;
        (ours > 0.0).then(|| (s.median_s / ours, s.min_s / ours, s.max_s / ours))
    };
    let top = summaries
        .iter()
        .filter_map(|s| bar(&s.workload, s.threads, &s.allocator))
        .map(|b| b.2)
        .filter(|v| v.is_finite())
        .fold(1.5f64, f64::max)
        * 1.12;

    let columns = threads.len().clamp(1, 2);
    let rows = threads.len().div_ceil(columns).max(1);
    let panel = (120 + 110 * workloads.len().max(1) as u32, 400u32);
    let width = (panel.0 * columns as u32).max(subtitle.chars().count() as u32 * 8 + 40);
    let height = 90 + panel.1 * rows as u32;
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (width, height)).into_drawing_area();
        root.fill(&WHITE).map_err(drawing)?;
        let (head, body) = root.split_vertically(90);
        crate::plot::header(
            &head,
            "alloc-bench: median time over ktl-alloc's (ktl = 1.0; lower is faster)",
            subtitle,
        )?;
        let mut x = 14;
        for a in &allocators {
            head.draw(&Rectangle::new([(x, 62), (x + 14, 76)], color(a).filled()))
                .map_err(drawing)?;
            head.draw(&Text::new(
                (*a).to_owned(),
                (x + 20, 69),
                TextStyle::from((FONT, 14).into_font()).pos(Pos::new(HPos::Left, VPos::Center)),
            ))
            .map_err(drawing)?;
            x += 20 + a.len() as i32 * 8 + 24;
        }
        head.draw(&Text::new(
            "whiskers: fastest to slowest run",
            (x + 10, 69),
            (FONT, 13)
                .into_font()
                .color(&RGBColor(90, 90, 90))
                .pos(Pos::new(HPos::Left, VPos::Center)),
        ))
        .map_err(drawing)?;

        let areas = body.split_evenly((rows, columns));
        for (&t, area) in threads.iter().zip(areas.iter()) {
            let caption = if t == 1 {
                "1 thread".to_owned()
            } else {
                format!("{t} threads")
            };
            let n = workloads.len().max(1) as f64;
            let mut chart = ChartBuilder::on(area)
                .caption(caption, (FONT, 18).into_font().style(FontStyle::Bold))
                .margin(14)
                .x_label_area_size(36)
                .y_label_area_size(56)
                .build_cartesian_2d(0.0..n, 0.0..top)
                .map_err(drawing)?;
            chart
                .configure_mesh()
                .disable_x_mesh()
                .x_labels(0)
                .y_labels(8)
                .y_label_formatter(&|v| format!("{v:.1}"))
                .y_desc("time / ktl's time")
                .label_style((FONT, 13))
                .axis_desc_style((FONT, 14))
                .light_line_style(WHITE)
                .bold_line_style(RGBColor(215, 215, 215))
                .draw()
                .map_err(drawing)?;
            chart
                .draw_series([DashedPathElement::new(
                    vec![(0.0, 1.0), (n, 1.0)],
                    5,
                    4,
                    RGBColor(110, 110, 110).stroke_width(1),
                )])
                .map_err(drawing)?;
            let slot = 0.8 / allocators.len().max(1) as f64;
            for (i, w) in workloads.iter().enumerate() {
                let (lx, ly) = chart.backend_coord(&(i as f64 + 0.5, 0.0));
                root.draw(&Text::new(
                    w.clone(),
                    (lx, ly + 8),
                    TextStyle::from((FONT, 14).into_font()).pos(Pos::new(HPos::Center, VPos::Top)),
                ))
                .map_err(drawing)?;
                for (j, a) in allocators.iter().enumerate() {
                    let Some((median, min, max)) = bar(w, t, a) else {
                        continue;
                    };
                    let x0 = i as f64 + 0.1 + slot * j as f64;
                    let (x1, xc) = (x0 + slot * 0.9, x0 + slot * 0.45);
                    let (median, min, max) = (median.min(top), min.min(top), max.min(top));
                    chart
                        .draw_series([Rectangle::new([(x0, 0.0), (x1, median)], color(a).filled())])
                        .map_err(drawing)?;
                    chart
                        .draw_series([PathElement::new(
                            vec![(xc, min), (xc, max)],
                            BLACK.stroke_width(1),
                        )])
                        .map_err(drawing)?;
                    let (vx, vy) = chart.backend_coord(&(xc, max));
                    root.draw(&Text::new(
                        format!("{median:.2}"),
                        (vx, vy - 3),
                        TextStyle::from((FONT, 10).into_font())
                            .pos(Pos::new(HPos::Center, VPos::Bottom)),
                    ))
                    .map_err(drawing)?;
                }
            }
        }
        root.present().map_err(drawing)?;
    }
    Ok(svg)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn summary(workload: &str, threads: usize, allocator: &str, median: f64) -> Summary {
        Summary {
            workload: workload.to_owned(),
            threads,
            allocator: allocator.to_owned(),
            runs: 1,
            median_s: median,
            min_s: median * 0.9,
            max_s: median * 1.1,
            median_rss_kib: 1024.0,
            time_vs_ktl: None,
            rss_vs_ktl: None,
        }
    }

    #[test]
    fn the_chart_is_svg_with_a_panel_per_thread_count() {
        let mut summaries = Vec::new();
        for t in [1, 2, 8] {
            for (a, m) in ALLOCATORS.iter().zip([1.0, 1.8, 0.9, 1.3]) {
                summaries.push(summary("xmalloc", t, a, m));
                summaries.push(summary("btree", t, a, m * 1.1));
            }
        }
        let workloads = ["xmalloc".to_owned(), "btree".to_owned()];
        let svg = chart(&summaries, &workloads, &[1, 2, 8], "a machine").unwrap();
        assert!(svg.starts_with("<svg") && svg.trim_end().ends_with("</svg>"));
        for text in [
            "1 thread",
            "2 threads",
            "8 threads",
            "jemalloc",
            "btree",
            "1.80",
        ] {
            assert!(svg.contains(text), "{text}");
        }
        let empty = chart(&[], &[], &[], "nothing").unwrap();
        assert!(empty.starts_with("<svg"));
    }
}
