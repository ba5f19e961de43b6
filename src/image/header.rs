//! The xl save-file header: 48 bytes, then optional data holding the domain
//! config as libxl JSON. Byte for byte what `xl save` writes, so `xl restore`
//! takes our images and we take xl's (and so xendomains').

use std::io::Read;

use super::ImageError;

/// `savefileheader_magic` in xl: note the space, NUL, space, CR at its end.
pub const MAGIC: [u8; 32] = *b"Xen saved domain, xl format\n \0 \r";
/// Written in the saving host's byte order; a swapped value means a foreign image.
pub const BYTEORDER: u32 = 0x0102_0304;
/// Config data is JSON.
pub const FLAG_JSON: u32 = 1 << 0;
/// The stream is libxl's migration v2 format.
pub const FLAG_STREAM_V2: u32 = 1 << 1;
const KNOWN_MANDATORY: u32 = FLAG_JSON | FLAG_STREAM_V2;
/// magic + byteorder + mandatory + optional flags + optional data length.
pub const FIXED_LEN: usize = 48;
/// Refuse absurd optional data before allocating it (xl's configs are KiBs).
const MAX_OPTIONAL_DATA: u32 = 16 << 20;

/// A parsed header with its domain config.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct XlHeader {
    pub mandatory_flags: u32,
    pub optional_flags: u32,
    /// The config JSON text, without xl's trailing NUL.
    pub config: Option<String>,
}

impl XlHeader {
    /// The header xl writes for a v2 stream with this config.
    pub fn new(config_json: &str) -> XlHeader {
        XlHeader {
            mandatory_flags: FLAG_STREAM_V2 | FLAG_JSON,
            optional_flags: 0,
            config: Some(config_json.to_owned()),
        }
    }

    /// Header and optional data, ready to be written before the stream.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut opt = Vec::new();
        if let Some(cfg) = &self.config {
            // xl counts the trailing NUL in the config length.
            opt.extend_from_slice(&((cfg.len() + 1) as u32).to_ne_bytes());
            opt.extend_from_slice(cfg.as_bytes());
            opt.push(0);
        }
        let mut out = Vec::with_capacity(FIXED_LEN + opt.len());
        out.extend_from_slice(&MAGIC);
        for v in [
            BYTEORDER,
            self.mandatory_flags,
            self.optional_flags,
            opt.len() as u32,
        ] {
            out.extend_from_slice(&v.to_ne_bytes());
        }
        out.extend_from_slice(&opt);
        out
    }

    /// Reads exactly the header and its optional data and nothing more: libxl
    /// reads the stream from the fd's current offset, so no read-ahead here.
    pub fn read_from(r: &mut impl Read) -> Result<XlHeader, ImageError> {
        let mut fixed = [0u8; FIXED_LEN];
        read_exact(r, &mut fixed, "xl header")?;
        if fixed[..32] != MAGIC {
            return Err(ImageError::NotAnImage);
        }
        let word = |i: usize| {
            u32::from_ne_bytes(fixed[32 + 4 * i..36 + 4 * i].try_into().expect("4 bytes"))
        };
        if word(0) != BYTEORDER {
            return Err(ImageError::ForeignByteOrder);
        }
        let (mandatory, optional, opt_len) = (word(1), word(2), word(3));
        if mandatory & !KNOWN_MANDATORY != 0 {
            return Err(ImageError::UnknownFlags(mandatory));
        }
        if mandatory & FLAG_STREAM_V2 == 0 {
            return Err(ImageError::LegacyStream);
        }
        if opt_len > MAX_OPTIONAL_DATA {
            return Err(ImageError::Corrupt(format!(
                "header claims {opt_len} bytes of optional data"
            )));
        }
        let mut opt = vec![0u8; opt_len as usize];
        read_exact(r, &mut opt, "xl optional data")?;
        let config = if opt.is_empty() {
            None
        } else {
            let len = opt
                .get(..4)
                .map(|b| u32::from_ne_bytes(b.try_into().expect("4 bytes")) as usize)
                .ok_or_else(|| ImageError::Corrupt("optional data shorter than 4 bytes".into()))?;
            let data = opt.get(4..4 + len).ok_or_else(|| {
                ImageError::Corrupt(format!("config length {len} overruns the optional data"))
            })?;
            let text = data.strip_suffix(&[0]).unwrap_or(data);
            Some(
                String::from_utf8(text.to_vec())
                    .map_err(|_| ImageError::Corrupt("config is not UTF-8".into()))?,
            )
        };
        Ok(XlHeader {
            mandatory_flags: mandatory,
            optional_flags: optional,
            config,
        })
    }

    /// The embedded domain config, which an image must have to be restored
    /// without a separate config file.
    pub fn config_json(&self) -> Result<serde_json::Value, ImageError> {
        let text = self.config.as_deref().ok_or(ImageError::NoConfig)?;
        if self.mandatory_flags & FLAG_JSON == 0 {
            return Err(ImageError::NoConfig);
        }
        serde_json::from_str(text).map_err(|e| ImageError::Corrupt(format!("config JSON: {e}")))
    }
}

