//! The cost of one password guess, measured here, and the password's strength.

use std::time::Instant;

use dataprotection::kdf::{pbkdf2_sha256, KdfParams};
use dataprotection::KdfLimits;
use serde::Serialize;

use super::Encryption;
use crate::reader::Backup;

/// Key-derivation parameters of the backup keybag (never the salts themselves).
#[derive(Clone, Debug, Serialize)]
pub struct Kdf {
    /// `double` (iOS ≥ 10.2: PBKDF2-SHA256 then PBKDF2-SHA1) or `legacy` (PBKDF2-SHA1 only).
    pub scheme: &'static str,
    /// `DPIC`: PBKDF2-HMAC-SHA256 rounds (double scheme).
    pub sha256_rounds: Option<u32>,
    /// `ITER`: PBKDF2-HMAC-SHA1 rounds.
    pub sha1_rounds: u32,
    /// Length of `DPSL`, the SHA-256 stage's salt.
    pub sha256_salt_bytes: Option<usize>,
    /// Length of `SALT`, the SHA-1 stage's salt.
    pub sha1_salt_bytes: usize,
}

impl Kdf {
    /// `10,000,000 PBKDF2-SHA256 + 10,000 PBKDF2-SHA1 rounds (iOS 10.2+)`.
    pub fn describe(&self) -> String {
        match self.sha256_rounds {
            Some(n) => format!(
                "{} PBKDF2-SHA256 + {} PBKDF2-SHA1 rounds (iOS 10.2+ double KDF)",
                super::thousands(n.into()),
                super::thousands(self.sha1_rounds.into())
            ),
            None => format!(
                "{} PBKDF2-SHA1 rounds (legacy single KDF)",
                super::thousands(self.sha1_rounds.into())
            ),
        }
    }
}

/// What one password guess costs an attacker's CPU, measured on this machine.
#[derive(Clone, Debug, Serialize)]
pub struct GuessCost {
    /// PBKDF2-SHA256 rounds actually timed (then extrapolated to `DPIC`).
    pub sample_sha256_rounds: u32,
    /// PBKDF2-SHA1 rounds actually timed (then extrapolated to `ITER`).
    pub sample_sha1_rounds: u32,
    /// Seconds one core needs for one full guess.
    pub seconds_per_guess_per_core: f64,
    /// Guesses one core tries per second.
    pub guesses_per_second_per_core: f64,
    /// Cores of this machine.
    pub cores: u32,
    /// Guesses per second with every core of this machine.
    pub guesses_per_second_this_machine: f64,
    /// How to read these numbers.
    pub note: String,
}

/// How long guessing the password would take one kind of attacker.
#[derive(Clone, Debug, Serialize)]
pub struct CrackTime {
    /// Who.
    pub attacker: String,
    /// Their guesses per second.
    pub guesses_per_second: f64,
    /// Seconds to reach zxcvbn's guess estimate.
    pub seconds: f64,
    /// `3 hours`, `centuries`, …
    pub display: String,
}

/// zxcvbn's verdict on the password. The password itself is never stored.
#[derive(Clone, Debug, Serialize)]
pub struct PasswordStrength {
    /// 0 (too guessable) to 4 (very unguessable).
    pub score: u8,
    /// `very weak` … `very strong`.
    pub rating: &'static str,
    /// log10 of the guesses zxcvbn expects an attacker to need.
    pub guesses_log10: f64,
    /// zxcvbn's warning, if any.
    pub warning: Option<String>,
    /// zxcvbn's suggestions.
    pub suggestions: Vec<String>,
    /// Time to guess it at the measured rate and at faster attackers.
    pub crack_times: Vec<CrackTime>,
}

