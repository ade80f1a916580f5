//! Loading an OpenCV Haar cascade ("new" XML format) into a validated, evaluation-ready model.
//!
//! Owns: parsing `<cascade><stageType>BOOST</stageType><featureType>HAAR</featureType>…` files (such as
//! Debian's `opencv-data` `haarcascade_frontalface_default.xml`) and checking every index and number in
//! them, so that evaluation ([`super::haar`]) can index without bounds surprises.
//!
//! Must not: evaluate anything, or accept a file it cannot evaluate faithfully: the old
//! `<opencv_haartraining>` format, LBP/HOG cascades and tilted (45°) features are rejected with a
//! [`CascadeError`] rather than silently mis-scored. Trees (e.g. `haarcascade_frontalface_alt2.xml`) and
//! stumps are both supported.

use std::path::Path;

use quick_xml::Reader;
use quick_xml::events::Event;

/// Why a cascade file could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum CascadeError {
    /// The file could not be read.
    #[error("cannot read cascade {path}: {source}")]
    Io {
        /// The path that was read.
        path: String,
        /// The underlying error.
        source: std::io::Error,
    },
    /// The XML is malformed.
    #[error("cascade XML is malformed: {0}")]
    Xml(String),
    /// The XML is well formed but not a cascade this evaluator supports, or is inconsistent.
    #[error("unsupported or inconsistent cascade: {0}")]
    Invalid(String),
}

/// One weighted rectangle of a Haar feature, in window coordinates.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct HaarRect {
    pub x: u32,
    pub y: u32,
    pub w: u32,
    pub h: u32,
    pub weight: f32,
}

/// A Haar feature: two or three weighted rectangles (OpenCV stores at most three).
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct HaarFeature {
    pub rects: Vec<HaarRect>,
}

/// One internal node of a weak classifier tree (OpenCV `DTreeNode`).
///
/// A child index `> 0` is another node of the same tree; `<= 0` is the leaf `-child`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct Node {
    pub left: i32,
    pub right: i32,
    pub feature: usize,
    pub threshold: f32,
}

/// One weak classifier: its nodes and leaves are ranges into [`Cascade::nodes`] / [`Cascade::leaves`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct Tree {
    pub node_start: usize,
    pub node_count: usize,
    pub leaf_start: usize,
    pub leaf_count: usize,
}

/// One boosted stage: a window passes when the sum of its trees' leaves is `>= threshold`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct Stage {
    /// `stageThreshold − 1e-5`, exactly as OpenCV's `THRESHOLD_EPS` adjustment.
    pub threshold: f32,
    pub tree_start: usize,
    pub tree_count: usize,
}

/// A validated Haar cascade.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Cascade {
    pub win_w: u32,
    pub win_h: u32,
    pub stages: Vec<Stage>,
    pub trees: Vec<Tree>,
    pub nodes: Vec<Node>,
    pub leaves: Vec<f32>,
    pub features: Vec<HaarFeature>,
}

/// OpenCV subtracts this from every stage threshold (`THRESHOLD_EPS` in cascadedetect.cpp).
const THRESHOLD_EPS: f32 = 1e-5;

/// Largest window side accepted (OpenCV's own cascades are 14–60 px); it bounds the integral-image
/// view the evaluator uses.
const MAX_WINDOW: u32 = 64;

/// A weak classifier as read: its `internalNodes` numbers and its `leafValues`.
type RawTree = (Vec<f64>, Vec<f64>);
/// A stage as read: its threshold (once seen) and its trees.
type RawStage = (Option<f32>, Vec<RawTree>);

/// Accumulates the parse of one file; validated into a [`Cascade`] by [`Builder::finish`].
#[derive(Default)]
struct Builder {
    stage_type: Option<String>,
    feature_type: Option<String>,
    width: Option<u32>,
    height: Option<u32>,
    stages: Vec<RawStage>,
    features: Vec<(Vec<Vec<f64>>, bool)>,
}

impl Cascade {
    /// Reads and validates a cascade file.
    pub(crate) fn from_file(path: &Path) -> Result<Self, CascadeError> {
        let text = std::fs::read_to_string(path).map_err(|source| CascadeError::Io {
            path: path.display().to_string(),
            source,
        })?;
        Self::from_xml(&text)
    }

