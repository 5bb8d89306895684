//! Summation accuracy: f32 sums of 10^6 positive terms agree with an f64 reference to 1e-5.

use candle_core::{Device, Tensor};
use lazy_kernels::{Axis, LazyTensor};

#[test]
fn f32_sum_of_a_million_positive_terms() {
    let (m, n) = (6usize, 1_000_000usize);
    let mut state = 0x2545F4914F6CDD1Du64;
    let mut next = || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        (state >> 40) as f32 / (1u64 << 24) as f32
    };
    let xv: Vec<f32> = (0..m * 3).map(|_| next()).collect();
    let yv: Vec<f32> = (0..n * 3).map(|_| next()).collect();
    let bv: Vec<f32> = (0..n).map(|_| 0.5 + next()).collect();
    let x = Tensor::from_vec(xv.clone(), (m, 3), &Device::Cpu).unwrap();
    let y = Tensor::from_vec(yv.clone(), (n, 3), &Device::Cpu).unwrap();
    let b = Tensor::from_vec(bv.clone(), (n, 1), &Device::Cpu).unwrap();
    let (xi, yj, bj) = (
        LazyTensor::vi(&x).unwrap(),
        LazyTensor::vj(&y).unwrap(),
        LazyTensor::vj(&b).unwrap(),
    );
    let k = (-xi.sqdist(&yj) * 2.0).exp();
    for (f, weighted) in [(k.clone() * bj, true), (k + 0.25, false)] {
        let got = f.sum(Axis::J).unwrap().to_vec2::<f32>().unwrap();
        for i in 0..m {
            // Reference: the same terms from the same f32 inputs, in f64, plainly summed.
            let mut want = 0.0f64;
            for j in 0..n {
                let d: f64 = (0..3)
                    .map(|c| (xv[i * 3 + c] as f64 - yv[j * 3 + c] as f64).powi(2))
                    .sum();
                let t = (-2.0 * d).exp();
                want += if weighted { t * bv[j] as f64 } else { t + 0.25 };
            }
            let rel = (got[i][0] as f64 - want).abs() / want;
            assert!(
                rel < 1e-5,
                "row {i}: got {}, want {want}, relative error {rel:e}",
                got[i][0]
            );
        }
    }
}
