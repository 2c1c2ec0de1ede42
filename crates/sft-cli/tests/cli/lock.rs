//! Issue 25: two runs never share an output_dir. A second `sft train` on a directory a running
//! one holds is refused with an error naming the directory and the holder's pid; once the holder
//! is killed (SIGKILL: no cleanup of its own), its lock is stale and the next run takes it over.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use super::{root, sft, stderr, tiny_run};

#[test]
fn a_second_run_on_a_held_output_dir_is_refused_and_a_dead_holder_does_not_block() {
    let dir = tiny_run("lock", "");
    let (yaml, out) = (dir.join("train.yaml"), dir.join("out"));
    let yaml = yaml.to_str().unwrap();
    let mut first = Command::new(env!("CARGO_BIN_EXE_sft"))
        .args(["train", yaml, "--set", "max_steps=100000", "--set", "save_steps=100000"])
        .current_dir(root())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("run sft train");
    let pid = first.id();
    let lock = out.join(sft_train::lock::LOCK_FILE);
    let start = Instant::now();
    while !std::fs::read_to_string(&lock).is_ok_and(|t| t.contains(&format!("\"pid\":{pid},"))) {
        assert!(start.elapsed() < Duration::from_secs(60), "the first run never took the lock");
        assert!(first.try_wait().unwrap().is_none(), "the first run ended early");
        std::thread::sleep(Duration::from_millis(20));
    }
    let second = sft(&["train", yaml, "--set", "max_steps=2"]);
    first.kill().expect("SIGKILL");
    first.wait().expect("reap");
    assert!(!second.status.success());
    let err = stderr(&second);
    assert!(err.contains(&out.display().to_string()) && err.contains(&format!("pid {pid} on host")), "{err}");
    assert!(err.contains("another `sft train` is using this output_dir"), "{err}");
    assert!(!out.join("checkpoint-2").exists(), "the refused run wrote nothing");

    let third = sft(&["train", yaml, "--set", "max_steps=2"]);
    assert!(third.status.success(), "{}", stderr(&third));
    assert!(stderr(&third).contains(&format!("taking over the lock last held by pid {pid}")), "{}", stderr(&third));
    assert!(out.join("checkpoint-2/trainer_state.json").is_file());
}
