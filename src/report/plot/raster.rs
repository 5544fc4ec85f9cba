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

/// The chart rendered at `scale` (2: sharp on high-density screens and in PDFs).
pub fn png(svg: &str, scale: f32) -> Result<Vec<u8>> {
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
    pixmap
        .encode_png()
        .map_err(|e| Error::Invalid(format!("encoding PNG: {e}")))
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
