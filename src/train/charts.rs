//! PNG charts of a training run: the loss curve (the paper's Figure 2) and
//! the per-layer mixing coefficients α_K / α_V over training (Figure 3).
//!
//! Rendering goes through `plotters` into an in-memory RGB buffer, which is
//! encoded with `png` and written atomically (temp file + rename), so a
//! reader never sees a half-written chart.
//!
//! Text needs a font. None is bundled: at first use a handful of standard
//! system font paths are tried (`BITUNE_RT_FONT` overrides them); if none
//! loads, the charts are drawn without any text (lines, axes, colour bar)
//! rather than failing.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use anyhow::{anyhow, bail, Context, Result};
use plotters::coord::Shift;
use plotters::prelude::*;
use plotters::style::FontStyle;

/// Family name under which the system font is registered. Deliberately not
/// `"sans-serif"` (plotters' default family): every piece of text drawn here
/// names this family explicitly, so text-less mode provably draws no text.
const FAMILY: &str = "bitune-rt-sans";

/// Environment variable naming a TTF/OTF font to use instead of the search list.
pub const FONT_ENV: &str = "BITUNE_RT_FONT";

/// Standard places a sans-serif TTF usually lives (Debian/Ubuntu, Fedora,
/// Arch, Alpine, macOS, Windows). The first one that parses wins.
const FONT_CANDIDATES: &[&str] = &[
    "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/dejavu-sans-fonts/DejaVuSans.ttf",
    "/usr/share/fonts/TTF/DejaVuSans.ttf",
    "/usr/share/fonts/ttf-dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/truetype/liberation/LiberationSans-Regular.ttf",
    "/usr/share/fonts/liberation-sans/LiberationSans-Regular.ttf",
    "/usr/share/fonts/truetype/noto/NotoSans-Regular.ttf",
    "/usr/share/fonts/noto/NotoSans-Regular.ttf",
    "/usr/share/fonts/truetype/freefont/FreeSans.ttf",
    "/System/Library/Fonts/Supplemental/Arial.ttf",
    "/Library/Fonts/Arial.ttf",
    "C:\\Windows\\Fonts\\arial.ttf",
];

const LOSS_SIZE: (u32, u32) = (1000, 600);
const ALPHA_SIZE: (u32, u32) = (1500, 600);

/// Loss curve: training loss per step (and an optional smoothed line), x = step.
///
/// Non-finite losses are skipped. With no finite point at all, a chart with a
/// "no data" note is written. The smoothed line (a debiased EMA) is drawn once
/// there are at least 10 points.
pub fn loss_chart(path: &Path, title: &str, losses: &[(u64, f64)]) -> Result<()> {
    let (w, h) = LOSS_SIZE;
    let text = font_available();
    let buf = render((w, h), |root| draw_loss(root, title, losses, text))?;
    write_png_atomic(path, w, h, &buf)
}

/// α_K and α_V per layer over training: two panels (K left, V right), one line
/// per layer coloured along a gradient (layer 0 to N-1), x = step, y = α in [0,1].
/// `alpha_k[i]` is the per-layer vector at `steps[i]`.
///
/// `steps`, `alpha_k` and `alpha_v` must have the same length (else an error).
/// Per-step vectors may differ in length (a layer missing at a step is just
/// not plotted there); non-finite values are skipped. Values outside [0,1]
/// widen the y range instead of being clipped.
pub fn alpha_chart(
    path: &Path,
    steps: &[u64],
    alpha_k: &[Vec<f32>],
    alpha_v: &[Vec<f32>],
) -> Result<()> {
    if alpha_k.len() != steps.len() || alpha_v.len() != steps.len() {
        bail!(
            "alpha_chart: {} steps but {} α_K and {} α_V vectors (need one of each per step)",
            steps.len(),
            alpha_k.len(),
            alpha_v.len()
        );
    }
    let (w, h) = ALPHA_SIZE;
    let text = font_available();
    let buf = render((w, h), |root| {
        draw_alpha(root, steps, alpha_k, alpha_v, text)
    })?;
    write_png_atomic(path, w, h, &buf)
}

// ---------------------------------------------------------------------------
// Fonts

