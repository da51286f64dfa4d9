//! `cargo bench -p mesh-ca --bench issue`: how long a mesh CA takes to generate (RSA 2048 and
//! 4096 bits), and how many workload certificates one thread issues per second with each, the
//! zone's whole load being 10,000 proxies. Prints figures; no harness.

use std::time::{Duration, Instant, SystemTime};

use mesh_api::core::mesh::CaBackend;
use mesh_ca::{MeshCa, WorkloadIdentity};

fn backend(bits: u32) -> CaBackend {
    CaBackend {
        name: "ca-1".into(),
        backend_type: "builtin".into(),
        conf: Some(serde_json::json!({"caCert": {"RSAbits": bits, "expiration": "10y"}})),
        ..CaBackend::default()
    }
}

fn summary(mut samples: Vec<Duration>) -> String {
    samples.sort();
    format!(
        "median {:>7.1} ms, min {:>7.1} ms, max {:>7.1} ms over {} runs",
        samples[samples.len() / 2].as_secs_f64() * 1e3,
        samples[0].as_secs_f64() * 1e3,
        samples[samples.len() - 1].as_secs_f64() * 1e3,
        samples.len()
    )
}

fn main() {
    println!("mesh-ca: builtin CA");
    for (bits, runs, certs) in [(2048, 7, 10_000), (4096, 3, 2_000)] {
        let backend = backend(bits);
        let mut generation = Vec::new();
        let mut ca = None;
        for _ in 0..runs {
            let start = Instant::now();
            ca = Some(MeshCa::generate("bench", &backend).expect("generate"));
            generation.push(start.elapsed());
        }
        let ca = ca.expect("at least one run");
        println!("  CA generation, RSA {bits}: {}", summary(generation));

        let now = SystemTime::now();
        let validity = Duration::from_secs(24 * 3600);
        let start = Instant::now();
        for i in 0..certs {
            let identity = WorkloadIdentity {
                services: vec![format!("service-{}", i % 100)],
                tags: [(
                    "kuma.io/zone".to_owned(),
                    ["zone-1".to_owned()].into_iter().collect(),
                )]
                .into_iter()
                .collect(),
            };
            let cert = ca.issue(&identity, validity, now).expect("issue");
            std::hint::black_box(cert);
        }
        let elapsed = start.elapsed();
        println!(
            "  workload certificates, RSA {bits} CA: {certs} in {:.2} s = {:.0}/s on one thread ({:.2} s for 10,000)",
            elapsed.as_secs_f64(),
            f64::from(certs) / elapsed.as_secs_f64(),
            elapsed.as_secs_f64() * 10_000.0 / f64::from(certs)
        );
    }
}
