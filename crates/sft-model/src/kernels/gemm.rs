//! Strided f32 matrix products straight into a caller's buffer (the `gemm` crate's kernels), so
//! the fused ops can write, scale and accumulate products without the temporaries a chain of
//! tensor ops allocates.

/// A read-only matrix view: element `(i, j)` is `data[i * rs + j * cs]`.
#[derive(Clone, Copy)]
pub(crate) struct Mat<'a> {
    pub data: &'a [f32],
    pub rs: usize,
    pub cs: usize,
}

impl<'a> Mat<'a> {
    /// Row-major rows of `cols` values.
    pub fn rows(data: &'a [f32], cols: usize) -> Self {
        Mat { data, rs: cols, cs: 1 }
    }

    /// The transposed view.
    pub fn t(self) -> Self {
        Mat { data: self.data, rs: self.cs, cs: self.rs }
    }
}

/// Where a product goes: row-major rows `rs` apart; `add` accumulates into what is there instead
/// of overwriting it; the product is multiplied by `scale`; `parallel` spreads it over rayon's
/// threads (leave it off inside an already parallel loop).
pub(crate) struct Dst<'a> {
    data: &'a mut [f32],
    rs: usize,
    add: bool,
    scale: f32,
    parallel: bool,
}

impl<'a> Dst<'a> {
    /// Overwrites rows `rs` apart.
    pub fn rows(data: &'a mut [f32], rs: usize) -> Self {
        Dst { data, rs, add: false, scale: 1.0, parallel: false }
    }

    /// Adds to what is there.
    pub fn add(mut self) -> Self {
        self.add = true;
        self
    }

    /// Multiplies the product by `scale`.
    pub fn scaled(mut self, scale: f32) -> Self {
        self.scale = scale;
        self
    }

    /// Uses all of rayon's threads.
    pub fn parallel(mut self) -> Self {
        self.parallel = true;
        self
    }
}

/// `dst[m, n] (+)= scale · lhs[m, k] · rhs[k, n]`.
pub(crate) fn gemm(dst: Dst<'_>, (m, n, k): (usize, usize, usize), lhs: Mat<'_>, rhs: Mat<'_>) {
    if m == 0 || n == 0 {
        return;
    }
    if k == 0 {
        if !dst.add {
            dst.data.chunks_mut(dst.rs).take(m).for_each(|r| r[..n].fill(0.0));
        }
        return;
    }
    // The kernel writes exactly this index range; the assert makes the raw pointer safe.
    assert!((m - 1) * dst.rs + n - 1 < dst.data.len());
    let out = Raw { ptr: dst.data.as_mut_ptr(), rs: dst.rs, add: dst.add, scale: dst.scale, parallel: dst.parallel };
    // SAFETY: `dst` covers the written range (checked above) and, being a distinct `&mut`, does
    // not alias the inputs.
    unsafe { kernel(out, (m, n, k), lhs, rhs) }
}

/// A new row-major `[m, n]` buffer holding `scale · lhs[m, k] · rhs[k, n]` over rayon's threads:
/// the kernel writes every element, so the buffer is never zeroed first.
pub(crate) fn product((m, n, k): (usize, usize, usize), lhs: Mat<'_>, rhs: Mat<'_>, scale: f32) -> Vec<f32> {
    if m == 0 || n == 0 || k == 0 {
        return vec![0f32; m * n];
    }
    let mut c: Vec<f32> = Vec::with_capacity(m * n);
    let out = Raw { ptr: c.as_mut_ptr(), rs: n, add: false, scale, parallel: true };
    // SAFETY: `c` has room for the `m × n` elements the kernel writes and is fresh, so it aliases
    // nothing; without `add` the kernel stores every element of the `[m, n]` range and never
    // reads it, so all `m · n` elements are initialised when the length is set.
    unsafe {
        kernel(out, (m, n, k), lhs, rhs);
        c.set_len(m * n);
    }
    c
}

/// A product's destination as the kernel takes it.
struct Raw {
    ptr: *mut f32,
    rs: usize,
    add: bool,
    scale: f32,
    parallel: bool,
}

/// `out (+)= scale · lhs · rhs` with `m, n, k > 0`; checks the inputs' index ranges.
///
/// # Safety
/// `out.ptr` must be valid for writes (and, with `add`, reads) of every `(i, j)` element at
/// `i · rs + j`, `i < m`, `j < n`, and must not alias the inputs.
unsafe fn kernel(out: Raw, (m, n, k): (usize, usize, usize), lhs: Mat<'_>, rhs: Mat<'_>) {
    let last = |rows: usize, cols: usize, rs: usize, cs: usize| (rows - 1) * rs + (cols - 1) * cs;
    // The kernel reads exactly these index ranges; the assert makes the raw pointers safe.
    assert!(last(m, k, lhs.rs, lhs.cs) < lhs.data.len() && last(k, n, rhs.rs, rhs.cs) < rhs.data.len());
    let threads = rayon::current_num_threads();
    let parallelism = if out.parallel && threads > 1 { gemm::Parallelism::Rayon(threads) } else { gemm::Parallelism::None };
    // SAFETY: the inputs' ranges are checked above; the output's is the caller's contract.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            out.ptr,
            1,
            out.rs as isize,
            out.add,
            lhs.data.as_ptr(),
            lhs.cs as isize,
            lhs.rs as isize,
            rhs.data.as_ptr(),
            rhs.cs as isize,
            rhs.rs as isize,
            if out.add { 1.0 } else { 0.0 },
            out.scale,
            false,
            false,
            false,
            parallelism,
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strided_scaled_and_accumulated_products_match_the_naive_loop() {
        let (m, n, k) = (7, 5, 9);
        let a: Vec<f32> = (0..m * k).map(|i| (i % 11) as f32 - 5.0).collect();
        let b: Vec<f32> = (0..n * k).map(|i| (i % 7) as f32 * 0.5 - 1.0).collect(); // stored [n, k]
        let want = |i: usize, j: usize| (0..k).map(|l| a[i * k + l] * b[j * k + l]).sum::<f32>();
        for parallel in [false, true] {
            let mut c = vec![1.0f32; m * (n + 2)];
            let dst = Dst::rows(&mut c, n + 2).add().scaled(0.5);
            gemm(if parallel { dst.parallel() } else { dst }, (m, n, k), Mat::rows(&a, k), Mat::rows(&b, k).t());
            for i in 0..m {
                for j in 0..n + 2 {
                    let expect = if j < n { 1.0 + 0.5 * want(i, j) } else { 1.0 };
                    assert!((c[i * (n + 2) + j] - expect).abs() < 1e-4, "[{i}][{j}]");
                }
            }
        }
        let c = product((m, n, k), Mat::rows(&a, k), Mat::rows(&b, k).t(), 2.0);
        for i in 0..m {
            for j in 0..n {
                assert!((c[i * n + j] - 2.0 * want(i, j)).abs() < 1e-4, "product [{i}][{j}]");
            }
        }
        let mut c = vec![3.0f32; m * n];
        gemm(Dst::rows(&mut c, n), (m, n, 0), Mat::rows(&a, k), Mat::rows(&b, k));
        assert!(c.iter().all(|&x| x == 0.0), "an empty shared dimension overwrites with zeros");
    }
}
