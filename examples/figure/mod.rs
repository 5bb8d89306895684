//! The examples' figures, drawn with `plotters` into PNG files: the embedded font, the common
//! styles (sizes, colours, colour maps), a chart with a title, labelled axes and a frame, legend
//! keys, confidence bands, images and their colour bars, and [`save_png`], which every figure
//! goes through. Include it from an example with `#[path = "figure/mod.rs"] mod figure;`.
//!
//! The text is DejaVu Sans (`DejaVuSans-subset.ttf` beside this file: a subset of DejaVu Sans
//! 2.37, Latin-1, Greek and a few symbols; its licence and how it was subset are in
//! `LICENSE-DejaVu.txt`), compiled into the example and registered with plotters as
//! `sans-serif`, so that the figures look the same on a machine without any font installed.
#![allow(dead_code)]

use std::ops::Range;
use std::path::Path;
use std::sync::OnceLock;

use plotters::coord::ReverseCoordTranslate;
use plotters::coord::Shift;
use plotters::coord::types::RangedCoordf64;
use plotters::prelude::*;
use plotters::style::FontStyle;
use plotters::style::text_anchor::{HPos, Pos, VPos};

/// A drawing area of a PNG figure, in pixels.
pub type Area<'a> = DrawingArea<BitMapBackend<'a>, Shift>;

/// A chart with `f64` axes on a PNG figure.
pub type Chart<'a, 'b> =
    ChartContext<'a, BitMapBackend<'b>, Cartesian2d<RangedCoordf64, RangedCoordf64>>;

/// What drawing a figure can fail with (plotters' errors, boxed).
pub type DrawResult<T = ()> = Result<T, Box<dyn std::error::Error>>;

/// The embedded font: a subset of DejaVu Sans (see `LICENSE-DejaVu.txt`).
pub const FONT_BYTES: &[u8] = include_bytes!("DejaVuSans-subset.ttf");

/// The family name under which [`FONT_BYTES`] is registered, for plotters' text styles.
pub const FONT: &str = "sans-serif";

/// Text sizes in pixels: the title, the line under it, axis labels, tick labels and legends.
pub const TITLE_SIZE: f64 = 24.0;
/// See [`TITLE_SIZE`].
pub const SUBTITLE_SIZE: f64 = 16.0;
/// See [`TITLE_SIZE`].
pub const AXIS_LABEL_SIZE: f64 = 18.0;
/// See [`TITLE_SIZE`].
pub const TICK_SIZE: f64 = 15.0;
/// See [`TITLE_SIZE`].
pub const LEGEND_SIZE: f64 = 15.0;

/// Blue (matplotlib's "tab:blue").
pub const BLUE: RGBColor = RGBColor(31, 119, 180);
/// Red (matplotlib's "tab:red").
pub const RED: RGBColor = RGBColor(214, 39, 40);
/// Orange (matplotlib's "tab:orange").
pub const ORANGE: RGBColor = RGBColor(255, 127, 14);
/// Green (matplotlib's "tab:green").
pub const GREEN: RGBColor = RGBColor(44, 160, 44);
/// Mid gray.
pub const GRAY: RGBColor = RGBColor(127, 127, 127);
/// The light gray of the grid lines.
pub const GRID: RGBColor = RGBColor(225, 225, 225);

/// Registers the embedded font with plotters as [`FONT`], once per process; an error if
/// plotters cannot read it (it can: the same bytes are compiled in every time).
pub fn register_font() -> DrawResult {
    static REGISTERED: OnceLock<bool> = OnceLock::new();
    let ok = *REGISTERED.get_or_init(|| {
        plotters::style::register_font(FONT, FontStyle::Normal, FONT_BYTES).is_ok()
    });
    if ok {
        Ok(())
    } else {
        Err("the embedded font DejaVuSans-subset.ttf is not a font plotters can read".into())
    }
}

/// The text style of the embedded font at `size` pixels, black.
pub fn text(size: f64) -> TextStyle<'static> {
    (FONT, size).into_font().color(&BLACK)
}

