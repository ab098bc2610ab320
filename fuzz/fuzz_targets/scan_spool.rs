//! Any bytes as a spool segment: the scanner never panics, and what it
//! reports adds up (every byte after the header is a record, skipped as
//! corrupt, or cut as a torn tail).
#![no_main]

use libfuzzer_sys::fuzz_target;
use std::path::Path;

fuzz_target!(|data: &[u8]| {
    let mut scan = ffd::spool::Scanner::new(false);
    scan.bytes(Path::new("fuzz.seg"), 1, data);
    scan.finish();
    let r = &scan.report;
    assert_eq!(r.bytes, data.len() as u64);
    assert!(r.torn_bytes <= data.len() as u64);
    assert!(r.pending + r.dead <= r.records);
    // Read-only: the same bytes give the same report.
    let mut again = ffd::spool::Scanner::new(false);
    again.bytes(Path::new("fuzz.seg"), 1, data);
    again.finish();
    assert_eq!(again.report.records, r.records);
    assert_eq!(again.report.corrupt_records, r.corrupt_records);
    assert_eq!(again.report.torn_bytes, r.torn_bytes);
});
