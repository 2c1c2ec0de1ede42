//! Raw CPU kernels over slices, below the autograd ops of [`ops`](crate::ops): the f32 GEMM
//! (the `gemm` crate with strided, scaled, accumulating destinations), bf16 products on AMX
//! tiles, the vectorised exp and row reductions (max, sum, log-sum-exp, softmax) with the
//! AVX-512 wrapper [`wide`], and decoding's dot products. Nothing here knows about tensors or
//! gradients; a GPU backend would add its kernels beside these.

pub(crate) mod amx;
mod dot;
mod exp;
pub(crate) mod gemm;
pub(crate) mod lanes;

pub(crate) use dot::{dot, matvec_rows};
pub(crate) use exp::{exp_in_place, exp_shifted_in_place};
pub use lanes::wide;
