//! A tiny raster plotting module for the examples: scatter points, lines, confidence bands and
//! images on a white canvas with a framed plotting area and numeric tick labels, saved as PNG.
//!
//! Include it from an example with `#[path = "plot/mod.rs"] mod plot;`. Nothing here panics on odd
//! input: empty slices, NaN values and zero-size ranges simply draw nothing.
#![allow(dead_code)]

use std::io;
use std::ops::Range;
use std::path::Path;

/// An RGB colour, 8 bits per channel.
pub type Rgb = [u8; 3];

/// Blue (matplotlib's "tab:blue").
pub const BLUE: Rgb = [31, 119, 180];
/// Red (matplotlib's "tab:red").
pub const RED: Rgb = [214, 39, 40];
/// Black.
pub const BLACK: Rgb = [0, 0, 0];
/// Mid gray.
pub const GRAY: Rgb = [127, 127, 127];

/// Scale of the built-in 3x5 font: each font pixel is drawn as `FONT_SCALE` x `FONT_SCALE` pixels.
const FONT_SCALE: isize = 2;
/// Length of the tick marks and the gap between a tick mark and its label, in pixels.
const TICK: isize = 5;
const GAP: isize = 4;

/// A white RGB raster with a plotting area inside margins onto which data coordinates are mapped.
pub struct Canvas {
    width: usize,
    height: usize,
    pixels: Vec<u8>,
    xlim: (f64, f64),
    ylim: (f64, f64),
    /// The plotting area in pixels: columns `left..right`, rows `top..bottom` (row 0 at the top).
    left: isize,
    right: isize,
    top: isize,
    bottom: isize,
}

impl Canvas {
    /// A `width` x `height` white canvas; data coordinates `xlim = (x0, x1)` and `ylim = (y0, y1)`
    /// map to the plotting area, with `x0` on the left and `y0` at the bottom (y up). The left
    /// margin is wide enough for the y tick labels.
    pub fn new(width: usize, height: usize, xlim: (f64, f64), ylim: (f64, f64)) -> Canvas {
        let label_w = nice_ticks(ylim)
            .iter()
            .map(|(_, s)| text_width(s))
            .max()
            .unwrap_or(0);
        let (w, h) = (width.min(1 << 30) as isize, height.min(1 << 30) as isize);
        let (left, top) = ((label_w + TICK + GAP + 6).max(40).min(w), 14.min(h));
        Canvas {
            width,
            height,
            pixels: vec![255; width.saturating_mul(height).saturating_mul(3)],
            xlim,
            ylim,
            left,
            right: (w - 24).max(left),
            top,
            bottom: (h - 5 * FONT_SCALE - TICK - GAP - 10).max(top),
        }
    }

    /// Whether the limits and the plotting area are non-degenerate, i.e. anything can be drawn.
    fn valid(&self) -> bool {
        let ok = |(a, b): (f64, f64)| a.is_finite() && b.is_finite() && a != b;
        ok(self.xlim) && ok(self.ylim) && self.right > self.left && self.bottom > self.top
    }

    /// Continuous pixel coordinates (column, row from the top) of the data point `(x, y)`.
    fn to_px(&self, x: f64, y: f64) -> (f64, f64) {
        let ((x0, x1), (y0, y1)) = (self.xlim, self.ylim);
        let px = self.left as f64 + (x - x0) / (x1 - x0) * (self.right - self.left) as f64;
        let py = self.bottom as f64 - (y - y0) / (y1 - y0) * (self.bottom - self.top) as f64;
        (px, py)
    }

    /// Blends `color` with opacity `alpha` into pixel `(c, r)` if it lies on the canvas.
    fn blend(&mut self, c: isize, r: isize, color: Rgb, alpha: f64) {
        if c < 0 || r < 0 || c as usize >= self.width || r as usize >= self.height {
            return;
        }
        let i = 3 * (r as usize * self.width + c as usize);
        for (p, &q) in self.pixels[i..i + 3].iter_mut().zip(&color) {
            *p = (*p as f64 * (1.0 - alpha) + q as f64 * alpha).round() as u8;
        }
    }

    /// Sets pixel `(c, r)` to `color` if it lies on the canvas.
    fn put(&mut self, c: isize, r: isize, color: Rgb) {
        self.blend(c, r, color, 1.0);
    }

    /// Sets the plotting-area pixels whose centres lie between the columns `b[0]`, `b[1]` and the
    /// rows `b[2]`, `b[3]` widened by `pad`, and satisfy `inside(column centre, row centre)`.
    fn fill(&mut self, b: [f64; 4], pad: f64, color: Rgb, inside: impl Fn(f64, f64) -> bool) {
        for row in centers((b[2], b[3]), pad, self.top, self.bottom) {
            for col in centers((b[0], b[1]), pad, self.left, self.right) {
                if inside(col as f64 + 0.5, row as f64 + 0.5) {
                    self.put(col, row, color);
                }
            }
        }
    }

