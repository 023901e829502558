//! Images, made ready once at indexing: decoded whole within bounds (a
//! decompression bomb or a truncated file fails there), and, if too large
//! to send as they are, scaled down to fit [`MAX_SIDE`] and re-encoded. The
//! scaled version is stored beside the original ([`sent_key`]), so a
//! generation only reads bytes and never decodes an image.

use std::io::Cursor;

/// Longest side of an image as sent, in pixels.
pub const MAX_SIDE: u32 = 2048;

/// Largest image sent as it is; a larger one is scaled down and re-encoded.
pub const MAX_INLINE_BYTES: usize = 4 * 1024 * 1024;

/// Most pixels an image may have (40 megapixels: decoding one takes at
/// most 160 MiB as RGBA).
pub const MAX_PIXELS: u64 = 40_000_000;

/// Most memory one image's decoding may take.
const MAX_DECODE_ALLOC: u64 = 256 * 1024 * 1024;

/// The object key of an image's version for sending, when it has one.
pub fn sent_key(file_id: &str) -> String {
    format!("files/{file_id}.sent")
}

/// Checks an image and, if it is too large to send as it is, scales it
/// down: the scaled bytes and their type, or `None` to send the original;
/// or why the image cannot be used.
pub fn prepare(bytes: &[u8]) -> Result<Option<(Vec<u8>, &'static str)>, String> {
    let unreadable = |e: image::ImageError| format!("the image cannot be read: {e}");
    let reader = || {
        image::ImageReader::new(Cursor::new(bytes))
            .with_guessed_format()
            .map_err(|e| format!("the image cannot be read: {e}"))
    };
    let (width, height) = reader()?.into_dimensions().map_err(unreadable)?;
    if u64::from(width) * u64::from(height) > MAX_PIXELS {
        return Err(format!(
            "the image has {width}x{height} pixels, over the {} megapixels Sluice takes",
            MAX_PIXELS / 1_000_000
        ));
    }
    let mut decoder = reader()?;
    let mut limits = image::Limits::default();
    limits.max_alloc = Some(MAX_DECODE_ALLOC);
    decoder.limits(limits);
    let image = decoder.decode().map_err(unreadable)?;
    if bytes.len() <= MAX_INLINE_BYTES && width.max(height) <= MAX_SIDE {
        return Ok(None);
    }
    let scaled = image.resize(MAX_SIDE, MAX_SIDE, image::imageops::FilterType::Triangle);
    let mut out = Cursor::new(Vec::new());
    let mime = if scaled.color().has_alpha() {
        scaled
            .write_to(&mut out, image::ImageFormat::Png)
            .map_err(|e| format!("the image cannot be re-encoded: {e}"))?;
        "image/png"
    } else {
        image::DynamicImage::ImageRgb8(scaled.to_rgb8())
            .write_to(&mut out, image::ImageFormat::Jpeg)
            .map_err(|e| format!("the image cannot be re-encoded: {e}"))?;
        "image/jpeg"
    };
    Ok(Some((out.into_inner(), mime)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn png(width: u32, height: u32) -> Vec<u8> {
        let image = image::RgbImage::from_fn(width, height, |x, y| {
            image::Rgb([(x % 256) as u8, (y % 256) as u8, 7])
        });
        let mut out = Cursor::new(Vec::new());
        image.write_to(&mut out, image::ImageFormat::Png).unwrap();
        out.into_inner()
    }

    #[test]
    fn small_images_go_as_they_are_large_ones_are_scaled_and_broken_ones_refused() {
        assert_eq!(prepare(&png(40, 30)).unwrap(), None);
        let (scaled, mime) = prepare(&png(4000, 1000)).unwrap().unwrap();
        assert_eq!(mime, "image/jpeg");
        let decoded = image::load_from_memory(&scaled).unwrap();
        assert_eq!(
            (decoded.width(), decoded.height()),
            (MAX_SIDE, MAX_SIDE / 4)
        );
        let whole = png(20, 20);
        assert!(prepare(&whole[..whole.len() - 20]).is_err());
        assert!(prepare(b"\x89PNG\r\n\x1a\nbroken").is_err());
    }

    #[test]
    fn an_image_of_too_many_pixels_is_refused_before_it_is_decoded() {
        // A header claiming 60000x60000 pixels, with almost no data.
        let mut header = png(1, 1);
        header[16..20].copy_from_slice(&60_000u32.to_be_bytes());
        header[20..24].copy_from_slice(&60_000u32.to_be_bytes());
        // The IHDR chunk's CRC, over its type and data.
        let crc = header[12..29].iter().fold(0xffff_ffffu32, |mut crc, byte| {
            crc ^= u32::from(*byte);
            for _ in 0..8 {
                crc = if crc & 1 == 1 {
                    (crc >> 1) ^ 0xedb8_8320
                } else {
                    crc >> 1
                };
            }
            crc
        }) ^ 0xffff_ffff;
        header[29..33].copy_from_slice(&crc.to_be_bytes());
        let error = prepare(&header).unwrap_err();
        assert!(error.contains("megapixels"), "{error}");
    }
}
