//! The state of a wasm instance as the host sees it — linear memory and the
//! exported mutable globals — and its snapshot encoding: compact (pages of
//! zeros are left out) and checksummed (SHA-256 over everything before it).
//!
//! Encoding (integers little-endian):
//!
//! ```text
//! "TWASMSN1"                      magic and version, 8 bytes
//! module id                       32 bytes (registry::ModuleId)
//! memory length                   u64, a multiple of 65536
//! global count                    u32
//!   tag u8 (0 i32, 1 i64, 2 f32, 3 f64, 4 v128), value u128
//! page count                      u32 (non-zero pages only)
//!   page index u32, 65536 bytes
//! SHA-256 of all of the above     32 bytes
//! ```
//!
//! Non-exported globals are not saved: the only one a Rust (or C) guest
//! has is its shadow-stack pointer, which holds its initial value whenever
//! no call is running, and a fresh instance starts with that value.

use sha2::{Digest, Sha256};

/// A wasm page.
pub const PAGE: usize = 65536;

const MAGIC: &[u8; 8] = b"TWASMSN1";

/// An exported mutable global's value, by type (floats as their bits, so
/// NaN payloads survive exactly).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GlobalValue {
    /// An `i32`.
    I32(u32),
    /// An `i64`.
    I64(u64),
    /// An `f32`'s bits.
    F32(u32),
    /// An `f64`'s bits.
    F64(u64),
    /// A `v128`.
    V128(u128),
}

impl GlobalValue {
    fn tag_and_bits(self) -> (u8, u128) {
        match self {
            GlobalValue::I32(v) => (0, v.into()),
            GlobalValue::I64(v) => (1, v.into()),
            GlobalValue::F32(v) => (2, v.into()),
            GlobalValue::F64(v) => (3, v.into()),
            GlobalValue::V128(v) => (4, v),
        }
    }

    fn from_tag_and_bits(tag: u8, bits: u128) -> Option<GlobalValue> {
        Some(match tag {
            0 => GlobalValue::I32(u32::try_from(bits).ok()?),
            1 => GlobalValue::I64(u64::try_from(bits).ok()?),
            2 => GlobalValue::F32(u32::try_from(bits).ok()?),
            3 => GlobalValue::F64(u64::try_from(bits).ok()?),
            4 => GlobalValue::V128(bits),
            _ => return None,
        })
    }
}

/// Linear memory and exported mutable globals (in export order).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Image {
    /// The whole linear memory.
    pub memory: Vec<u8>,
    /// The exported mutable globals' values, in the module's export order.
    pub globals: Vec<GlobalValue>,
}

/// Why a snapshot could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ImageError {
    /// Not a wasm snapshot, or one of another version.
    #[error("not a tandem wasm snapshot (bad magic)")]
    Magic,
    /// The bytes end early or a field is out of range.
    #[error("malformed wasm snapshot: {0}")]
    Malformed(&'static str),
    /// The checksum does not match.
    #[error("wasm snapshot checksum mismatch (corrupted)")]
    Checksum,
}

impl Image {
    /// Encodes the image for module `module_id`.
    pub fn encode(&self, module_id: &[u8; 32]) -> Vec<u8> {
        let nonzero: Vec<(usize, &[u8])> = self
            .memory
            .chunks(PAGE)
            .enumerate()
            .filter(|(_, page)| page.iter().any(|&b| b != 0))
            .collect();
        let mut out = Vec::with_capacity(
            8 + 32 + 8 + 4 + self.globals.len() * 17 + 4 + nonzero.len() * (PAGE + 4) + 32,
        );
        out.extend_from_slice(MAGIC);
        out.extend_from_slice(module_id);
        out.extend_from_slice(&(self.memory.len() as u64).to_le_bytes());
        out.extend_from_slice(&(self.globals.len() as u32).to_le_bytes());
        for g in &self.globals {
            let (tag, bits) = g.tag_and_bits();
            out.push(tag);
            out.extend_from_slice(&bits.to_le_bytes());
        }
        out.extend_from_slice(&(nonzero.len() as u32).to_le_bytes());
        for (index, page) in nonzero {
            out.extend_from_slice(&(index as u32).to_le_bytes());
            out.extend_from_slice(page);
            // The last page of a memory is always whole (memory grows by
            // pages), but pad defensively so decoding stays simple.
            out.resize(out.len() + (PAGE - page.len()), 0);
        }
        let sum = Sha256::digest(&out);
        out.extend_from_slice(&sum);
        out
    }