    /// Filled discs of `radius` pixels at the points `(xs[i], ys[i])` (radius < 1: one pixel), with
    /// colour `colors[i]`, or `colors[0]` for all points when `colors.len() == 1` (colours are
    /// reused cyclically if fewer are given; black if none). Points outside the limits and NaN
    /// points are skipped; discs are clipped to the plotting area.
    pub fn scatter(&mut self, xs: &[f64], ys: &[f64], colors: &[Rgb], radius: f64) {
        if !self.valid() {
            return;
        }
        let r = clamp(radius, 0.0, 1e6);
        let inside = |v: f64, (a, b): (f64, f64)| (a.min(b)..=a.max(b)).contains(&v);
        for (i, (&x, &y)) in xs.iter().zip(ys).enumerate() {
            if !inside(x, self.xlim) || !inside(y, self.ylim) {
                continue; // also skips NaN
            }
            let color = *colors.get(i % colors.len().max(1)).unwrap_or(&BLACK);
            let (px, py) = self.to_px(x, y);
            if r < 1.0 {
                let c = px.floor().clamp(self.left as f64, (self.right - 1) as f64) + 0.5;
                let r = py.floor().clamp(self.top as f64, (self.bottom - 1) as f64) + 0.5;
                self.fill([c, c, r, r], 0.0, color, |_, _| true);
            } else {
                let disc = |cx: f64, cy: f64| (cx - px).powi(2) + (cy - py).powi(2) <= r * r;
                self.fill([px, px, py, py], r, color, disc);
            }
        }
    }

    /// A polyline through the points `(xs[k], ys[k])`, `width` pixels thick (at least one pixel),
    /// clipped to the plotting area; a NaN point breaks the line.
    pub fn line(&mut self, xs: &[f64], ys: &[f64], color: Rgb, width: f64) {
        if !self.valid() {
            return;
        }
        let h = clamp(width / 2.0, 0.5, 1e6);
        let pts: Vec<(f64, f64)> = xs.iter().zip(ys).map(|(&x, &y)| self.to_px(x, y)).collect();
        for seg in pts.windows(2) {
            let ((ax, ay), (bx, by)) = (seg[0], seg[1]);
            if ![ax, ay, bx, by].iter().all(|v| v.is_finite()) {
                continue;
            }
            let (dx, dy) = (bx - ax, by - ay);
            let len2 = dx * dx + dy * dy;
            let near = |cx: f64, cy: f64| {
                let (qx, qy) = (cx - ax, cy - ay);
                let s = clamp((qx * dx + qy * dy) / len2, 0.0, 1.0);
                (qx - s * dx).powi(2) + (qy - s * dy).powi(2) <= h * h
            };
            self.fill([ax, bx, ay, by], h, color, near);
        }
    }

    /// A filled band between `lo[k]` and `hi[k]` over the (sorted) `xs`, blended over what is
    /// already drawn with opacity `alpha` in `[0, 1]`; segments with a NaN end are skipped.
    pub fn band(&mut self, xs: &[f64], lo: &[f64], hi: &[f64], color: Rgb, alpha: f64) {
        if !self.valid() || alpha.is_nan() {
            return;
        }
        let w = (self.right - self.left) as usize;
        let mut mask = vec![false; w * (self.bottom - self.top) as usize];
        for k in 1..xs.len().min(lo.len()).min(hi.len()) {
            let ((ca, la), (_, ha)) =
                (self.to_px(xs[k - 1], lo[k - 1]), self.to_px(0.0, hi[k - 1]));
            let ((cb, lb), (_, hb)) = (self.to_px(xs[k], lo[k]), self.to_px(0.0, hi[k]));
            if ![ca, la, ha, cb, lb, hb].iter().all(|v| v.is_finite()) {
                continue;
            }
            for col in centers((ca, cb), 0.0, self.left, self.right) {
                let s = clamp((col as f64 + 0.5 - ca) / (cb - ca), 0.0, 1.0);
                let (y_lo, y_hi) = (la + s * (lb - la), ha + s * (hb - ha));
                for row in centers((y_lo, y_hi), 0.0, self.top, self.bottom) {
                    mask[(row - self.top) as usize * w + (col - self.left) as usize] = true;
                }
            }
        }
        for i in (0..mask.len()).filter(|&i| mask[i]) {
            let (col, row) = (self.left + (i % w) as isize, self.top + (i / w) as isize);
            self.blend(col, row, color, alpha.clamp(0.0, 1.0));
        }
    }

