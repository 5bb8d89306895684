//! The pivoted-Cholesky preconditioner: a rank-`r` factor `K ~ L^T L` from `r` rows of `K`,
//! and `(L^T L + alpha I)^-1` by the Woodbury identity.
//!
//! The pivots are chosen by accelerated randomly pivoted Cholesky (Epperly, Tropp & Webber,
//! "Embrace rejection: kernel matrix approximation by accelerated randomly pivoted Cholesky",
//! SIAM J. Matrix Anal. Appl., 2025, arXiv:2410.03969), which draws the same pivots, in law, as
//! randomly pivoted Cholesky (Chen, Epperly, Tropp & Webber, "Randomly pivoted Cholesky:
//! practical approximation of a kernel matrix with few entry evaluations", Comm. Pure Appl.
//! Math., 2025, arXiv:2207.06503): each pivot is drawn with probability proportional to the
//! diagonal of the remainder `K - L^T L`. RPCholesky's trace error is within a small factor of
//! the best rank-`r` approximation's, which the greedy rule (the largest remaining diagonal)
//! does not promise. Its batched form is what makes the factor fast on a GPU: the greedy rule
//! needs the whole remainder diagonal on the host before each pivot, one round trip per row.
//!
//! A round draws `B` candidates `S` from the remainder diagonal `d` (on the host, seeded, so the
//! same pivots on every device), computes their `B x B` block of the remainder,
//! `H = K[S, S] - L[:, S]^T L[:, S]`, on the operator's device and brings it to the host. There
//! candidate `i` is accepted with probability `h_i / d_i`, `h_i` its remainder after the
//! candidates accepted before it (rejection sampling, which turns the draws from the stale `d`
//! into draws from the current remainder), and the accepted block is factored,
//! `H[A, A] = C C^T`. Only then are rows computed, for the accepted candidates `A` alone: the
//! new rows of the factor are `C^-1 (K[A, :] - L[:, A]^T L)` (one kernel evaluation, two
//! products). A round costs two or three reads of `B` or `N` numbers, whatever the rank it
//! adds, no kernel row is computed for a rejected candidate, and the factor never leaves the
//! device.
//!
//! Applying the inverse takes two `(r, N)` products: `(v - L^T C^-1 L v) / alpha` with
//! `C = alpha I + L L^T`.

use candle_core::{DType, Tensor};

use super::cg::Preconditioner;
use super::host_read;
use super::random::Normals;
use crate::error::Error;
use crate::linalg::matmul;
use crate::operator::index_tensor;

/// How many rows the pivoted-Cholesky factor takes.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Rank {
    /// Exactly this many (fewer if `K` is exactly reproduced earlier).
    Fixed(usize),
    /// Until the trace of the remainder `K - L^T L` is at most `alpha` (then the
    /// preconditioned matrix has condition number at most 2), or `max` rows, or as many rows
    /// as fit in [`AUTO_MEMORY`] bytes of `f64` factor (`N = 10^6` points: 134 rows).
    /// Building rank `r` costs about `r^2 N` multiply-adds (matrix products) and `r` rows of
    /// `K`, plus about a fifth more rows for the rejected candidates.
    Auto {
        /// The largest rank taken.
        max: usize,
    },
}

/// The memory the automatic rank may give the factor `L` (`r x N` `f64` values): 1 GiB.
pub const AUTO_MEMORY: usize = 1 << 30;

impl Default for Rank {
    fn default() -> Self {
        Rank::Auto { max: 400 }
    }
}

/// A built preconditioner.
pub(crate) struct PivotedCholesky {
    /// `L`, `(r, N)`, `f64`, on the operator's device.
    l: Tensor,
    /// `C^-1 = (delta I + L L^T)^-1`, `(r, r)`.
    c_inv: Tensor,
    /// The shift `delta` (the ridge `alpha`, or the largest remaining diagonal when
    /// `alpha = 0`).
    delta: f64,
    /// Trace of `K - L^T L` when the factor stopped.
    pub remainder_trace: f64,
    /// `log det(delta I_r + L L^T)`, for the log-determinant of the preconditioner.
    small_logdet: f64,
}

/// Rows of the factor's first buffer; it doubles when full (up to the largest rank).
const FIRST_ROWS: usize = 64;

