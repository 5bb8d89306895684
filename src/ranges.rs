//! Block-sparse reductions (KeOps' `ranges`): a reduction that visits only the pairs of
//! clusters a mask keeps.
//!
//! With a compact kernel (a Gaussian of small bandwidth, say), most pairs `(i, j)` contribute
//! nothing measurable. Grouping the rows of each point set into clusters and keeping only the
//! pairs of clusters that are close enough turns an `M x N` reduction into one over the kept
//! blocks: the skipped blocks are never evaluated, so the cost falls with the fraction of
//! pairs kept. This is how KeOps users reach 10^7 points with compact kernels.
//!
//! The steps (KeOps' `grid_cluster` or k-means labels, `cluster_ranges_centroids`,
//! `sort_clusters` and `from_matrix`):
//!
//! 1. cluster the rows of `x` and of `y`: [`Clusters::grid`] (cubic cells of a voxel grid) or
//!    [`Clusters::from_labels`] (any labelling, k-means for example);
//! 2. sort the tensors so that each cluster is contiguous: [`Clusters::sort`] (differentiable,
//!    an `index_select`); reductions read and write rows in this sorted order;
//! 3. choose the pairs of clusters to keep: [`BlockSparse::from_centroid_cutoff`] (centroids
//!    closer than a distance), [`BlockSparse::from_mask`] (a `(Cr, Cc)` mask, KeOps'
//!    `from_matrix`) or [`BlockSparse::from_pairs`];
//! 4. reduce with [`LazyTensor::with_ranges`](crate::LazyTensor::with_ranges), and put the
//!    result back in the user's order with [`Clusters::unsort`].
//!
//! ```
//! use candle_core::{Device, Tensor};
//! use lazy_kernels::{Axis, BlockSparse, Clusters, LazyTensor};
//! let dev = Device::Cpu;
//! let x = Tensor::rand(0f64, 1., (500, 2), &dev)?;
//! let b = Tensor::rand(0f64, 1., (500, 1), &dev)?;
//! let cl = Clusters::grid(&x, 0.1)?;                       // 10 x 10 cells
//! let (xs, bs) = (cl.sort(&x)?, cl.sort(&b)?);               // each cluster contiguous
//! // Cells whose centres are within 0.25: every pair of points closer than
//! // 0.25 - 2 * (largest radius) is kept.
//! let keep = BlockSparse::from_centroid_cutoff(&cl, &x, &cl, &x, 0.25)?;
//! assert!(keep.density() < 0.5);
//! let (x_i, x_j, b_j) = (LazyTensor::vi(&xs)?, LazyTensor::vj(&xs)?, LazyTensor::vj(&bs)?);
//! let k = (-x_i.sqdist(&x_j) / 0.0002).exp();               // sigma = 0.01
//! let sparse = (&k * &b_j).with_ranges(&keep).sum(Axis::J)?;   // sorted order
//! let dense = (&k * &b_j).sum(Axis::J)?;
//! // Skipped pairs are more than 0.25 - 2 * 0.0707 = 0.11 apart: exp(-0.11^2 / 0.0002) < 1e-26.
//! let err = (&sparse - &dense)?.abs()?.max_all()?.to_scalar::<f64>()?;
//! assert!(err < 1e-12);
//! let out = cl.unsort(&sparse)?;                              // the user's row order
//! assert_eq!(out.dims(), &[500, 1]);
//! # Ok::<(), candle_core::Error>(())
//! ```
//!
//! A row whose cluster keeps no block reduces over zero terms and gets the reduction's value
//! over an empty set: `Sum` 0, `LogSumExp` `-inf`, `SumSoftMaxWeight` 0, `Min` and `KMin`
//! `+inf`, `Max` `-inf`, and index `-1` for every arg-reduction (KeOps answers index 0 there,
//! which is a valid index; `-1` is not). Gradients with respect to every input follow the same
//! ranges (transposed for the reductions over the other axis), so a skipped block contributes
//! nothing to any gradient either.
//!
//! Both backends run block-sparse reductions on the direct path (the block path of matrix
//! products, `Path::Blocks`, falls back to it, and `LazyTensor::explain` says so): the CPU's
//! blocks of rows and the CUDA kernels' thread blocks are aligned to the row intervals, and
//! each visits only its kept intervals of terms
//! ([`generate_ranged`](crate::backend::cuda::generate_ranged)). Memory: the clusters hold
//! `O(M + N)` indices and the kept pairs `O(kept blocks)` (on CUDA, the launch's
//! descriptors: 16 bytes per thread block, 8 per kept interval of terms); nothing of size `M x N` or `Cr x Cc x M` is
//! built.

