//! Every instruction-set level this CPU supports gives the dense reference's results.
//! (One test in its own binary: `isa::force` is process-wide.)

mod common;

use candle_core::{DType, Tensor};
use common::{
    Rng, assert_close, dense_eval, dense_values, flat, flat_i64, ref_lse, ref_sorted, ref_sum,
};
use lazy_kernels::backend::cpu::isa::{self, Isa};
use lazy_kernels::formula::{VarCat, parse};
use lazy_kernels::{Axis, LazyTensor, ReductionKind};

#[test]
fn every_instruction_set_matches_the_reference() {
    let levels = Isa::available();
    eprintln!("instruction sets tested: {:?}", levels);
    let (m, n) = (45, 1234);
    let mut r = Rng(77);
    let ins = vec![
        (VarCat::I, r.tensor(&[m, 3], -1., 1.)),
        (VarCat::J, r.tensor(&[n, 3], -1., 1.)),
        (VarCat::P, r.tensor(&[1], 0.5, 1.0)),
    ];
    let formulas = [
        "Exp(-SqDist(Vi(0,3), Vj(1,3)) / (2.0 * Square(Pm(2,1)))) * Vj(1,3)",
        "Log(1.5 + Sin(3.0 * Dot(Vi(0,3), Vj(1,3)))) + Cos(Elem(Vj(1,3), 1) * 20.0) + Sqrt(SqDist(Vi(0,3), Vj(1,3)))",
        "Powf(Abs(Vi(0,3) - Vj(1,3)) + 0.1, Pm(2,1)) * Sign(Vj(1,3))",
    ];
    for src in formulas {
        let f = parse(src, &[]).unwrap();
        let dense = dense_eval(&f, &ins, m, n).unwrap();
        let dv = dense_values(&dense, true).unwrap();
        let sum = ref_sum(&dv).concat();
        let lse = ref_lse(&dv).concat();
        let sorted = ref_sorted(&dv, false);
        for &level in &levels {
            isa::force(Some(level));
            assert_eq!(isa::detect(), level);
            for dtype in [DType::F32, DType::F64] {
                let ts: Vec<Tensor> = ins
                    .iter()
                    .map(|(_, t)| t.to_dtype(dtype).unwrap())
                    .collect();
                let refs: Vec<&Tensor> = ts.iter().collect();
                let lt = LazyTensor::from_formula(&f, &refs).unwrap();
                let what = format!("{src} {level:?} {dtype:?}");
                let tol = if dtype == DType::F32 { 2e-5 } else { 1e-12 };
                assert_close(
                    &flat(&lt.sum(Axis::J).unwrap()),
                    &sum,
                    tol,
                    tol * n as f64,
                    &what,
                );
                assert_close(
                    &flat(&lt.logsumexp(Axis::J).unwrap()),
                    &lse,
                    tol,
                    tol,
                    &what,
                );
                let (v, i) = lt
                    .reduce(ReductionKind::KMinArgKMin(3), Axis::J)
                    .map(|o| (o.values.unwrap(), o.indices.unwrap()))
                    .unwrap();
                let (v, i) = (flat(&v), flat_i64(&i));
                let e = f.dim();
                for (row, per_comp) in sorted.iter().enumerate() {
                    for rank in 0..3 {
                        for (c, ranked) in per_comp.iter().enumerate() {
                            let k = (row * 3 + rank) * e + c;
                            let (wv, _) = ranked[rank];
                            assert!((v[k] - wv).abs() <= tol * wv.abs().max(1.0), "{what}");
                            let chosen = dv[row][i[k] as usize][c];
                            assert!(
                                (chosen - wv).abs() <= 10.0 * tol * wv.abs().max(1.0),
                                "{what}"
                            );
                        }
                    }
                }
            }
        }
    }
    isa::force(None);
}