fn read_exact(r: &mut impl Read, buf: &mut [u8], what: &'static str) -> Result<(), ImageError> {
    r.read_exact(buf).map_err(|e| match e.kind() {
        std::io::ErrorKind::UnexpectedEof => ImageError::Truncated(what),
        _ => ImageError::Io(e),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_leaves_the_stream_unread() {
        let h = XlHeader::new(r#"{"c_info":{"name":"g1"}}"#);
        let mut bytes = h.to_bytes();
        assert_eq!(&bytes[..32], &MAGIC);
        assert_eq!(
            bytes.len(),
            FIXED_LEN + 4 + h.config.as_ref().unwrap().len() + 1
        );
        bytes.extend_from_slice(b"LibxlFmt...");
        let mut r = std::io::Cursor::new(&bytes);
        let back = XlHeader::read_from(&mut r).unwrap();
        assert_eq!(back, h);
        assert_eq!(&bytes[r.position() as usize..], b"LibxlFmt...");
        assert_eq!(back.config_json().unwrap()["c_info"]["name"], "g1");
    }

    #[test]
    fn refuses_what_is_not_a_v2_xl_image() {
        let good = XlHeader::new("{}").to_bytes();
        let parse = |b: &[u8]| XlHeader::read_from(&mut std::io::Cursor::new(b));

        assert!(matches!(
            parse(b"#!/bin/sh\n"),
            Err(ImageError::Truncated(_))
        ));
        assert!(matches!(parse(&[b'x'; 64]), Err(ImageError::NotAnImage)));

        let mut swapped = good.clone();
        swapped[32..36].copy_from_slice(&BYTEORDER.swap_bytes().to_ne_bytes());
        assert!(matches!(parse(&swapped), Err(ImageError::ForeignByteOrder)));

        let mut unknown = good.clone();
        unknown[36..40].copy_from_slice(&(KNOWN_MANDATORY | (1 << 7)).to_ne_bytes());
        assert!(matches!(parse(&unknown), Err(ImageError::UnknownFlags(_))));

        let mut legacy = good.clone();
        legacy[36..40].copy_from_slice(&FLAG_JSON.to_ne_bytes());
        assert!(matches!(parse(&legacy), Err(ImageError::LegacyStream)));

        let mut huge = good.clone();
        huge[44..48].copy_from_slice(&u32::MAX.to_ne_bytes());
        assert!(matches!(parse(&huge), Err(ImageError::Corrupt(_))));

        let mut overrun = good.clone();
        overrun[48..52].copy_from_slice(&1000u32.to_ne_bytes());
        assert!(matches!(parse(&overrun), Err(ImageError::Corrupt(_))));

        for cut in [10, FIXED_LEN, good.len() - 1] {
            assert!(
                matches!(parse(&good[..cut]), Err(ImageError::Truncated(_))),
                "cut at {cut}"
            );
        }
    }

    #[test]
    fn an_image_without_config_parses_but_cannot_give_one() {
        let h = XlHeader {
            mandatory_flags: FLAG_STREAM_V2,
            optional_flags: 0,
            config: None,
        };
        let back = XlHeader::read_from(&mut std::io::Cursor::new(h.to_bytes())).unwrap();
        assert!(matches!(back.config_json(), Err(ImageError::NoConfig)));
    }
}