/// Draws a figure of `size` pixels (width, height) on a white background with `draw` and
/// writes it to `path` as a PNG; every error (the font, drawing, the file) names the path.
pub fn save_png(
    path: &Path,
    size: (u32, u32),
    draw: impl FnOnce(&Area) -> DrawResult,
) -> std::io::Result<()> {
    let fail =
        |e: &dyn std::fmt::Display| std::io::Error::other(format!("{}: {e}", path.display()));
    register_font().map_err(|e| fail(&e))?;
    let root = BitMapBackend::new(path, size).into_drawing_area();
    root.fill(&WHITE).map_err(|e| fail(&e))?;
    draw(&root).map_err(|e| fail(&e))?;
    root.present().map_err(|e| fail(&e))
}

/// Writes `title` (and `subtitle` under it, smaller, when there is one) centred at the top of
/// `area`, and returns the rest of the area.
pub fn titled<'a>(area: &Area<'a>, title: &str, subtitle: Option<&str>) -> DrawResult<Area<'a>> {
    let area = area.margin(8, 0, 0, 0);
    let mut rest = area.titled(title, text(TITLE_SIZE))?;
    if let Some(sub) = subtitle {
        rest = rest.titled(sub, text(SUBTITLE_SIZE).color(&RGBColor(60, 60, 60)))?;
    }
    Ok(rest)
}

/// Where the axes' labels go and how much room they get, for [`chart`].
#[derive(Clone, Copy, Debug)]
pub struct Layout {
    /// Pixels left of the plotting area for the y tick labels and the y axis label.
    pub left: u32,
    /// Pixels under the plotting area for the x tick labels and the x axis label.
    pub bottom: u32,
    /// Blank margin around the chart (and its label areas), in pixels.
    pub margin: u32,
}

impl Default for Layout {
    fn default() -> Layout {
        Layout {
            left: 80,
            bottom: 60,
            margin: 14,
        }
    }
}

/// A chart over `x` and `y` on `area`, with label areas as [`Layout`] says.
pub fn chart<'a, 'b>(
    area: &'a Area<'b>,
    x: Range<f64>,
    y: Range<f64>,
    layout: Layout,
) -> DrawResult<Chart<'a, 'b>> {
    Ok(ChartBuilder::on(area)
        .margin(layout.margin)
        .x_label_area_size(layout.bottom)
        .y_label_area_size(layout.left)
        .build_cartesian_2d(x, y)?)
}

/// A tick label: at most `decimals` decimals, trailing zeros dropped, a real minus sign.
pub fn tick(v: f64, decimals: usize) -> String {
    let mut s = format!("{v:.decimals$}");
    if s.contains('.') {
        s = s.trim_end_matches('0').trim_end_matches('.').to_string();
    }
    if s == "-0" {
        s = "0".to_string();
    }
    s.replace('-', "\u{2212}")
}

/// The tick labels (`x_decimals`, `y_decimals` decimals at most, see [`tick`]), the axis
/// labels `x_desc`, `y_desc` and, with `grid`, light grid lines of `chart`, and a black frame
/// around its plotting area. (Draw an image before, without grid lines.)
pub fn axes(
    chart: &mut Chart,
    x_desc: &str,
    y_desc: &str,
    (x_decimals, y_decimals): (usize, usize),
    grid: bool,
) -> DrawResult {
    let fx = move |v: &f64| tick(*v, x_decimals);
    let fy = move |v: &f64| tick(*v, y_decimals);
    let mut mesh = chart.configure_mesh();
    if !grid {
        mesh.disable_mesh();
    }
    mesh.light_line_style(WHITE.mix(0.0))
        .bold_line_style(GRID)
        .axis_style(BLACK)
        .x_labels(10)
        .y_labels(8)
        .x_label_formatter(&fx)
        .y_label_formatter(&fy)
        .label_style(text(TICK_SIZE))
        .axis_desc_style(text(AXIS_LABEL_SIZE))
        .x_desc(x_desc)
        .y_desc(y_desc)
        .draw()?;
    frame(chart)
}

/// A black frame around the plotting area of `chart` (plotters draws only the axes that have
/// labels).
pub fn frame(chart: &Chart) -> DrawResult {
    let area = chart.plotting_area().strip_coord_spec();
    let (w, h) = area.dim_in_pixel();
    area.draw(&Rectangle::new(
        [(0, 0), (w as i32 - 1, h as i32 - 1)],
        BLACK.stroke_width(1),
    ))?;
    Ok(())
}