/// Loads and registers a system font once per process; `true` when text can be drawn.
fn font_available() -> bool {
    static LOADED: OnceLock<bool> = OnceLock::new();
    *LOADED.get_or_init(|| {
        let env = std::env::var_os(FONT_ENV).map(PathBuf::from);
        let candidates = env
            .into_iter()
            .chain(FONT_CANDIDATES.iter().map(PathBuf::from));
        for p in candidates {
            let Ok(bytes) = std::fs::read(&p) else {
                continue;
            };
            // plotters keeps `&'static` font data in a global table; this
            // leaks one font file, once per process.
            let bytes: &'static [u8] = Box::leak(bytes.into_boxed_slice());
            if plotters::style::register_font(FAMILY, FontStyle::Normal, bytes).is_ok() {
                return true;
            }
        }
        false
    })
}

fn font(size: f64) -> TextStyle<'static> {
    (FAMILY, size).into_font().color(&BLACK)
}

// ---------------------------------------------------------------------------
// Rendering plumbing

type Area<'a> = DrawingArea<BitMapBackend<'a>, Shift>;

/// Renders into a fresh white RGB buffer. Drawing errors become `Err`; a panic
/// inside plotters (third-party code) is caught and turned into an error too,
/// so a chart can never take the training run down.
fn render<F>((w, h): (u32, u32), draw: F) -> Result<Vec<u8>>
where
    F: FnOnce(&Area<'_>) -> Result<()>,
{
    let mut buf = vec![255u8; w as usize * h as usize * 3];
    let outcome = catch_unwind(AssertUnwindSafe(|| -> Result<()> {
        let root = BitMapBackend::with_buffer(&mut buf, (w, h)).into_drawing_area();
        root.fill(&WHITE).map_err(plot_err)?;
        draw(&root)?;
        root.present().map_err(plot_err)?;
        Ok(())
    }));
    match outcome {
        Ok(r) => r.map(|()| buf),
        Err(_) => Err(anyhow!("chart rendering panicked inside plotters")),
    }
}

fn plot_err<E: std::fmt::Debug>(e: E) -> anyhow::Error {
    anyhow!("chart drawing failed: {e:?}")
}

/// PNG-encodes an RGB8 buffer and writes it atomically (sibling temp file + rename).
fn write_png_atomic(path: &Path, w: u32, h: u32, rgb: &[u8]) -> Result<()> {
    let mut png_bytes = Vec::new();
    {
        let mut enc = png::Encoder::new(&mut png_bytes, w, h);
        enc.set_color(png::ColorType::Rgb);
        enc.set_depth(png::BitDepth::Eight);
        let mut wr = enc.write_header().context("png header")?;
        wr.write_image_data(rgb).context("png data")?;
        wr.finish().context("png finish")?;
    }
    crate::io::atomic::write_atomic(path, &png_bytes)
        .with_context(|| format!("write chart {}", path.display()))
}

// ---------------------------------------------------------------------------
// Shared helpers

/// `[lo, hi]` widened so it is never empty and has a little headroom.
fn padded_range(lo: f64, hi: f64, pad_frac: f64) -> (f64, f64) {
    if !(lo.is_finite() && hi.is_finite()) || lo > hi {
        return (0.0, 1.0);
    }
    let span = hi - lo;
    if span <= f64::EPSILON * hi.abs().max(1.0) {
        let d = (hi.abs() * 0.1).max(1.0);
        return (lo - d, hi + d);
    }
    (lo - span * pad_frac, hi + span * pad_frac)
}

fn step_range(min: u64, max: u64) -> (f64, f64) {
    if min >= max {
        (min as f64 - 1.0, max as f64 + 1.0)
    } else {
        (min as f64, max as f64)
    }
}

fn fmt_step(v: &f64) -> String {
    if v.fract().abs() < 1e-9 {
        format!("{v:.0}")
    } else {
        format!("{v:.1}")
    }
}

/// Tick formatter precision chosen from the axis span.
fn fmt_value(span: f64) -> impl Fn(&f64) -> String {
    let decimals = if span >= 50.0 {
        0
    } else if span >= 5.0 {
        1
    } else if span >= 0.5 {
        2
    } else if span >= 0.05 {
        3
    } else {
        4
    };
    move |v: &f64| format!("{v:.decimals$}")
}

/// Writes "no data" in the middle of an area (if text is available).
fn no_data_note(area: &Area<'_>, what: &str, text: bool) -> Result<()> {
    if text {
        let (w, h) = area.dim_in_pixel();
        let style = font(22.0).pos(plotters::style::text_anchor::Pos::new(
            plotters::style::text_anchor::HPos::Center,
            plotters::style::text_anchor::VPos::Center,
        ));
        area.draw(&Text::new(
            format!("{what}: no data"),
            ((w / 2) as i32, (h / 2) as i32),
            style,
        ))
        .map_err(plot_err)?;
    }
    Ok(())
}

/// Debiased exponential moving average (as in TensorBoard's smoothing).
fn ema(points: &[(f64, f64)], beta: f64) -> Vec<(f64, f64)> {
    let mut acc = 0.0;
    let mut weight = 0.0;
    points
        .iter()
        .map(|&(x, y)| {
            acc = beta * acc + (1.0 - beta) * y;
            weight = beta * weight + (1.0 - beta);
            (x, acc / weight)
        })
        .collect()
}

/// Viridis-like gradient, `t` in [0,1] (dark purple → teal → yellow).
fn gradient(t: f64) -> RGBColor {
    const STOPS: [(u8, u8, u8); 6] = [
        (68, 1, 84),
        (65, 68, 135),
        (42, 120, 142),
        (34, 168, 132),
        (122, 209, 81),
        (253, 231, 37),
    ];
    let t = if t.is_finite() {
        t.clamp(0.0, 1.0)
    } else {
        0.0
    };
    let x = t * (STOPS.len() - 1) as f64;
    let i = (x.floor() as usize).min(STOPS.len() - 2);
    let f = x - i as f64;
    let (a, b) = (STOPS[i], STOPS[i + 1]);
    let mix = |p: u8, q: u8| (p as f64 + (q as f64 - p as f64) * f).round() as u8;
    RGBColor(mix(a.0, b.0), mix(a.1, b.1), mix(a.2, b.2))
}

fn layer_color(layer: usize, n_layers: usize) -> RGBColor {
    if n_layers <= 1 {
        gradient(0.0)
    } else {
        gradient(layer as f64 / (n_layers - 1) as f64)
    }
}

// ---------------------------------------------------------------------------
// Loss chart

fn draw_loss(root: &Area<'_>, title: &str, losses: &[(u64, f64)], text: bool) -> Result<()> {
    let mut pts: Vec<(f64, f64)> = losses
        .iter()
        .filter(|(_, l)| l.is_finite())
        .map(|&(s, l)| (s as f64, l))
        .collect();
    pts.sort_by(|a, b| a.0.total_cmp(&b.0));

    let area = root.margin(10, 10, 10, 20);
    let mut builder = ChartBuilder::on(&area);
    if text {
        builder
            .caption(title, font(26.0))
            .x_label_area_size(45)
            .y_label_area_size(70);
    } else {
        builder.x_label_area_size(4).y_label_area_size(4);
    }

    let (x0, x1, y0, y1) = if pts.is_empty() {
        (0.0, 1.0, 0.0, 1.0)
    } else {
        let smin = losses.iter().map(|p| p.0).min().unwrap_or(0);
        let smax = losses.iter().map(|p| p.0).max().unwrap_or(0);
        let (x0, x1) = step_range(smin, smax);
        let lo = pts.iter().map(|p| p.1).fold(f64::INFINITY, f64::min);
        let hi = pts.iter().map(|p| p.1).fold(f64::NEG_INFINITY, f64::max);
        let (y0, y1) = padded_range(lo, hi, 0.05);
        (x0, x1, y0, y1)
    };
    let mut chart = builder
        .build_cartesian_2d(x0..x1, y0..y1)
        .map_err(plot_err)?;

    let yfmt = fmt_value(y1 - y0);
    let mut mesh = chart.configure_mesh();
    mesh.light_line_style(WHITE)
        .bold_line_style(BLACK.mix(0.12))
        .axis_style(BLACK.mix(0.8));
    if text {
        mesh.x_desc("step")
            .y_desc("loss")
            .axis_desc_style(font(18.0))
            .label_style(font(15.0))
            .x_label_formatter(&fmt_step)
            .y_label_formatter(&yfmt)
            .x_labels(10)
            .y_labels(8);
    } else {
        mesh.x_labels(0).y_labels(0);
    }
    mesh.draw().map_err(plot_err)?;

    if pts.is_empty() {
        return no_data_note(&chart.plotting_area().strip_coord_spec(), "loss", text);
    }

    let raw = RGBColor(31, 119, 180);
    let smooth_color = RGBColor(214, 39, 40);
    let smoothed = pts.len() >= 10;
    let raw_style = if smoothed {
        raw.mix(0.35).stroke_width(1)
    } else {
        raw.stroke_width(2)
    };
    let series = chart
        .draw_series(LineSeries::new(pts.iter().copied(), raw_style))
        .map_err(plot_err)?;
    if text {
        series
            .label("loss (per step)")
            .legend(move |(x, y)| PathElement::new([(x, y), (x + 20, y)], raw.stroke_width(2)));
    }
    if pts.len() == 1 {
        chart
            .draw_series(std::iter::once(Circle::new(pts[0], 4, raw.filled())))
            .map_err(plot_err)?;
    }
    if smoothed {
        // Window ≈ n/20 steps (at least 2, at most 200).
        let window = (pts.len() as f64 / 20.0).clamp(2.0, 200.0);
        let beta = 1.0 - 2.0 / (window + 1.0);
        let sm = ema(&pts, beta);
        let series = chart
            .draw_series(LineSeries::new(sm, smooth_color.stroke_width(2)))
            .map_err(plot_err)?;
        if text {
            series
                .label(format!("EMA (≈{:.0}-step window)", window))
                .legend(move |(x, y)| {
                    PathElement::new([(x, y), (x + 20, y)], smooth_color.stroke_width(2))
                });
        }
    }
    if text {
        chart
            .configure_series_labels()
            .label_font(font(15.0))
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK.mix(0.3))
            .position(SeriesLabelPosition::UpperRight)
            .draw()
            .map_err(plot_err)?;
    }
    Ok(())
}

