//! `/metrics` in Prometheus' text format: requests by route and status class, their latency,
//! bytes in and out, requests under way. Route templates only (never an object name).

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::Mutex;

/// Latency buckets, seconds.
const BUCKETS: [f64; 10] = [0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0];

/// Counters shared by every request.
#[derive(Default)]
pub struct Metrics {
    requests: Mutex<BTreeMap<(String, String, u16), u64>>,
    latency: Mutex<[u64; BUCKETS.len() + 1]>,
    latency_sum_us: AtomicU64,
    bytes_in: AtomicU64,
    bytes_out: AtomicU64,
    in_flight: AtomicI64,
}

impl Metrics {
    /// A request started.
    pub fn start(&self) {
        self.in_flight.fetch_add(1, Ordering::Relaxed);
    }

    /// A request ended.
    pub fn done(&self, method: &str, route: &str, status: u16, seconds: f64) {
        self.in_flight.fetch_sub(1, Ordering::Relaxed);
        *self
            .requests
            .lock()
            .expect("lock")
            .entry((method.to_string(), route.to_string(), status))
            .or_default() += 1;
        let i = BUCKETS
            .iter()
            .position(|b| seconds <= *b)
            .unwrap_or(BUCKETS.len());
        self.latency.lock().expect("lock")[i] += 1;
        self.latency_sum_us
            .fetch_add((seconds * 1e6) as u64, Ordering::Relaxed);
    }

    /// Body bytes received.
    pub fn bytes_in(&self, n: u64) {
        self.bytes_in.fetch_add(n, Ordering::Relaxed);
    }

    /// Body bytes sent.
    pub fn bytes_out(&self, n: u64) {
        self.bytes_out.fetch_add(n, Ordering::Relaxed);
    }

    /// The text exposition.
    pub fn render(&self) -> String {
        let mut out = String::new();
        out.push_str("# HELP keybag_requests_total Requests by method, route and status.\n");
        out.push_str("# TYPE keybag_requests_total counter\n");
        for ((m, r, s), n) in self.requests.lock().expect("lock").iter() {
            out.push_str(&format!(
                "keybag_requests_total{{method=\"{m}\",route=\"{r}\",status=\"{s}\"}} {n}\n"
            ));
        }
        out.push_str("# HELP keybag_request_seconds Request latency.\n");
        out.push_str("# TYPE keybag_request_seconds histogram\n");
        let lat = *self.latency.lock().expect("lock");
        let mut cum = 0;
        for (i, b) in BUCKETS.iter().enumerate() {
            cum += lat[i];
            out.push_str(&format!(
                "keybag_request_seconds_bucket{{le=\"{b}\"}} {cum}\n"
            ));
        }
        cum += lat[BUCKETS.len()];
        out.push_str(&format!(
            "keybag_request_seconds_bucket{{le=\"+Inf\"}} {cum}\n"
        ));
        out.push_str(&format!(
            "keybag_request_seconds_sum {}\nkeybag_request_seconds_count {cum}\n",
            self.latency_sum_us.load(Ordering::Relaxed) as f64 / 1e6
        ));
        out.push_str("# TYPE keybag_bytes_received_total counter\n");
        out.push_str(&format!(
            "keybag_bytes_received_total {}\n",
            self.bytes_in.load(Ordering::Relaxed)
        ));
        out.push_str("# TYPE keybag_bytes_sent_total counter\n");
        out.push_str(&format!(
            "keybag_bytes_sent_total {}\n",
            self.bytes_out.load(Ordering::Relaxed)
        ));
        out.push_str("# TYPE keybag_requests_in_flight gauge\n");
        out.push_str(&format!(
            "keybag_requests_in_flight {}\n",
            self.in_flight.load(Ordering::Relaxed)
        ));
        out
    }
}