use std::ops::Range;
use std::sync::Arc;

use candle_core::{DType, Device, Tensor};

use crate::error::{Error, invalid};

/// A partition of the rows of a point set into clusters, each made contiguous by sorting.
///
/// Built from labels ([`Clusters::from_labels`], [`Clusters::from_labels_tensor`]) or from a
/// voxel grid ([`Clusters::grid`]). The *sorted order* puts cluster 0 first, then cluster 1,
/// and so on, keeping the user's order within a cluster; cluster `k` holds the sorted rows
/// [`Clusters::range`]`(k)`. Methods that take points ([`Clusters::centroids`],
/// [`Clusters::radii`], the `points` of [`BlockSparse::from_centroid_cutoff`]) take them in
/// the user's order, as given to [`Clusters::grid`].
///
/// ```
/// use candle_core::{Device, Tensor};
/// use lazy_kernels::Clusters;
/// let cl = Clusters::from_labels(&[0, 2, 0, 0, 1])?;
/// assert_eq!(cl.num_clusters(), 3);
/// assert_eq!(cl.range(0), 0..3);
/// assert_eq!(cl.order(), &[0, 2, 3, 4, 1]);                // sorted row -> user's row
/// let x = Tensor::new(&[[0f32], [5.], [0.4], [0.3], [2.]], &Device::Cpu)?;
/// let xs = cl.sort(&x)?;
/// assert_eq!(xs.flatten_all()?.to_vec1::<f32>()?, vec![0., 0.4, 0.3, 2., 5.]);
/// assert_eq!(cl.unsort(&xs)?.to_vec2::<f32>()?, x.to_vec2::<f32>()?);
/// # Ok::<(), candle_core::Error>(())
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Clusters {
    /// `order[s]`: the user's row at sorted position `s`.
    order: Vec<usize>,
    /// Cluster `k` holds the sorted positions `offsets[k]..offsets[k + 1]`.
    offsets: Vec<usize>,
}

impl Clusters {
    /// Clusters from one label per row (labels in `0..C`; a label that no row carries is an
    /// empty cluster).
    ///
    /// ```
    /// let cl = lazy_kernels::Clusters::from_labels(&[1, 1, 0, 3])?;
    /// assert_eq!(cl.num_clusters(), 4);
    /// assert_eq!(cl.sizes(), vec![1, 2, 0, 1]);
    /// # Ok::<(), candle_core::Error>(())
    /// ```
    pub fn from_labels(labels: &[usize]) -> candle_core::Result<Clusters> {
        const OP: &str = "Clusters::from_labels";
        if labels.is_empty() {
            return Err(invalid(OP, "no labels: a point set needs at least one row").into());
        }
        let max = labels.iter().copied().max().unwrap_or(0);
        let count = max
            .checked_add(1)
            .ok_or_else(|| invalid(OP, "label usize::MAX"))?;
        crate::backend::memory::reserve(
            OP,
            || format!("the offsets of {count} clusters (the largest label is {max})"),
            count.checked_add(1).and_then(|c| c.checked_mul(16)),
            &Device::Cpu,
        )?;
        let mut offsets = vec![0usize; count + 1];
        for &l in labels {
            offsets[l + 1] += 1;
        }
        for k in 0..count {
            offsets[k + 1] += offsets[k];
        }
        let mut next = offsets.clone();
        let mut order = vec![0usize; labels.len()];
        for (row, &l) in labels.iter().enumerate() {
            order[next[l]] = row;
            next[l] += 1;
        }
        Ok(Clusters { order, offsets })
    }

    /// Clusters from a tensor of labels: `(M,)` or `(M, 1)`, of an integer dtype (`u8`, `u32`,
    /// `i64`), non-negative. Tensors on any device are read back to the host.
    ///
    /// ```
    /// use candle_core::{Device, Tensor};
    /// let labels = Tensor::new(&[2u32, 0, 2], &Device::Cpu)?;
    /// let cl = lazy_kernels::Clusters::from_labels_tensor(&labels)?;
    /// assert_eq!(cl.order(), &[1, 0, 2]);
    /// # Ok::<(), candle_core::Error>(())
    /// ```
    pub fn from_labels_tensor(labels: &Tensor) -> candle_core::Result<Clusters> {
        const OP: &str = "Clusters::from_labels_tensor";
        match labels.dims() {
            [_] | [_, 1] => {}
            d => {
                let detail = format!("labels must be of shape (M,) or (M, 1), got {d:?}");
                return Err(Error::Shape { op: OP, detail }.into());
            }
        }
        if !labels.dtype().is_int() {
            let detail = format!("labels must be integers, got {:?}", labels.dtype());
            return Err(Error::DType { op: OP, detail }.into());
        }
        let v = labels
            .flatten_all()?
            .to_dtype(DType::I64)?
            .to_vec1::<i64>()?;
        let labels = v
            .iter()
            .enumerate()
            .map(|(row, &l)| {
                usize::try_from(l)
                    .map_err(|_| invalid(OP, format!("row {row} has the negative label {l}")))
            })
            .collect::<Result<Vec<usize>, Error>>()?;
        Clusters::from_labels(&labels)
    }