    /// An image covering the whole data extent. `values` is row-major with `ny` rows of `nx`
    /// values, row 0 at the bottom (`y = y0`); each value is the centre of a cell, as in
    /// matplotlib's `imshow(extent=...)`. Colours come from `cmap(t)` with
    /// `t = (v - vmin) / (vmax - vmin)` clamped to `[0, 1]`; with `bilinear` the values are
    /// interpolated between cell centres. NaN values are left blank; too few values or
    /// `vmax <= vmin` draws nothing.
    #[allow(clippy::too_many_arguments)]
    pub fn image(
        &mut self,
        values: &[f64],
        nx: usize,
        ny: usize,
        vmin: f64,
        vmax: f64,
        cmap: fn(f64) -> Rgb,
        bilinear: bool,
    ) {
        let (n, range_ok) = (
            nx.saturating_mul(ny),
            vmax > vmin && (vmax - vmin).is_finite(),
        );
        if !self.valid() || n == 0 || values.len() < n || !range_ok {
            return;
        }
        let w = (self.right - self.left) as f64;
        let h = (self.bottom - self.top) as f64;
        let at = |i: usize, j: usize| values[j * nx + i];
        // fractional grid index along an axis with `n` cells, from the fraction `u` of the extent
        let grid = |u: f64, n: usize| (u * n as f64 - 0.5).clamp(0.0, (n - 1) as f64);
        for row in self.top..self.bottom {
            let v = (self.bottom - row) as f64 / h - 0.5 / h; // 0 at the bottom
            for col in self.left..self.right {
                let u = (col - self.left) as f64 / w + 0.5 / w;
                let val = if bilinear {
                    let (gx, gy) = (grid(u, nx), grid(v, ny));
                    let (i0, j0) = (gx as usize, gy as usize);
                    let (i1, j1) = ((i0 + 1).min(nx - 1), (j0 + 1).min(ny - 1));
                    let (fx, fy) = (gx - i0 as f64, gy - j0 as f64);
                    let bot = at(i0, j0) * (1.0 - fx) + at(i1, j0) * fx;
                    let top = at(i0, j1) * (1.0 - fx) + at(i1, j1) * fx;
                    bot * (1.0 - fy) + top * fy
                } else {
                    let (i, j) = ((u * nx as f64) as usize, (v * ny as f64) as usize);
                    at(i.min(nx - 1), j.min(ny - 1))
                };
                if !val.is_nan() {
                    let t = (val - vmin) / (vmax - vmin);
                    self.put(col, row, cmap(t.clamp(0.0, 1.0)));
                }
            }
        }
    }

    /// Draws the black frame and about five tick marks per axis at round values, labelled with a
    /// built-in bitmap font. Call it last.
    pub fn axes(&mut self) {
        let (l, r, t, b) = (self.left - 1, self.right, self.top - 1, self.bottom);
        if r <= l + 1 || b <= t + 1 {
            return;
        }
        for c in l..=r {
            self.put(c, t, BLACK);
            self.put(c, b, BLACK);
        }
        for row in t..=b {
            self.put(l, row, BLACK);
            self.put(r, row, BLACK);
        }
        if !self.valid() {
            return;
        }
        for (v, label) in nice_ticks(self.xlim) {
            let c = (self.to_px(v, 0.0).0.floor() as isize).min(self.right - 1);
            (1..=TICK).for_each(|d| self.put(c, b + d, BLACK));
            self.text(c - text_width(&label) / 2, b + TICK + GAP, &label);
        }
        for (v, label) in nice_ticks(self.ylim) {
            let row = (self.to_px(0.0, v).1.floor() as isize).min(self.bottom - 1);
            (1..=TICK).for_each(|d| self.put(l - d, row, BLACK));
            let c = l - TICK - GAP - text_width(&label);
            self.text(c, row - 5 * FONT_SCALE / 2, &label);
        }
    }

    /// Writes `s` (digits, '.', '-'; other characters are blank) with its top-left corner at `(c, r)`.
    fn text(&mut self, mut c: isize, r: isize, s: &str) {
        for ch in s.chars() {
            let (bits, gw) = glyph(ch);
            for k in 0..15 * FONT_SCALE * FONT_SCALE {
                let (fx, fy) = (k % (3 * FONT_SCALE), k / (3 * FONT_SCALE)); // scaled font pixel
                let (gx, gy) = (fx / FONT_SCALE, fy / FONT_SCALE);
                if gx < gw && bits >> (3 * (4 - gy) + 2 - gx) & 1 == 1 {
                    self.put(c + fx, r + fy, BLACK);
                }
            }
            c += (gw + 1) * FONT_SCALE;
        }
    }

