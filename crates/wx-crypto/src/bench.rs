//! Helpers shared by the benchmarks (the `rsa_bench` example and `wxstream bench decrypt`):
//! a rate measured over threads, and the machine's own `openssl speed rsa2048` figure. Not used
//! by the pipeline.

use std::process::Command;
use std::time::{Duration, Instant};

/// Runs `op` on `threads` threads for `seconds`; returns operations per second in total.
pub fn rate(threads: usize, seconds: f64, op: &(dyn Fn(usize) + Sync)) -> f64 {
    let deadline = Instant::now() + Duration::from_secs_f64(seconds);
    let start = Instant::now();
    let total: u64 = std::thread::scope(|s| {
        let handles: Vec<_> = (0..threads)
            .map(|_| {
                s.spawn(|| {
                    let mut n = 0u64;
                    while Instant::now() < deadline {
                        op(usize::try_from(n).unwrap_or(0));
                        n += 1;
                    }
                    n
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap_or(0)).sum()
    });
    total as f64 / start.elapsed().as_secs_f64()
}

/// RSA-2048 private-key operations (sign/s) per second on one core, as `openssl speed` measures
/// them; None when the `openssl` command is missing.
pub fn openssl_speed_rsa2048(seconds: u32) -> Option<f64> {
    openssl_speed_rsa2048_on(seconds, 1)
}

/// RSA-2048 private-key operations per second in total with `processes` running at once
/// (`openssl speed -multi`, every core busy when it is the number of cores); None when the
/// `openssl` command is missing.
pub fn openssl_speed_rsa2048_on(seconds: u32, processes: usize) -> Option<f64> {
    let mut command = Command::new("openssl");
    command.args(["speed", "-seconds", &seconds.to_string()]);
    if processes > 1 {
        command.args(["-multi", &processes.to_string()]);
    }
    let out = command.arg("rsa2048").output().ok()?;
    let text = String::from_utf8_lossy(&out.stdout);
    // "rsa 2048 bits 0.000293s 0.000009s   3409.7 115000.0": sign/s is the private-key rate
    // (with `-multi`, the processes' sum).
    let line = text
        .lines()
        .find(|l| l.trim_start().starts_with("rsa 2048 bits"))?;
    line.split_whitespace().nth(5)?.parse().ok()
}