    /// Clusters of a voxel grid: cubic cells of side `cell`, from the smallest coordinate of
    /// each dimension (KeOps' `grid_cluster`, in any dimension). Only non-empty cells are
    /// clusters, numbered in the lexicographic order of their cell coordinates (first
    /// dimension slowest), so neighbouring cells along the last dimension are neighbouring
    /// clusters and their kept blocks merge into one interval.
    ///
    /// `points`: `(M, D)` or `(M,)`, a float dtype, finite values.
    ///
    /// ```
    /// use candle_core::{Device, Tensor};
    /// let x = Tensor::new(&[[0f32], [0.1], [0.9], [0.05], [0.5]], &Device::Cpu)?;
    /// let cl = lazy_kernels::Clusters::grid(&x, 0.2)?;
    /// assert_eq!(cl.num_clusters(), 3);                 // cells [0, .2), [.4, .6), [.8, 1)
    /// assert_eq!(cl.order(), &[0, 1, 3, 4, 2]);
    /// # Ok::<(), candle_core::Error>(())
    /// ```
    pub fn grid(points: &Tensor, cell: f64) -> candle_core::Result<Clusters> {
        const OP: &str = "Clusters::grid";
        if !(cell.is_finite() && cell > 0.0) {
            return Err(invalid(OP, format!("the cell size must be positive, got {cell}")).into());
        }
        let (x, d) = host_points(points, None, OP)?;
        let n = x.len() / d;
        let mut lo = vec![f64::INFINITY; d];
        for row in x.chunks_exact(d) {
            for (l, &v) in lo.iter_mut().zip(row) {
                *l = l.min(v);
            }
        }
        // Cell coordinates, exact in i64 (the quotient is bounded well below 2^62).
        let mut keys = vec![0i64; n * d];
        for (k, (key, &v)) in keys.iter_mut().zip(&x).enumerate() {
            let q = ((v - lo[k % d]) / cell).floor();
            if q > 1e15 {
                let detail = format!(
                    "cell {cell} is too small for the extent of dimension {} ({} cells)",
                    k % d,
                    q
                );
                return Err(invalid(OP, detail).into());
            }
            *key = q as i64;
        }
        let mut order: Vec<usize> = (0..n).collect();
        let key = |r: usize| &keys[r * d..(r + 1) * d];
        order.sort_by(|&a, &b| key(a).cmp(key(b))); // stable: user's order within a cell
        let mut offsets = vec![0];
        for s in 1..n {
            if key(order[s]) != key(order[s - 1]) {
                offsets.push(s);
            }
        }
        offsets.push(n);
        Ok(Clusters { order, offsets })
    }

    /// Number of rows (points).
    pub fn len(&self) -> usize {
        self.order.len()
    }

    /// Whether there are no rows (never true: constructors need at least one).
    pub fn is_empty(&self) -> bool {
        self.order.is_empty()
    }

    /// Number of clusters (including empty ones given by unused labels).
    pub fn num_clusters(&self) -> usize {
        self.offsets.len() - 1
    }

    /// The sorted rows of cluster `k` (empty for `k >= num_clusters()`).
    pub fn range(&self, k: usize) -> Range<usize> {
        match (self.offsets.get(k), self.offsets.get(k + 1)) {
            (Some(&a), Some(&b)) => a..b,
            _ => self.len()..self.len(),
        }
    }

    /// The number of rows of each cluster.
    pub fn sizes(&self) -> Vec<usize> {
        self.offsets.windows(2).map(|w| w[1] - w[0]).collect()
    }

    /// The permutation of the sorted order: sorted row `s` is the user's row `order()[s]`.
    pub fn order(&self) -> &[usize] {
        &self.order
    }

    /// The cluster of each of the user's rows.
    pub fn labels(&self) -> Vec<usize> {
        let mut labels = vec![0; self.len()];
        for k in 0..self.num_clusters() {
            for s in self.range(k) {
                labels[self.order[s]] = k;
            }
        }
        labels
    }

    /// `t`'s rows (the user's order; `t` of shape `(M, ...)`) in the sorted order, on `t`'s
    /// device: an `index_select`, so gradients flow back to `t`.
    pub fn sort(&self, t: &Tensor) -> candle_core::Result<Tensor> {
        self.permute(t, &self.order, "Clusters::sort")
    }