// ---------------------------------------------------------------------------
// α chart

fn draw_alpha(
    root: &Area<'_>,
    steps: &[u64],
    alpha_k: &[Vec<f32>],
    alpha_v: &[Vec<f32>],
    text: bool,
) -> Result<()> {
    let n_layers = alpha_k
        .iter()
        .chain(alpha_v.iter())
        .map(Vec::len)
        .max()
        .unwrap_or(0);

    let (x0, x1) = match (steps.iter().min(), steps.iter().max()) {
        (Some(&a), Some(&b)) => step_range(a, b),
        _ => (0.0, 1.0),
    };
    // y = α in [0,1], widened (never clipped) if a value falls outside.
    let (mut y0, mut y1) = (0.0f64, 1.0f64);
    for v in alpha_k.iter().chain(alpha_v.iter()).flatten() {
        let v = *v as f64;
        if v.is_finite() {
            y0 = y0.min(v);
            y1 = y1.max(v);
        }
    }
    let pad = (y1 - y0) * 0.03;
    let (y0, y1) = (y0 - pad, y1 + pad);

    let (panels, bar) = root.split_horizontally(root.dim_in_pixel().0 as i32 - 110);
    let (left, right) = panels.split_horizontally(panels.dim_in_pixel().0 as i32 / 2);

    for (area, values, name) in [(&left, alpha_k, "α_K"), (&right, alpha_v, "α_V")] {
        let area = area.margin(10, 10, 10, 15);
        let mut builder = ChartBuilder::on(&area);
        if text {
            builder
                .caption(format!("{name} per layer"), font(24.0))
                .x_label_area_size(45)
                .y_label_area_size(55);
        } else {
            builder.x_label_area_size(4).y_label_area_size(4);
        }
        let mut chart = builder
            .build_cartesian_2d(x0..x1, y0..y1)
            .map_err(plot_err)?;
        let mut mesh = chart.configure_mesh();
        mesh.light_line_style(WHITE)
            .bold_line_style(BLACK.mix(0.12))
            .axis_style(BLACK.mix(0.8));
        if text {
            mesh.x_desc("step")
                .y_desc(name)
                .axis_desc_style(font(18.0))
                .label_style(font(15.0))
                .x_label_formatter(&fmt_step)
                .y_label_formatter(&|v| format!("{v:.1}"))
                .x_labels(8)
                .y_labels(11);
        } else {
            mesh.x_labels(0).y_labels(0);
        }
        mesh.draw().map_err(plot_err)?;

        if n_layers == 0 {
            no_data_note(&chart.plotting_area().strip_coord_spec(), name, text)?;
            continue;
        }
        // Layer 0 first, so the last layers (bright end) sit on top.
        for layer in 0..n_layers {
            let color = layer_color(layer, n_layers);
            let pts: Vec<(f64, f64)> = steps
                .iter()
                .zip(values.iter())
                .filter_map(|(&s, v)| {
                    let a = *v.get(layer)?;
                    a.is_finite().then_some((s as f64, a as f64))
                })
                .collect();
            if pts.len() == 1 {
                chart
                    .draw_series(std::iter::once(Circle::new(pts[0], 3, color.filled())))
                    .map_err(plot_err)?;
            } else if pts.len() > 1 {
                chart
                    .draw_series(LineSeries::new(pts, color.stroke_width(2)))
                    .map_err(plot_err)?;
            }
        }
    }

    draw_layer_bar(&bar, n_layers, text)
}