/// `0.9 seconds`, `3.2 hours`, `41 years`, `centuries`.
pub fn human_duration(secs: f64) -> String {
    if !secs.is_finite() || secs >= 100.0 * 365.25 * 86_400.0 {
        return "centuries".into();
    }
    let units = [
        (365.25 * 86_400.0, "year", "years"),
        (30.44 * 86_400.0, "month", "months"),
        (86_400.0, "day", "days"),
        (3_600.0, "hour", "hours"),
        (60.0, "minute", "minutes"),
        (1.0, "second", "seconds"),
    ];
    for (size, one, many) in units {
        if secs >= size {
            let v = secs / size;
            return if v < 10.0 {
                let v = (v * 10.0).round() / 10.0;
                format!("{v} {}", if v == 1.0 { one } else { many })
            } else {
                format!("{:.0} {many}", v)
            };
        }
    }
    if secs >= 0.001 {
        format!("{:.0} ms", secs * 1000.0)
    } else {
        "less than a millisecond".into()
    }
}

/// Best of three runs, in seconds.
fn time(mut f: impl FnMut()) -> f64 {
    (0..3)
        .map(|_| {
            let t = Instant::now();
            f();
            t.elapsed().as_secs_f64()
        })
        .fold(f64::INFINITY, f64::min)
        .max(1e-9)
}

/// Times `sample` rounds of each stage with a dummy password and extrapolates.
fn measure(params: &KdfParams, sample: u32) -> GuessCost {
    const DUMMY: &[u8] = b"keybag audit timing sample";
    let sample = sample.max(1);
    let (s256, t256, full256) = match &params.double {
        Some((dpsl, dpic)) => {
            let n = sample.min(*dpic);
            let t = time(|| {
                std::hint::black_box(pbkdf2_sha256(DUMMY, dpsl, n));
            });
            (n, t, *dpic)
        }
        None => (0, 0.0, 0),
    };
    let s1 = sample.min(params.iter).max(1);
    let sha1_only = KdfParams {
        salt: params.salt.clone(),
        iter: s1,
        double: None,
    };
    let limits = KdfLimits {
        max_dpic: u32::MAX,
        max_iter: u32::MAX,
    };
    let t1 = time(|| {
        std::hint::black_box(sha1_only.derive(DUMMY, &limits).ok());
    });
    let mut secs = t1 * f64::from(params.iter) / f64::from(s1);
    if s256 > 0 {
        secs += t256 * f64::from(full256) / f64::from(s256);
    }
    let cores = std::thread::available_parallelism()
        .map(|n| n.get() as u32)
        .unwrap_or(1);
    let per_core = 1.0 / secs;
    GuessCost {
        sample_sha256_rounds: s256,
        sample_sha1_rounds: s1,
        seconds_per_guess_per_core: secs,
        guesses_per_second_per_core: per_core,
        cores,
        guesses_per_second_this_machine: per_core * f64::from(cores),
        note: "Measured by timing a sample of each PBKDF2 stage on this machine and scaling \
               to the keybag's round counts. GPUs run this KDF much faster than a CPU core: \
               the 100x and 10,000x rows are order-of-magnitude stand-ins for one GPU and a \
               GPU rig."
            .into(),
    }
}

fn rating(score: u8) -> &'static str {
    match score {
        0 => "very weak",
        1 => "weak",
        2 => "fair",
        3 => "strong",
        _ => "very strong",
    }
}

/// zxcvbn on the password, with crack times at the measured rate.
fn strength(password: &[u8], cost: Option<&GuessCost>, user_inputs: &[String]) -> PasswordStrength {
    let text = zeroize::Zeroizing::new(String::from_utf8_lossy(password).into_owned());
    let inputs: Vec<&str> = user_inputs.iter().map(String::as_str).collect();
    let entropy = zxcvbn::zxcvbn(&text, &inputs);
    let score = u8::from(entropy.score());
    let guesses_log10 = entropy.guesses_log10();
    let (warning, suggestions) = match entropy.feedback() {
        Some(f) => (
            f.warning().map(|w| w.to_string()),
            f.suggestions().iter().map(|s| s.to_string()).collect(),
        ),
        None => (None, Vec::new()),
    };
    drop(entropy);
    let guesses = 10f64.powf(guesses_log10);
    let mut crack_times = Vec::new();
    if let Some(c) = cost {
        let per_core = c.guesses_per_second_per_core;
        let tiers = [
            (
                "one CPU core of this machine (measured)".to_string(),
                per_core,
            ),
            (
                format!("all {} cores of this machine", c.cores),
                c.guesses_per_second_this_machine,
            ),
            (
                "100x one core (about one GPU)".to_string(),
                per_core * 100.0,
            ),
            (
                "10,000x one core (a GPU rig)".to_string(),
                per_core * 10_000.0,
            ),
        ];
        for (attacker, rate) in tiers {
            let seconds = (guesses / rate).min(1e30);
            crack_times.push(CrackTime {
                attacker,
                guesses_per_second: rate,
                seconds,
                display: human_duration(seconds),
            });
        }
    }
    PasswordStrength {
        score,
        rating: rating(score),
        guesses_log10,
        warning,
        suggestions,
        crack_times,
    }
}