    /// Parses and validates cascade XML text.
    pub(crate) fn from_xml(text: &str) -> Result<Self, CascadeError> {
        let mut reader = Reader::from_str(text);
        let mut stack: Vec<String> = Vec::new();
        let mut b = Builder::default();
        let mut saw_cascade = false;
        loop {
            match reader.read_event() {
                Err(e) => return Err(CascadeError::Xml(e.to_string())),
                Ok(Event::Eof) => break,
                Ok(Event::Start(e)) => {
                    let name = String::from_utf8_lossy(e.name().as_ref()).into_owned();
                    stack.push(name);
                    on_start(&stack, &mut b, &mut saw_cascade);
                }
                Ok(Event::Empty(e)) => {
                    // A self-closing element carries no text; push and pop so that paths stay right.
                    let name = String::from_utf8_lossy(e.name().as_ref()).into_owned();
                    stack.push(name);
                    on_start(&stack, &mut b, &mut saw_cascade);
                    stack.pop();
                }
                Ok(Event::End(_)) => {
                    stack.pop();
                }
                Ok(Event::Text(t)) => {
                    let raw = t.unescape().map_err(|e| CascadeError::Xml(e.to_string()))?;
                    let s = raw.trim();
                    if !s.is_empty() {
                        on_text(&stack, s, &mut b)?;
                    }
                }
                Ok(_) => {}
            }
        }
        if !saw_cascade {
            return Err(CascadeError::Invalid(
                "no <cascade> element (old <opencv_haartraining> files are not supported)".into(),
            ));
        }
        b.finish()
    }
}

/// Path of the innermost elements, ignoring the `opencv_storage` root and the cascade's own name.
fn rel(stack: &[String]) -> Vec<&str> {
    let start = stack
        .iter()
        .position(|s| s == "cascade")
        .map_or(stack.len(), |i| i + 1);
    stack[start..].iter().map(String::as_str).collect()
}

fn on_start(stack: &[String], b: &mut Builder, saw_cascade: &mut bool) {
    if stack.last().is_some_and(|s| s == "cascade") {
        *saw_cascade = true;
    }
    match rel(stack).as_slice() {
        ["stages", "_"] => b.stages.push((None, Vec::new())),
        ["stages", "_", "weakClassifiers", "_"] => {
            if let Some(stage) = b.stages.last_mut() {
                stage.1.push((Vec::new(), Vec::new()));
            }
        }
        ["features", "_"] => b.features.push((Vec::new(), false)),
        _ => {}
    }
}

fn numbers(s: &str) -> Result<Vec<f64>, CascadeError> {
    s.split_whitespace()
        .map(|t| {
            t.parse::<f64>()
                .map_err(|_| CascadeError::Invalid(format!("not a number: {t:?}")))
        })
        .collect()
}

fn one_u32(s: &str, what: &str) -> Result<u32, CascadeError> {
    s.trim()
        .parse::<u32>()
        .map_err(|_| CascadeError::Invalid(format!("{what} is not an unsigned integer: {s:?}")))
}

fn on_text(stack: &[String], s: &str, b: &mut Builder) -> Result<(), CascadeError> {
    match rel(stack).as_slice() {
        ["stageType"] => b.stage_type = Some(s.to_owned()),
        ["featureType"] => b.feature_type = Some(s.to_owned()),
        ["width"] => b.width = Some(one_u32(s, "width")?),
        ["height"] => b.height = Some(one_u32(s, "height")?),
        ["stages", "_", "stageThreshold"] => {
            let v = numbers(s)?;
            if let (Some(stage), [t]) = (b.stages.last_mut(), v.as_slice()) {
                stage.0 = Some(*t as f32);
            } else {
                return Err(CascadeError::Invalid("stageThreshold must be one number".into()));
            }
        }
        ["stages", "_", "weakClassifiers", "_", "internalNodes"] => {
            if let Some(tree) = b.stages.last_mut().and_then(|st| st.1.last_mut()) {
                tree.0.extend(numbers(s)?);
            }
        }
        ["stages", "_", "weakClassifiers", "_", "leafValues"] => {
            if let Some(tree) = b.stages.last_mut().and_then(|st| st.1.last_mut()) {
                tree.1.extend(numbers(s)?);
            }
        }
        ["features", "_", "rects", "_"] => {
            if let Some(f) = b.features.last_mut() {
                f.0.push(numbers(s)?);
            }
        }
        ["features", "_", "tilted"] => {
            if let Some(f) = b.features.last_mut() {
                f.1 = one_u32(s, "tilted")? != 0;
            }
        }
        _ => {}
    }
    Ok(())
}

