//! bf16 matrix products with f32 accumulation on Intel AMX tiles (`TDPBF16PS`), for the frozen
//! bf16 base weights of LoRA training (`bf16: true`). One tile instruction multiplies a 16×32
//! bf16 block by a 32×16 one into 16×16 f32 sums; a 32×32 block of the output keeps four such
//! sums in tiles while the shared dimension is walked 32 at a time.
//!
//! [`available`] says whether the CPU has AMX-BF16 and the kernel lets this process use the tile
//! data (Linux `arch_prctl(ARCH_REQ_XCOMP_PERM)`); elsewhere callers keep their f32 path. Rust has
//! no stable AMX intrinsics, so the few tile instructions are written as inline assembly.

use std::sync::OnceLock;

use rayon::prelude::*;

use crate::quant::to_bf16;

/// Rows and columns of an output block (two tiles each way).
const BLOCK: usize = 32;
/// Columns of one tile (f32 sums) and shared-dimension pairs per B tile row.
const TILE: usize = 16;

/// Whether AMX bf16 tiles can be used by this process (checked and requested once).
pub(crate) fn available() -> bool {
    static AVAILABLE: OnceLock<bool> = OnceLock::new();
    *AVAILABLE.get_or_init(request_tiles)
}

#[cfg(all(target_arch = "x86_64", target_os = "linux"))]
fn request_tiles() -> bool {
    // CPUID leaf 7: EDX bit 22 AMX-BF16, bit 24 AMX-TILE.
    let edx = std::arch::x86_64::__cpuid_count(7, 0).edx;
    if edx & (1 << 22) == 0 || edx & (1 << 24) == 0 {
        return false;
    }
    const ARCH_REQ_XCOMP_PERM: libc::c_long = 0x1023;
    const XFEATURE_XTILEDATA: libc::c_long = 18;
    // SAFETY: a plain system call with integer arguments; it only grants the permission.
    unsafe { libc::syscall(libc::SYS_arch_prctl, ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA) == 0 }
}

#[cfg(not(all(target_arch = "x86_64", target_os = "linux")))]
fn request_tiles() -> bool {
    false
}

/// The right-hand operand `b` `[n, k]` of [`matmul_packed`], packed for the tiles: panels of 16
/// output columns, each `[kp / 2][16][2]` (pairs of the shared dimension side by side, the
/// layout TDPBF16PS reads), zero-padded to whole blocks. Packed once, it serves any number of
/// products.
#[derive(Clone)]
pub(crate) struct PackedB {
    n: usize,
    k: usize,
    data: Vec<u32>,
}

impl std::fmt::Debug for PackedB {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "PackedB [{}, {}]", self.n, self.k)
    }
}

impl PackedB {
    /// Packs `b` `[n, k]` given row-major (`b[j][i] = w[j * k + i]`).
    pub(crate) fn from_rows(w: &[u16], n: usize, k: usize) -> PackedB {
        PackedB::pack(n, k, |panel, j0, cols| {
            for l in 0..cols {
                let row = &w[(j0 + l) * k..][..k];
                let pairs = row.chunks_exact(2);
                if let &[v] = pairs.remainder() {
                    panel[k / 2 * TILE + l] = u32::from(v);
                }
                for (pair, v) in pairs.enumerate() {
                    panel[pair * TILE + l] = u32::from(v[0]) | u32::from(v[1]) << 16;
                }
            }
        })
    }

    /// Packs `b` `[n, k]` given as its transpose, row-major `[k, n]` (`b[j][i] = w[i * n + j]`).
    pub(crate) fn from_columns(w: &[u16], n: usize, k: usize) -> PackedB {
        PackedB::pack(n, k, |panel, j0, cols| {
            for (pair, dst) in panel.chunks_exact_mut(TILE).take(k.div_ceil(2)).enumerate() {
                let even = &w[2 * pair * n + j0..][..cols];
                if 2 * pair + 1 < k {
                    let odd = &w[(2 * pair + 1) * n + j0..][..cols];
                    dst.iter_mut().zip(even.iter().zip(odd)).for_each(|(d, (&e, &o))| *d = u32::from(e) | u32::from(o) << 16);
                } else {
                    dst.iter_mut().zip(even).for_each(|(d, &e)| *d = u32::from(e));
                }
            }
        })
    }

