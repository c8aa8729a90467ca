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
    sign_rate(&String::from_utf8_lossy(&out.stdout))
}

/// The private-key rate (sign/s) of `openssl speed`'s RSA-2048 line: OpenSSL 3.0 prints
/// "rsa 2048 bits 0.000293s 0.000009s   3409.7 115000.0" (with `-multi`, the processes' sum),
/// 3.2 and later "rsa  2048 bits" and four times before the rates; the first figure after the
/// times (which end in `s`) is sign/s.
fn sign_rate(text: &str) -> Option<f64> {
    text.lines().find_map(|line| {
        let mut words = line.split_whitespace();
        if (words.next(), words.next(), words.next()) != (Some("rsa"), Some("2048"), Some("bits")) {
            return None;
        }
        words.find(|w| !w.ends_with('s'))?.parse().ok()
    })
}

#[cfg(test)]
mod tests {
    use super::sign_rate;

    #[test]
    fn the_sign_rate_is_read_from_either_layout_of_openssl_speed() {
        let v30 = "                  sign    verify    sign/s verify/s\nrsa 2048 bits 0.000138s 0.000009s   7227.0 113701.0\n";
        assert_eq!(sign_rate(v30), Some(7227.0));
        let v32 = "                   sign    verify    encrypt   decrypt   sign/s verify/s  encr./s  decr./s\nrsa  2048 bits 0.000293s 0.000009s 0.000010s 0.000290s   3409.7 115000.0 101000.0   3448.3\n";
        assert_eq!(sign_rate(v32), Some(3409.7));
        assert_eq!(
            sign_rate("rsa 4096 bits 0.002s 0.0001s 500.0 9000.0\n"),
            None
        );
    }
}