/// Candidates of the first round.
const FIRST_ROUND: usize = 8;
/// Candidates per round, at most.
const MAX_ROUND: usize = 64;

/// The candidates of the next round, after `accepted` of `drawn` were accepted. Where most
/// are accepted (a rough kernel, many pivots) the next round draws twice as many as were
/// accepted, up to [`MAX_ROUND`]: a GPU pays per round, not per row. Where many are rejected
/// (a smooth kernel whose remainder is concentrated near few points) the next round draws as
/// many as this one accepted, down to one: a CPU pays per row, and a round of one is a
/// sequential RPCholesky step with nothing rejected. The rule depends on the draws only, so
/// every device takes the same pivots.
fn next_round(drawn: usize, accepted: usize) -> usize {
    if 4 * accepted >= 3 * drawn {
        (2 * accepted).min(MAX_ROUND)
    } else {
        accepted.max(1)
    }
}

/// The memory a round's block of remainder rows `G` (`B x N` `f64`) may take: 256 MiB.
const ROUND_MEMORY: usize = 1 << 28;

/// Rounds in a row that may accept no candidate before the factor stops (each round accepts
/// its first candidate with probability one in exact arithmetic, so this is a guard against
/// a remainder that is all rounding).
const IDLE_ROUNDS: usize = 8;

/// The automatic rank stops after a round whose rows removed less than this multiple of
/// their pivots' own remainders from the trace.
const FLAT_GAIN: f64 = 2.0;

/// The seed of the pivots: one factor per kernel matrix, the same on every device.
const PIVOT_SEED: u64 = 0x7069_766f_7473;

fn bad_diag(v: f64) -> candle_core::Error {
    Error::InvalidArgument {
        op: "solve (pivoted Cholesky)",
        detail: format!(
            "the kernel's diagonal has the value {v}: a kernel matrix must have a finite, \
             non-negative diagonal"
        ),
    }
    .into()
}