/// Draws the legend of `chart` (the series given a `.label(..)`) at `position`, on a white,
/// slightly transparent box with a gray border.
pub fn legend<'a, 'b: 'a>(chart: &mut Chart<'a, 'b>, position: SeriesLabelPosition) -> DrawResult {
    chart
        .configure_series_labels()
        .position(position)
        .margin(10)
        .legend_area_size(30)
        .label_font(text(LEGEND_SIZE))
        .background_style(WHITE.mix(0.85))
        .border_style(GRAY)
        .draw()?;
    Ok(())
}

/// A legend key: a line of `color`, `width` pixels wide, for `.legend(..)`.
pub fn line_key(color: RGBColor, width: u32) -> impl Fn((i32, i32)) -> PathElement<(i32, i32)> {
    move |(x, y)| PathElement::new(vec![(x, y), (x + 22, y)], color.stroke_width(width))
}

/// A legend key: a filled disc of `color` (with opacity `alpha`), `radius` pixels.
pub fn point_key(
    color: RGBColor,
    alpha: f64,
    radius: i32,
) -> impl Fn((i32, i32)) -> Circle<(i32, i32), i32> {
    move |(x, y)| Circle::new((x + 11, y), radius, color.mix(alpha).filled())
}

/// A legend key: a filled box of `color` with opacity `alpha` (a band or an area).
pub fn box_key(color: RGBColor, alpha: f64) -> impl Fn((i32, i32)) -> Rectangle<(i32, i32)> {
    move |(x, y)| Rectangle::new([(x, y - 6), (x + 22, y + 6)], color.mix(alpha).filled())
}

/// The filled region between the curves `(xs, lo)` and `(xs, hi)` (a confidence band), as one
/// polygon of `color` with opacity `alpha`; points with a non-finite value are left out.
pub fn band(
    xs: &[f64],
    lo: &[f64],
    hi: &[f64],
    color: RGBColor,
    alpha: f64,
) -> Polygon<(f64, f64)> {
    let finite = |k: &usize| lo[*k].is_finite() && hi[*k].is_finite() && xs[*k].is_finite();
    let n = xs.len().min(lo.len()).min(hi.len());
    let keep: Vec<usize> = (0..n).filter(finite).collect();
    let mut pts: Vec<(f64, f64)> = keep.iter().map(|&k| (xs[k], hi[k])).collect();
    pts.extend(keep.iter().rev().map(|&k| (xs[k], lo[k])));
    Polygon::new(pts, color.mix(alpha).filled())
}

/// A colour map: the colour of `t` in `[0, 1]`.
pub type ColourMap = fn(f64) -> RGBColor;

/// Linear interpolation in a flat table of equally spaced RGB stops; NaN maps to the middle.
fn interp(table: &[u8], t: f64) -> RGBColor {
    let n = table.len() / 3 - 1;
    let x = if t.is_nan() { 0.5 } else { t.clamp(0.0, 1.0) } * n as f64;
    let k = (x as usize).min(n - 1);
    let s = x - k as f64;
    let c = |i: usize| {
        let (a, b) = (table[3 * k + i] as f64, table[3 * k + 3 + i] as f64);
        (a + s * (b - a)).round() as u8
    };
    RGBColor(c(0), c(1), c(2))
}

/// Diverging blue-gray-red colour map approximating matplotlib's "coolwarm" (Moreland).
pub fn coolwarm(t: f64) -> RGBColor {
    const TABLE: [u8; 27] = [
        59, 76, 192, 98, 130, 234, 141, 176, 254, 184, 208, 249, 221, 221, 221, 245, 196, 173, 244,
        154, 123, 222, 96, 77, 180, 4, 38,
    ];
    interp(&TABLE, t)
}

/// Diverging blue-white-red colour map matching matplotlib's "bwr".
pub fn bwr(t: f64) -> RGBColor {
    interp(&[0, 0, 255, 255, 255, 255, 255, 0, 0], t)
}

