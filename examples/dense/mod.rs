//! The exact GP negative log marginal likelihood by a dense Cholesky factorisation, shared by
//! the GP examples to check the library's stochastic estimate (`O(N^2)` memory, `O(N^3)` time).

/// `-log p(y)` of the GP with kernel matrix `k` (row-major `n x n`, the noise variance already
/// on its diagonal) and residuals `r = y - m`, by a dense Cholesky factorisation: the exact
/// value, to check the stochastic estimate of `ExactGp::nll`.
pub fn dense_nll(mut k: Vec<f64>, r: &[f64]) -> f64 {
    let n = r.len();
    for j in 0..n {
        let (done, rest) = k.split_at_mut(j * n);
        let row_j = &mut rest[..n];
        for i in 0..j {
            let row_i = &done[i * n..i * n + n];
            let s: f64 = row_i[..i].iter().zip(&row_j[..i]).map(|(a, b)| a * b).sum();
            row_j[i] = (row_j[i] - s) / row_i[i];
        }
        let s: f64 = row_j[..j].iter().map(|a| a * a).sum();
        row_j[j] = (row_j[j] - s).sqrt();
    }
    // Solve L z = r: then r^T K^-1 r = |z|^2.
    let mut z = r.to_vec();
    for i in 0..n {
        let s: f64 = k[i * n..i * n + i]
            .iter()
            .zip(&z[..i])
            .map(|(a, b)| a * b)
            .sum();
        z[i] = (z[i] - s) / k[i * n + i];
    }
    let logdet: f64 = (0..n).map(|i| 2.0 * k[i * n + i].ln()).sum();
    0.5 * z.iter().map(|v| v * v).sum::<f64>()
        + 0.5 * logdet
        + 0.5 * n as f64 * std::f64::consts::TAU.ln()
}
