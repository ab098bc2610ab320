//! Any bytes given to the line parser: no panic, and every refusal carries a
//! stable code and a short message (answers stay small for pipelining clients).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    match ffd_proto::parse_line(data) {
        Ok(_) => {}
        Err(e) => {
            assert!(!e.message.is_empty());
            assert!(e.message.len() < 1024, "message of {} bytes", e.message.len());
            let mut out = Vec::new();
            ffd_proto::write_error(&mut out, e.code, &e.message);
            assert!(ffd_proto::Response::parse(&out[..out.len() - 1]).is_ok());
        }
    }
});
