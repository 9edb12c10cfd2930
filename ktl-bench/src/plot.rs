//! The charts of `ktl bench --plot`, drawn as SVG.
//!
//! Two charts: the rows of a run as horizontal bars (median time per
//! operation on a log scale, with the fastest and slowest sample as a
//! whisker, ktl's own rows in one colour and the alternatives in another),
//! and the thread scaling of the per-CPU structures (time per operation per
//! thread against the number of threads, one line per implementation, one
//! panel per structure, both axes logarithmic).
//!
//! The SVG back-end writes text as SVG text, which the viewer lays out, so
//! no font is loaded here: the label areas are sized from the length of the
//! labels. Each chart is drawn into memory and then written in one go, and
//! every failure is returned as a message.

use plotters::coord::Shift;
use plotters::element::DashedPathElement;
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};
use std::fs::OpenOptions;
use std::io::ErrorKind;
use std::path::{Path, PathBuf};

/// One bar: a row of the run.
#[derive(Debug, Clone)]
pub struct Bar {
    /// The row's name.
    pub label: String,
    /// The row's group.
    pub group: String,
    /// The rows compared with each other: a separator is drawn where it
    /// changes.
    pub block: String,
    /// Median, fastest and slowest sample, in ns per operation.
    pub median_ns: f64,
    /// The fastest sample.
    pub min_ns: f64,
    /// The slowest sample.
    pub max_ns: f64,
    /// Whether the row measures ktl's own code.
    pub ours: bool,
}

/// One line of the scaling chart: an implementation's median time per
/// operation per thread at each thread count.
#[derive(Debug, Clone)]
pub struct Series {
    /// The panel (structure) the line belongs to.
    pub panel: String,
    /// The implementation.
    pub name: String,
    /// Whether it is ktl's.
    pub ours: bool,
    /// (threads, ns per operation per thread), by increasing threads.
    pub points: Vec<(u32, f64)>,
}

/// The files `--plot` writes, checked before anything is measured.
#[derive(Debug, Clone)]
pub struct Charts {
    bars: PathBuf,
    scaling: PathBuf,
}

/// ktl's colour.
const OURS: RGBColor = RGBColor(31, 119, 180);
/// The alternatives' colour in the bar chart.
const THEIRS: RGBColor = RGBColor(170, 170, 170);
/// The lines of the scaling chart after ktl's.
const LINES: [RGBColor; 4] = [
    RGBColor(255, 127, 14),
    RGBColor(44, 160, 44),
    RGBColor(214, 39, 40),
    RGBColor(148, 103, 189),
];
/// Light lines: separators and markers.
const LIGHT: RGBColor = RGBColor(205, 205, 205);

/// The font of every text.
const FONT: &str = "sans-serif";

impl Charts {
    /// The charts of `--plot FILE`: the bars into `FILE`, the thread
    /// scaling into `FILE` with `-scaling` added before its extension. Fails
    /// with a message when either cannot be written.
    pub fn new(path: &Path) -> Result<Charts, String> {
        let scaling = scaling_path(path)?;
        check_writable(path)?;
        check_writable(&scaling)?;
        Ok(Charts {
            bars: path.to_owned(),
            scaling,
        })
    }

    /// Draws and writes the charts: the bar chart always, the scaling chart
    /// when there are `series` (`panels` gives each panel's key and title;
    /// `cpus`, the CPUs the threads could use, is marked on it). Returns
    /// what was written where, or why it failed.
    pub fn write(
        &self,
        bars: &[Bar],
        series: &[Series],
        panels: &[(String, String)],
        cpus: Option<usize>,
        subtitle: &str,
    ) -> Result<Vec<(&'static str, PathBuf)>, String> {
        let mut written = Vec::new();
        write_file(&self.bars, &bar_chart(bars, subtitle)?)?;
        written.push(("bar chart", self.bars.clone()));
        if !series.is_empty() {
            let svg = scaling_chart(series, panels, cpus, subtitle)?;
            write_file(&self.scaling, &svg)?;
            written.push(("thread-scaling chart", self.scaling.clone()));
        }
        Ok(written)
    }
}

/// `path` with `-scaling` added to its file name, before the extension
/// (`svg` when it has none).
pub fn scaling_path(path: &Path) -> Result<PathBuf, String> {
    let stem = path.file_stem().filter(|s| !s.is_empty()).ok_or_else(|| {
        format!(
            "--plot needs a file name, not {:?}",
            path.display().to_string()
        )
    })?;
    let ext = path.extension().unwrap_or("svg".as_ref());
    let mut name = stem.to_owned();
    name.push("-scaling.");
    name.push(ext);
    Ok(path.with_file_name(name))
}