    /// Decodes a snapshot: the module id it is of, and the image.
    pub fn decode(bytes: &[u8]) -> Result<([u8; 32], Image), ImageError> {
        if bytes.len() < 8 || bytes.get(..8) != Some(MAGIC.as_slice()) {
            return Err(ImageError::Magic);
        }
        let body_len = bytes
            .len()
            .checked_sub(32)
            .ok_or(ImageError::Malformed("shorter than its checksum"))?;
        let (body, sum) = bytes.split_at(body_len);
        if Sha256::digest(body).as_slice() != sum {
            return Err(ImageError::Checksum);
        }
        let mut r = Reader { rest: &body[8..] };
        let module_id: [u8; 32] = r
            .take(32)?
            .try_into()
            .map_err(|_| ImageError::Malformed("module id"))?;
        let memory_len = r.u64()?;
        if memory_len % PAGE as u64 != 0 || memory_len > 1 << 32 {
            return Err(ImageError::Malformed("memory length"));
        }
        let globals_len = r.u32()?;
        let mut globals = Vec::new();
        for _ in 0..globals_len {
            let tag = r.take(1)?.first().copied().unwrap_or(u8::MAX);
            let bits = u128::from_le_bytes(
                r.take(16)?
                    .try_into()
                    .map_err(|_| ImageError::Malformed("global"))?,
            );
            globals.push(
                GlobalValue::from_tag_and_bits(tag, bits)
                    .ok_or(ImageError::Malformed("global type"))?,
            );
        }
        let mut memory = vec![0u8; memory_len as usize];
        let pages = r.u32()?;
        for _ in 0..pages {
            let index = r.u32()? as usize;
            let page = r.take(PAGE)?;
            let start = index
                .checked_mul(PAGE)
                .filter(|s| s + PAGE <= memory.len())
                .ok_or(ImageError::Malformed("page index beyond the memory"))?;
            memory
                .get_mut(start..start + PAGE)
                .ok_or(ImageError::Malformed("page index beyond the memory"))?
                .copy_from_slice(page);
        }
        if !r.rest.is_empty() {
            return Err(ImageError::Malformed("trailing bytes"));
        }
        Ok((module_id, Image { memory, globals }))
    }

    /// A hash of the image for `module_id`, equal on replicas in the same
    /// state: the first 8 bytes of SHA-256 over the module id, the memory's
    /// length, the globals and every non-zero page with its index (the
    /// snapshot's content, without building it).
    pub fn state_hash(&self, module_id: &[u8; 32]) -> u64 {
        let mut h = Sha256::new();
        h.update(module_id);
        h.update((self.memory.len() as u64).to_le_bytes());
        for g in &self.globals {
            let (tag, bits) = g.tag_and_bits();
            h.update([tag]);
            h.update(bits.to_le_bytes());
        }
        for (index, page) in self.memory.chunks(PAGE).enumerate() {
            if page.iter().any(|&b| b != 0) {
                h.update((index as u32).to_le_bytes());
                h.update(page);
            }
        }
        let digest = h.finalize();
        let mut first = [0u8; 8];
        first.copy_from_slice(&digest[..8]);
        u64::from_le_bytes(first)
    }
}

struct Reader<'a> {
    rest: &'a [u8],
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], ImageError> {
        if self.rest.len() < n {
            return Err(ImageError::Malformed("truncated"));
        }
        let (head, rest) = self.rest.split_at(n);
        self.rest = rest;
        Ok(head)
    }

    fn u32(&mut self) -> Result<u32, ImageError> {
        let b = self.take(4)?;
        Ok(u32::from_le_bytes(
            b.try_into().map_err(|_| ImageError::Malformed("u32"))?,
        ))
    }

    fn u64(&mut self) -> Result<u64, ImageError> {
        let b = self.take(8)?;
        Ok(u64::from_le_bytes(
            b.try_into().map_err(|_| ImageError::Malformed("u64"))?,
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Image {
        let mut memory = vec![0u8; 4 * PAGE];
        memory[5] = 1;
        memory[3 * PAGE + 7] = 9;
        Image {
            memory,
            globals: vec![GlobalValue::I32(7), GlobalValue::F64(f64::NAN.to_bits())],
        }
    }

    #[test]
    fn round_trip_skips_zero_pages() {
        let image = sample();
        let bytes = image.encode(&[3; 32]);
        assert!(
            bytes.len() < 3 * PAGE,
            "zero pages were stored: {}",
            bytes.len()
        );
        let (id, back) = Image::decode(&bytes).unwrap();
        assert_eq!(id, [3; 32]);
        assert_eq!(back, image);
        assert_eq!(back.state_hash(&id), image.state_hash(&[3; 32]));
    }

    #[test]
    fn corruption_and_truncation_are_refused() {
        let bytes = sample().encode(&[3; 32]);
        let mut flipped = bytes.clone();
        flipped[60] ^= 1;
        assert_eq!(Image::decode(&flipped), Err(ImageError::Checksum));
        assert!(Image::decode(&bytes[..bytes.len() - 1]).is_err());
        assert_eq!(Image::decode(b"nonsense"), Err(ImageError::Magic));
    }

    #[test]
    fn hash_sees_every_byte_and_the_module() {
        let a = sample();
        let mut b = sample();
        b.memory[2 * PAGE] = 1;
        assert_ne!(a.state_hash(&[0; 32]), b.state_hash(&[0; 32]));
        assert_ne!(a.state_hash(&[0; 32]), a.state_hash(&[1; 32]));
    }
}