/// Vertical colour bar mapping colour to layer index (layer 0 at the bottom).
fn draw_layer_bar(area: &Area<'_>, n_layers: usize, text: bool) -> Result<()> {
    if n_layers == 0 {
        return Ok(());
    }
    let area = area.margin(
        if text { 50 } else { 20 },
        if text { 55 } else { 20 },
        5,
        10,
    );
    let mut builder = ChartBuilder::on(&area);
    if text {
        builder
            .caption("layer", font(17.0))
            .right_y_label_area_size(45);
    }
    let n = n_layers as f64;
    let mut chart = builder
        .build_cartesian_2d(0.0..1.0, 0.0..n)
        .map_err(plot_err)?;
    chart
        .draw_series((0..n_layers).map(|l| {
            Rectangle::new(
                [(0.0, l as f64), (1.0, l as f64 + 1.0)],
                layer_color(l, n_layers).filled(),
            )
        }))
        .map_err(plot_err)?;
    chart
        .plotting_area()
        .draw(&Rectangle::new([(0.0, 0.0), (1.0, n)], BLACK.mix(0.6)))
        .map_err(plot_err)?;
    if text {
        // Ticks at layer centres; at most ~12 labels, always first and last.
        let stride = n_layers.div_ceil(12).max(1);
        let mut ticks: Vec<usize> = (0..n_layers).step_by(stride).collect();
        if ticks.last() != Some(&(n_layers - 1)) {
            // Replace the last regular tick by the last layer (keeps spacing ≥ stride).
            if ticks.len() > 1 {
                ticks.pop();
            }
            ticks.push(n_layers - 1);
        }
        let label = font(14.0).pos(plotters::style::text_anchor::Pos::new(
            plotters::style::text_anchor::HPos::Left,
            plotters::style::text_anchor::VPos::Center,
        ));
        for l in ticks {
            let y = l as f64 + 0.5;
            let (px, py) = chart.plotting_area().map_coordinate(&(1.0, y));
            let (ox, oy) = area.get_base_pixel();
            let (px, py) = (px - ox, py - oy);
            area.draw(&PathElement::new([(px, py), (px + 5, py)], BLACK.mix(0.8)))
                .map_err(plot_err)?;
            area.draw(&Text::new(l.to_string(), (px + 8, py), label.clone()))
                .map_err(plot_err)?;
        }
    }
    Ok(())
}