impl PivotedCholesky {
    /// Factors `K` from its diagonal (`(N,)`, `f64`), a source of its rows (`K[idx, :]`,
    /// `(B, N)`, `f64`) and one of its blocks (`K[idx, idx]`, `(B, B)`), all on the operator's
    /// device: the factor never leaves it; each round of pivots reads the remainder's diagonal
    /// and a small block back, and the small `(r, r)` system is factored on the host.
    pub(crate) fn new(
        diag: Tensor,
        rows: &mut dyn FnMut(&[usize]) -> candle_core::Result<Tensor>,
        block: &mut dyn FnMut(&[usize]) -> candle_core::Result<Tensor>,
        alpha: f64,
        rank: Rank,
    ) -> candle_core::Result<PivotedCholesky> {
        let n = diag.elem_count();
        let device = diag.device().clone();
        let max_rank = match rank {
            Rank::Fixed(r) => r.min(n),
            Rank::Auto { max } => max.min(n).min((AUTO_MEMORY / 8 / n).max(1)),
        };
        let auto = matches!(rank, Rank::Auto { .. });
        // The factor's buffer grows by doubling: up to twice the rows it keeps.
        crate::backend::memory::reserve(
            "pivoted Cholesky preconditioner",
            || format!("a factor of rank {max_rank} over {n} points (f64, with its growth)"),
            max_rank.checked_mul(n).and_then(|c| c.checked_mul(16)),
            &device,
        )?;
        let mut d = diag.flatten_all()?.contiguous()?;
        // The remainder's diagonal on the host: sampled from, and its trace is the stop rule.
        let mut d_host = host_read(d.to_vec1::<f64>())?;
        if let Some(v) = d_host.iter().find(|v| !v.is_finite() || **v < 0.0) {
            return Err(bad_diag(*v));
        }
        let scale = d_host.iter().cloned().fold(0.0, f64::max);
        // Below this, a remainder is rounding: K is reproduced.
        let tiny = scale * 1e-13;
        let mut rng = Normals::new(PIVOT_SEED);
        let mut pivots: Vec<usize> = Vec::new();
        // The factor's rows so far are the first `r` rows of `buf`.
        let mut buf = Tensor::zeros((FIRST_ROWS.min(max_rank).max(1), n), DType::F64, &device)?;
        let mut r = 0;
        let mut idle = 0;
        let mut round = FIRST_ROUND;
        let mut flat = false;
        while r < max_rank {
            // The running sums of the remainder diagonal: the trace, and what the candidates
            // are drawn from.
            let cumulative: Vec<f64> = d_host
                .iter()
                .scan(0.0, |s, &v| {
                    *s += v;
                    Some(*s)
                })
                .collect();
            let tr = cumulative[n - 1];
            if (auto && tr <= alpha) || flat || idle >= IDLE_ROUNDS {
                break;
            }
            let dmax = d_host.iter().cloned().fold(0.0, f64::max);
            if dmax <= tiny || dmax <= 0.0 {
                break;
            }
            // Candidates: drawn with probability d_i / trace (pivots have d_i = 0).
            let wanted = max_rank - r;
            let b = round.min(2 * wanted + 8).min((ROUND_MEMORY / 8 / n).max(1));
            let cand: Vec<usize> = (0..b).map(|_| rng.weighted_index(&cumulative)).collect();
            let cand_t = index_tensor(&cand, &device)?;
            // Their block of the remainder K - L^T L, which is all the acceptance needs: rows
            // are computed for the accepted candidates only.
            let k_block = block(&cand)?;
            expect_shape(&k_block, [b, b], "kernel block")?;
            let l = buf.narrow(0, 0, r)?;
            let h = if r > 0 {
                let l_s = l.index_select(&cand_t, 1)?; // (r, B), contiguous
                (k_block - matmul(&l_s.t()?, &l_s)?)?
            } else {
                k_block
            };
            let h = host_read(h.to_vec2::<f64>())?;
            let (accepted, c_inv, pivot_values) = accept(h, &cand, &d_host, tiny, wanted, &mut rng);
            round = next_round(b, accepted.len());
            if accepted.is_empty() {
                idle += 1;
                continue;
            }
            idle = 0;
            let a = accepted.len();
            let chosen: Vec<usize> = accepted.iter().map(|&i| cand[i]).collect();
            let k_rows = rows(&chosen)?;
            expect_shape(&k_rows, [a, n], "kernel rows")?;
            // Their rows of the remainder, then of the factor: C^-1 G, (a, N).
            let g = if r > 0 {
                let l_a = l.index_select(&index_tensor(&chosen, &device)?, 1)?;
                (k_rows - matmul(&l_a.t()?, &l)?)?
            } else {
                k_rows
            };
            let c_inv = Tensor::from_vec(c_inv, (a, a), &device)?;
            let new_rows = matmul(&c_inv, &g)?;
            // With the automatic rank, stop inside the round where the trace reaches alpha,
            // or after a round whose rows removed little more than their pivots' own
            // remainders: the remainder is then close to diagonal, and more rank would cost
            // rounds without cutting iterations (a kernel close to `c I`, which plain CG
            // solves in a few iterations anyway).
            let squares = new_rows.sqr()?;
            let keep = if auto {
                let norms = host_read(squares.sum(1)?.to_vec1::<f64>())?;
                let mut left = tr;
                let mut keep = a;
                for (t, v) in norms.iter().enumerate() {
                    left -= v;
                    if left <= alpha {
                        keep = t + 1;
                        break;
                    }
                }
                let removed: f64 = norms[..keep].iter().sum();
                let own: f64 = pivot_values[..keep].iter().sum();
                flat = removed < FLAT_GAIN * own;
                keep
            } else {
                a
            };
            let (new_rows, squares) = if keep < a {
                (new_rows.narrow(0, 0, keep)?, squares.narrow(0, 0, keep)?)
            } else {
                (new_rows, squares)
            };
            d = (d - squares.sum(0)?)?.relu()?;
            let cap = buf.dim(0)?;
            if r + keep > cap {
                let grow = (r + keep).max(2 * cap).min(max_rank) - cap;
                let more = Tensor::zeros((grow, n), DType::F64, &device)?;
                buf = Tensor::cat(&[&buf, &more], 0)?;
            }
            buf.slice_set(&new_rows.contiguous()?, 0, r)?;
            r += keep;
            pivots.extend(&chosen[..keep]);
            d_host = host_read(d.to_vec1::<f64>())?;
            // A pivot's remainder is zero; the device copy keeps its rounding.
            for &p in &pivots {
                d_host[p] = 0.0;
            }
        }
        let remainder_trace = d_host.iter().sum::<f64>();
        let delta = if alpha > 0.0 {
            alpha
        } else {
            d_host
                .iter()
                .cloned()
                .fold(0.0, f64::max)
                .max(scale * 1e-10)
        };
        let (l, c_inv, small_logdet) = if r > 0 {
            let l = buf.narrow(0, 0, r)?.contiguous()?;
            let llt = host_read(matmul(&l, &l.t()?)?.to_vec2::<f64>())?;
            let (w, logdet) = inverse_factor(llt, delta)?;
            let w = Tensor::from_vec(w, (r, r), &device)?;
            let c_inv = matmul(&w.t()?, &w)?;
            (l, c_inv, logdet)
        } else {
            (
                Tensor::zeros((0, n), DType::F64, &device)?,
                Tensor::zeros((0, 0), DType::F64, &device)?,
                0.0,
            )
        };
        Ok(PivotedCholesky {
            l,
            c_inv,
            delta,
            remainder_trace,
            small_logdet,
        })
    }

