//! Request bodies compressed for destinations that ask for it
//! (`compression`): gzip (flate2, pure Rust) or zstd (the reference C
//! library). Pure: bytes in, bytes out.

use crate::config::Compression;
use std::io::Write;

/// A destination's codec and level.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Codec {
    /// gzip or zstd (never `None`: no codec is no `Codec`).
    pub kind: Compression,
    /// The level; `None`: the codec's default.
    pub level: Option<i32>,
}

impl Codec {
    /// The codec of a destination's settings; `None` for `compression = "none"`.
    pub fn of(kind: Compression, level: Option<i32>) -> Option<Codec> {
        (kind != Compression::None).then_some(Codec { kind, level })
    }

    /// The `content-encoding` value.
    pub fn encoding(self) -> &'static str {
        match self.kind {
            Compression::Zstd => "zstd",
            _ => "gzip",
        }
    }

    /// `body` compressed.
    pub fn compress(self, body: &[u8]) -> std::io::Result<Vec<u8>> {
        match self.kind {
            Compression::Zstd => zstd::bulk::compress(body, self.level.unwrap_or(3)),
            _ => {
                let level = flate2::Compression::new(self.level.unwrap_or(6).clamp(0, 9) as u32);
                let mut enc =
                    flate2::write::GzEncoder::new(Vec::with_capacity(body.len() / 3 + 64), level);
                enc.write_all(body)?;
                enc.finish()
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    #[test]
    fn both_codecs_round_trip() {
        let body = br#"{"event":"signup","properties":{"plan":"pro"}}"#.repeat(50);
        let gz = Codec::of(Compression::Gzip, None).unwrap();
        let packed = gz.compress(&body).unwrap();
        assert!(packed.len() < body.len() / 5);
        let mut back = Vec::new();
        flate2::read::GzDecoder::new(&packed[..])
            .read_to_end(&mut back)
            .unwrap();
        assert_eq!(back, body);
        let zs = Codec::of(Compression::Zstd, Some(19)).unwrap();
        let packed = zs.compress(&body).unwrap();
        assert_eq!(zstd::decode_all(&packed[..]).unwrap(), body);
        assert_eq!(Codec::of(Compression::None, Some(3)), None);
    }
}