// ---------------------------------------------------------------------------

#[cfg(test)]
mod tests {
    use super::*;

    fn tmpdir(tag: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!(
            "bitune-charts-{tag}-{}-{:?}",
            std::process::id(),
            std::thread::current().id()
        ));
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    /// (width, height) from the PNG signature + IHDR chunk.
    fn png_dims(bytes: &[u8]) -> (u32, u32) {
        assert!(bytes.len() > 33, "png too short");
        assert_eq!(&bytes[..8], b"\x89PNG\r\n\x1a\n", "png signature");
        assert_eq!(&bytes[12..16], b"IHDR");
        let w = u32::from_be_bytes(bytes[16..20].try_into().unwrap());
        let h = u32::from_be_bytes(bytes[20..24].try_into().unwrap());
        assert_eq!(bytes[24], 8, "bit depth");
        assert_eq!(bytes[25], 2, "colour type RGB");
        (w, h)
    }

    /// Fully decodes the PNG and returns its RGB pixels.
    fn decode(path: &Path) -> (u32, u32, Vec<u8>) {
        let bytes = std::fs::read(path).unwrap();
        let (w, h) = png_dims(&bytes);
        let dec = png::Decoder::new(std::io::Cursor::new(bytes));
        let mut rd = dec.read_info().unwrap();
        let mut px = vec![0u8; rd.output_buffer_size().unwrap()];
        let info = rd.next_frame(&mut px).unwrap();
        assert_eq!((info.width, info.height), (w, h));
        px.truncate(info.buffer_size());
        (w, h, px)
    }

