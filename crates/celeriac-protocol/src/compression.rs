//! Body compression as kombu does it (§1.6.4).
//!
//! The `compression` header holds the compressor's MIME type; the body is
//! compressed after serialization and `content_type` stays the serializer's.
//! Note that kombu's `application/x-gzip` is a **zlib** stream (`78 9c ...`),
//! not the gzip file format. brotli and zstd are refused: kombu only offers
//! them when optional Python packages are installed, and no Celery default
//! uses them.

use std::io::{Read, Write as _};

use crate::{DecodeError, EncodeError};

/// A compression algorithm kombu can put in the `compression` header.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Compression {
    /// `application/x-gzip`: a zlib stream (kombu's `zlib` and `gzip` aliases).
    Zlib,
    /// `application/x-bz2`.
    Bzip2,
    /// `application/x-lzma`: an xz container (Python's `lzma.compress`).
    Lzma,
}

impl Compression {
    /// Reads the MIME type from a `compression` header.
    ///
    /// ```
    /// use celeriac_protocol::Compression;
    /// assert_eq!(Compression::from_mime("application/x-gzip").unwrap(), Compression::Zlib);
    /// assert!(Compression::from_mime("application/zstd").is_err());
    /// ```
    pub fn from_mime(mime: &str) -> Result<Compression, DecodeError> {
        match mime {
            "application/x-gzip" => Ok(Compression::Zlib),
            "application/x-bz2" => Ok(Compression::Bzip2),
            "application/x-lzma" => Ok(Compression::Lzma),
            other => Err(DecodeError::UnsupportedCompression(other.to_owned())),
        }
    }

    /// Reads one of kombu's names (`zlib`, `gzip`, `bzip2`, `lzma`, `xz`), as
    /// used by Celery's `task_compression` setting.
    pub fn from_name(name: &str) -> Option<Compression> {
        match name {
            "zlib" | "gzip" => Some(Compression::Zlib),
            "bzip2" => Some(Compression::Bzip2),
            "lzma" | "xz" => Some(Compression::Lzma),
            _ => None,
        }
    }

    /// The MIME type written to the `compression` header.
    pub fn mime(self) -> &'static str {
        match self {
            Compression::Zlib => "application/x-gzip",
            Compression::Bzip2 => "application/x-bz2",
            Compression::Lzma => "application/x-lzma",
        }
    }

    /// Decompresses `data`, refusing output larger than `limit` bytes (so a
    /// small "compression bomb" cannot exhaust memory).
    pub fn decompress(self, data: &[u8], limit: usize) -> Result<Vec<u8>, DecodeError> {
        let fail = |detail: String| DecodeError::Decompress {
            compression: self.mime().to_owned(),
            detail,
        };
        let cap = u64::try_from(limit).unwrap_or(u64::MAX).saturating_add(1);
        let mut out = Vec::with_capacity(data.len().saturating_mul(4).min(limit));
        match self {
            Compression::Zlib => {
                flate2::read::ZlibDecoder::new(data)
                    .take(cap)
                    .read_to_end(&mut out)
                    .map_err(|e| fail(e.to_string()))?;
            }
            Compression::Bzip2 => {
                bzip2::read::BzDecoder::new(data)
                    .take(cap)
                    .read_to_end(&mut out)
                    .map_err(|e| fail(e.to_string()))?;
            }
            Compression::Lzma => {
                let mut sink = LimitedWriter {
                    out: &mut out,
                    limit,
                };
                lzma_rs::xz_decompress(&mut std::io::BufReader::new(data), &mut sink)
                    .map_err(|e| fail(e.to_string()))?;
            }
        }
        if out.len() > limit {
            return Err(DecodeError::TooLarge {
                size: out.len(),
                limit,
            });
        }
        Ok(out)
    }

    /// Compresses `data` the way kombu's compressor for this MIME type does.
    pub fn compress(self, data: &[u8]) -> Result<Vec<u8>, EncodeError> {
        let fail = |source| EncodeError::Compress {
            compression: self.mime(),
            source,
        };
        match self {
            Compression::Zlib => {
                let mut enc =
                    flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::default());
                enc.write_all(data).map_err(fail)?;
                enc.finish().map_err(fail)
            }
            Compression::Bzip2 => {
                let mut enc = bzip2::write::BzEncoder::new(Vec::new(), bzip2::Compression::best());
                enc.write_all(data).map_err(fail)?;
                enc.finish().map_err(fail)
            }
            Compression::Lzma => {
                let mut out = Vec::new();
                lzma_rs::xz_compress(&mut std::io::BufReader::new(data), &mut out).map_err(fail)?;
                Ok(out)
            }
        }
    }
}

/// A writer that errors once more than `limit` bytes are written.
struct LimitedWriter<'a> {
    out: &'a mut Vec<u8>,
    limit: usize,
}

impl std::io::Write for LimitedWriter<'_> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if self.out.len() + buf.len() > self.limit {
            return Err(std::io::Error::other(format!(
                "decompressed body exceeds the {}-byte limit",
                self.limit
            )));
        }
        self.out.extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ALL: [Compression; 3] = [Compression::Zlib, Compression::Bzip2, Compression::Lzma];

    #[test]
    fn every_algorithm_round_trips() {
        let body = br#"[[2, 2], {}, {"callbacks": null}]"#.repeat(50);
        for c in ALL {
            let packed = c.compress(&body).unwrap();
            assert_eq!(c.decompress(&packed, 1 << 20).unwrap(), body, "{c:?}");
            assert_eq!(Compression::from_mime(c.mime()).unwrap(), c);
        }
        assert_eq!(
            Compression::Zlib.compress(b"x").unwrap()[0],
            0x78,
            "zlib header"
        );
    }

    #[test]
    fn output_over_the_limit_is_refused() {
        let body = vec![b'a'; 10_000];
        for c in ALL {
            let packed = c.compress(&body).unwrap();
            let err = c.decompress(&packed, 1_000).unwrap_err();
            assert!(
                matches!(
                    err,
                    DecodeError::TooLarge { .. } | DecodeError::Decompress { .. }
                ),
                "{c:?}: {err:?}"
            );
        }
    }

    #[test]
    fn garbage_is_a_decompress_error() {
        for c in ALL {
            let err = c
                .decompress(b"definitely not compressed", 1 << 20)
                .unwrap_err();
            assert!(
                matches!(err, DecodeError::Decompress { .. }),
                "{c:?}: {err:?}"
            );
        }
    }
}