    /// The inverse of [`Clusters::sort`]: rows in the sorted order back to the user's order
    /// (a reduction's output, say); differentiable.
    pub fn unsort(&self, t: &Tensor) -> candle_core::Result<Tensor> {
        let mut inverse = vec![0; self.len()];
        for (s, &row) in self.order.iter().enumerate() {
            inverse[row] = s;
        }
        self.permute(t, &inverse, "Clusters::unsort")
    }

    fn permute(&self, t: &Tensor, rows: &[usize], op: &'static str) -> candle_core::Result<Tensor> {
        match t.dims().first() {
            Some(&m) if m == self.len() => {}
            _ => {
                let detail = format!(
                    "the clusters have {} rows, the tensor has shape {:?}",
                    self.len(),
                    t.dims()
                );
                return Err(Error::Shape { op, detail }.into());
            }
        }
        let idx = match u32::try_from(self.len()) {
            Ok(_) => Tensor::from_vec(
                rows.iter().map(|&r| r as u32).collect::<Vec<u32>>(),
                rows.len(),
                t.device(),
            )?,
            Err(_) => Tensor::from_vec(
                rows.iter().map(|&r| r as i64).collect::<Vec<i64>>(),
                rows.len(),
                t.device(),
            )?,
        };
        t.index_select(&idx, 0)
    }

    /// The centroid (mean) of each cluster of `points` (`(M, D)` or `(M,)`, the user's order):
    /// a `(C, D)` tensor of `points`' dtype and device; `NaN` for an empty cluster.
    ///
    /// ```
    /// use candle_core::{Device, Tensor};
    /// let x = Tensor::new(&[[0f64], [1.], [4.], [5.], [6.]], &Device::Cpu)?;
    /// let cl = lazy_kernels::Clusters::from_labels(&[0, 0, 1, 1, 1])?;
    /// assert_eq!(cl.centroids(&x)?.to_vec2::<f64>()?, vec![vec![0.5], vec![5.0]]);
    /// # Ok::<(), candle_core::Error>(())
    /// ```
    pub fn centroids(&self, points: &Tensor) -> candle_core::Result<Tensor> {
        let (x, d) = host_points(points, Some(self.len()), "Clusters::centroids")?;
        let c = self.host_centroids(&x, d);
        Tensor::from_vec(c, (self.num_clusters(), d), &Device::Cpu)?
            .to_dtype(points.dtype())?
            .to_device(points.device())
    }

    /// The radius of each cluster of `points` (the user's order): the largest distance from
    /// its centroid to one of its points, a `(C,)` tensor of `points`' dtype (`NaN` for an
    /// empty cluster). Two points of clusters `k` and `l` are at least
    /// `|c_k - c_l| - r_k - r_l` apart.
    ///
    /// ```
    /// use candle_core::{Device, Tensor};
    /// let x = Tensor::new(&[[0f64], [1.], [4.], [5.], [6.]], &Device::Cpu)?;
    /// let cl = lazy_kernels::Clusters::from_labels(&[0, 0, 1, 1, 1])?;
    /// assert_eq!(cl.radii(&x)?.to_vec1::<f64>()?, vec![0.5, 1.0]);  // centroids 0.5 and 5
    /// # Ok::<(), candle_core::Error>(())
    /// ```
    pub fn radii(&self, points: &Tensor) -> candle_core::Result<Tensor> {
        let (x, d) = host_points(points, Some(self.len()), "Clusters::radii")?;
        let c = self.host_centroids(&x, d);
        let r: Vec<f64> = (0..self.num_clusters())
            .map(|k| {
                let ck = &c[k * d..(k + 1) * d];
                let rows = self.range(k);
                if rows.is_empty() {
                    return f64::NAN;
                }
                rows.map(|s| distance(&x[self.order[s] * d..(self.order[s] + 1) * d], ck))
                    .fold(0.0, f64::max)
            })
            .collect();
        Tensor::from_vec(r, self.num_clusters(), &Device::Cpu)?
            .to_dtype(points.dtype())?
            .to_device(points.device())
    }

    /// Centroids in `f64`, `C x d` row-major, of the user-ordered points `x`.
    fn host_centroids(&self, x: &[f64], d: usize) -> Vec<f64> {
        let mut c = vec![0.0; self.num_clusters() * d];
        for k in 0..self.num_clusters() {
            let rows = self.range(k);
            let n = rows.len() as f64;
            let ck = &mut c[k * d..(k + 1) * d];
            for s in rows {
                let row = &x[self.order[s] * d..(self.order[s] + 1) * d];
                ck.iter_mut().zip(row).for_each(|(a, v)| *a += v);
            }
            ck.iter_mut().for_each(|a| *a /= n); // 0 / 0 = NaN for an empty cluster
        }
        c
    }