    fn non_white(px: &[u8]) -> usize {
        px.chunks(3).filter(|p| p != &[255, 255, 255]).count()
    }

    fn synthetic_losses(n: u64) -> Vec<(u64, f64)> {
        (0..n)
            .map(|s| {
                let t = s as f64;
                let noise = ((t * 12.9898).sin() * 43758.545).fract() * 0.4;
                (s, 2.5 * (-t / 150.0).exp() + 0.9 + noise)
            })
            .collect()
    }

    fn synthetic_alphas(steps: usize, layers: usize) -> (Vec<u64>, Vec<Vec<f32>>, Vec<Vec<f32>>) {
        let s: Vec<u64> = (0..steps as u64).map(|i| i * 10).collect();
        let mk = |rate: f32| -> Vec<Vec<f32>> {
            (0..steps)
                .map(|i| {
                    (0..layers)
                        .map(|l| {
                            let target = 0.15 + 0.7 * (l as f32 / layers.max(1) as f32);
                            0.01 + (target - 0.01) * (1.0 - (-(i as f32) * rate).exp())
                        })
                        .collect()
                })
                .collect()
        };
        (s, mk(0.05), mk(0.03))
    }

    #[test]
    fn loss_chart_writes_png_of_expected_size() {
        let d = tmpdir("loss");
        let p = d.join("loss.png");
        loss_chart(&p, "Bitune training loss", &synthetic_losses(500)).unwrap();
        let (w, h, px) = decode(&p);
        assert_eq!((w, h), LOSS_SIZE);
        assert!(non_white(&px) > 1000, "chart is blank");
        // No temp file left behind.
        let leftovers: Vec<_> = std::fs::read_dir(&d)
            .unwrap()
            .filter_map(|e| e.ok())
            .filter(|e| e.file_name().to_string_lossy().contains(".tmp"))
            .collect();
        assert!(leftovers.is_empty());
        std::fs::remove_dir_all(d).ok();
    }

    #[test]
    fn loss_chart_overwrites_atomically_and_creates_dirs() {
        let d = tmpdir("loss-nested");
        let p = d.join("a/b/loss.png");
        loss_chart(&p, "first", &synthetic_losses(5)).unwrap();
        loss_chart(&p, "second", &synthetic_losses(50)).unwrap();
        assert_eq!(png_dims(&std::fs::read(&p).unwrap()), LOSS_SIZE);
        std::fs::remove_dir_all(d).ok();
    }

    #[test]
    fn loss_chart_empty_nan_and_degenerate_inputs() {
        let d = tmpdir("loss-edge");
        let cases: Vec<(&str, Vec<(u64, f64)>)> = vec![
            ("empty", vec![]),
            ("all_nan", vec![(0, f64::NAN), (1, f64::NAN)]),
            (
                "inf",
                vec![(0, f64::INFINITY), (1, f64::NEG_INFINITY), (2, 1.0)],
            ),
            ("single", vec![(7, 3.0)]),
            ("flat", vec![(0, 2.0), (1, 2.0), (2, 2.0)]),
            ("same_step", vec![(5, 1.0), (5, 2.0)]),
            (
                "nan_mixed",
                (0..40)
                    .map(|s| (s, if s % 3 == 0 { f64::NAN } else { s as f64 }))
                    .collect(),
            ),
            ("huge", vec![(0, 1e300), (u64::MAX, -1e300)]),
            ("unsorted", vec![(9, 1.0), (1, 3.0), (4, 2.0)]),
        ];
        for (name, losses) in cases {
            let p = d.join(format!("{name}.png"));
            loss_chart(&p, name, &losses).unwrap_or_else(|e| panic!("{name}: {e:#}"));
            assert_eq!(png_dims(&std::fs::read(&p).unwrap()), LOSS_SIZE, "{name}");
        }
        std::fs::remove_dir_all(d).ok();
    }

    #[test]
    fn alpha_chart_writes_png_of_expected_size() {
        let d = tmpdir("alpha");
        let p = d.join("alpha.png");
        let (s, k, v) = synthetic_alphas(60, 30);
        alpha_chart(&p, &s, &k, &v).unwrap();
        let (w, h, px) = decode(&p);
        assert_eq!((w, h), ALPHA_SIZE);
        assert!(non_white(&px) > 1000, "chart is blank");
        std::fs::remove_dir_all(d).ok();
    }