    /// Zero-padded panels of bf16 pairs (`[kp / 2][16]`), each filled by `fill(panel, first
    /// column, columns)` in parallel.
    fn pack(n: usize, k: usize, fill: impl Fn(&mut [u32], usize, usize) + Sync) -> PackedB {
        let (kp, np) = (k.next_multiple_of(BLOCK), n.next_multiple_of(BLOCK));
        let mut data = vec![0u32; np * kp / 2];
        data.par_chunks_mut(TILE * kp / 2).enumerate().for_each(|(p, panel)| {
            let j0 = p * TILE;
            if j0 < n {
                fill(panel, j0, TILE.min(n - j0));
            }
        });
        PackedB { n, k, data }
    }
}

/// `a` `[m, k]` (f32, rounded to bf16) times the packed `b` `[n, k]` transposed → `[m, n]` f32.
/// Only call when [`available`] is true.
pub(crate) fn matmul_packed(a: &[f32], m: usize, b: &PackedB) -> Vec<f32> {
    multiply(&round_rows(a, m, b.k), m, b)
}

/// `a` `[m, k]` rounded to bf16 and laid out as whole tiles, zero-padded to whole blocks: for
/// each group of 16 rows, its `kp / 32` tiles of `[16][32]` one after the other, so that every
/// tile load reads 1 KiB of consecutive memory.
fn round_rows(a: &[f32], m: usize, k: usize) -> Vec<u16> {
    let (mp, kp) = (m.next_multiple_of(BLOCK), k.next_multiple_of(BLOCK));
    let mut ab = vec![0u16; mp * kp];
    ab.par_chunks_mut(TILE * kp).zip(a.par_chunks(TILE * k)).for_each(|(dst, src)| {
        for (l, row) in src.chunks_exact(k).enumerate() {
            for (s, part) in row.chunks(BLOCK).enumerate() {
                round_into(part, &mut dst[(s * TILE + l) * BLOCK..][..part.len()]);
            }
        }
    });
    ab
}

/// `dst[i] = bf16(src[i])`, rounded to nearest even (NaN stays NaN).
fn round_into(src: &[f32], dst: &mut [u16]) {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx512bf16") {
        // SAFETY: the CPU has AVX512-BF16 (checked just above).
        return unsafe { round_into_avx512(src, dst) };
    }
    dst.iter_mut().zip(src).for_each(|(d, &s)| *d = to_bf16(s));
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bf16")]
unsafe fn round_into_avx512(src: &[f32], dst: &mut [u16]) {
    use std::arch::x86_64::*;
    let n = src.len().min(dst.len());
    let whole = n - n % 16;
    for i in (0..whole).step_by(16) {
        // SAFETY: i + 16 <= n for both slices; unaligned loads and stores.
        unsafe {
            let h = _mm512_cvtneps_pbh(_mm512_loadu_ps(src.as_ptr().add(i)));
            _mm256_storeu_si256(dst.as_mut_ptr().add(i) as *mut __m256i, std::mem::transmute::<__m256bh, __m256i>(h));
        }
    }
    dst[whole..n].iter_mut().zip(&src[whole..n]).for_each(|(d, &s)| *d = to_bf16(s));
}