/// Fails with a message unless a file can be written at `path`. Changes
/// nothing: an existing file is opened without truncation, and a file made
/// for the test is removed.
pub fn check_writable(path: &Path) -> Result<(), String> {
    check_writable_as(path, "chart")
}

/// [`check_writable`] for a file the message calls `what`.
pub(crate) fn check_writable_as(path: &Path, what: &str) -> Result<(), String> {
    let fail = |why: String| format!("cannot write the {what} to {}: {why}", path.display());
    if path.is_dir() {
        return Err(fail("it is a directory".to_owned()));
    }
    if let Some(dir) = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty() && !d.is_dir())
    {
        return Err(fail(format!("{} is not a directory", dir.display())));
    }
    match OpenOptions::new().append(true).open(path) {
        Ok(_) => Ok(()),
        Err(e) if e.kind() == ErrorKind::NotFound => {
            OpenOptions::new()
                .write(true)
                .create_new(true)
                .open(path)
                .map_err(|e| fail(e.to_string()))?;
            std::fs::remove_file(path).map_err(|e| fail(e.to_string()))
        }
        Err(e) => Err(fail(e.to_string())),
    }
}

/// Writes `svg` to `path`.
fn write_file(path: &Path, svg: &str) -> Result<(), String> {
    std::fs::write(path, svg)
        .map_err(|e| format!("cannot write the chart to {}: {e}", path.display()))
}

/// A drawing error, as a message.
fn drawing<E: std::fmt::Display>(e: E) -> String {
    format!("cannot draw the chart: {e}")
}

/// A time in ns for an axis or a label: few digits, no trailing zeros.
fn ns_label(v: f64) -> String {
    if v >= 10.0 {
        format!("{v:.0}")
    } else if v >= 1.0 {
        let s = format!("{:.1}", v);
        s.trim_end_matches(".0").to_owned()
    } else {
        let s = format!("{:.2}", v);
        s.trim_end_matches('0').trim_end_matches('.').to_owned()
    }
}

/// The pixels a text of `chars` characters of `size` takes, roughly (a
/// sans-serif character is about 0.55 of its size wide).
fn text_width(chars: usize, size: u32) -> u32 {
    (chars as f64 * f64::from(size) * 0.55).ceil() as u32
}

/// The range of a log axis that holds every value of `values` with some
/// room: `(lo, hi)`, both positive, `lo < hi`.
fn log_range(values: impl Iterator<Item = f64>, below: f64, above: f64) -> (f64, f64) {
    let (mut lo, mut hi) = (f64::INFINITY, 0.0f64);
    for v in values.filter(|v| v.is_finite() && *v > 0.0) {
        lo = lo.min(v);
        hi = hi.max(v);
    }
    if !lo.is_finite() || hi <= 0.0 {
        return (0.1, 10.0);
    }
    let (lo, hi) = (lo / below, hi * above);
    if hi > lo {
        (lo, hi)
    } else {
        (lo / 2.0, lo * 2.0)
    }
}

/// Draws the title and the subtitle in `head`.
pub(crate) fn header(
    head: &DrawingArea<SVGBackend<'_>, Shift>,
    title: &str,
    subtitle: &str,
) -> Result<(), String> {
    head.draw(&Text::new(
        title.to_owned(),
        (14, 10),
        (FONT, 22).into_font().style(FontStyle::Bold).color(&BLACK),
    ))
    .map_err(drawing)?;
    head.draw(&Text::new(
        subtitle.to_owned(),
        (14, 40),
        (FONT, 14).into_font().color(&RGBColor(90, 90, 90)),
    ))
    .map_err(drawing)?;
    Ok(())
}

