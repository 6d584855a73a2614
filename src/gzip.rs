//! Gzip values for clients that do not accept gzip.
//!
//! Apps may store pages gzip-compressed (marked by a flag bit, see
//! `rcache_gzip_flag`). Clients that accept gzip get the bytes as they are;
//! the others get them decompressed here. The output size is taken from the
//! gzip trailer (ISIZE) so the page is decompressed straight into one buffer of
//! the right size, and the decoder must then produce exactly that many bytes
//! and reach a valid end (CRC checked): anything else is a corrupt value.

use std::io::Read;

use flate2::read::GzDecoder;

/// Why a gzip value cannot be served decompressed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GunzipError {
    /// Not a single well-formed gzip member, or its size/CRC do not match.
    Corrupt,
    /// The decompressed page would be larger than the limit.
    TooLarge { size: usize, limit: usize },
}

impl core::fmt::Display for GunzipError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            Self::Corrupt => write!(f, "the value is not valid gzip data"),
            Self::TooLarge { size, limit } => write!(
                f,
                "the value decompresses to {size} bytes, more than rcache_max_size {limit}"
            ),
        }
    }
}

/// The decompressed size a gzip member claims (its ISIZE trailer), checked
/// against `limit`.
pub fn decompressed_size(gz: &[u8], limit: usize) -> Result<usize, GunzipError> {
    // Header (10) + empty deflate block (2) + trailer (8) is the shortest member.
    if gz.len() < 20 || gz[0] != 0x1f || gz[1] != 0x8b {
        return Err(GunzipError::Corrupt);
    }
    let trailer = &gz[gz.len() - 4..];
    let size = u32::from_le_bytes([trailer[0], trailer[1], trailer[2], trailer[3]]) as usize;
    if size > limit {
        return Err(GunzipError::TooLarge { size, limit });
    }
    Ok(size)
}

/// Decompresses the single gzip member `gz` into `out`, whose length must be
/// [`decompressed_size`].
pub fn gunzip_into(gz: &[u8], out: &mut [u8]) -> Result<(), GunzipError> {
    let mut decoder = GzDecoder::new(gz);
    decoder.read_exact(out).map_err(|_| GunzipError::Corrupt)?;
    // The member must end here (this also verifies the CRC and ISIZE) ...
    let mut probe = [0u8; 1];
    match decoder.read(&mut probe) {
        Ok(0) => {}
        _ => return Err(GunzipError::Corrupt),
    }
    // ... and be all there is.
    if !decoder.into_inner().is_empty() {
        return Err(GunzipError::Corrupt);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use flate2::write::GzEncoder;
    use flate2::Compression;
    use std::io::Write;

    fn gz(data: &[u8]) -> Vec<u8> {
        let mut e = GzEncoder::new(Vec::new(), Compression::default());
        e.write_all(data).unwrap();
        e.finish().unwrap()
    }

    fn gunzip(gz: &[u8], limit: usize) -> Result<Vec<u8>, GunzipError> {
        let size = decompressed_size(gz, limit)?;
        let mut out = vec![0; size];
        gunzip_into(gz, &mut out)?;
        Ok(out)
    }

    #[test]
    fn round_trip() {
        let page: Vec<u8> = b"<p>hello</p>".repeat(5000);
        assert_eq!(gunzip(&gz(&page), 1 << 20).unwrap(), page);
        assert_eq!(gunzip(&gz(b""), 10).unwrap(), b"");
    }

    #[test]
    fn size_over_the_limit_is_refused_before_decompressing() {
        let page = vec![b'a'; 10_000];
        assert_eq!(
            gunzip(&gz(&page), 9_999),
            Err(GunzipError::TooLarge {
                size: 10_000,
                limit: 9_999
            })
        );
    }

    #[test]
    fn corrupt_data_is_refused() {
        let good = gz(&b"<p>hello</p>".repeat(100));
        assert_eq!(
            gunzip(b"not gzip at all, not gzip", 100),
            Err(GunzipError::Corrupt)
        );
        assert_eq!(
            gunzip(&good[..good.len() - 1], 1 << 20),
            Err(GunzipError::Corrupt)
        );

        let mut flipped = good.clone();
        flipped[15] ^= 0xff;
        assert!(gunzip(&flipped, 1 << 20).is_err());

        // A lying ISIZE: claims fewer bytes than the stream holds.
        let mut short = good.clone();
        let n = short.len();
        short[n - 4..].copy_from_slice(&10u32.to_le_bytes());
        assert_eq!(gunzip(&short, 1 << 20), Err(GunzipError::Corrupt));

        // Claims more.
        let mut long = good.clone();
        long[n - 4..].copy_from_slice(&5000u32.to_le_bytes());
        assert_eq!(gunzip(&long, 1 << 20), Err(GunzipError::Corrupt));

        // Two members, or junk after one.
        let mut two = good.clone();
        two.extend_from_slice(&gz(b"x"));
        assert_eq!(gunzip(&two, 1 << 20), Err(GunzipError::Corrupt));
    }
}
