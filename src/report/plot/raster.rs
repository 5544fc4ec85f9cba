//! Charts as PNG, and what a reader of the rendered chart would see of its text: both
//! through resvg with the same embedded font the layout measured with.

use super::canvas::{font_data, FONT_FAMILY};
use crate::error::{Error, Result};
use resvg::{tiny_skia, usvg};

fn options() -> usvg::Options<'static> {
    let mut opt = usvg::Options {
        font_family: FONT_FAMILY.to_string(),
        ..Default::default()
    };
    opt.fontdb_mut().load_font_data(font_data().to_vec());
    opt
}

fn tree(svg: &str) -> Result<usvg::Tree> {
    usvg::Tree::from_str(svg, &options())
        .map_err(|e| Error::Invalid(format!("chart SVG does not parse: {e}")))
}

/// The chart rendered at `scale` (2: sharp on high-density screens and in PDFs), as PNG.
pub fn png(svg: &str, scale: f32) -> Result<Vec<u8>> {
    encode(&render(svg, scale)?)
}

fn render(svg: &str, scale: f32) -> Result<tiny_skia::Pixmap> {
    let t = tree(svg)?;
    let size = t
        .size()
        .to_int_size()
        .scale_by(scale)
        .ok_or_else(|| Error::Invalid("chart has an empty canvas".into()))?;
    let mut pixmap = tiny_skia::Pixmap::new(size.width(), size.height())
        .ok_or_else(|| Error::Invalid("chart canvas too large to render".into()))?;
    resvg::render(
        &t,
        tiny_skia::Transform::from_scale(scale, scale),
        &mut pixmap.as_mut(),
    );
    Ok(pixmap)
}

/// PNG bytes of a rendered chart. Charts are drawn on an opaque background, so they are
/// written as RGB (no alpha channel) at the encoder's best compression with adaptive row
/// filters: the committed figures were 2-3 MB each as default RGBA, rewritten on every
/// regeneration. A chart with any transparent pixel keeps RGBA.
fn encode(pixmap: &tiny_skia::Pixmap) -> Result<Vec<u8>> {
    if pixmap.pixels().iter().any(|p| p.alpha() != 255) {
        return pixmap
            .encode_png()
            .map_err(|e| Error::Invalid(format!("encoding PNG: {e}")));
    }
    // Opaque pixels are the same premultiplied or not.
    let rgb: Vec<u8> = pixmap
        .data()
        .chunks_exact(4)
        .flat_map(|p| [p[0], p[1], p[2]])
        .collect();
    let mut out = Vec::new();
    let mut enc = png::Encoder::new(&mut out, pixmap.width(), pixmap.height());
    enc.set_color(png::ColorType::Rgb);
    enc.set_depth(png::BitDepth::Eight);
    enc.set_compression(png::Compression::Best);
    enc.set_adaptive_filter(png::AdaptiveFilterType::Adaptive);
    let err = |e: png::EncodingError| Error::Invalid(format!("encoding PNG: {e}"));
    let mut w = enc.write_header().map_err(err)?;
    w.write_image_data(&rgb).map_err(err)?;
    w.finish().map_err(err)?;
    Ok(out)
}

/// One text element as laid out by the renderer: its string and its box in canvas units
/// (x0, y0, x1, y1).
#[derive(Debug, Clone, PartialEq)]
pub struct TextBox {
    pub text: String,
    pub bbox: (f32, f32, f32, f32),
}

/// Every text element of `svg` with its rendered bounding box.
pub fn text_boxes(svg: &str) -> Result<Vec<TextBox>> {
    Ok(boxes_of(&tree(svg)?))
}

fn boxes_of(t: &usvg::Tree) -> Vec<TextBox> {
    let mut out = Vec::new();
    collect(t.root(), &mut out);
    out
}

fn collect(g: &usvg::Group, out: &mut Vec<TextBox>) {
    for n in g.children() {
        match n {
            usvg::Node::Group(g) => collect(g, out),
            usvg::Node::Text(t) => {
                let b = t.abs_bounding_box();
                out.push(TextBox {
                    text: t.chunks().iter().map(|c| c.text()).collect(),
                    bbox: (b.left(), b.top(), b.right(), b.bottom()),
                });
            }
            _ => {}
        }
    }
}

/// Text that does not lie wholly inside the `w` x `h` canvas (what a reader would see cut
/// off), as "text: box".
pub fn text_outside(svg: &str) -> Result<Vec<String>> {
    let t = tree(svg)?;
    let (w, h) = (t.size().width(), t.size().height());
    Ok(boxes_of(&t)
        .into_iter()
        .filter(|b| b.bbox.0 < 0.0 || b.bbox.1 < 0.0 || b.bbox.2 > w || b.bbox.3 > h)
        .map(|b| format!("{}: {:?} outside {w}x{h}", b.text, b.bbox))
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decode(bytes: &[u8]) -> (png::ColorType, Vec<u8>) {
        let mut r = png::Decoder::new(bytes).read_info().unwrap();
        let mut buf = vec![0; r.output_buffer_size()];
        let info = r.next_frame(&mut buf).unwrap();
        buf.truncate(info.buffer_size());
        (info.color_type, buf)
    }

    /// An opaque chart is written as RGB with exactly the rendered pixels; a transparent
    /// one keeps its alpha.
    #[test]
    fn png_pixels_are_the_rendered_ones() {
        let svg = |bg: &str| {
            format!(
                r##"<svg xmlns="http://www.w3.org/2000/svg" width="40" height="30">{bg}<circle cx="20" cy="15" r="9" fill="#3366cc"/><text x="2" y="28" font-size="8">ab</text></svg>"##
            )
        };
        let rendered = render(&svg(r#"<rect width="40" height="30" fill="white"/>"#), 2.0).unwrap();
        let (color, pixels) = decode(&encode(&rendered).unwrap());
        assert_eq!(color, png::ColorType::Rgb);
        let expect: Vec<u8> = (rendered.data().chunks_exact(4))
            .flat_map(|p| [p[0], p[1], p[2]])
            .collect();
        assert_eq!(pixels, expect);
        assert_eq!(pixels.len(), 80 * 60 * 3);
        assert!(pixels.chunks_exact(3).any(|p| p == [0x33, 0x66, 0xcc]));
        let (color, _) = decode(&png(&svg(""), 1.0).unwrap());
        assert_eq!(color, png::ColorType::Rgba);
    }
}