    /// `log det(L^T L + delta I_N) = (N - r) log delta + log det(delta I_r + L L^T)`.
    pub(crate) fn logdet(&self) -> candle_core::Result<f64> {
        let n = self.l.dim(1)?;
        Ok((n - self.rank()) as f64 * self.delta.ln() + self.small_logdet)
    }

    /// Samples of `N(0, L^T L + delta I)` from standard normal `g1` (`(r, p)`) and `g2`
    /// (`(N, p)`): `L^T g1 + sqrt(delta) g2`.
    pub(crate) fn sample(&self, g1: &Tensor, g2: &Tensor) -> candle_core::Result<Tensor> {
        let scaled = (g2 * self.delta.sqrt())?;
        if self.rank() == 0 {
            return Ok(scaled);
        }
        matmul(&self.l.t()?, g1)? + scaled
    }

    /// The rank taken.
    pub(crate) fn rank(&self) -> usize {
        self.l.dims()[0]
    }

    /// The factor `L`, `(r, N)`, `f64`, and the shift `delta` of `L^T L + delta I`.
    pub(crate) fn factor(&self) -> (&Tensor, f64) {
        (&self.l, self.delta)
    }
}

/// An error unless `t` has the shape `want` (a source of kernel values that does not keep its
/// promise).
fn expect_shape(t: &Tensor, want: [usize; 2], what: &str) -> candle_core::Result<()> {
    if t.dims() == want {
        return Ok(());
    }
    Err(Error::Shape {
        op: "solve (pivoted Cholesky)",
        detail: format!("{what} of shape {:?}, expected {want:?}", t.dims()),
    }
    .into())
}

/// The rejection step of a round, on the host. `h` is the `B x B` block of the remainder at
/// the candidates `cand`, drawn from the remainder diagonal `d`. Candidate `i` is accepted
/// with probability `h_i / d[cand_i]`, `h_i` its remainder after eliminating the candidates
/// accepted before it, until `wanted` are. Returns the accepted positions (in `0..B`) and
/// `C^-1` (row-major, `a x a`) for the Cholesky factor `C` of `h` at the accepted positions,
/// and the accepted candidates' remainders `h_i` when they were accepted.
fn accept(
    mut h: Vec<Vec<f64>>,
    cand: &[usize],
    d: &[f64],
    tiny: f64,
    wanted: usize,
    rng: &mut Normals,
) -> (Vec<usize>, Vec<f64>, Vec<f64>) {
    let b = cand.len();
    let mut accepted = Vec::new();
    // The columns of C: for each accepted candidate, its eliminated column over 0..B.
    let mut cols: Vec<Vec<f64>> = Vec::new();
    for i in 0..b {
        if accepted.len() == wanted {
            break;
        }
        let hi = h[i][i];
        // `uniform()` is in (0, 1]: 1 - u is in [0, 1), so `hi = d` is always accepted.
        if hi.is_nan() || hi <= tiny || (1.0 - rng.uniform()) * d[cand[i]] >= hi {
            continue;
        }
        let c = hi.sqrt();
        let col: Vec<f64> = (0..b)
            .map(|j| if j < i { 0.0 } else { h[j][i] / c })
            .collect();
        for j in i + 1..b {
            for k in i + 1..=j {
                let v = h[j][k] - col[j] * col[k];
                h[j][k] = v;
                h[k][j] = v;
            }
        }
        accepted.push(i);
        cols.push(col);
    }
    // C[t][s] = cols[s][accepted[t]]: lower triangular with C[t][t] = sqrt(h); invert it by
    // forward substitution, row by row.
    let a = accepted.len();
    let c = |t: usize, s: usize| cols[s][accepted[t]];
    let mut inv = vec![0.0; a * a];
    for t in 0..a {
        let (done, rest) = inv.split_at_mut(t * a);
        let row = &mut rest[..a];
        row[t] = 1.0;
        for s in 0..t {
            let f = c(t, s);
            for (v, &w) in row[..=s].iter_mut().zip(&done[s * a..s * a + s + 1]) {
                *v -= f * w;
            }
        }
        let pivot = c(t, t);
        for v in row[..=t].iter_mut() {
            *v /= pivot;
        }
    }
    let values = (0..a).map(|t| c(t, t) * c(t, t)).collect();
    (accepted, inv, values)
}