    #[test]
    fn alpha_chart_edge_cases() {
        let d = tmpdir("alpha-edge");
        let p = d.join("a.png");
        // Empty.
        alpha_chart(&p, &[], &[], &[]).unwrap();
        assert_eq!(png_dims(&std::fs::read(&p).unwrap()), ALPHA_SIZE);
        // Steps present but zero layers.
        alpha_chart(&p, &[0, 1], &[vec![], vec![]], &[vec![], vec![]]).unwrap();
        // One step, one layer; NaN / out-of-range / ragged vectors.
        alpha_chart(&p, &[3], &[vec![0.5]], &[vec![f32::NAN]]).unwrap();
        alpha_chart(
            &p,
            &[0, 10, 20],
            &[vec![0.1, f32::NAN], vec![1.4, 0.2, 0.3], vec![-0.2]],
            &[vec![f32::NAN; 3], vec![f32::INFINITY; 3], vec![0.5; 3]],
        )
        .unwrap();
        assert_eq!(png_dims(&std::fs::read(&p).unwrap()), ALPHA_SIZE);
        // Mismatched lengths: a clear error, no panic, no file touched.
        let q = d.join("bad.png");
        let err = alpha_chart(&q, &[0, 1], &[vec![0.1]], &[vec![0.1]]).unwrap_err();
        assert!(err.to_string().contains("2 steps"), "{err}");
        assert!(!q.exists());
        std::fs::remove_dir_all(d).ok();
    }

    /// Text-less mode (no system font) must draw no text at all: `FAMILY` is
    /// the only family ever registered, and text-less rendering would fail
    /// with FontUnavailable if anything fell back to plotters' default font.
    #[test]
    fn renders_without_text() {
        let (s, k, v) = synthetic_alphas(20, 8);
        let buf = render(ALPHA_SIZE, |root| draw_alpha(root, &s, &k, &v, false)).unwrap();
        assert!(non_white(&buf) > 1000);
        render(ALPHA_SIZE, |root| draw_alpha(root, &[], &[], &[], false)).unwrap();
        let buf = render(LOSS_SIZE, |root| {
            draw_loss(root, "t", &synthetic_losses(100), false)
        })
        .unwrap();
        assert!(non_white(&buf) > 1000);
        render(LOSS_SIZE, |root| draw_loss(root, "t", &[], false)).unwrap();
        render(LOSS_SIZE, |root| {
            draw_loss(root, "t", &[(1, f64::NAN)], false)
        })
        .unwrap();
    }

    #[test]
    fn gradient_endpoints_and_bounds() {
        assert_eq!(gradient(0.0), RGBColor(68, 1, 84));
        assert_eq!(gradient(1.0), RGBColor(253, 231, 37));
        assert_eq!(gradient(f64::NAN), gradient(0.0));
        assert_eq!(gradient(7.0), gradient(1.0));
        assert_eq!(layer_color(0, 1), gradient(0.0));
    }

    #[test]
    fn ema_is_debiased() {
        let sm = ema(&[(0.0, 4.0), (1.0, 4.0), (2.0, 4.0)], 0.9);
        for (_, y) in sm {
            assert!((y - 4.0).abs() < 1e-12);
        }
    }

    /// Writes sample charts to `$BITUNE_CHART_SAMPLES` for eyeballing.
    #[test]
    fn sample_charts_for_inspection() {
        let Some(dir) = std::env::var_os("BITUNE_CHART_SAMPLES") else {
            return;
        };
        let dir = PathBuf::from(dir);
        loss_chart(
            &dir.join("loss.png"),
            "Bitune — SmolLM2-135M, training loss",
            &synthetic_losses(600),
        )
        .unwrap();
        loss_chart(
            &dir.join("loss_short.png"),
            "short run",
            &synthetic_losses(6),
        )
        .unwrap();
        loss_chart(&dir.join("loss_empty.png"), "empty run", &[]).unwrap();
        let (s, k, v) = synthetic_alphas(100, 30);
        alpha_chart(&dir.join("alpha.png"), &s, &k, &v).unwrap();
        alpha_chart(&dir.join("alpha_empty.png"), &[], &[], &[]).unwrap();
        let buf = render(ALPHA_SIZE, |root| draw_alpha(root, &s, &k, &v, false)).unwrap();
        write_png_atomic(
            &dir.join("alpha_notext.png"),
            ALPHA_SIZE.0,
            ALPHA_SIZE.1,
            &buf,
        )
        .unwrap();
    }
}
