//! Value parsers for the sizes the benchmarks take on their command lines (`clap`'s
//! `value_parser`): a positive whole number, also written `1e4`, `10_000` or `10,000`, and a pair `MxN`
//! of them. Lists (`--sizes 1e4,1e5`) are these with `value_delimiter = ','`.
#![allow(dead_code)]

/// A positive whole number: `20000`, `2e4`, `20_000`, `20,000` (in a `--sizes` list the commas
/// separate the sizes before this sees them).
pub fn count(s: &str) -> Result<usize, String> {
    let t = s.trim().replace(['_', ','], "");
    let v: f64 = t
        .parse()
        .map_err(|_| format!("{s:?} is not a number (e.g. 10000 or 1e4)"))?;
    if !(v >= 1.0 && v.fract() == 0.0 && v < 1e15) {
        return Err(format!("{s:?} is not a positive whole number"));
    }
    Ok(v as usize)
}

/// A parser of whole numbers of at least `min` (e.g. a problem needs two points).
pub fn at_least(min: usize) -> impl Fn(&str) -> Result<usize, String> + Clone + Send + Sync {
    move |s| match count(s)? {
        v if v < min => Err(format!("{s:?}: at least {min}")),
        v => Ok(v),
    }
}

/// `MxN`: two positive whole numbers, e.g. `1e5x1e4`.
pub fn pair(s: &str) -> Result<(usize, usize), String> {
    let (m, n) = s
        .split_once('x')
        .ok_or_else(|| format!("expected MxN (e.g. 1e5x1e4), got {s:?}"))?;
    Ok((count(m)?, count(n)?))
}

/// Seconds: a finite number greater than 0.
pub fn seconds(s: &str) -> Result<f64, String> {
    match s.trim().parse::<f64>() {
        Ok(v) if v > 0.0 && v.is_finite() => Ok(v),
        _ => Err(format!("{s:?}: expected seconds > 0")),
    }
}
