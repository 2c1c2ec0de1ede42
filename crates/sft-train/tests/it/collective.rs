//! The collective's tensor helpers against a collective of threads in one process (no MPI
//! needed): gradients summed in buckets over ranks equal the plain sum, every rank ends with
//! the same values, and a broadcast gives every rank rank 0's parameters.

use std::sync::{Arc, Barrier, Mutex};

use candle_core::{Device, Tensor, Var};
use sft_train::collective::{broadcast_params, sum_gradients, Collective};
use sft_train::TrainError;

/// `size` ranks as threads: each operation puts this rank's buffer on a shared table, waits for
/// all, and reads the result.
struct Threads {
    rank: usize,
    size: usize,
    barrier: Arc<Barrier>,
    table: Arc<Mutex<Vec<Vec<f64>>>>,
}

impl Threads {
    fn exchange(&self, buf: Vec<f64>) -> Vec<Vec<f64>> {
        self.table.lock().unwrap()[self.rank] = buf;
        self.barrier.wait();
        let all = self.table.lock().unwrap().clone();
        self.barrier.wait();
        all
    }
}

impl Collective for Threads {
    fn rank(&self) -> usize {
        self.rank
    }
    fn size(&self) -> usize {
        self.size
    }
    fn all_reduce_sum(&self, buf: &mut [f32]) -> Result<(), TrainError> {
        let all = self.exchange(buf.iter().map(|&x| f64::from(x)).collect());
        for (i, x) in buf.iter_mut().enumerate() {
            // In rank order, in f32, as a reduction would.
            *x = all.iter().fold(0f32, |s, b| s + b[i] as f32);
        }
        Ok(())
    }
    fn all_reduce_sum_f64(&self, buf: &mut [f64]) -> Result<(), TrainError> {
        let all = self.exchange(buf.to_vec());
        for (i, x) in buf.iter_mut().enumerate() {
            *x = all.iter().map(|b| b[i]).sum();
        }
        Ok(())
    }
    fn broadcast(&self, buf: &mut [f32], root: usize) -> Result<(), TrainError> {
        let all = self.exchange(buf.iter().map(|&x| f64::from(x)).collect());
        for (x, y) in buf.iter_mut().zip(&all[root]) {
            *x = *y as f32;
        }
        Ok(())
    }
    fn barrier(&self) -> Result<(), TrainError> {
        self.barrier.wait();
        Ok(())
    }
    fn abort(&self, code: i32) -> ! {
        std::process::exit(code)
    }
}

/// Runs `f(rank's collective)` on `size` threads; the results in rank order.
fn on_ranks<T: Send>(size: usize, f: impl Fn(&Threads) -> T + Sync) -> Vec<T> {
    let barrier = Arc::new(Barrier::new(size));
    let table = Arc::new(Mutex::new(vec![vec![]; size]));
    std::thread::scope(|s| {
        let handles: Vec<_> = (0..size)
            .map(|rank| {
                let comm = Threads { rank, size, barrier: barrier.clone(), table: table.clone() };
                let f = &f;
                s.spawn(move || f(&comm))
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    })
}

fn rank_tensors(rank: usize) -> Vec<Tensor> {
    let d = Device::Cpu;
    let r = rank as f32;
    vec![
        Tensor::new(&[[1.0f32 + r, 2.0], [3.0, 4.0 * r]], &d).unwrap(),
        Tensor::new(&[0.5f32 * r; 7], &d).unwrap(),
        Tensor::new(&[-r], &d).unwrap(),
    ]
}

fn values(t: &Tensor) -> Vec<f32> {
    t.flatten_all().unwrap().to_vec1().unwrap()
}

#[test]
fn gradients_summed_over_ranks_equal_the_sum_on_every_rank() {
    let size = 3;
    let results = on_ranks(size, |comm| {
        let mut grads = rank_tensors(comm.rank());
        sum_gradients(comm, &mut grads).unwrap();
        grads
    });
    let want: Vec<Tensor> =
        (0..3).map(|i| (0..size).map(|r| rank_tensors(r)[i].clone()).reduce(|a, b| (a + b).unwrap()).unwrap()).collect();
    for grads in &results {
        for (g, w) in grads.iter().zip(&want) {
            assert_eq!(g.shape(), w.shape());
            assert_eq!(values(g), values(w));
        }
    }
}

#[test]
fn broadcast_gives_every_rank_rank_0s_parameters() {
    let results = on_ranks(2, |comm| {
        let params: Vec<(String, Var)> =
            rank_tensors(comm.rank() + 1).into_iter().enumerate().map(|(i, t)| (format!("p{i}"), Var::from_tensor(&t).unwrap())).collect();
        broadcast_params(comm, &params).unwrap();
        params.iter().map(|(_, v)| values(v.as_tensor())).collect::<Vec<_>>()
    });
    let want: Vec<Vec<f32>> = rank_tensors(1).iter().map(values).collect();
    assert_eq!(results[0], want);
    assert_eq!(results[1], want);
}
