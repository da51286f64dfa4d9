//! SecretSpec: an opaque blob (base64 `data`), mesh-scoped for Secret and global for
//! GlobalSecret.

use serde::{Deserialize, Serialize};

use crate::core::common::is_base64;
use crate::validation::{FieldPath, Validate, ValidationContext, Violations};

/// The `spec` of a Secret or GlobalSecret.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct SecretSpec {
    /// The value, base64-encoded (as protobuf JSON encodes bytes).
    #[serde(
        deserialize_with = "crate::lenient::string",
        skip_serializing_if = "String::is_empty"
    )]
    pub data: String,
}

impl SecretSpec {
    /// A secret holding `bytes`.
    pub fn from_bytes(bytes: &[u8]) -> SecretSpec {
        SecretSpec {
            data: encode_base64(bytes),
        }
    }

    /// The decoded value, or `None` when `data` is not valid base64.
    pub fn bytes(&self) -> Option<Vec<u8>> {
        decode_base64(&self.data)
    }
}

const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

fn encode_base64(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(char::from(ALPHABET[((n >> (18 - 6 * i)) & 63) as usize]));
            } else {
                out.push('=');
            }
        }
    }
    out
}

fn decode_base64(s: &str) -> Option<Vec<u8>> {
    if !is_base64(s) {
        return None;
    }
    let mut out = Vec::with_capacity(s.len() / 4 * 3);
    let mut acc: u32 = 0;
    let mut bits = 0;
    for c in s.bytes().take_while(|b| *b != b'=') {
        let value = match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' | b'-' => 62,
            b'/' | b'_' => 63,
            _ => return None,
        };
        acc = (acc << 6) | u32::from(value);
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push(((acc >> bits) & 0xff) as u8);
        }
    }
    Some(out)
}

impl Validate for SecretSpec {
    fn validate(&self, _ctx: &ValidationContext<'_>, path: &FieldPath, v: &mut Violations) {
        if !is_base64(&self.data) {
            v.add(&path.field("data"), "must be valid base64");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_round_trip() {
        for input in [&b""[..], b"t", b"te", b"tes", b"test\n"] {
            let spec = SecretSpec::from_bytes(input);
            assert_eq!(spec.bytes().as_deref(), Some(input));
        }
        assert_eq!(SecretSpec::from_bytes(b"test\n").data, "dGVzdAo=");
    }

    #[test]
    fn invalid_data_is_reported() {
        let meta = crate::resource::ResourceMeta::default();
        let mut v = Violations::new();
        SecretSpec { data: "%%%".into() }.validate(
            &ValidationContext { meta: &meta },
            &FieldPath::root(),
            &mut v,
        );
        assert_eq!(v.iter().next().map(|v| v.field.as_str()), Some("data"));
    }
}
