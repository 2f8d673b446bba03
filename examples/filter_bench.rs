//! bench/filter's hookwarden side: what receivers do per delivery for its
//! filters, timed. Prints one JSON line.
//!
//!   filter_bench PAYLOAD_FILE ITERATIONS FILTER...

use std::time::Instant;

use bytes::Bytes;
use hookwarden::{
    ObjectRef,
    filter::{Filters, compile},
    queue::Delivery,
};

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let payload = Bytes::from(std::fs::read(&args[1]).expect("payload file"));
    let iterations: u32 = args[2].parse().expect("iterations");
    let sources = &args[3..];
    let names: Vec<String> = (0..sources.len()).map(|i| format!("agent-{i}")).collect();
    let filters = Filters {
        policy: None,
        agents: names.iter().cloned().zip(sources.iter().map(|s| compile(s))).collect(),
    };
    let agents: Vec<&str> = names.iter().map(String::as_str).collect();
    let hook = ObjectRef::new("team", "hook");
    let delivery = Delivery::parse("guid", "pull_request", &hook, payload).expect("a JSON payload");

    // Per delivery, as dispatch does it: the payload parsed once, every filter judged.
    let mut passed = 0usize;
    let started = Instant::now();
    for _ in 0..iterations {
        let facts = filters.facts(&delivery);
        passed += filters.judge(&agents, &facts).iter().filter(|(_, v)| v.reason().is_none()).count();
    }
    let per_delivery = started.elapsed().as_secs_f64() * 1e6 / f64::from(iterations);

    // The filters alone, on a payload parsed once for all iterations.
    let facts = filters.facts(&delivery);
    filters.judge(&agents, &facts);
    let started = Instant::now();
    for _ in 0..iterations {
        passed += filters.judge(&agents, &facts).len();
    }
    let eval_only = started.elapsed().as_secs_f64() * 1e6 / f64::from(iterations);
    println!(r#"{{"per_delivery_us": {per_delivery:.2}, "eval_us": {eval_only:.2}, "passed": {passed}}}"#);
}
