//! The host protocol of every kind: the properties every backend relies on.

use super::*;
fn run(red: &Reduction, dim: usize, terms: &[Vec<f64>], j0: i64) -> (Vec<f64>, Vec<i64>) {
    let s = red.state_spec(dim);
    let (mut v, mut i) = (vec![0.0; s.vals], vec![0; s.idx]);
    red.init(dim, &mut v, &mut i);
    for (t, f) in terms.iter().enumerate() {
        red.accumulate(&mut v, &mut i, f, j0 + t as i64);
    }
    (v, i)
}

fn finalize(red: &Reduction, dim: usize, st: &(Vec<f64>, Vec<i64>)) -> (Vec<f64>, Vec<i64>) {
    let o = red.output_spec(dim).unwrap();
    let (mut v, mut i) = (vec![0.0; o.values], vec![0; o.indices]);
    red.finalize(dim, &st.0, &st.1, &mut v, &mut i);
    (v, i)
}

/// Splitting the terms anywhere and combining the halves gives the result of one pass.
#[test]
fn combine_agrees_with_sequential_accumulation() {
    let dim = 3;
    let terms: Vec<Vec<f64>> = (0..11)
        .map(|t| {
            (0..dim)
                .map(|c| (((t * 7 + c * 3) % 5) as f64) - 1.5)
                .collect()
        })
        .collect();
    for kind in ReductionKind::all(3) {
        let red = Reduction::new(kind, Axis::J);
        let whole = finalize(&red, dim, &run(&red, dim, &terms, 0));
        for split in 0..=terms.len() {
            let mut a = run(&red, dim, &terms[..split], 0);
            let b = run(&red, dim, &terms[split..], split as i64);
            red.combine(dim, &mut a.0, &mut a.1, &b.0, &b.1);
            let got = finalize(&red, dim, &a);
            assert_eq!(got.1, whole.1, "{kind:?} indices, split {split}");
            for (x, y) in got.0.iter().zip(&whole.0) {
                assert!(
                    (x - y).abs() <= 1e-12 * y.abs().max(1.0),
                    "{kind:?} split {split}"
                );
            }
        }
    }
}

#[test]
fn ties_pick_the_first_index_and_nan_wins() {
    let red = Reduction::new(ReductionKind::MinArgMin, Axis::J);
    let st = run(&red, 1, &[vec![2.0], vec![1.0], vec![1.0]], 0);
    assert_eq!(finalize(&red, 1, &st), (vec![1.0], vec![1]));
    let st = run(&red, 1, &[vec![2.0], vec![f64::NAN], vec![1.0]], 0);
    let out = finalize(&red, 1, &st);
    assert!(out.0[0].is_nan());
    assert_eq!(out.1, vec![1]);
}

#[test]
fn kmin_with_fewer_terms_than_k_pads() {
    let red = Reduction::new(ReductionKind::KMinArgKMin(4), Axis::J);
    let st = run(&red, 1, &[vec![3.0], vec![1.0]], 0);
    let (v, i) = finalize(&red, 1, &st);
    assert_eq!(v, vec![1.0, 3.0, f64::INFINITY, f64::INFINITY]);
    assert_eq!(i, vec![1, 0, -1, -1]);
}

#[test]
fn logsumexp_is_stable_for_large_values() {
    let red = Reduction::new(ReductionKind::LogSumExp, Axis::J);
    let st = run(&red, 1, &[vec![1000.0], vec![1000.0]], 0);
    let (v, _) = finalize(&red, 1, &st);
    assert!((v[0] - (1000.0 + 2f64.ln())).abs() < 1e-12);
}

#[test]
fn the_order_puts_nan_first_and_is_strict() {
    use super::select::before;
    for max in [false, true] {
        assert!(before(max, f64::NAN, 1.0));
        assert!(!before(max, 1.0, f64::NAN));
        assert!(!before(max, f64::NAN, f64::NAN));
        assert!(!before(max, 2.0, 2.0));
        assert_eq!(before(max, 1.0, 2.0), !max);
        assert_eq!(before(max, 1.0f32, 2.0f32), !max);
    }
}

#[test]
fn names_are_distinct_and_k_is_printed() {
    let kinds = ReductionKind::all(3);
    for (a, ka) in kinds.iter().enumerate() {
        for kb in &kinds[a + 1..] {
            assert_ne!(ka.name(), kb.name());
        }
    }
    assert_eq!(
        Reduction::new(ReductionKind::ArgKMin(3), Axis::I).to_string(),
        "ArgKMin(k=3,axis=i)"
    );
    assert_eq!(
        Reduction::new(ReductionKind::MaxArgMax, Axis::J).to_string(),
        "MaxArgMax(axis=j)"
    );
}

/// Value outputs have a gradient, index outputs none; a kind whose gradient needs the selected
/// indices runs, when a gradient may be needed, as a kind that returns them.
#[test]
fn gradient_rules_follow_the_outputs() {
    for kind in ReductionKind::all(3) {
        let out = Reduction::new(kind, Axis::J).output_spec(3).unwrap();
        let rule = kind.grad_rule();
        assert_eq!(matches!(rule, GradRule::None), out.values == 0, "{kind:?}");
        assert_eq!(kind.forward_kind(false), kind);
        let run = kind.forward_kind(true);
        if matches!(rule, GradRule::Selected) {
            let run_out = Reduction::new(run, Axis::J).output_spec(3).unwrap();
            assert!(
                run_out.indices > 0 && run_out.values == out.values,
                "{kind:?}"
            );
        } else {
            assert_eq!(run, kind);
        }
    }
    assert_eq!(
        ReductionKind::Min.forward_kind(true),
        ReductionKind::MinArgMin
    );
    assert_eq!(
        ReductionKind::Max.forward_kind(true),
        ReductionKind::MaxArgMax
    );
    assert_eq!(
        ReductionKind::KMin(4).forward_kind(true),
        ReductionKind::KMinArgKMin(4)
    );
}

/// Every C helper the kinds' statements call is defined once, before its first use.
#[test]
fn cuda_helpers_are_defined_once_in_order() {
    let h = cuda_helpers();
    let at = |name: &str| {
        assert_eq!(h.matches(&format!(" {name}(")).count(), 1, "{name}");
        h.find(&format!(" {name}(")).unwrap()
    };
    assert!(at("lk_before") < at("lk_take_if_first"));
    assert!(at("lk_before") < at("lk_kmin_insert"));
    for kind in ReductionKind::all(2) {
        let code = kind.cuda_code(3, "float", 3);
        let all = [
            code.init,
            code.tile_init,
            code.term,
            code.tile_end,
            code.combine,
            code.finalize,
        ]
        .concat();
        for name in [
            "lk_kahan_add",
            "lk_lse_merge",
            "lk_ssmw_merge",
            "lk_take_if_first",
            "lk_kmin_insert",
        ] {
            if all.contains(name) {
                at(name);
            }
        }
    }
}
