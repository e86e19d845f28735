//! The packet engine's costs: Maglev table builds for 1000 backends at the default and the
//! largest table size.

use std::{hint::black_box, net::Ipv4Addr};

use criterion::{Criterion, criterion_group, criterion_main};
use skiff_common::lb::{BackendId, MAGLEV_TABLE_SIZE, MAGLEV_TABLE_SIZE_MAX};
use skiff_fastpath::lb::maglev::{Maglev, Weighted};

fn maglev_build(c: &mut Criterion) {
    let backends: Vec<Weighted> = (0..1000u32)
        .map(|i| Weighted {
            id: BackendId(i + 1),
            addr: Ipv4Addr::from(u32::from(Ipv4Addr::new(198, 18, 128, 0)) + i).into(),
            port: 8080,
            weight: 1,
        })
        .collect();
    let mut g = c.benchmark_group("maglev_build_1000_backends");
    g.sample_size(10);
    for size in [MAGLEV_TABLE_SIZE, MAGLEV_TABLE_SIZE_MAX] {
        g.bench_function(format!("m{size}"), |b| {
            b.iter(|| Maglev::build(black_box(&backends), size).unwrap())
        });
    }
    g.finish();
}

criterion_group!(benches, maglev_build);
criterion_main!(benches);
