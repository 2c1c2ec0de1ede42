//! Issue 25: data-parallel training under `mpirun` (the `mpi` feature; CI installs Open MPI).
//! Two ranks of per_device_train_batch_size 1 train what one process of batch 2 trains (the
//! same global batch, the same token-weighted loss): the same logged losses and final tensors,
//! the same checkpoints written once. A checkpoint of a 2-rank run resumes as a 1-rank run and
//! the other way round. A rank killed with SIGKILL ends the job, naming the rank, and the last
//! checkpoint loads; a bad row or a NaN on one rank ends the job with an error naming it.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use candle_core::{DType, Device, Tensor};

use super::{logged_losses, root, sft, stderr, tiny_run};

/// The tolerance of the acceptance criteria: logged losses and every tensor, relative.
const TOLERANCE: f64 = 1e-4;

/// `mpirun -np N sft ARGS`: Open MPI, allowed to run as root (CI containers), to place more
/// ranks than cores, and not pinning ranks to cores (tests run side by side); the environment is
/// the test's, with `env` added for every rank.
fn mpirun(np: usize, args: &[&str], env: &[(&str, &str)]) -> Command {
    let mut cmd = Command::new("mpirun");
    cmd.args(["-np", &np.to_string()]);
    for (k, _) in env {
        cmd.args(["-x", k]);
    }
    cmd.arg(env!("CARGO_BIN_EXE_sft")).args(args).current_dir(root());
    cmd.envs(env.iter().copied())
        .env("OMPI_ALLOW_RUN_AS_ROOT", "1")
        .env("OMPI_ALLOW_RUN_AS_ROOT_CONFIRM", "1")
        .env("OMPI_MCA_rmaps_base_oversubscribe", "1")
        .env("OMPI_MCA_hwloc_base_binding_policy", "none");
    cmd
}

fn run_mpi(np: usize, args: &[&str]) -> Output {
    let started = Instant::now();
    let out = mpirun(np, args, &[]).output().expect("mpirun (install openmpi-bin)");
    eprintln!("mpirun -np {np} sft {}: {:.1} s", args.join(" "), started.elapsed().as_secs_f64());
    out
}

fn tensors(file: &Path) -> HashMap<String, Tensor> {
    candle_core::safetensors::load(file, &Device::Cpu).unwrap_or_else(|e| panic!("{}: {e}", file.display()))
}

/// Every tensor of `b` equals `a`'s within [`TOLERANCE`] of the tensor's largest magnitude.
fn assert_tensors_close(a: &Path, b: &Path) {
    let (a, b) = (tensors(a), tensors(b));
    assert_eq!(a.len(), b.len());
    let floats = |t: &Tensor| t.flatten_all().and_then(|t| t.to_dtype(DType::F64)).and_then(|t| t.to_vec1::<f64>()).unwrap();
    for (name, x) in &a {
        let (x, y) = (floats(x), floats(&b[name]));
        let scale = x.iter().fold(0f64, |m, v| m.max(v.abs())).max(f64::MIN_POSITIVE);
        let diff = x.iter().zip(&y).fold(0f64, |m, (p, q)| m.max((p - q).abs()));
        assert!(diff <= TOLERANCE * scale, "{name}: max difference {diff:e} of max magnitude {scale:e}");
    }
}

fn assert_losses_close(a: &[f64], b: &[f64]) {
    assert_eq!(a.len(), b.len(), "{a:?} vs {b:?}");
    for (x, y) in a.iter().zip(b) {
        assert!(((x - y) / x).abs() <= TOLERANCE, "{a:?} vs {b:?}");
    }
}

/// The names of output_dir's entries that are checkpoints (complete or not).
fn checkpoint_names(out: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(out)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.contains("checkpoint"))
        .collect();
    names.sort();
    names
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        std::fs::copy(entry.path(), to.join(entry.file_name())).unwrap();
    }
}