/// Values on a regular grid over a rectangle, as matplotlib's `imshow(extent=...)` takes them:
/// `values` row-major, `ny` rows of `nx`, row 0 at `y.0`; each value is the centre of its cell.
pub struct Grid<'v> {
    /// The values, `nx * ny` of them.
    pub values: &'v [f64],
    /// Values per row.
    pub nx: usize,
    /// Rows.
    pub ny: usize,
    /// The extent along x: left and right edges.
    pub x: (f64, f64),
    /// The extent along y: bottom and top edges.
    pub y: (f64, f64),
}

impl Grid<'_> {
    /// The value at `(x, y)`, interpolated bilinearly between cell centres (the nearest edge
    /// value outside them); `None` outside the extent or for a grid with too few values.
    pub fn bilinear(&self, x: f64, y: f64) -> Option<f64> {
        let (nx, ny) = (self.nx, self.ny);
        if nx == 0 || ny == 0 || self.values.len() < nx * ny {
            return None;
        }
        let u = (x - self.x.0) / (self.x.1 - self.x.0);
        let v = (y - self.y.0) / (self.y.1 - self.y.0);
        if !((0.0..=1.0).contains(&u) && (0.0..=1.0).contains(&v)) {
            return None;
        }
        let grid = |u: f64, n: usize| (u * n as f64 - 0.5).clamp(0.0, (n - 1) as f64);
        let (gx, gy) = (grid(u, nx), grid(v, ny));
        let (i0, j0) = (gx as usize, gy as usize);
        let (i1, j1) = ((i0 + 1).min(nx - 1), (j0 + 1).min(ny - 1));
        let (fx, fy) = (gx - i0 as f64, gy - j0 as f64);
        let at = |i: usize, j: usize| self.values[j * nx + i];
        let bottom = at(i0, j0) * (1.0 - fx) + at(i1, j0) * fx;
        let top = at(i0, j1) * (1.0 - fx) + at(i1, j1) * fx;
        Some(bottom * (1.0 - fy) + top * fy)
    }

    /// The smallest and largest finite values (`(0, 1)` when there is none).
    pub fn range(&self) -> (f64, f64) {
        finite_range(self.values)
    }
}

/// The smallest and largest finite values of `v` (`(0, 1)` when there is none).
pub fn finite_range(v: &[f64]) -> (f64, f64) {
    let (lo, hi) = v
        .iter()
        .filter(|v| v.is_finite())
        .fold((f64::MAX, f64::MIN), |(l, h), &v| (l.min(v), h.max(v)));
    if lo <= hi { (lo, hi) } else { (0.0, 1.0) }
}

/// Paints `grid` into the plotting area of `chart`, pixel by pixel (bilinear, as matplotlib's
/// `interpolation="bilinear"`), coloured by `cmap` over `range` (values outside it get the
/// end colours); pixels outside the grid's extent and NaN values are left as they are.
pub fn image(chart: &Chart, grid: &Grid, range: (f64, f64), cmap: ColourMap) -> DrawResult {
    let area = chart.plotting_area();
    let (cols, rows) = area.get_pixel_range();
    let screen = area.use_screen_coord();
    let coords = chart.as_coord_spec();
    let span = range.1 - range.0;
    for py in rows {
        for px in cols.clone() {
            let Some((x, y)) = coords.reverse_translate((px, py)) else {
                continue;
            };
            if let Some(v) = grid.bilinear(x, y).filter(|v| !v.is_nan()) {
                let t = if span > 0.0 {
                    (v - range.0) / span
                } else {
                    0.5
                };
                screen.draw_pixel((px, py), &cmap(t))?;
            }
        }
    }
    Ok(())
}