    /// The sorted rows of every cluster.
    fn parts(&self) -> Vec<Range<usize>> {
        (0..self.num_clusters()).map(|k| self.range(k)).collect()
    }
}

fn distance(a: &[f64], b: &[f64]) -> f64 {
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y) * (x - y))
        .sum::<f64>()
        .sqrt()
}

/// `points` (`(M, D)` or `(M,)`, float, finite; `M` = `rows` when given) on the host in
/// `f64`, with `D`.
fn host_points(
    points: &Tensor,
    rows: Option<usize>,
    op: &'static str,
) -> candle_core::Result<(Vec<f64>, usize)> {
    let (m, d) = match points.dims() {
        [m] => (*m, 1),
        [m, d] if *d > 0 => (*m, *d),
        dims => {
            let detail = format!("points must be of shape (M, D) or (M,), got {dims:?}");
            return Err(Error::Shape { op, detail }.into());
        }
    };
    if !points.dtype().is_float() {
        let detail = format!("points must be floats, got {:?}", points.dtype());
        return Err(Error::DType { op, detail }.into());
    }
    if m == 0 {
        return Err(Error::Shape {
            op,
            detail: "no points (0 rows)".into(),
        }
        .into());
    }
    if let Some(rows) = rows.filter(|&r| r != m) {
        let detail = format!(
            "the clusters have {rows} rows, the points {m} (shape {:?})",
            points.dims()
        );
        return Err(Error::Shape { op, detail }.into());
    }
    let x = points
        .to_dtype(DType::F64)?
        .flatten_all()?
        .to_vec1::<f64>()?;
    if let Some(k) = x.iter().position(|v| !v.is_finite()) {
        let detail = format!("point {} has the non-finite coordinate {}", k / d, x[k]);
        return Err(invalid(op, detail).into());
    }
    Ok((x, d))
}

/// The pairs of clusters a block-sparse reduction visits: row clusters x column clusters x
/// the kept pairs (KeOps' `ranges` tuple, from `from_matrix`).
///
/// Rows and columns are in the *sorted* orders of their [`Clusters`]: bind
/// [`Clusters::sort`]ed tensors. A reduction over `j` (`Axis::J`) visits, for each row
/// cluster, the kept column clusters (adjacent ones merged into one interval of terms); a
/// reduction over `i` visits the transpose. Attach it with
/// [`LazyTensor::with_ranges`](crate::LazyTensor::with_ranges); see [the module
/// documentation](self) for an example and the value of a row that keeps nothing.
///
/// ```
/// use candle_core::{Device, Tensor};
/// use lazy_kernels::{Axis, BlockSparse, Clusters, LazyTensor};
/// let dev = Device::Cpu;
/// let rows = Clusters::from_labels(&[0, 0, 1])?;               // x: 3 rows, 2 clusters
/// let cols = Clusters::from_labels(&[0, 1, 1, 2])?;            // y: 4 rows, 3 clusters
/// let keep = Tensor::new(&[[1u8, 0, 1], [0, 1, 0]], &dev)?;   // (2, 3)
/// let bs = BlockSparse::from_mask(&rows, &cols, &keep)?;
/// assert_eq!(bs.kept_pairs(), 2 * 1 + 2 * 1 + 1 * 2);
/// let x = LazyTensor::vi(&Tensor::zeros((3, 1), candle_core::DType::F64, &dev)?)?;
/// let y = LazyTensor::vj(&Tensor::new(&[[1f64], [10.], [100.], [1000.]], &dev)?)?;
/// let s = (x + y).with_ranges(&bs).sum(Axis::J)?;           // rows and columns sorted
/// assert_eq!(s.to_vec2::<f64>()?, vec![vec![1001.], vec![1001.], vec![110.]]);
/// let t = LazyTensor::vi(&Tensor::zeros((3, 1), candle_core::DType::F64, &dev)?)?
///     .with_ranges(&bs).sum(Axis::I);                      // no j-variable: an error
/// assert!(t.is_err());
/// # Ok::<(), candle_core::Error>(())
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BlockSparse {
    ranges: Arc<Ranges>,
}