/// The encryption section.
pub(super) fn encryption(
    backup: &Backup,
    password: Option<&[u8]>,
    sample: u32,
    user_inputs: &[String],
) -> Encryption {
    let encrypted = backup.is_encrypted();
    let params = if encrypted {
        backup.keybag().and_then(|kb| kb.kdf_params().ok())
    } else {
        None
    };
    let kdf = params.as_ref().map(|p| Kdf {
        scheme: if p.is_double() { "double" } else { "legacy" },
        sha256_rounds: p.double.as_ref().map(|(_, n)| *n),
        sha1_rounds: p.iter,
        sha256_salt_bytes: p.double.as_ref().map(|(s, _)| s.len()),
        sha1_salt_bytes: p.salt.len(),
    });
    let guess_cost = params
        .as_ref()
        .filter(|p| p.check(&KdfLimits::default()).is_ok())
        .map(|p| measure(p, sample));
    let password_strength = match (encrypted, password) {
        (true, Some(pw)) => Some(strength(pw, guess_cost.as_ref(), user_inputs)),
        _ => None,
    };
    let device_key_used = backup.keys().is_some_and(|k| {
        k.available()
            .any(|c| c.is_this_device_only() || c == dataprotection::ProtectionClass::RECOVERY)
    });
    Encryption {
        encrypted,
        unlocked: !encrypted || backup.keys().is_some(),
        device_key_used,
        kdf,
        guess_cost,
        password_strength,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(human_duration(0.5), "500 ms");
        assert_eq!(human_duration(1.0), "1 second");
        assert_eq!(human_duration(90.0), "1.5 minutes");
        assert_eq!(human_duration(7200.0), "2 hours");
        assert_eq!(human_duration(86_400.0 * 40.0), "1.3 months");
        assert_eq!(human_duration(86_400.0 * 365.25 * 20.0), "20 years");
        assert_eq!(human_duration(1e20), "centuries");
        assert_eq!(human_duration(f64::INFINITY), "centuries");
    }

    #[test]
    fn strength_never_keeps_the_password() {
        let cost = GuessCost {
            sample_sha256_rounds: 1,
            sample_sha1_rounds: 1,
            seconds_per_guess_per_core: 1.0,
            guesses_per_second_per_core: 1.0,
            cores: 2,
            guesses_per_second_this_machine: 2.0,
            note: String::new(),
        };
        let s = strength(b"password1", Some(&cost), &[]);
        assert!(s.score <= 1, "{s:?}");
        let json = serde_json::to_string(&s).unwrap();
        assert!(!json.contains("password1"), "{json}");
        assert_eq!(s.crack_times.len(), 4);
        let s = strength(b"ok, zebra-lantern-quiet-7-orbit", Some(&cost), &[]);
        assert!(s.score >= 3, "{s:?}");
    }

    #[test]
    fn measuring_scales_to_the_full_count() {
        let p = KdfParams {
            salt: vec![1; 20],
            iter: 1000,
            double: Some((vec![2; 20], 20_000)),
        };
        let c = measure(&p, 2_000);
        assert_eq!(c.sample_sha256_rounds, 2_000);
        assert_eq!(c.sample_sha1_rounds, 1000);
        assert!(c.seconds_per_guess_per_core > 0.0);
        assert!((c.guesses_per_second_per_core * c.seconds_per_guess_per_core - 1.0).abs() < 1e-9);
    }
}
