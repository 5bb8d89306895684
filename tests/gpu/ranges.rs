//! Block-sparse reductions (`LazyTensor::with_ranges`, KeOps' `ranges`) on the device under
//! test against the CPU: every reduction kind over both axes in f32 and f64 (f16 and bf16 for
//! sums and log-sum-exps), and the gradients of a block-sparse Gaussian sum in x, y, b and the
//! bandwidth over both axes. Values and indices are compared as the main suite compares dense
//! reductions (`compare_reduction`, `gauss_grads_of`); only the problem differs: its tensors
//! are sorted by voxel-grid clusters and every formula carries the ranges of a cluster mask.
//!
//! The points are uniform in `[-1, 1]^3`, clustered by a grid of cell `c`. Shapes: `many`
//! (12,000 x 5,000 points, `c` = 0.5: 64 intervals of about 190 rows, one thread block each),
//! `few` (12 rows against 60,000 terms: over `j` each row's kept terms are split into chunks,
//! the 2D scheme) and, for a few kinds in f32, `big` (20,000 x 3,000, `c` = 1: 8 intervals of
//! 2,500 rows, several thread blocks each). The mask keeps the pairs of clusters whose
//! centroids are close, except for every seventh row cluster and every fifth column cluster,
//! which keep nothing (their rows reduce over zero terms: Sum 0, LogSumExp `-inf`, Min `+inf`,
//! index `-1`, on both devices).

use candle_core::{DType, Tensor};
use lazy_kernels::{Axis, BlockSparse, Clusters, ReductionOptions};

use super::{
    ALL_KINDS, Check, Ctx, GAUSS, Problem, Res, SQDIST, axis_name, check, compare_reduction, dt,
    gauss_grads_of,
};

/// A shape: name, rows of x, rows of y, cell of the grid, centroid cutoff.
type Shape = (&'static str, usize, usize, f64, f64);
const SHAPES: [Shape; 2] = [
    ("many", 12_000, 5000, 0.5, 0.8),
    ("few", 12, 60_000, 0.5, 1.2),
];
const BIG: Shape = ("big", 20_000, 3000, 1.0, 1.2);

pub(super) fn checks(v: &mut Vec<Check>) {
    let both = [DType::F32, DType::F64];
    for shape in SHAPES {
        for kind in ALL_KINDS {
            let src = match kind {
                lazy_kernels::ReductionKind::Sum => GAUSS,
                _ => SQDIST,
            };
            for dtype in both {
                for axis in [Axis::J, Axis::I] {
                    v.push(check(
                        format!(
                            "ranges/{kind:?}/{}/{}/{}",
                            axis_name(axis),
                            dt(dtype),
                            shape.0
                        ),
                        move |ctx| {
                            let p = sparse_problem(shape)?;
                            let opts = ReductionOptions::default();
                            compare_reduction(&ctx.dev, &p, src, (kind, axis, &opts), dtype, false)
                        },
                    ));
                }
            }
        }
    }
    for kind in [
        lazy_kernels::ReductionKind::Sum,
        lazy_kernels::ReductionKind::MinArgMin,
        lazy_kernels::ReductionKind::KMinArgKMin(10),
    ] {
        let src = match kind {
            lazy_kernels::ReductionKind::Sum => GAUSS,
            _ => SQDIST,
        };
        for axis in [Axis::J, Axis::I] {
            v.push(check(
                format!("ranges/{kind:?}/{}/f32/big", axis_name(axis)),
                move |ctx| {
                    let p = sparse_problem(BIG)?;
                    let opts = ReductionOptions::default();
                    compare_reduction(&ctx.dev, &p, src, (kind, axis, &opts), DType::F32, false)
                },
            ));
        }
    }
    for dtype in [DType::F16, DType::BF16] {
        for (kind, src) in [
            (lazy_kernels::ReductionKind::Sum, GAUSS),
            (lazy_kernels::ReductionKind::LogSumExp, SQDIST),
        ] {
            v.push(check(
                format!("ranges/{kind:?}/J/{}/many", dt(dtype)),
                move |ctx| {
                    let p = sparse_problem(SHAPES[0])?;
                    let opts = ReductionOptions::default();
                    compare_reduction(&ctx.dev, &p, src, (kind, Axis::J, &opts), dtype, false)
                },
            ));
        }
    }
    for shape in SHAPES {
        for dtype in both {
            for axis in [Axis::J, Axis::I] {
                v.push(check(
                    format!(
                        "ranges/grad/gauss/x,y,b,s/{}/{}/{}",
                        axis_name(axis),
                        dt(dtype),
                        shape.0
                    ),
                    move |ctx| grads(ctx, shape, dtype, axis),
                ));
            }
        }
    }
}

/// The problem of a shape: the main suite's inputs in 3D, sorted by the clusters of a voxel
/// grid, with the ranges of the mask described in the module documentation.
fn sparse_problem((_, m, n, cell, cutoff): Shape) -> Res<Problem> {
    let p = Problem::new(m, n, 3)?;
    let (rows, cols) = (Clusters::grid(&p.x, cell)?, Clusters::grid(&p.y, cell)?);
    let centroids = |cl: &Clusters, t: &Tensor| -> Res<Vec<Vec<f64>>> {
        Ok(cl.centroids(t)?.to_dtype(DType::F64)?.to_vec2::<f64>()?)
    };
    let (cx, cy) = (centroids(&rows, &p.x)?, centroids(&cols, &p.y)?);
    let mut pairs = Vec::new();
    for (k, a) in cx.iter().enumerate() {
        for (l, b) in cy.iter().enumerate() {
            let d2: f64 = a.iter().zip(b).map(|(u, w)| (u - w) * (u - w)).sum();
            if d2 <= cutoff * cutoff && k % 7 != 3 && l % 5 != 2 {
                pairs.push((k, l));
            }
        }
    }
    let keep = BlockSparse::from_pairs(&rows, &cols, &pairs)?;
    let density = keep.density();
    if !(0.02..0.8).contains(&density) {
        return Err(format!("the mask keeps {density:.3} of the pairs").into());
    }
    Ok(Problem {
        x: rows.sort(&p.x)?,
        y: cols.sort(&p.y)?,
        b: cols.sort(&p.b)?,
        ranges: Some(keep),
        ..p
    })
}

/// Gradients of a block-sparse Gaussian sum over `axis` (`gauss_grads_of`), with the kept
/// density in the report.
fn grads(ctx: &Ctx, shape: Shape, dtype: DType, axis: Axis) -> Res<String> {
    let p = sparse_problem(shape)?;
    let density = p.ranges.as_ref().map_or(1.0, BlockSparse::density);
    let report = gauss_grads_of(ctx, &p, dtype, axis)?;
    Ok(format!("{report}, kept {density:.3}"))
}