/// The rounded, padded `ab` (from [`round_rows`]) times `b` → `[m, n]` f32.
fn multiply(ab: &[u16], m: usize, b: &PackedB) -> Vec<f32> {
    let (k, n) = (b.k, b.n);
    let (mp, kp, np) = (m.next_multiple_of(BLOCK), k.next_multiple_of(BLOCK), n.next_multiple_of(BLOCK));
    let bp = &b.data;
    // Every element of the padded `c` is written by exactly one block's tile stores, so it
    // starts uninitialised (no memset of a buffer about to be overwritten).
    let mut c: Vec<f32> = Vec::with_capacity(mp * np);
    let out = OutPtr(c.as_mut_ptr());
    // One task per 32 output columns: its B panels stay in cache while A streams past.
    (0..np / BLOCK).into_par_iter().for_each(|p| {
        let _tiles = Tiles::configure();
        let col = p * BLOCK;
        for row in (0..mp).step_by(BLOCK) {
            // SAFETY: tiles are configured on this thread; the block's A rows, B panels and C
            // block lie inside `ab`, `bp` and `c` (all padded to whole blocks), and tasks write
            // disjoint columns of `c`, which outlives the loop.
            unsafe { block(ab.as_ptr().add(row * kp), kp, bp.as_ptr().add(col * kp / 2) as *const u16, out.at(row * np + col), np) };
        }
    });
    // SAFETY: the blocks above cover all `mp / 32 × np / 32` blocks of `c` and store every one
    // of their elements.
    unsafe { c.set_len(mp * np) };
    if mp == m && np == n {
        return c;
    }
    c.chunks_exact(np).take(m).flat_map(|r| r[..n].iter().copied()).collect()
}

/// The output buffer, written by the tasks through disjoint blocks.
struct OutPtr(*mut f32);
// SAFETY: tasks write disjoint blocks of the buffer and it outlives them (see `matmul_packed`).
unsafe impl Sync for OutPtr {}

impl OutPtr {
    /// The address `offset` floats in (the caller keeps it inside the buffer).
    fn at(&self, offset: usize) -> *mut f32 {
        self.0.wrapping_add(offset)
    }
}

/// The tile configuration of this thread while alive: eight 16-row × 64-byte tiles.
struct Tiles;

impl Tiles {
    fn configure() -> Tiles {
        #[repr(C, align(64))]
        struct Config([u8; 64]);
        let mut cfg = [0u8; 64];
        cfg[0] = 1; // palette 1
        for t in 0..8 {
            cfg[16 + 2 * t] = 64; // bytes per row
            cfg[48 + t] = TILE as u8; // rows
        }
        let cfg = Config(cfg);
        // SAFETY: `available()` was true (tile data permitted); the config is a valid palette-1
        // layout of 64 aligned bytes.
        unsafe { std::arch::asm!("ldtilecfg [{}]", in(reg) cfg.0.as_ptr(), options(nostack, readonly)) };
        Tiles
    }
}

impl Drop for Tiles {
    fn drop(&mut self) {
        // SAFETY: releases this thread's tile state (configured by `configure`).
        unsafe { std::arch::asm!("tilerelease", options(nostack, nomem)) };
    }
}

/// `c[32×32] = a[32×kp] · panels`, `a` two row groups of tiles (see [`round_rows`]), two B
/// panels of `[kp/2][16][2]` starting at `b`, `c` rows `ldc` floats apart.
///
/// # Safety
/// Tiles configured by [`Tiles::configure`] on this thread; all ranges in bounds.
#[cfg(target_arch = "x86_64")]
unsafe fn block(a: *const u16, kp: usize, b: *const u16, c: *mut f32, ldc: usize) {
    let ldc_bytes = 4 * ldc;
    // SAFETY: the caller's contract; every pointer offset stays inside its padded buffer.
    unsafe {
        let (a1, b1) = (a.add(TILE * kp), b.add(TILE * kp));
        let (c1, c2, c3) = (c.add(TILE), c.add(TILE * ldc), c.add(TILE * ldc + TILE));
        std::arch::asm!(
            "tilezero tmm0", "tilezero tmm1", "tilezero tmm2", "tilezero tmm3",
            "2:",
            "tileloadd tmm4, [{a0} + {ldb}*1]",
            "tileloadd tmm6, [{b0} + {ldb}*1]",
            "tdpbf16ps tmm0, tmm4, tmm6",
            "tileloadd tmm7, [{b1} + {ldb}*1]",
            "tdpbf16ps tmm1, tmm4, tmm7",
            "tileloadd tmm5, [{a1} + {ldb}*1]",
            "tdpbf16ps tmm2, tmm5, tmm6",
            "tdpbf16ps tmm3, tmm5, tmm7",
            "add {a0}, 1024", "add {a1}, 1024", "add {b0}, 1024", "add {b1}, 1024",
            "dec {steps}", "jnz 2b",
            "tilestored [{c0} + {ldc}*1], tmm0",
            "tilestored [{c1} + {ldc}*1], tmm1",
            "tilestored [{c2} + {ldc}*1], tmm2",
            "tilestored [{c3} + {ldc}*1], tmm3",
            a0 = inout(reg) a => _, a1 = inout(reg) a1 => _, b0 = inout(reg) b => _, b1 = inout(reg) b1 => _,
            ldb = in(reg) 64usize, steps = inout(reg) kp / BLOCK => _,
            c0 = in(reg) c, c1 = in(reg) c1, c2 = in(reg) c2, c3 = in(reg) c3, ldc = in(reg) ldc_bytes,
            options(nostack)
        );
    }
}

