//! containerd's bbolt databases (`store::bbolt`): open the input as a file
//! and walk every bucket (entries, nested buckets, lookups) with bounded
//! fan-out and depth. Nothing may panic, hang or allocate without bound.
//!
//! The first input byte picks the layout. Bit 0 set: the rest is the whole
//! file. Clear: the harness writes two valid meta pages (page size 512) and
//! the rest, padded to whole pages, becomes the data pages from page 2, the root being page
//! 2 + (bits 1-3) and the high water mark past the data plus (bits 4-5), so
//! the fuzzer works on the B+tree pages past the meta checksums.
#![no_main]

use std::io::Write;

use dockroot::store::bbolt::{Bucket, Db};
use libfuzzer_sys::fuzz_target;

const PAGE: usize = 512;

fn fnv1a64(data: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in data {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

fn meta_page(id: u64, root: u64, high_water: u64, txid: u64) -> Vec<u8> {
    let mut p = vec![0u8; PAGE];
    p[..8].copy_from_slice(&id.to_le_bytes());
    p[8..10].copy_from_slice(&4u16.to_le_bytes());
    let m = &mut p[16..80];
    m[0..4].copy_from_slice(&0xED0C_DAEDu32.to_le_bytes());
    m[4..8].copy_from_slice(&2u32.to_le_bytes());
    m[8..12].copy_from_slice(&(PAGE as u32).to_le_bytes());
    m[16..24].copy_from_slice(&root.to_le_bytes());
    m[40..48].copy_from_slice(&high_water.to_le_bytes());
    m[48..56].copy_from_slice(&txid.to_le_bytes());
    let sum = fnv1a64(&m[..56]);
    m[56..64].copy_from_slice(&sum.to_le_bytes());
    p
}

fn walk(b: &Bucket, depth: usize) {
    let _ = b.name();
    let _ = b.get(b"k");
    let _ = b.bucket(b"v1");
    if let Ok(entries) = b.entries(1000) {
        assert!(entries.len() <= 1000);
    }
    if depth >= 4 {
        return;
    }
    if let Ok(children) = b.buckets(64) {
        for (_, child) in children.iter().take(8) {
            walk(child, depth + 1);
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, payload)) = data.split_first() else { return };
    let file = if mode & 1 != 0 {
        payload.to_vec()
    } else {
        let pages = payload.len().div_ceil(PAGE) as u64;
        let root = 2 + u64::from((mode >> 1) & 7);
        let high_water = 2 + pages + u64::from((mode >> 4) & 3);
        let mut f = meta_page(0, root, high_water, 1);
        f.extend(meta_page(1, root, high_water, 2));
        f.extend_from_slice(payload);
        // Whole pages: bbolt reads a page's full size.
        f.resize(f.len().div_ceil(PAGE) * PAGE, 0);
        f
    };
    let path = std::env::temp_dir().join(format!("dockroot-fuzz-bbolt-{}.db", std::process::id()));
    let written = std::fs::File::create(&path).and_then(|mut f| f.write_all(&file));
    if written.is_err() {
        return;
    }
    if let Ok(db) = Db::open(&path) {
        let _ = db.txid();
        walk(&db.root(), 0);
        let _ = db.bucket_path(&[b"v1", b"default", b"snapshots"]);
    }
});
