//! The solve's random numbers: SplitMix64 on the host, so that a seed gives the same numbers
//! on every device and with any number of threads (the probes of the log-determinant, the
//! pivots of the preconditioner).

use candle_core::Tensor;

/// SplitMix64, with standard normal numbers by Box-Muller.
pub(crate) struct Normals {
    state: u64,
    spare: Option<f64>,
}

impl Normals {
    pub(crate) fn new(seed: u64) -> Normals {
        Normals {
            state: seed ^ 0x6a09_e667_f3bc_c909,
            spare: None,
        }
    }

    /// Uniform in `(0, 1]`.
    pub(crate) fn uniform(&mut self) -> f64 {
        self.state = self.state.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.state;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^= z >> 31;
        // In (0, 1]: never 0, so the logarithm below is finite.
        ((z >> 11) + 1) as f64 / (1u64 << 53) as f64
    }

    /// Standard normal.
    pub(crate) fn next(&mut self) -> f64 {
        if let Some(v) = self.spare.take() {
            return v;
        }
        let (u, v) = (self.uniform(), self.uniform());
        let r = (-2.0 * u.ln()).sqrt();
        let t = 2.0 * std::f64::consts::PI * v;
        self.spare = Some(r * t.sin());
        r * t.cos()
    }

    /// A `(rows, cols)` `f64` tensor of standard normals on `like`'s device.
    pub(crate) fn tensor(
        &mut self,
        rows: usize,
        cols: usize,
        like: &Tensor,
    ) -> candle_core::Result<Tensor> {
        let v: Vec<f64> = (0..rows * cols).map(|_| self.next()).collect();
        Tensor::from_vec(v, (rows, cols), like.device())
    }

    /// An index drawn with probability `weights[i] / total` from the running sums
    /// `cumulative` of non-negative weights (`total` its last value, `> 0`).
    pub(crate) fn weighted_index(&mut self, cumulative: &[f64]) -> usize {
        let total = cumulative[cumulative.len() - 1];
        let target = (1.0 - self.uniform()) * total; // in [0, total)
        // The first index whose running sum exceeds the target (never a zero weight).
        cumulative
            .partition_point(|&c| c <= target)
            .min(cumulative.len() - 1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn weighted_index_follows_the_weights_and_skips_zeros() {
        let w = [0.0, 1.0, 0.0, 3.0, 0.0];
        let cum: Vec<f64> = w
            .iter()
            .scan(0.0, |s, &x| {
                *s += x;
                Some(*s)
            })
            .collect();
        let mut rng = Normals::new(7);
        let mut counts = [0usize; 5];
        for _ in 0..40_000 {
            counts[rng.weighted_index(&cum)] += 1;
        }
        assert_eq!((counts[0], counts[2], counts[4]), (0, 0, 0), "{counts:?}");
        let share = counts[3] as f64 / 40_000.0;
        assert!((share - 0.75).abs() < 0.01, "{counts:?}");
    }
}