impl BlockSparse {
    /// The blocks `(k, l)` for which `keep[k, l]` is non-zero: `keep` is a `(Cr, Cc)` tensor
    /// (any dtype; a comparison's `u8` result, typically) over the clusters of the rows and of
    /// the columns (KeOps' `from_matrix`).
    pub fn from_mask(
        rows: &Clusters,
        cols: &Clusters,
        keep: &Tensor,
    ) -> candle_core::Result<BlockSparse> {
        const OP: &str = "BlockSparse::from_mask";
        let want = [rows.num_clusters(), cols.num_clusters()];
        if keep.dims() != want {
            let detail = format!(
                "the mask must be (row clusters, column clusters) = {want:?}, got {:?}",
                keep.dims()
            );
            return Err(Error::Shape { op: OP, detail }.into());
        }
        let flags = keep
            .to_dtype(DType::F64)?
            .ne(0.0)?
            .flatten_all()?
            .to_vec1::<u8>()?;
        let cc = want[1];
        let pairs: Vec<(usize, usize)> = flags
            .iter()
            .enumerate()
            .filter(|&(_, &f)| f != 0)
            .map(|(k, _)| (k / cc, k % cc))
            .collect();
        BlockSparse::from_pairs(rows, cols, &pairs)
    }

    /// The blocks `(k, l)` listed in `pairs` (row cluster `k`, column cluster `l`; repeats
    /// count once): the sparse form of a mask, `O(kept)` memory.
    ///
    /// ```
    /// use lazy_kernels::{BlockSparse, Clusters};
    /// let cl = Clusters::from_labels(&[0, 1, 1, 2])?;
    /// let bs = BlockSparse::from_pairs(&cl, &cl, &[(0, 0), (1, 1), (2, 2), (1, 2)])?;
    /// assert_eq!(bs.kept_pairs(), 1 + 4 + 1 + 2);
    /// assert!(BlockSparse::from_pairs(&cl, &cl, &[(3, 0)]).is_err()); // no cluster 3
    /// # Ok::<(), candle_core::Error>(())
    /// ```
    pub fn from_pairs(
        rows: &Clusters,
        cols: &Clusters,
        pairs: &[(usize, usize)],
    ) -> candle_core::Result<BlockSparse> {
        let ranges = Ranges::new(rows.len(), cols.len(), rows.parts(), cols.parts(), pairs)?;
        Ok(BlockSparse {
            ranges: Arc::new(ranges),
        })
    }

    /// The blocks whose centroids are at most `cutoff` apart (Euclidean distance), with `x`
    /// the points of `rows` and `y` those of `cols` (the user's orders, as given to the
    /// clustering). Every pair of points closer than `cutoff - r_k - r_l` (the clusters' radii,
    /// [`Clusters::radii`]) is in a kept block: to keep every pair within a distance `r`, take
    /// `cutoff = r + 2 * (largest radius)`. Empty clusters keep nothing.
    ///
    /// The centroid distances are computed on the host, by a sweep along the first
    /// coordinate (about `Cr x Cc x D x` the fraction of that coordinate's extent within
    /// `cutoff`).
    ///
    /// ```
    /// use candle_core::{Device, Tensor};
    /// use lazy_kernels::{BlockSparse, Clusters};
    /// let x = Tensor::new(&[[0f32], [0.1], [1.0], [1.1], [5.0]], &Device::Cpu)?;
    /// let cl = Clusters::grid(&x, 0.5)?;                       // {0, .1}, {1, 1.1}, {5}
    /// let bs = BlockSparse::from_centroid_cutoff(&cl, &x, &cl, &x, 1.5)?;
    /// // kept: (0,0) (0,1) (1,0) (1,1) (2,2): 4 + 4 + 4 + 4 + 1 pairs of points
    /// assert_eq!(bs.kept_pairs(), 17);
    /// # Ok::<(), candle_core::Error>(())
    /// ```
    pub fn from_centroid_cutoff(
        rows: &Clusters,
        x: &Tensor,
        cols: &Clusters,
        y: &Tensor,
        cutoff: f64,
    ) -> candle_core::Result<BlockSparse> {
        const OP: &str = "BlockSparse::from_centroid_cutoff";
        if cutoff.is_nan() || cutoff < 0.0 {
            return Err(invalid(OP, format!("the cutoff must be >= 0, got {cutoff}")).into());
        }
        let (xs, dx) = host_points(x, Some(rows.len()), OP)?;
        let (ys, dy) = host_points(y, Some(cols.len()), OP)?;
        if dx != dy {
            let detail = format!("x has {dx} components per row, y has {dy}");
            return Err(Error::DimMismatch { op: OP, detail }.into());
        }
        let cx = rows.host_centroids(&xs, dx);
        let cy = cols.host_centroids(&ys, dy);
        // A sweep along the first coordinate: the column centroids sorted by it, and for each
        // row centroid only those within `cutoff` of it in that coordinate are compared.
        // (Empty clusters have NaN centroids: never kept.)
        let mut by_first: Vec<(f64, usize)> = cy
            .chunks_exact(dy)
            .enumerate()
            .filter(|(_, c)| !c[0].is_nan())
            .map(|(l, c)| (c[0], l))
            .collect();
        by_first.sort_by(|a, b| a.0.total_cmp(&b.0));
        let cut2 = cutoff * cutoff;
        let mut pairs = Vec::new();
        for (k, a) in cx.chunks_exact(dx).enumerate() {
            let from = by_first.partition_point(|&(v, _)| v < a[0] - cutoff);
            for &(v, l) in &by_first[from..] {
                if v > a[0] + cutoff {
                    break;
                }
                let b = &cy[l * dy..(l + 1) * dy];
                let d2: f64 = a.iter().zip(b).map(|(p, q)| (p - q) * (p - q)).sum();
                if d2 <= cut2 {
                    pairs.push((k, l));
                }
            }
        }
        BlockSparse::from_pairs(rows, cols, &pairs)
    }