/// `sum_k a_k b_k`, in eight independent lanes so that it vectorises (the `(r, r)` system
/// of a rank-400 factor: a few milliseconds instead of tens).
fn dot(a: &[f64], b: &[f64]) -> f64 {
    let mut lanes = [0.0f64; 8];
    let (ca, cb) = (a.chunks_exact(8), b.chunks_exact(8));
    let tail: f64 = ca
        .remainder()
        .iter()
        .zip(cb.remainder())
        .map(|(x, y)| x * y)
        .sum();
    for (x, y) in ca.zip(cb) {
        for k in 0..8 {
            lanes[k] += x[k] * y[k];
        }
    }
    lanes.iter().sum::<f64>() + tail
}

/// `W = L^-1` for the Cholesky factor `L` of `delta I + G` (`G` symmetric positive
/// semi-definite, row-major), so that `(delta I + G)^-1 = W^T W`.
/// Also returns `log det(delta I + G)`.
pub(crate) fn inverse_factor(g: Vec<Vec<f64>>, delta: f64) -> candle_core::Result<(Vec<f64>, f64)> {
    let r = g.len();
    let mut a: Vec<f64> = g.into_iter().flatten().collect();
    for i in 0..r {
        a[i * r + i] += delta;
    }
    // In-place lower Cholesky factor, by rows: each entry is one dot product of two
    // contiguous row prefixes.
    for j in 0..r {
        let row_j = &a[j * r..j * r + j];
        let s = a[j * r + j] - dot(row_j, row_j);
        if s.is_nan() || s <= 0.0 {
            return Err(Error::InvalidArgument {
                op: "solve (pivoted Cholesky)",
                detail: "the preconditioner's small system is not positive definite \
                         (the kernel matrix is not positive semi-definite)"
                    .into(),
            }
            .into());
        }
        let s = s.sqrt();
        a[j * r + j] = s;
        for i in j + 1..r {
            let (above, below) = a.split_at_mut(i * r);
            let t = below[j] - dot(&below[..j], &above[j * r..j * r + j]);
            below[j] = t / s;
        }
    }
    // W = L^-1, row by row: W_i = (e_i - sum_{k<i} L_ik W_k) / L_ii (contiguous row updates).
    let mut w = vec![0.0; r * r];
    for i in 0..r {
        let (done, rest) = w.split_at_mut(i * r);
        let wi = &mut rest[..r];
        wi[i] = 1.0;
        for k in 0..i {
            let c = a[i * r + k];
            let wk = &done[k * r..k * r + k + 1];
            for (v, &x) in wi[..=k].iter_mut().zip(wk) {
                *v -= c * x;
            }
        }
        let inv = 1.0 / a[i * r + i];
        for v in wi[..=i].iter_mut() {
            *v *= inv;
        }
    }
    let logdet = (0..r).map(|i| 2.0 * a[i * r + i].ln()).sum();
    Ok((w, logdet))
}

impl Preconditioner for PivotedCholesky {
    fn apply(&self, v: &Tensor) -> candle_core::Result<Tensor> {
        if self.rank() == 0 {
            return v / self.delta;
        }
        let lv = matmul(&self.l, v)?;
        let w = matmul(&self.c_inv, &lv)?;
        (v - matmul(&self.l.t()?, &w)?)? / self.delta
    }
}