/// A finite f64 that fits an f32, or an error naming `what`.
fn finite32(v: f64, what: &str) -> Result<f32, CascadeError> {
    let f = v as f32;
    if f.is_finite() {
        Ok(f)
    } else {
        Err(CascadeError::Invalid(format!("{what} is not finite")))
    }
}

/// An integer-valued f64 in `[lo, hi]`.
fn int_in(v: f64, lo: i64, hi: i64, what: &str) -> Result<i64, CascadeError> {
    if v.fract() != 0.0 || !v.is_finite() || v < lo as f64 || v > hi as f64 {
        return Err(CascadeError::Invalid(format!(
            "{what} = {v} is not an integer in [{lo}, {hi}]"
        )));
    }
    Ok(v as i64)
}

impl Builder {
    fn finish(self) -> Result<Cascade, CascadeError> {
        if self.stage_type.as_deref() != Some("BOOST") {
            return Err(CascadeError::Invalid(format!(
                "stageType {:?}, expected BOOST",
                self.stage_type
            )));
        }
        if self.feature_type.as_deref() != Some("HAAR") {
            return Err(CascadeError::Invalid(format!(
                "featureType {:?}, expected HAAR",
                self.feature_type
            )));
        }
        let (win_w, win_h) = match (self.width, self.height) {
            (Some(w), Some(h)) if (4..=MAX_WINDOW).contains(&w) && (4..=MAX_WINDOW).contains(&h) => (w, h),
            other => {
                return Err(CascadeError::Invalid(format!(
                    "window size {other:?} out of range"
                )));
            }
        };
        if self.stages.is_empty() {
            return Err(CascadeError::Invalid("no stages".into()));
        }

        let mut features = Vec::with_capacity(self.features.len());
        for (i, (rects, tilted)) in self.features.into_iter().enumerate() {
            if tilted {
                return Err(CascadeError::Invalid(format!(
                    "feature {i} is tilted; tilted Haar features are not supported"
                )));
            }
            if rects.is_empty() || rects.len() > 3 {
                return Err(CascadeError::Invalid(format!(
                    "feature {i} has {} rects",
                    rects.len()
                )));
            }
            let mut out = Vec::with_capacity(rects.len());
            for r in rects {
                let [x, y, w, h, wt] = r.as_slice() else {
                    return Err(CascadeError::Invalid(format!(
                        "feature {i}: a rect needs 5 numbers"
                    )));
                };
                let x = int_in(*x, 0, i64::from(win_w), "rect x")? as u32;
                let y = int_in(*y, 0, i64::from(win_h), "rect y")? as u32;
                let w = int_in(*w, 0, i64::from(win_w), "rect w")? as u32;
                let h = int_in(*h, 0, i64::from(win_h), "rect h")? as u32;
                if x + w > win_w || y + h > win_h {
                    return Err(CascadeError::Invalid(format!(
                        "feature {i}: rect outside the window"
                    )));
                }
                out.push(HaarRect {
                    x,
                    y,
                    w,
                    h,
                    weight: finite32(*wt, "rect weight")?,
                });
            }
            features.push(HaarFeature { rects: out });
        }

        let mut stages = Vec::with_capacity(self.stages.len());
        let mut trees = Vec::new();
        let mut nodes = Vec::new();
        let mut leaves = Vec::new();
        let nfeat = features.len() as i64;
        for (si, (threshold, raw_trees)) in self.stages.into_iter().enumerate() {
            let threshold = threshold
                .ok_or_else(|| CascadeError::Invalid(format!("stage {si} has no stageThreshold")))?;
            if !threshold.is_finite() || raw_trees.is_empty() {
                return Err(CascadeError::Invalid(format!(
                    "stage {si} is empty or has a bad threshold"
                )));
            }
            let tree_start = trees.len();
            for (ti, (inner, leaf)) in raw_trees.into_iter().enumerate() {
                if inner.is_empty() || inner.len() % 4 != 0 {
                    return Err(CascadeError::Invalid(format!(
                        "stage {si} tree {ti}: internalNodes must be groups of 4 \
                         (categorical splits are not supported)"
                    )));
                }
                let n_nodes = inner.len() / 4;
                if leaf.len() != n_nodes + 1 {
                    return Err(CascadeError::Invalid(format!(
                        "stage {si} tree {ti}: {} leaves for {n_nodes} nodes",
                        leaf.len()
                    )));
                }
                let node_start = nodes.len();
                let max_node = n_nodes as i64 - 1;
                let max_leaf = n_nodes as i64; // leaves are 0..=n_nodes, referenced as 0, −1, …
                for q in inner.chunks_exact(4) {
                    let child = |v: f64| int_in(v, -max_leaf, max_node, "tree child").map(|c| c as i32);
                    nodes.push(Node {
                        left: child(q[0])?,
                        right: child(q[1])?,
                        feature: int_in(q[2], 0, nfeat - 1, "feature index")? as usize,
                        threshold: finite32(q[3], "node threshold")?,
                    });
                }
                let leaf_start = leaves.len();
                for v in leaf {
                    leaves.push(finite32(v, "leaf value")?);
                }
                trees.push(Tree {
                    node_start,
                    node_count: n_nodes,
                    leaf_start,
                    leaf_count: n_nodes + 1,
                });
            }
            stages.push(Stage {
                threshold: threshold - THRESHOLD_EPS,
                tree_start,
                tree_count: trees.len() - tree_start,
            });
        }
        Ok(Cascade {
            win_w,
            win_h,
            stages,
            trees,
            nodes,
            leaves,
            features,
        })
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;

    const TINY: &str = r#"<?xml version="1.0"?>
<opencv_storage>
<cascade type_id="opencv-cascade-classifier"><stageType>BOOST</stageType>
  <featureType>HAAR</featureType><height>24</height><width>24</width>
  <stageNum>1</stageNum>
  <stages><_><maxWeakCount>1</maxWeakCount><stageThreshold>-1.5</stageThreshold>
    <weakClassifiers><_><internalNodes>0 -1 0 0.25</internalNodes>
      <leafValues>-1. 1.</leafValues></_></weakClassifiers></_></stages>
  <features><_><rects><_>0 0 24 24 -1.</_><_>0 0 12 24 2.</_></rects></_></features>
</cascade></opencv_storage>"#;

    #[test]
    fn parses_a_minimal_cascade() {
        let c = Cascade::from_xml(TINY).unwrap();
        assert_eq!((c.win_w, c.win_h), (24, 24));
        assert_eq!(c.stages.len(), 1);
        assert!((c.stages[0].threshold - (-1.5 - 1e-5)).abs() < 1e-6);
        assert_eq!(
            c.nodes[0],
            Node {
                left: 0,
                right: -1,
                feature: 0,
                threshold: 0.25
            }
        );
        assert_eq!(c.leaves, vec![-1.0, 1.0]);
        assert_eq!(
            c.features[0].rects[1],
            HaarRect {
                x: 0,
                y: 0,
                w: 12,
                h: 24,
                weight: 2.0
            }
        );
    }

    #[test]
    fn rejects_what_it_cannot_evaluate() {
        let tilted = TINY.replace("</rects></_>", "</rects><tilted>1</tilted></_>");
        assert!(matches!(
            Cascade::from_xml(&tilted),
            Err(CascadeError::Invalid(_))
        ));
        let lbp = TINY.replace("<featureType>HAAR", "<featureType>LBP");
        assert!(Cascade::from_xml(&lbp).is_err());
        let bad_feature = TINY.replace("0 -1 0 0.25", "0 -1 7 0.25");
        assert!(Cascade::from_xml(&bad_feature).is_err());
        let outside = TINY.replace("0 0 12 24 2.", "20 0 12 24 2.");
        assert!(Cascade::from_xml(&outside).is_err());
        let bad_child = TINY.replace("0 -1 0 0.25", "0 -5 0 0.25");
        assert!(Cascade::from_xml(&bad_child).is_err());
        assert!(Cascade::from_xml("<opencv_storage><opencv_haartraining/></opencv_storage>").is_err());
        assert!(Cascade::from_xml("<<<").is_err());
        assert!(Cascade::from_file(Path::new("/nonexistent/cascade.xml")).is_err());
    }
}