    /// Number of rows (`i`).
    pub fn num_rows(&self) -> usize {
        self.ranges.rows
    }

    /// Number of columns (`j`).
    pub fn num_cols(&self) -> usize {
        self.ranges.cols
    }

    /// Number of kept blocks (pairs of clusters).
    pub fn kept_blocks(&self) -> usize {
        self.ranges.kept.len()
    }

    /// Number of pairs `(i, j)` in the kept blocks: the terms a reduction evaluates.
    pub fn kept_pairs(&self) -> u64 {
        self.ranges.kept_pairs()
    }

    /// The fraction of the `M x N` pairs that are kept.
    pub fn density(&self) -> f64 {
        self.kept_pairs() as f64 / (self.num_rows() as f64 * self.num_cols() as f64)
    }

    /// The crate-internal representation.
    pub(crate) fn ranges(&self) -> &Arc<Ranges> {
        &self.ranges
    }
}

/// Row intervals x column intervals x kept pairs of intervals: the representation of a
/// block-sparse reduction over rows `0..rows` and columns `0..cols`. Intervals of each axis
/// are sorted and disjoint; rows in no interval (or in an interval that keeps nothing) reduce
/// over zero terms.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Ranges {
    pub(crate) rows: usize,
    pub(crate) cols: usize,
    row_parts: Vec<Range<usize>>,
    col_parts: Vec<Range<usize>>,
    /// `(row part, column part)`, sorted, without repeats.
    kept: Vec<(usize, usize)>,
}

/// One interval of rows and the merged intervals of terms its rows reduce over.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct RowBlock {
    pub(crate) rows: Range<usize>,
    pub(crate) terms: Vec<Range<usize>>,
}

impl Ranges {
    /// Ranges from explicit intervals (sorted, disjoint, inside `0..rows` and `0..cols`) and
    /// the kept pairs of intervals (indices into them). The batched reductions build
    /// block-diagonal ranges with it.
    pub(crate) fn new(
        rows: usize,
        cols: usize,
        row_parts: Vec<Range<usize>>,
        col_parts: Vec<Range<usize>>,
        kept: &[(usize, usize)],
    ) -> crate::error::Result<Ranges> {
        const OP: &str = "BlockSparse";
        for (name, parts, n) in [("row", &row_parts, rows), ("column", &col_parts, cols)] {
            let mut end = 0;
            for (k, p) in parts.iter().enumerate() {
                if p.start < end || p.end < p.start || p.end > n {
                    let detail = format!(
                        "{name} interval {k} ({p:?}) is not sorted, disjoint and inside 0..{n}"
                    );
                    return Err(invalid(OP, detail));
                }
                end = p.end;
            }
        }
        if let Some(&(k, l)) = kept
            .iter()
            .find(|&&(k, l)| k >= row_parts.len() || l >= col_parts.len())
        {
            let detail = format!(
                "kept block ({k}, {l}) is outside the {} row clusters x {} column clusters",
                row_parts.len(),
                col_parts.len()
            );
            return Err(invalid(OP, detail));
        }
        let mut kept = kept.to_vec();
        kept.sort_unstable();
        kept.dedup();
        Ok(Ranges {
            rows,
            cols,
            row_parts,
            col_parts,
            kept,
        })
    }

    /// The same blocks with rows and columns exchanged (for a reduction over `i`).
    pub(crate) fn transposed(&self) -> Ranges {
        let mut kept: Vec<(usize, usize)> = self.kept.iter().map(|&(k, l)| (l, k)).collect();
        kept.sort_unstable();
        Ranges {
            rows: self.cols,
            cols: self.rows,
            row_parts: self.col_parts.clone(),
            col_parts: self.row_parts.clone(),
            kept,
        }
    }