/// The bar chart of the rows, as an SVG document.
pub fn bar_chart(bars: &[Bar], subtitle: &str) -> Result<String, String> {
    const ROW: u32 = 24;
    const LABEL: u32 = 14;
    let n = bars.len();
    let longest = bars
        .iter()
        .map(|b| b.label.chars().count())
        .max()
        .unwrap_or(10);
    let label_area = text_width(longest, LABEL).clamp(120, 520) + 16;
    let width = (label_area + 760).max(text_width(subtitle.chars().count(), 14) + 40);
    let height = 80 + 50 + ROW * n.max(1) as u32 + 20;
    let (lo, hi) = log_range(
        bars.iter().flat_map(|b| [b.min_ns, b.median_ns, b.max_ns]),
        1.6,
        4.0,
    );
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (width, height)).into_drawing_area();
        root.fill(&WHITE).map_err(drawing)?;
        let (head, body) = root.split_vertically(80);
        header(
            &head,
            "ktl bench: median time per operation (ns, log scale)",
            subtitle,
        )?;
        // The legend, at the right of the title.
        let mut x = width as i32 - 330;
        for (color, what) in [(OURS, "ktl"), (THEIRS, "alternative or limit")] {
            head.draw(&Rectangle::new([(x, 14), (x + 14, 28)], color.filled()))
                .map_err(drawing)?;
            head.draw(&Text::new(
                what,
                (x + 20, 21),
                TextStyle::from((FONT, 14).into_font()).pos(Pos::new(HPos::Left, VPos::Center)),
            ))
            .map_err(drawing)?;
            x += 20 + text_width(what.len(), 14) as i32 + 24;
        }
        head.draw(&Text::new(
            "whiskers: fastest to slowest sample",
            (width as i32 - 330, 40),
            (FONT, 13).into_font().color(&RGBColor(90, 90, 90)),
        ))
        .map_err(drawing)?;

        let rows = n.max(1) as f64;
        let mut chart = ChartBuilder::on(&body)
            .margin_left(8)
            .margin_right(24)
            .margin_bottom(10)
            .x_label_area_size(46)
            .y_label_area_size(label_area)
            .build_cartesian_2d((lo..hi).log_scale(), 0.0..rows)
            .map_err(drawing)?;
        chart
            .configure_mesh()
            .disable_y_mesh()
            .y_labels(0)
            .x_labels(12)
            .x_label_formatter(&|v| ns_label(*v))
            .x_desc("ns per operation (rows of N threads: wall time / one thread's operations)")
            .label_style((FONT, 13))
            .axis_desc_style((FONT, 14))
            .light_line_style(RGBColor(240, 240, 240))
            .bold_line_style(RGBColor(215, 215, 215))
            .draw()
            .map_err(drawing)?;
        if bars.is_empty() {
            let (px, py) = chart.backend_coord(&(lo, 0.5));
            root.draw(&Text::new(
                "no row was measured",
                (px + 10, py),
                TextStyle::from((FONT, 14).into_font()).pos(Pos::new(HPos::Left, VPos::Center)),
            ))
            .map_err(drawing)?;
        }
        for (i, b) in bars.iter().enumerate() {
            // The first row at the top.
            let y0 = (n - 1 - i) as f64;
            let yc = y0 + 0.5;
            let color = if b.ours { OURS } else { THEIRS };
            let median = b.median_ns.clamp(lo, hi);
            chart
                .draw_series([Rectangle::new(
                    [(lo, y0 + 0.18), (median, y0 + 0.82)],
                    color.filled(),
                )])
                .map_err(drawing)?;
            let (min, max) = (b.min_ns.clamp(lo, hi), b.max_ns.clamp(lo, hi));
            chart
                .draw_series([
                    PathElement::new(vec![(min, yc), (max, yc)], BLACK.stroke_width(1)),
                    PathElement::new(
                        vec![(min, y0 + 0.35), (min, y0 + 0.65)],
                        BLACK.stroke_width(1),
                    ),
                    PathElement::new(
                        vec![(max, y0 + 0.35), (max, y0 + 0.65)],
                        BLACK.stroke_width(1),
                    ),
                ])
                .map_err(drawing)?;
            let (vx, vy) = chart.backend_coord(&(max, yc));
            root.draw(&Text::new(
                ns_label(b.median_ns),
                (vx + 6, vy),
                TextStyle::from((FONT, 12).into_font()).pos(Pos::new(HPos::Left, VPos::Center)),
            ))
            .map_err(drawing)?;
            let (lx, ly) = chart.backend_coord(&(lo, yc));
            let style = if b.ours {
                (FONT, LABEL).into_font().style(FontStyle::Bold)
            } else {
                (FONT, LABEL).into_font()
            };
            root.draw(&Text::new(
                b.label.clone(),
                (lx - 8, ly),
                TextStyle::from(style).pos(Pos::new(HPos::Right, VPos::Center)),
            ))
            .map_err(drawing)?;
            // A separator above each new block of rows that compare with
            // each other, and the group's name above each new group.
            if i > 0 && bars[i - 1].block != b.block {
                let top = y0 + 1.0;
                chart
                    .draw_series([PathElement::new(
                        vec![(lo, top), (hi, top)],
                        LIGHT.stroke_width(1),
                    )])
                    .map_err(drawing)?;
            }
            if i == 0 || bars[i - 1].group != b.group {
                let (gx, gy) = chart.backend_coord(&(hi, y0 + 1.0));
                root.draw(&Text::new(
                    format!("[{}]", b.group),
                    (gx - 4, gy + 2),
                    TextStyle::from((FONT, 13).into_font().style(FontStyle::Bold))
                        .pos(Pos::new(HPos::Right, VPos::Top)),
                ))
                .map_err(drawing)?;
            }
        }
        root.present().map_err(drawing)?;
    }
    Ok(svg)
}

