//! tmp
pub(crate) mod image;
/// Frame.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Frame { /// w
pub width: u32, /// h
pub height: u32, /// rgb
pub rgb: Vec<u8> }
/// Box.
#[derive(Debug, Clone, Copy, PartialEq, Default, serde::Serialize)]
pub struct FaceBox { /// a
pub x1: f32, /// a
pub y1: f32, /// a
pub x2: f32, /// a
pub y2: f32, /// a
pub score: f32 }