    /// Writes the canvas as an 8-bit RGB PNG to `path` (errors name the path).
    pub fn save_png(&self, path: impl AsRef<Path>) -> io::Result<()> {
        let path = path.as_ref();
        let msg = |e: &dyn std::fmt::Display| format!("{}: {e}", path.display());
        let other = |e: png::EncodingError| io::Error::other(msg(&e));
        let size = (u32::try_from(self.width), u32::try_from(self.height));
        let (Ok(w @ 1..), Ok(h @ 1..)) = size else {
            return Err(io::Error::other(msg(&"canvas size not valid for a PNG")));
        };
        let file = std::fs::File::create(path).map_err(|e| io::Error::new(e.kind(), msg(&e)))?;
        let mut enc = png::Encoder::new(io::BufWriter::new(file), w, h);
        enc.set_color(png::ColorType::Rgb);
        enc.set_depth(png::BitDepth::Eight);
        let mut writer = enc.write_header().map_err(other)?;
        writer.write_image_data(&self.pixels).map_err(other)?;
        writer.finish().map_err(other)
    }
}

/// `v` clamped to `[lo, hi]`, with NaN mapped to `lo`.
fn clamp(v: f64, lo: f64, hi: f64) -> f64 {
    if v.is_nan() {
        lo
    } else {
        v.clamp(lo, hi)
    }
}

/// Indices `i` in `lo..hi` whose pixel centre `i + 0.5` lies between `a` and `b` widened by `pad`
/// (empty for NaN bounds).
fn centers((a, b): (f64, f64), pad: f64, lo: isize, hi: isize) -> Range<isize> {
    let c = |v: f64| clamp(v, lo as f64, hi as f64) as isize;
    c((a.min(b) - pad - 0.5).ceil())..c((a.max(b) + pad - 0.5).floor() + 1.0)
}

/// A 3x5 glyph as 15 bits (five rows of three, top row and left column most significant) and its
/// width in font pixels.
fn glyph(c: char) -> (u16, isize) {
    const DIGITS: [u16; 10] = [
        0o75557, 0o26227, 0o71747, 0o71717, 0o55711, 0o74717, 0o74757, 0o71111, 0o75757, 0o75717,
    ];
    match c {
        '0'..='9' => (DIGITS[c as usize - '0' as usize], 3),
        '.' => (0o00004, 1),
        '-' => (0o00700, 3),
        _ => (0, 3),
    }
}

/// Width in pixels of `s` as drawn by [`Canvas::text`].
fn text_width(s: &str) -> isize {
    s.chars().map(|c| glyph(c).1 + 1).sum::<isize>() * FONT_SCALE - FONT_SCALE
}

/// About five ticks at round values (1, 2 or 5 times a power of ten) within `lim`, with labels.
fn nice_ticks((a, b): (f64, f64)) -> Vec<(f64, String)> {
    let (lo, hi) = (a.min(b), a.max(b));
    let raw = (hi - lo) / 5.0;
    if !(raw > 0.0 && raw.is_finite()) {
        return Vec::new();
    }
    let p = 10f64.powf(raw.log10().floor());
    let step = [1.0, 2.0, 5.0]
        .iter()
        .map(|m| m * p)
        .find(|s| *s >= raw * 0.999)
        .unwrap_or(10.0 * p);
    let decimals = (-step.log10().floor()).clamp(0.0, 12.0) as usize;
    let (k0, k1) = ((lo / step).ceil(), (hi / step).floor());
    if !(k1 - k0).is_finite() || k1 - k0 >= 50.0 {
        return Vec::new();
    }
    // k0 + i is never -0.0 (adding +0.0 to -0.0 gives +0.0), so there is no "-0" label
    let ticks = (0..=(k1 - k0) as usize).map(|i| (k0 + i as f64) * step);
    ticks.map(|v| (v, format!("{v:.decimals$}"))).collect()
}

/// Linear interpolation in a flat table of equally spaced RGB stops; NaN maps to the middle.
fn interp(table: &[u8], t: f64) -> Rgb {
    let n = table.len() / 3 - 1;
    let x = if t.is_nan() { 0.5 } else { t.clamp(0.0, 1.0) } * n as f64;
    let k = (x as usize).min(n - 1);
    let s = x - k as f64;
    std::array::from_fn(|i| {
        let (a, b) = (table[3 * k + i] as f64, table[3 * k + 3 + i] as f64);
        (a + s * (b - a)).round() as u8
    })
}

/// Diverging blue-gray-red colormap approximating matplotlib's "coolwarm" (Moreland), `t` in `[0, 1]`.
pub fn coolwarm(t: f64) -> Rgb {
    const TABLE: [u8; 27] = [
        59, 76, 192, 98, 130, 234, 141, 176, 254, 184, 208, 249, 221, 221, 221, 245, 196, 173, 244,
        154, 123, 222, 96, 77, 180, 4, 38,
    ];
    interp(&TABLE, t)
}

/// Diverging blue-white-red colormap matching matplotlib's "bwr", `t` in `[0, 1]`.
pub fn bwr(t: f64) -> Rgb {
    interp(&[0, 0, 255, 255, 255, 255, 255, 0, 0], t)
}