/// A vertical colour bar in `area` (a strip beside a chart): `cmap` over `range`, 22 pixels
/// wide, from `top` pixels under the top of the strip to `bottom` pixels above its bottom (so
/// that it lines up with the chart's plotting area), ticks at round values labelled on its
/// right (`decimals` at most, see [`tick`]), and `label` centred under it.
pub fn colour_bar(
    area: &Area,
    range: (f64, f64),
    cmap: ColourMap,
    label: &str,
    decimals: usize,
    (top, bottom): (u32, u32),
) -> DrawResult {
    let (lo, hi) = if range.1 > range.0 {
        range
    } else {
        (range.0 - 0.5, range.0 + 0.5)
    };
    let (w, h) = area.dim_in_pixel();
    let (x0, x1) = (8, 30);
    let (y0, y1) = (top as i32, h as i32 - bottom as i32 - 1);
    if y1 <= y0 {
        return Ok(());
    }
    // y pixel of the value v
    let at = |v: f64| y1 as f64 - (v - lo) / (hi - lo) * (y1 - y0) as f64;
    for y in y0..=y1 {
        let t = (y1 - y) as f64 / (y1 - y0) as f64;
        area.draw(&PathElement::new(vec![(x0, y), (x1, y)], cmap(t)))?;
    }
    area.draw(&Rectangle::new([(x0, y0), (x1, y1)], BLACK.stroke_width(1)))?;
    let label_style = text(TICK_SIZE).pos(Pos::new(HPos::Left, VPos::Center));
    for v in nice_ticks(lo, hi, 8) {
        let y = at(v).round() as i32;
        area.draw(&PathElement::new(vec![(x1, y), (x1 + 5, y)], BLACK))?;
        area.draw_text(&tick(v, decimals), &label_style, (x1 + 8, y))?;
    }
    let desc = text(AXIS_LABEL_SIZE).pos(Pos::new(HPos::Center, VPos::Top));
    // Centred under the bar, but inside the strip when the label is wider than the bar.
    let half = area.estimate_text_size(label, &desc)?.0 as i32 / 2;
    let centre = ((x0 + x1) / 2).max(half).min((w as i32 - half).max(half));
    area.draw_text(label, &desc, (centre, y1 + 14))?;
    Ok(())
}

/// About `count` ticks at round values (1, 2 or 5 times a power of ten) in `[lo, hi]`.
pub fn nice_ticks(lo: f64, hi: f64, count: usize) -> Vec<f64> {
    let raw = (hi - lo) / count.max(1) as f64;
    if !(raw > 0.0 && raw.is_finite()) {
        return Vec::new();
    }
    let p = 10f64.powf(raw.log10().floor());
    let step = [1.0, 2.0, 5.0, 10.0]
        .iter()
        .map(|m| m * p)
        .find(|s| *s >= raw * 0.999)
        .unwrap_or(10.0 * p);
    let (k0, k1) = ((lo / step).ceil() as i64, (hi / step).floor() as i64);
    (k0..=k1).map(|k| k as f64 * step).collect()
}

/// Dots of `diameter` pixels at the points of `points`, each with its style, on the plotting
/// area of `chart`: squares up to 3 pixels (plotters' smallest circles are crosses), discs
/// above. Points outside the chart's ranges, or not finite, are left out. They are not a
/// series: give them a legend entry with [`legend_entry`].
pub fn dots(
    chart: &Chart,
    points: impl IntoIterator<Item = ((f64, f64), ShapeStyle)>,
    diameter: u32,
) -> DrawResult {
    let (xr, yr) = (chart.x_range(), chart.y_range());
    let screen = chart.plotting_area().use_screen_coord();
    let d = diameter.max(1) as i32;
    let a = -(d - 1) / 2;
    for ((x, y), style) in points {
        if !(xr.contains(&x) || x == xr.end) || !(yr.contains(&y) || y == yr.end) {
            continue; // also NaN
        }
        let (px, py) = chart.backend_coord(&(x, y));
        if d <= 3 {
            let corners = [(px + a, py + a), (px + a + d, py + a + d)]; // right, bottom open
            screen.draw(&Rectangle::new(corners, style))?;
        } else {
            screen.draw(&Circle::new((px, py), d / 2, style))?;
        }
    }
    Ok(())
}

/// A legend entry with no series behind it (for [`dots`] and [`image`]): `label` and its key.
pub fn legend_entry<'a, 'b: 'a, E>(
    chart: &mut Chart<'a, 'b>,
    label: impl Into<String>,
    key: impl Fn((i32, i32)) -> E + 'a,
) -> DrawResult
where
    E: IntoDynElement<'a, BitMapBackend<'b>, (i32, i32)>,
{
    chart
        .draw_series(std::iter::empty::<Circle<(f64, f64), i32>>())?
        .label(label)
        .legend(key);
    Ok(())
}

/// `1,234,567`.
pub fn thousands(n: usize) -> String {
    let s = n.to_string();
    let mut out = String::new();
    for (k, c) in s.chars().enumerate() {
        if k > 0 && (s.len() - k).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}
