//! The offer as a QR code: SVG and PNG for the counter's screen, text for
//! a terminal (`dojangctl offer`). Encoding is qrcodegen's (error
//! correction M, a quiet zone of four modules); the drawings are ours.

use std::io::Write;

use qrcodegen::{QrCode, QrCodeEcc};

/// Modules of quiet zone around the code (ISO/IEC 18004 asks for four).
const BORDER: i32 = 4;
/// PNG pixels per module.
const PNG_SCALE: i32 = 6;

/// The QR code of `text`, or `None` if it is too long for any version.
pub fn encode(text: &str) -> Option<QrCode> {
    QrCode::encode_text(text, QrCodeEcc::Medium).ok()
}

fn dark(code: &QrCode, x: i32, y: i32) -> bool {
    code.get_module(x - BORDER, y - BORDER)
}

/// An SVG drawing: one path of unit squares, black on white.
pub fn svg(code: &QrCode) -> String {
    let side = code.size() + 2 * BORDER;
    let mut path = String::new();
    for y in 0..side {
        for x in 0..side {
            if dark(code, x, y) {
                path.push_str(&format!("M{x},{y}h1v1h-1z"));
            }
        }
    }
    format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" viewBox=\"0 0 {side} {side}\" \
         shape-rendering=\"crispEdges\"><rect width=\"100%\" height=\"100%\" fill=\"#fff\"/>\
         <path d=\"{path}\" fill=\"#000\"/></svg>"
    )
}

/// A PNG: 1-bit greyscale, `PNG_SCALE` pixels a module.
pub fn png(code: &QrCode) -> Vec<u8> {
    let side = (code.size() + 2 * BORDER) * PNG_SCALE;
    let width = usize::try_from(side).unwrap_or(0);
    let row_bytes = width.div_ceil(8);
    let mut raw = Vec::with_capacity((row_bytes + 1) * width);
    for py in 0..side {
        raw.push(0); // filter: none
        let mut row = vec![0u8; row_bytes];
        for px in 0..side {
            let white = !dark(code, px / PNG_SCALE, py / PNG_SCALE);
            if white && let Some(byte) = row.get_mut(usize::try_from(px / 8).unwrap_or(0)) {
                *byte |= 0x80 >> (px % 8);
            }
        }
        raw.extend_from_slice(&row);
    }
    let mut zlib = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::best());
    let idat = zlib
        .write_all(&raw)
        .and_then(|()| zlib.finish())
        .unwrap_or_default();
    let side = u32::try_from(side).unwrap_or(0).to_be_bytes();
    let mut ihdr = Vec::with_capacity(13);
    ihdr.extend_from_slice(&side);
    ihdr.extend_from_slice(&side);
    // Bit depth 1, greyscale, deflate, adaptive filtering, no interlace.
    ihdr.extend_from_slice(&[1, 0, 0, 0, 0]);
    let mut out = b"\x89PNG\r\n\x1a\n".to_vec();
    for (kind, data) in [(b"IHDR", &ihdr), (b"IDAT", &idat), (b"IEND", &Vec::new())] {
        out.extend_from_slice(&u32::try_from(data.len()).unwrap_or(0).to_be_bytes());
        let mut crc = flate2::Crc::new();
        crc.update(kind);
        crc.update(data);
        out.extend_from_slice(kind);
        out.extend_from_slice(data);
        out.extend_from_slice(&crc.sum().to_be_bytes());
    }
    out
}

/// Text for a terminal: two modules a character (upper and lower half
/// blocks), light on dark inverted so a phone reads it on a dark terminal.
pub fn terminal(code: &QrCode) -> String {
    let side = code.size() + 2 * BORDER;
    let mut out = String::new();
    for y in (0..side).step_by(2) {
        for x in 0..side {
            // Printed light-on-dark: a dark module is a space.
            let top = !dark(code, x, y);
            let bottom = y + 1 < side && !dark(code, x, y + 1);
            out.push(match (top, bottom) {
                (true, true) => '█',
                (true, false) => '▀',
                (false, true) => '▄',
                (false, false) => ' ',
            });
        }
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::indexing_slicing)]
    use super::*;

    #[test]
    fn the_drawings_have_the_code_s_size_and_a_valid_png_frame() {
        let code =
            encode("openid-credential-offer://?credential_offer_uri=https%3A%2F%2Fa").unwrap();
        let side = code.size() + 8;
        assert!(svg(&code).contains(&format!("viewBox=\"0 0 {side} {side}\"")));
        let png = png(&code);
        assert_eq!(&png[..8], b"\x89PNG\r\n\x1a\n");
        assert_eq!(&png[12..16], b"IHDR");
        let width = u32::from_be_bytes(png[16..20].try_into().unwrap());
        assert_eq!(width, u32::try_from(side * PNG_SCALE).unwrap());
        // IHDR's CRC covers its type and data.
        let mut crc = flate2::Crc::new();
        crc.update(&png[12..29]);
        assert_eq!(crc.sum().to_be_bytes(), png[29..33]);
        assert!(png.ends_with(&[0xae, 0x42, 0x60, 0x82]), "IEND's fixed CRC");
        let lines = terminal(&code);
        assert_eq!(
            lines.lines().count(),
            usize::try_from((side + 1) / 2).unwrap()
        );
    }
}