#[cfg(not(target_arch = "x86_64"))]
unsafe fn block(_a: *const u16, _kp: usize, _b: *const u16, _c: *mut f32, _ldc: usize) {
    unreachable!("AMX is x86-64 only and `available()` is false elsewhere")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::quant::from_bf16;

    #[test]
    fn matches_f32_products_of_the_rounded_inputs_for_ragged_shapes() {
        if !available() {
            eprintln!("no AMX on this CPU: the bf16 tile kernel is not exercised here");
            return;
        }
        for (m, k, n) in [(64, 64, 32), (37, 70, 45), (1, 33, 1), (100, 576, 96)] {
            let a: Vec<f32> = (0..m * k).map(|i| ((i * 7919) % 1000) as f32 / 500.0 - 1.0).collect();
            let b: Vec<u16> = (0..n * k).map(|i| to_bf16(((i * 104_729) % 997) as f32 / 498.5 - 1.0)).collect();
            let bt: Vec<u16> = (0..k * n).map(|x| b[(x % n) * k + x / n]).collect(); // [k, n]
            for packed in [PackedB::from_rows(&b, n, k), PackedB::from_columns(&bt, n, k)] {
                let y = matmul_packed(&a, m, &packed);
                assert_eq!(y.len(), m * n);
                for r in 0..m {
                    for o in 0..n {
                        let want: f64 = (0..k).map(|i| from_bf16(to_bf16(a[r * k + i])) as f64 * from_bf16(b[o * k + i]) as f64).sum();
                        let got = y[r * n + o] as f64;
                        assert!((got - want).abs() <= 1e-4 * (1.0 + want.abs()), "{m}x{k}x{n} [{r}][{o}]: {got} vs {want}");
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod speed {
    use super::*;

    /// Times the packing, rounding and tile product of a layer's shapes (release build:
    /// `cargo test --release -p sft-model --lib amx -- --ignored --nocapture`).
    #[test]
    #[ignore]
    fn speed() {
        if !available() {
            return;
        }
        crate::runtime::keep_freed_memory();
        for (m, k, n) in [(1024, 576, 1536), (1024, 1536, 576), (1024, 576, 576), (1024, 576, 192)] {
            let a: Vec<f32> = (0..m * k).map(|i| ((i * 7919) % 1000) as f32 / 500.0 - 1.0).collect();
            let b: Vec<u16> = (0..n * k).map(|i| to_bf16(((i * 104_729) % 997) as f32 / 498.5 - 1.0)).collect();
            let reps = 20;
            let time = |f: &dyn Fn()| {
                let t = std::time::Instant::now();
                (0..reps).for_each(|_| f());
                t.elapsed().as_secs_f64() / reps as f64 * 1e3
            };
            let pack = time(&|| drop(std::hint::black_box(PackedB::from_rows(&b, n, k))));
            let round = time(&|| drop(std::hint::black_box(round_rows(&a, m, k))));
            let (packed, ab) = (PackedB::from_rows(&b, n, k), round_rows(&a, m, k));
            let product = time(&|| drop(std::hint::black_box(multiply(&ab, m, &packed))));
            let gflops = 2.0 * (m * k * n) as f64 / product / 1e6;
            eprintln!("{m}x{k}x{n}: pack {pack:.3} ms, round {round:.3} ms, product {product:.3} ms = {gflops:.0} GFLOP/s");
        }
    }
}
