//! The vendored candle-core's backward pass (vendor/candle-core/SFT-PATCH.md): a tensor's first
//! gradient is stored as it comes, not added to a new tensor of zeros, and later ones still add.
//! Without the patch in effect (the workspace's `[patch.crates-io]` gone, or a candle-core
//! upgrade that drops it) the first test fails.

use candle_core::{Device, Tensor, Var};

fn var(values: &[f32]) -> Var {
    Var::from_tensor(&Tensor::new(values, &Device::Cpu).expect("tensor")).expect("var")
}

fn values(t: &Tensor) -> Vec<f32> {
    t.to_vec1::<f32>().expect("read")
}

#[test]
fn a_first_gradient_is_stored_without_a_copy() {
    let (a, b) = (var(&[1.0, 2.0]), var(&[3.0, 4.0]));
    // d(a + b) reaches a and b as one and the same tensor (the seed of ones).
    let grads = (a.as_tensor() + b.as_tensor()).expect("add").sum_all().expect("sum").backward().expect("backward");
    let (ga, gb) = (grads.get(a.as_tensor()).expect("grad of a"), grads.get(b.as_tensor()).expect("grad of b"));
    assert_eq!(values(ga), [1.0, 1.0]);
    let (sa, sb) = (ga.storage_and_layout().0, gb.storage_and_layout().0);
    assert!(std::ptr::eq(&*sa, &*sb), "each gradient was copied: candle-core is not the patched one");
}

#[test]
fn gradients_from_several_uses_still_add_up() {
    let (a, b) = (var(&[1.0, 2.0]), var(&[3.0, 4.0]));
    // f = Σ (a·b + a·a + b): df/da = b + 2a, df/db = a + 1.
    let (at, bt) = (a.as_tensor(), b.as_tensor());
    let f = ((at * bt).expect("mul") + (at * at).expect("mul")).and_then(|x| x + bt).and_then(|x| x.sum_all()).expect("f");
    let grads = f.backward().expect("backward");
    assert_eq!(values(grads.get(at).expect("grad of a")), [5.0, 8.0]);
    assert_eq!(values(grads.get(bt).expect("grad of b")), [2.0, 3.0]);
}