    /// Number of pairs `(i, j)` in the kept blocks.
    pub(crate) fn kept_pairs(&self) -> u64 {
        self.kept
            .iter()
            .map(|&(k, l)| (self.row_parts[k].len() as u64) * (self.col_parts[l].len() as u64))
            .sum()
    }

    /// For each non-empty row interval, in order, the intervals of terms of its kept blocks,
    /// adjacent ones merged (a reduction over the columns).
    pub(crate) fn row_blocks(&self) -> Vec<RowBlock> {
        let mut out: Vec<RowBlock> = Vec::new();
        let mut at = 0;
        for (k, rows) in self.row_parts.iter().enumerate() {
            if rows.is_empty() {
                continue;
            }
            let mut terms: Vec<Range<usize>> = Vec::new();
            while at < self.kept.len() && self.kept[at].0 < k {
                at += 1;
            }
            while at < self.kept.len() && self.kept[at].0 == k {
                let c = self.col_parts[self.kept[at].1].clone();
                at += 1;
                if c.is_empty() {
                    continue;
                }
                match terms.last_mut() {
                    Some(last) if last.end == c.start => last.end = c.end,
                    _ => terms.push(c),
                }
            }
            out.push(RowBlock {
                rows: rows.clone(),
                terms,
            });
        }
        out
    }
}

/// The ranges a plan of a reduction over `axis` runs with (rows of the plan = the output
/// axis), after checking that `ranges` cover `ni` i-rows and `nj` j-rows.
pub(crate) fn for_axis(
    ranges: &Arc<Ranges>,
    axis: crate::Axis,
    ni: usize,
    nj: usize,
    op: &'static str,
) -> crate::error::Result<Arc<Ranges>> {
    if ranges.rows != ni || ranges.cols != nj {
        let detail = format!(
            "the block-sparse ranges are for {} i-rows x {} j-rows, the variables have {ni} \
             i-rows and {nj} j-rows (bind the tensors sorted by the same Clusters)",
            ranges.rows, ranges.cols
        );
        return Err(Error::Shape { op, detail });
    }
    Ok(match axis {
        crate::Axis::J => ranges.clone(),
        crate::Axis::I => Arc::new(ranges.transposed()),
    })
}

/// The ranges of a formula combining two lazy tensors: the one they share (or the only one);
/// different ranges are an error, reported when the combined formula is used.
pub(crate) fn join(
    a: &Option<Arc<Ranges>>,
    b: &Option<Arc<Ranges>>,
) -> crate::error::Result<Option<Arc<Ranges>>> {
    match (a, b) {
        (Some(x), Some(y)) if !Arc::ptr_eq(x, y) && x != y => Err(invalid(
            "LazyTensor",
            "cannot combine lazy tensors carrying different block-sparse ranges",
        )),
        (Some(x), _) | (None, Some(x)) => Ok(Some(x.clone())),
        (None, None) => Ok(None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn row_blocks_merge_adjacent_kept_clusters_and_transpose() {
        let r = Ranges::new(
            6,
            10,
            vec![0..2, 2..2, 2..6],
            vec![0..3, 3..5, 5..10],
            &[(0, 0), (0, 1), (2, 2), (0, 2), (2, 0), (1, 1)],
        )
        .unwrap();
        assert_eq!(r.kept_pairs(), 2 * 10 + 4 * 5 + 4 * 3);
        let b = r.row_blocks();
        assert_eq!(b.len(), 2); // the empty interval is skipped
        assert_eq!(b[0].rows, 0..2);
        assert_eq!(b[0].terms, vec![0..10]);
        assert_eq!(b[1].terms, vec![0..3, 5..10]);
        let t = r.transposed();
        assert_eq!(t.kept_pairs(), r.kept_pairs());
        let tb = t.row_blocks();
        assert_eq!(tb[0].rows, 0..3);
        assert_eq!(tb[0].terms, vec![0..6]);
        assert_eq!(tb[1].terms, vec![0..2]);
        assert_eq!(tb[2].terms, vec![0..6]);
        assert_eq!(t.transposed(), r);
    }

    #[test]
    fn bad_intervals_are_errors() {
        let all = || std::iter::once(0..4).collect::<Vec<_>>();
        assert!(Ranges::new(4, 4, vec![0..3, 2..4], all(), &[]).is_err());
        assert!(Ranges::new(4, 4, std::iter::once(0..5).collect(), all(), &[]).is_err());
        assert!(Ranges::new(4, 4, all(), all(), &[(0, 1)]).is_err());
        assert!(Ranges::new(4, 4, all(), all(), &[(0, 0), (0, 0)]).is_ok());
    }
}