/// Trains `extra` for 4 steps as one process of batch 2 and as 2 ranks of batch 1; returns both
/// directories after checking that they trained the same.
fn two_ranks_train_as_one_process(name: &str, extra: &str, weights: &str) -> (PathBuf, PathBuf) {
    let one = tiny_run(&format!("{name}-one"), extra);
    let out = sft(&["train", one.join("train.yaml").to_str().unwrap(), "--set", "max_steps=4"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let two = tiny_run(&format!("{name}-two"), extra);
    let yaml = two.join("train.yaml");
    let out = run_mpi(2, &["train", yaml.to_str().unwrap(), "--set", "max_steps=4", "--set", "per_device_train_batch_size=1"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let err = stderr(&out);
    assert!(err.contains("data-parallel over 2 ranks: global batch 4"), "{err}");
    assert_eq!(err.matches("done: 4 steps").count(), 1, "rank 0 alone reports: {err}");

    let (a, b) = (one.join("out"), two.join("out"));
    assert_losses_close(&logged_losses(&a.join("checkpoint-4")), &logged_losses(&b.join("checkpoint-4")));
    assert_tensors_close(&a.join("checkpoint-4").join(weights), &b.join("checkpoint-4").join(weights));
    assert_tensors_close(&a.join("checkpoint-4/optimizer.safetensors"), &b.join("checkpoint-4/optimizer.safetensors"));
    // Written once: the same checkpoints, nothing half-written, one metrics line per entry.
    assert_eq!(checkpoint_names(&b), vec!["checkpoint-2", "checkpoint-4"]);
    let lines = |d: &Path| std::fs::read_to_string(d.join("metrics.jsonl")).unwrap().lines().count();
    assert_eq!(lines(&a), lines(&b));
    (one, two)
}

#[test]
fn lora_two_ranks_of_batch_1_equal_one_process_of_batch_2_and_resume_across_world_sizes() {
    let (one, two) = two_ranks_train_as_one_process("mpi-lora", "lora_r: 4\nlora_alpha: 8\n", "adapter_model.safetensors");
    let want = one.join("out/checkpoint-4");
    let weights = "adapter_model.safetensors";
    // A 2-rank checkpoint resumed by one process of batch 2 ...
    let resumed_one = one.join("resumed-from-two");
    copy_dir(&two.join("out/checkpoint-2"), &resumed_one.join("checkpoint-2"));
    let yaml = one.join("train.yaml");
    let out_dir = format!("output_dir={}", resumed_one.display());
    let out = sft(&["train", yaml.to_str().unwrap(), "--set", "max_steps=4", "--set", &out_dir, "--resume"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(!stderr(&out).contains("warning: the checkpoint was trained with"), "{}", stderr(&out));
    assert_losses_close(&logged_losses(&want), &logged_losses(&resumed_one.join("checkpoint-4")));
    assert_tensors_close(&want.join(weights), &resumed_one.join("checkpoint-4").join(weights));
    // ... and a 1-process checkpoint by 2 ranks of batch 1.
    let resumed_two = two.join("resumed-from-one");
    copy_dir(&one.join("out/checkpoint-2"), &resumed_two.join("checkpoint-2"));
    let yaml = two.join("train.yaml");
    let out_dir = format!("output_dir={}", resumed_two.display());
    let args =
        ["train", yaml.to_str().unwrap(), "--set", "max_steps=4", "--set", "per_device_train_batch_size=1", "--set", &out_dir, "--resume"];
    let out = run_mpi(2, &args);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_losses_close(&logged_losses(&want), &logged_losses(&resumed_two.join("checkpoint-4")));
    assert_tensors_close(&want.join(weights), &resumed_two.join("checkpoint-4").join(weights));
}

#[test]
fn full_fine_tuning_two_ranks_of_batch_1_equal_one_process_of_batch_2() {
    two_ranks_train_as_one_process("mpi-full", "", "model.safetensors");
}

/// The pid of rank `rank` of the job whose ranks have `marker` (a `KEY=VALUE`) in their
/// environment (other tests run jobs of their own at the same time).
fn rank_pid(marker: &str, rank: usize) -> Option<u32> {
    let want = format!("OMPI_COMM_WORLD_RANK={rank}");
    let exe = env!("CARGO_BIN_EXE_sft");
    std::fs::read_dir("/proc").ok()?.flatten().find_map(|e| {
        let pid: u32 = e.file_name().to_str()?.parse().ok()?;
        let env = std::fs::read(e.path().join("environ")).ok()?;
        let is_sft = std::fs::read_link(e.path().join("exe")).ok()? == Path::new(exe);
        let has = |kv: &str| env.split(|&b| b == 0).any(|x| x == kv.as_bytes());
        (is_sft && has(&want) && has(marker)).then_some(pid)
    })
}

fn wait_for(child: &mut Child, limit: Duration) -> Option<std::process::ExitStatus> {
    let start = Instant::now();
    while start.elapsed() < limit {
        if let Some(status) = child.try_wait().unwrap() {
            return Some(status);
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    None
}

#[test]
fn a_rank_killed_mid_run_ends_the_job_naming_it_and_the_last_checkpoint_loads() {
    let dir = tiny_run("mpi-kill", "lora_r: 4\n");
    let yaml = dir.join("train.yaml");
    let args = [
        "train",
        yaml.to_str().unwrap(),
        "--set",
        "max_steps=100000",
        "--set",
        "per_device_train_batch_size=1",
        "--set",
        "save_total_limit=2",
    ];
    let marker = ("SFT_TEST_JOB", "mpi-kill");
    // To a file: a pipe nobody reads while the job runs could fill and stall it.
    let log = dir.join("stderr.txt");
    let file = std::fs::File::create(&log).unwrap();
    let mut job = mpirun(2, &args, &[marker]).stdout(Stdio::null()).stderr(file).spawn().expect("mpirun");
    let out = dir.join("out");
    let start = Instant::now();
    while sft_train::checkpoint::latest(&out).is_none() {
        assert!(start.elapsed() < Duration::from_secs(120), "no checkpoint was written");
        assert!(job.try_wait().unwrap().is_none(), "the job ended early");
        std::thread::sleep(Duration::from_millis(50));
    }
    let victim = rank_pid("SFT_TEST_JOB=mpi-kill", 1).expect("rank 1's process");
    let killed = Instant::now();
    assert!(Command::new("kill").args(["-9", &victim.to_string()]).status().unwrap().success());
    let status = wait_for(&mut job, Duration::from_secs(60));
    let waited = killed.elapsed().as_secs_f64();
    if status.is_none() {
        let _ = job.kill();
    }
    job.wait().unwrap();
    let err = std::fs::read_to_string(&log).unwrap();
    eprintln!("the job ended {waited:.1} s after rank 1 was killed");
    assert!(status.is_some_and(|s| !s.success()), "the job did not end within 60 s of the kill: {err}");
    assert!(err.contains("rank 1"), "the error names the rank: {err}");
    let last = sft_train::checkpoint::latest(&out).expect("a checkpoint");
    let eval = sft(&["eval", "--model", last.to_str().unwrap(), "--data", "examples/quickstart/eval.jsonl", "--json"]);
    assert!(eval.status.success(), "{} does not load: {}", last.display(), stderr(&eval));
}

#[test]
fn a_bad_row_ends_every_rank_with_an_error_naming_the_rank_and_the_row() {
    let dir = tiny_run("mpi-bad-row", "lora_r: 4\n");
    let data = dir.join("bad.jsonl");
    std::fs::write(
        &data,
        "{\"messages\": [{\"role\": \"user\", \"content\": \"hi\"}, {\"role\": \"assistant\", \"content\": \"yo\"}]}\n{not json\n",
    )
    .unwrap();
    let datasets = format!("datasets=[{{path: {}}}]", data.display());
    let out = run_mpi(2, &["train", dir.join("train.yaml").to_str().unwrap(), "--set", &datasets]);
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(err.contains("of 2: ") && err.contains("bad.jsonl:2"), "{err}");
    assert!(!err.contains("panicked"), "{err}");
}

#[cfg(feature = "fault-injection")]
#[test]
fn a_nan_on_one_rank_stops_every_rank_with_a_checkpoint_naming_the_rank() {
    let dir = tiny_run("mpi-nan", "lora_r: 4\n");
    let yaml = dir.join("train.yaml");
    let args = ["train", yaml.to_str().unwrap(), "--set", "per_device_train_batch_size=1"];
    let out = mpirun(2, &args, &[("SFT_FAULT", "nan-loss:3@1")]).output().expect("mpirun");
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(err.contains("step 3: the loss (of rank 1) is not finite"), "{err}");
    assert_eq!(err.matches("is not finite").count(), 1, "rank 0 alone reports it: {err}");
    let state = super::json_file(&dir.join("out/checkpoint-3/trainer_state.json"));
    assert_eq!(state["global_step"], 3);
    assert!(!dir.join("out/checkpoint-4").exists());
}
