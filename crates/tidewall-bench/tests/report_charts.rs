//! The runtime report's charts as a reader meets them: rendered by the binary from raw data
//! (`--from-json ... --report DIR`, nothing measured), then read back from the SVG files.
//!
//! A chart reads cleanly when no two texts overlap and none leaves the canvas, each runtime of
//! its workload has one slot, the slots tile the plot with none left empty, each runtime's bar
//! has a colour of its own (the same in every chart, shown in the legend), and a min-max
//! whisker is drawn over each bar.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use serde_json::Value;

fn committed() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../docs/runtimes")
}

fn render(json: &Path, dir: &Path) -> Output {
    let output = Command::new(env!("CARGO_BIN_EXE_tidewall-bench"))
        .arg("--from-json")
        .arg(json)
        .arg("--report")
        .arg(dir)
        .output()
        .unwrap();
    assert!(
        dir.join("report.md").exists(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    output
}

/// Each (workload, n) of the raw data, in row order, with its runtimes and whether each
/// produced a figure.
fn groups(raw: &Value) -> Vec<(String, Vec<(String, bool)>)> {
    let mut groups: Vec<(String, Vec<(String, bool)>)> = Vec::new();
    for row in raw["rows"].as_array().unwrap() {
        let file = format!("{}-{}.svg", row["workload"].as_str().unwrap(), row["n"]);
        let runtime = row["runtime"].as_str().unwrap().to_owned();
        let ok = row["result"].get("Ok").is_some();
        match groups.iter_mut().find(|(f, _)| *f == file) {
            Some((_, runtimes)) => runtimes.push((runtime, ok)),
            None => groups.push((file, vec![(runtime, ok)])),
        }
    }
    groups
}

/// Checks every chart of `raw` in `dir` (reporting every chart that fails); returns each
/// runtime's bar colour.
fn check_charts(raw: &Value, dir: &Path) -> HashMap<String, String> {
    let mut colours: HashMap<String, String> = HashMap::new();
    let mut failures = Vec::new();
    for (file, runtimes) in groups(raw) {
        let svg = Svg::parse(&std::fs::read_to_string(dir.join(&file)).unwrap());
        match check_chart(&svg, &runtimes) {
            Ok(found) => {
                for (runtime, colour) in found {
                    let first = colours
                        .entry(runtime.clone())
                        .or_insert_with(|| colour.clone());
                    if *first != colour {
                        failures.push(format!("{file}: {runtime} changed colour"));
                    }
                }
            }
            Err(why) => failures.push(format!("{file}: {why}")),
        }
    }
    let mut seen: Vec<&String> = colours.values().collect();
    seen.sort();
    seen.dedup();
    if seen.len() != colours.len() {
        failures.push(format!("runtimes share a colour: {colours:?}"));
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    colours
}

fn check_chart(svg: &Svg, runtimes: &[(String, bool)]) -> Result<Vec<(String, String)>, String> {
    let texts: Vec<&Text> = svg.texts().collect();
    for (i, a) in texts.iter().enumerate() {
        let inside = a.area();
        if inside.0 < 0.0 || inside.1 < 0.0 || inside.2 > svg.width || inside.3 > svg.height {
            return Err(format!("{:?} leaves the canvas", a.content));
        }
        if let Some(b) = texts[i + 1..].iter().find(|b| overlap(a.area(), b.area())) {
            return Err(format!("{:?} and {:?} overlap", a.content, b.content));
        }
    }

    // The slots: one axis label per runtime, centred on equal slots that tile the plot.
    let (left, right) = svg.plot_span().ok_or("no plot")?;
    let mut labels: Vec<&Text> = texts
        .iter()
        .copied()
        .filter(|t| {
            t.anchor == "middle" && runtimes.iter().any(|(r, _)| names_runtime(&t.content, r))
        })
        .collect();
    labels.sort_by(|a, b| a.x.total_cmp(&b.x));
    let names: Vec<&str> = labels.iter().map(|t| t.content.as_str()).collect();
    let expected: Vec<&str> = runtimes.iter().map(|(r, _)| r.as_str()).collect();
    if names.len() != expected.len()
        || !names
            .iter()
            .zip(&expected)
            .all(|(t, r)| names_runtime(t, r))
    {
        return Err(format!("axis labels {names:?}, runtimes {expected:?}"));
    }
    let slot = (right - left) / runtimes.len() as f64;
    let mut colours = Vec::new();
    for (i, (label, (runtime, ok))) in labels.iter().zip(runtimes).enumerate() {
        let centre = left + (i as f64 + 0.5) * slot;
        if (label.x - centre).abs() > 1.5 {
            return Err(format!(
                "{runtime}'s label at {} is not centred on slot {i} of {} ({centre}): a slot is empty",
                label.x,
                runtimes.len()
            ));
        }
        let bars: Vec<(usize, &Rect)> = svg
            .rects()
            .filter(|(_, r)| r.fill != "#FFFFFF" && r.fill != "none")
            .filter(|(_, r)| r.x >= left && r.x + r.width <= right)
            .filter(|(_, r)| (r.x + r.width / 2.0 - centre).abs() <= 1.5)
            .collect();
        if !ok {
            if !bars.is_empty()
                || !texts
                    .iter()
                    .any(|t| t.content == "failed" && (t.x - centre).abs() <= 1.5)
            {
                return Err(format!(
                    "{runtime} failed: its slot should say so, with no bar"
                ));
            }
            continue;
        }
        let [(bar_at, bar)] = bars[..] else {
            return Err(format!("{runtime}: {} bars in its slot", bars.len()));
        };
        let whisker = svg.vertical_black_lines().any(|(at, x, ys)| {
            at > bar_at && (x - centre).abs() <= 1.5 && ys.0 <= bar.y + 1.0 && ys.1 >= bar.y - 1.0
        });
        if !whisker {
            return Err(format!("{runtime}: no min-max whisker over its bar"));
        }
        let in_legend = svg.rects().any(|(_, swatch)| {
            swatch.fill == bar.fill
                && swatch.x > right
                && texts.iter().any(|t| {
                    t.anchor == "start"
                        && names_runtime(&t.content, runtime)
                        && t.x > swatch.x + swatch.width
                        && t.x - (swatch.x + swatch.width) <= 10.0
                        && (t.y - swatch.y).abs() <= 4.0
                })
        });
        if !in_legend {
            return Err(format!(
                "{runtime}: its colour {} is not in the legend",
                bar.fill
            ));
        }
        colours.push((runtime.clone(), bar.fill.clone()));
    }
    Ok(colours)
}

/// A runtime's name, alone or opening a longer label ("async-std (discontinued)").
fn names_runtime(text: &str, runtime: &str) -> bool {
    text == runtime || text.starts_with(&format!("{runtime} "))
}

fn overlap(a: (f64, f64, f64, f64), b: (f64, f64, f64, f64)) -> bool {
    a.0 < b.2 && b.0 < a.2 && a.1 < b.3 && b.1 < a.3
}

#[test]
fn charts_rendered_from_the_committed_raw_data_read_cleanly() {
    let dir = tempfile::tempdir().unwrap();
    let json = committed().join("results.json");
    let output = render(&json, dir.path());
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let raw: Value = serde_json::from_str(&std::fs::read_to_string(json).unwrap()).unwrap();
    check_charts(&raw, dir.path());
}

#[test]
fn six_runtimes_and_a_failure_in_one_chart_read_cleanly() {
    // The committed TCP latency rows, plus the runtime they lack, with async-std failed.
    let mut raw: Value =
        serde_json::from_str(&std::fs::read_to_string(committed().join("results.json")).unwrap())
            .unwrap();
    let mut rows: Vec<Value> = raw["rows"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["workload"] == "tcp-echo-latency" && r["n"] == 2000)
        .cloned()
        .collect();
    let mut embassy = rows[0].clone();
    embassy["runtime"] = "embassy".into();
    rows.push(embassy);
    for row in &mut rows {
        if row["runtime"] == "async-std" {
            row["result"] = serde_json::json!({ "Err": "echo: 3 of 10 replies" });
        }
    }
    assert_eq!(rows.len(), 6);
    raw["rows"] = Value::Array(rows);
    let dir = tempfile::tempdir().unwrap();
    let json = dir.path().join("six.json");
    std::fs::write(&json, raw.to_string()).unwrap();
    render(&json, &dir.path().join("report"));
    let colours = check_charts(&raw, &dir.path().join("report"));
    assert_eq!(colours.len(), 5, "{colours:?}");
}

#[test]
fn the_committed_charts_read_cleanly() {
    let raw: Value =
        serde_json::from_str(&std::fs::read_to_string(committed().join("results.json")).unwrap())
            .unwrap();
    check_charts(&raw, &committed());
}

#[test]
fn the_committed_report_is_what_its_raw_data_renders() {
    let dir = tempfile::tempdir().unwrap();
    render(&committed().join("results.json"), dir.path());
    for entry in std::fs::read_dir(dir.path()).unwrap() {
        let name = entry.unwrap().file_name();
        let fresh = std::fs::read_to_string(dir.path().join(&name)).unwrap();
        let kept = std::fs::read_to_string(committed().join(&name)).unwrap_or_default();
        assert!(
            fresh == kept,
            "docs/runtimes/{} is stale: re-render it with `tidewall-bench --from-json \
             docs/runtimes/results.json --report docs/runtimes`",
            name.to_string_lossy()
        );
    }
}

/// The few SVG elements plotters writes that the checks read.
struct Svg {
    width: f64,
    height: f64,
    elements: Vec<Element>,
}

enum Element {
    Text(Text),
    Rect(Rect),
    /// A polyline or line: its stroke and points.
    Path(String, Vec<(f64, f64)>),
    /// A line element: plotters draws the grid and axes with these, shapes with polylines.
    GridLine((f64, f64), (f64, f64)),
}

#[derive(Debug)]
struct Text {
    x: f64,
    y: f64,
    /// The baseline's offset from `y`, in em.
    dy_em: f64,
    anchor: String,
    size: f64,
    rotate: f64,
    content: String,
}

struct Rect {
    x: f64,
    y: f64,
    width: f64,
    fill: String,
}

impl Svg {
    fn parse(svg: &str) -> Self {
        let mut parsed = Self {
            width: 0.0,
            height: 0.0,
            elements: Vec::new(),
        };
        for chunk in svg.split('<').skip(1) {
            let (tag, rest) = chunk
                .split_once(|c: char| c.is_whitespace())
                .unwrap_or((chunk, ""));
            let (attributes, content) = rest.split_once('>').unwrap_or((rest, ""));
            let attr = |name: &str| -> String {
                attributes
                    .split(&format!(" {name}=\""))
                    .nth(1)
                    .or_else(|| attributes.strip_prefix(&format!("{name}=\"")))
                    .and_then(|v| v.split('"').next())
                    .unwrap_or_default()
                    .to_owned()
            };
            let num = |name: &str| attr(name).parse::<f64>().unwrap_or(0.0);
            match tag {
                "svg" => {
                    parsed.width = num("width");
                    parsed.height = num("height");
                }
                "text" => {
                    let size = num("font-size");
                    let dy = attr("dy");
                    // An ex is about half an em in sans-serif faces.
                    let dy_em = match dy.as_str() {
                        d if d.ends_with("em") => d.trim_end_matches("em").parse().unwrap(),
                        d if d.ends_with("ex") => {
                            d.trim_end_matches("ex").parse::<f64>().unwrap() * 0.5
                        }
                        _ => 0.0,
                    };
                    let rotate = attr("transform")
                        .strip_prefix("rotate(")
                        .and_then(|r| r.split(',').next())
                        .map_or(0.0, |a| a.trim().parse().unwrap());
                    parsed.elements.push(Element::Text(Text {
                        x: num("x"),
                        y: num("y"),
                        dy_em,
                        anchor: attr("text-anchor"),
                        size,
                        rotate,
                        content: unescape(content.trim()),
                    }));
                }
                "rect" => parsed.elements.push(Element::Rect(Rect {
                    x: num("x"),
                    y: num("y"),
                    width: num("width"),
                    fill: attr("fill"),
                })),
                "polyline" => {
                    let points = attr("points")
                        .split_whitespace()
                        .map(|p| {
                            let (x, y) = p.split_once(',').unwrap();
                            (x.parse().unwrap(), y.parse().unwrap())
                        })
                        .collect();
                    parsed.elements.push(Element::Path(attr("stroke"), points));
                }
                "line" => parsed.elements.push(Element::GridLine(
                    (num("x1"), num("y1")),
                    (num("x2"), num("y2")),
                )),
                _ => {}
            }
        }
        parsed
    }

    fn texts(&self) -> impl Iterator<Item = &Text> {
        self.elements.iter().filter_map(|e| match e {
            Element::Text(t) => Some(t),
            _ => None,
        })
    }

    /// Rectangles with their place in drawing order.
    fn rects(&self) -> impl Iterator<Item = (usize, &Rect)> {
        self.elements
            .iter()
            .enumerate()
            .filter_map(|(i, e)| match e {
                Element::Rect(r) => Some((i, r)),
                _ => None,
            })
    }

    /// Black vertical lines: drawing order, x, and their top and bottom y.
    fn vertical_black_lines(&self) -> impl Iterator<Item = (usize, f64, (f64, f64))> {
        self.elements
            .iter()
            .enumerate()
            .filter_map(|(i, e)| match e {
                Element::Path(stroke, points) if stroke == "#000000" && points.len() >= 2 => {
                    let x = points[0].0;
                    points.iter().all(|p| (p.0 - x).abs() < 0.5).then(|| {
                        let top = points.iter().map(|p| p.1).fold(f64::INFINITY, f64::min);
                        let bottom = points.iter().map(|p| p.1).fold(f64::NEG_INFINITY, f64::max);
                        (i, x, (top, bottom))
                    })
                }
                _ => None,
            })
    }

    /// The plot's horizontal span: that of the grid lines, the widest horizontal lines.
    fn plot_span(&self) -> Option<(f64, f64)> {
        self.elements
            .iter()
            .filter_map(|e| match *e {
                Element::GridLine((x1, y1), (x2, y2)) if (y1 - y2).abs() < 0.5 => {
                    Some((x1.min(x2), x1.max(x2)))
                }
                _ => None,
            })
            .max_by(|a, b| (a.1 - a.0).total_cmp(&(b.1 - b.0)))
    }
}

impl Text {
    /// The area the text covers (left, top, right, bottom), from a generous width: 0.65 em a
    /// character, where sans-serif faces average about 0.55 em.
    fn area(&self) -> (f64, f64, f64, f64) {
        let width = self.content.chars().count() as f64 * 0.65 * self.size;
        let (start, end) = match self.anchor.as_str() {
            "middle" => (-width / 2.0, width / 2.0),
            "end" => (-width, 0.0),
            _ => (0.0, width),
        };
        let baseline = self.dy_em * self.size;
        let (top, bottom) = (baseline - 0.76 * self.size, baseline + 0.24 * self.size);
        // Offsets from (x, y), turned by the text's rotation about that point.
        let corners = [(start, top), (end, top), (start, bottom), (end, bottom)];
        let (sin, cos) = self.rotate.to_radians().sin_cos();
        let turned =
            corners.map(|(dx, dy)| (self.x + dx * cos - dy * sin, self.y + dx * sin + dy * cos));
        let xs = turned.map(|p| p.0);
        let ys = turned.map(|p| p.1);
        let min = |v: [f64; 4]| v.into_iter().fold(f64::INFINITY, f64::min);
        let max = |v: [f64; 4]| v.into_iter().fold(f64::NEG_INFINITY, f64::max);
        (min(xs), min(ys), max(xs), max(ys))
    }
}

fn unescape(text: &str) -> String {
    text.replace("&lt;", "<")
        .replace("&gt;", ">")
        .replace("&quot;", "\"")
        .replace("&apos;", "'")
        .replace("&amp;", "&")
}