/// The thread-scaling chart, one panel per entry of `panels` (key, title)
/// that has lines, with a dashed line where the threads reach `cpus`, as an
/// SVG document.
pub fn scaling_chart(
    series: &[Series],
    panels: &[(String, String)],
    cpus: Option<usize>,
    subtitle: &str,
) -> Result<String, String> {
    let shown: Vec<&(String, String)> = panels
        .iter()
        .filter(|(key, _)| series.iter().any(|s| &s.panel == key))
        .collect();
    let columns = shown.len().max(1);
    let width = (560 * columns as u32).max(text_width(subtitle.chars().count(), 14) + 40);
    let height = 80 + 520;
    let max_threads = series
        .iter()
        .flat_map(|s| s.points.iter().map(|p| p.0))
        .max()
        .unwrap_or(1)
        .max(2);
    let x_hi = f64::from(max_threads).log2();
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (width, height)).into_drawing_area();
        root.fill(&WHITE).map_err(drawing)?;
        let (head, body) = root.split_vertically(80);
        header(
            &head,
            "ktl bench: thread scaling, ns per operation per thread (log scales)",
            subtitle,
        )?;
        let areas = body.split_evenly((1, columns));
        for ((key, title), area) in shown.iter().zip(areas.iter()) {
            let lines: Vec<&Series> = series.iter().filter(|s| &s.panel == key).collect();
            let (lo, hi) = log_range(
                lines.iter().flat_map(|s| s.points.iter().map(|p| p.1)),
                1.5,
                1.8,
            );
            let mut chart = ChartBuilder::on(area)
                .caption(
                    title.as_str(),
                    (FONT, 18).into_font().style(FontStyle::Bold),
                )
                .margin(14)
                .x_label_area_size(46)
                .y_label_area_size(64)
                .build_cartesian_2d(-0.25..x_hi + 0.25, (lo..hi).log_scale())
                .map_err(drawing)?;
            chart
                .configure_mesh()
                .x_labels(x_hi.ceil() as usize + 2)
                .x_label_formatter(&|x| {
                    let t = 2f64.powf(*x);
                    if (x - x.round()).abs() < 1e-6 && *x >= 0.0 {
                        format!("{}", t.round())
                    } else {
                        String::new()
                    }
                })
                .y_labels(10)
                .y_label_formatter(&|v| ns_label(*v))
                .x_desc("threads, all on one shared structure")
                .y_desc("ns per operation per thread")
                .label_style((FONT, 13))
                .axis_desc_style((FONT, 14))
                .light_line_style(RGBColor(240, 240, 240))
                .bold_line_style(RGBColor(215, 215, 215))
                .draw()
                .map_err(drawing)?;
            if let Some(n) = cpus.filter(|&n| n >= 1 && (n as f64).log2() <= x_hi) {
                let x = (n as f64).log2();
                chart
                    .draw_series([DashedPathElement::new(
                        vec![(x, lo), (x, hi)],
                        5,
                        4,
                        RGBColor(150, 150, 150).stroke_width(1),
                    )])
                    .map_err(drawing)?;
                let (px, py) = chart.backend_coord(&(x, hi));
                let s = if n == 1 { "" } else { "s" };
                root.draw(&Text::new(
                    format!("{n} CPU{s}"),
                    (px + 4, py + 4),
                    (FONT, 12)
                        .into_font()
                        .color(&RGBColor(110, 110, 110))
                        .pos(Pos::new(HPos::Left, VPos::Top)),
                ))
                .map_err(drawing)?;
            }
            let mut others = LINES.iter().cycle();
            for s in lines {
                let color = if s.ours {
                    OURS
                } else {
                    others.next().copied().unwrap_or(BLACK)
                };
                let width = if s.ours { 3 } else { 2 };
                let points: Vec<(f64, f64)> = s
                    .points
                    .iter()
                    .filter(|(t, ns)| *t > 0 && ns.is_finite() && *ns > 0.0)
                    .map(|&(t, ns)| (f64::from(t).log2(), ns))
                    .collect();
                chart
                    .draw_series(LineSeries::new(points, color.stroke_width(width)).point_size(4))
                    .map_err(drawing)?
                    .label(s.name.clone())
                    .legend(move |(x, y)| {
                        PathElement::new(vec![(x, y), (x + 22, y)], color.stroke_width(width))
                    });
            }
            chart
                .configure_series_labels()
                .position(SeriesLabelPosition::LowerRight)
                .label_font((FONT, 13))
                .background_style(WHITE.mix(0.85))
                .border_style(LIGHT)
                .draw()
                .map_err(drawing)?;
        }
        root.present().map_err(drawing)?;
    }
    Ok(svg)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bar(label: &str, ours: bool, median: f64) -> Bar {
        Bar {
            label: label.to_owned(),
            group: "percpu".to_owned(),
            block: "b".to_owned(),
            median_ns: median,
            min_ns: median * 0.9,
            max_ns: median * 1.2,
            ours,
        }
    }

    #[test]
    fn the_scaling_file_sits_next_to_the_bars() {
        assert_eq!(
            scaling_path(Path::new("docs/percpu.svg")).unwrap(),
            Path::new("docs/percpu-scaling.svg")
        );
        assert_eq!(
            scaling_path(Path::new("chart")).unwrap(),
            Path::new("chart-scaling.svg")
        );
        assert!(scaling_path(Path::new("/")).is_err());
    }

    #[test]
    fn charts_are_svg_with_their_labels_escaped() {
        let bars = [
            bar("counter: PerCpuCounter::add (2 threads)", true, 2.0),
            bar("counter: Mutex<u64> add (2 threads)", false, 40.0),
        ];
        let svg = bar_chart(&bars, "a machine").unwrap();
        assert!(svg.starts_with("<svg"), "{svg}");
        assert!(svg.trim_end().ends_with("</svg>"));
        assert!(svg.contains("Mutex&lt;u64&gt; add"));
        assert!(!svg.contains("Mutex<u64>"));
        let empty = bar_chart(&[], "nothing").unwrap();
        assert!(empty.contains("no row was measured"));

        let series = [
            Series {
                panel: "counter".to_owned(),
                name: "PerCpuCounter::add".to_owned(),
                ours: true,
                points: vec![(1, 2.0), (2, 2.1), (32, 30.0)],
            },
            Series {
                panel: "counter".to_owned(),
                name: "Mutex<u64> add".to_owned(),
                ours: false,
                points: vec![(1, 15.0), (2, 60.0), (32, 900.0)],
            },
        ];
        let panels = [
            ("counter".to_owned(), "counter add".to_owned()),
            ("pool".to_owned(), "pool get+put".to_owned()),
        ];
        let svg = scaling_chart(&series, &panels, Some(2), "a machine").unwrap();
        assert!(svg.starts_with("<svg") && svg.trim_end().ends_with("</svg>"));
        assert!(svg.contains("counter add") && !svg.contains("pool get+put"));
        assert!(svg.contains("2 CPUs"));
        assert!(svg.contains("<polyline") || svg.contains("<path"));
    }

    #[test]
    fn unwritable_paths_are_reported() {
        let dir = std::env::temp_dir();
        let err = check_writable(&dir).unwrap_err();
        assert!(err.contains("is a directory"), "{err}");
        let missing = dir.join("ktl-no-such-dir-for-charts").join("x.svg");
        let err = check_writable(&missing).unwrap_err();
        assert!(err.contains("is not a directory"), "{err}");
        let fine = dir.join(format!("ktl-chart-check-{}.svg", std::process::id()));
        check_writable(&fine).unwrap();
        assert!(!fine.exists(), "the check leaves nothing behind");
    }

    #[test]
    fn ns_labels_are_short() {
        assert_eq!(ns_label(0.25), "0.25");
        assert_eq!(ns_label(0.5), "0.5");
        assert_eq!(ns_label(2.0), "2");
        assert_eq!(ns_label(2.5), "2.5");
        assert_eq!(ns_label(25.4), "25");
        assert_eq!(ns_label(2000.0), "2000");
    }
}
