//! Map tiles of a COG in the WebMercatorQuad grid (EPSG:3857), as TiTiler and rio-tiler serve
//! them: the tile grid, which overview a tile is read from, and how the read values become
//! pixels (`bidx`, `rescale`, `colormap_name`, `nodata`, `resampling`, `return_mask`). Parameter
//! names and their meaning follow TiTiler; rendering follows rio-tiler's, so that the same
//! request gives the same pixels. No I/O: the worker reads, this decides and paints.

use serde::{Deserialize, Serialize};

/// Half the width of the WebMercatorQuad square, in metres.
pub const ORIGIN: f64 = 20_037_508.342_789_244;

/// The deepest zoom level served.
pub const MAX_ZOOM: u32 = 24;

/// `[min_x, min_y, max_x, max_y]` of tile `z/x/y` in EPSG:3857.
pub fn tile_bounds(z: u32, x: u64, y: u64) -> [f64; 4] {
    let size = 2.0 * ORIGIN / (1u64 << z) as f64;
    [
        -ORIGIN + x as f64 * size,
        ORIGIN - (y + 1) as f64 * size,
        -ORIGIN + (x + 1) as f64 * size,
        ORIGIN - y as f64 * size,
    ]
}

/// Checks that `z/x/y` is a tile of the grid.
pub fn check_tile(z: u32, x: u64, y: u64) -> Result<(), String> {
    if z > MAX_ZOOM {
        return Err(format!("Zoom levels go from 0 to {MAX_ZOOM}, not {z}."));
    }
    let n = 1u64 << z;
    if x >= n || y >= n {
        return Err(format!(
            "At zoom {z}, x and y go from 0 to {}: {x}/{y} is no tile.",
            n - 1
        ));
    }
    Ok(())
}

/// The image formats tiles come in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Format {
    Png,
    Webp,
    Jpeg,
}

impl Format {
    pub fn parse(ext: &str) -> Option<Format> {
        Some(match ext {
            "png" => Format::Png,
            "webp" => Format::Webp,
            "jpg" | "jpeg" => Format::Jpeg,
            _ => return None,
        })
    }

    pub fn content_type(self) -> &'static str {
        match self {
            Format::Png => "image/png",
            Format::Webp => "image/webp",
            Format::Jpeg => "image/jpeg",
        }
    }

    /// Whether the format has an alpha channel (JPEG drops the mask, as in rio-tiler).
    pub fn has_alpha(self) -> bool {
        self != Format::Jpeg
    }
}

/// GDAL resampling methods a tile may be read with (rio-tiler's names).
pub const RESAMPLINGS: [&str; 9] = [
    "nearest",
    "bilinear",
    "cubic",
    "cubic_spline",
    "lanczos",
    "average",
    "mode",
    "min",
    "max",
];

/// How a tile is drawn: TiTiler's query parameters, checked.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Render {
    /// 1-based band indexes; empty means every band (up to three are drawn).
    pub bidx: Vec<usize>,
    /// `(min, max)` per drawn band, or one pair for all; values are stretched linearly to 0–255.
    pub rescale: Vec<(f64, f64)>,
    pub colormap: Option<String>,
    /// Replaces the file's nodata; `NaN` for NaN.
    pub nodata: Option<f64>,
    /// GDAL's name for the resampling (`near`, `bilinear`, …).
    pub resampling: String,
    pub return_mask: bool,
    pub format: Format,
    /// Pixels per side: 256, or 512 for `@2x` (or `tilesize=512`).
    pub tilesize: u32,
}

impl Default for Render {
    fn default() -> Self {
        Render {
            bidx: Vec::new(),
            rescale: Vec::new(),
            colormap: None,
            nodata: None,
            resampling: "near".into(),
            return_mask: true,
            format: Format::Png,
            tilesize: 256,
        }
    }
}

/// What is drawn: a tile of the grid, or the whole file in its own CRS.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(tag = "area", rename_all = "snake_case")]
pub enum Area {
    Tile {
        z: u32,
        x: u64,
        y: u64,
    },
    /// The whole file, its longest side fitted to `max_size` (never enlarged).
    Preview {
        max_size: u32,
    },
}

/// The image asked for, and how to draw it: what the server sends the worker.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TileJob {
    pub area: Area,
    pub render: Render,
}

/// A preview's size: the file's, fitted to `max_size` on its longest side (the other rounded
/// up, as rio-tiler does), never enlarged.
pub fn preview_size(width: usize, height: usize, max_size: u32) -> (usize, usize) {
    let max = max_size as usize;
    if width.max(height) <= max {
        return (width, height);
    }
    let ratio = height as f64 / width as f64;
    if ratio > 1.0 {
        (((max as f64 / ratio).ceil() as usize).max(1), max)
    } else {
        (max, ((max as f64 * ratio).ceil() as usize).max(1))
    }
}

fn number(text: &str, what: &str) -> Result<f64, String> {
    text.trim()
        .parse::<f64>()
        .ok()
        .filter(|v| v.is_finite())
        .ok_or_else(|| format!("{what} takes numbers; {text:?} is not one."))
}

/// Reads the query parameters of a tile request (`key`, `value` pairs as sent; `rescale` and
/// `bidx` may repeat). `Err` is the sentence for a 422.
pub fn parse_query<'a>(
    pairs: impl IntoIterator<Item = (&'a str, &'a str)>,
    format: Format,
    scale: u32,
) -> Result<Render, String> {
    let mut render = Render {
        format,
        tilesize: 256 * scale,
        ..Render::default()
    };
    for (key, value) in pairs {
        match key {
            "bidx" => {
                for part in value.split(',') {
                    let band = part
                        .trim()
                        .parse::<usize>()
                        .ok()
                        .filter(|b| (1..=65_535).contains(b))
                        .ok_or_else(|| format!("bidx is a band number from 1; {part:?} is not."))?;
                    render.bidx.push(band);
                }
            }
            "rescale" => {
                let (min, max) = value.split_once(',').ok_or_else(|| {
                    format!("rescale is \"min,max\" (one per band, or one for all); not {value:?}.")
                })?;
                let (min, max) = (number(min, "rescale")?, number(max, "rescale")?);
                if min >= max {
                    return Err(format!(
                        "rescale's min is below its max; {min} is not below {max}."
                    ));
                }
                render.rescale.push((min, max));
            }
            "colormap_name" => {
                if colormap(value).is_none() {
                    return Err(format!(
                        "colormap_name is one of {}; not {value:?}.",
                        COLORMAPS.join(", ")
                    ));
                }
                render.colormap = Some(value.to_owned());
            }
            "nodata" => {
                render.nodata = Some(if value.trim().eq_ignore_ascii_case("nan") {
                    f64::NAN
                } else {
                    number(value, "nodata")?
                });
            }
            "resampling" => {
                if !RESAMPLINGS.contains(&value) {
                    return Err(format!(
                        "resampling is one of {}; not {value:?}.",
                        RESAMPLINGS.join(", ")
                    ));
                }
                render.resampling = match value {
                    "nearest" => "near".into(),
                    "cubic_spline" => "cubicspline".into(),
                    other => other.to_owned(),
                };
            }
            "return_mask" => {
                render.return_mask = match value {
                    "true" | "1" => true,
                    "false" | "0" => false,
                    _ => return Err(format!("return_mask is true or false; not {value:?}.")),
                };
            }
            "tilesize" => {
                render.tilesize = match value {
                    "256" => 256,
                    "512" => 512,
                    _ => return Err(format!("tilesize is 256 or 512; not {value:?}.")),
                };
            }
            // Credentials and cache-busters ride along in map clients' URLs.
            "link" | "v" => {}
            other => {
                return Err(format!(
                    "{other:?} is not a tile parameter: bidx, rescale, colormap_name, nodata, resampling, return_mask, tilesize."
                ))
            }
        }
    }
    if render.colormap.is_some() && render.bidx.len() > 1 {
        return Err("A colormap draws one band: give one bidx.".into());
    }
    if render.bidx.len() > 4 {
        return Err("A tile draws at most four bands (bidx).".into());
    }
    Ok(render)
}

/// Which overview a tile is read from, as rio-tiler (through GDAL) picks it: the coarsest
/// whose decimation is below what the tile needs, by a margin of 1.2 for nearest and 1.01
/// otherwise. `native_px` is how many pixels at the file's full resolution (in EPSG:3857) span
/// the tile; `overviews` are each overview's width against `width`. `None` reads the full
/// resolution.
pub fn overview_for(
    native_px: f64,
    tilesize: u32,
    width: usize,
    overviews: &[usize],
    nearest: bool,
) -> Option<usize> {
    let native_px = native_px.round();
    if native_px <= tilesize as f64 {
        return None;
    }
    let desired = native_px / tilesize as f64;
    let margin = if nearest { 1.2 } else { 1.01 };
    let mut best: Option<(usize, f64)> = None;
    for (i, &ovr_width) in overviews.iter().enumerate() {
        let ovr_px = (native_px * ovr_width as f64 / width as f64)
            .round()
            .max(1.0);
        let factor = native_px / ovr_px;
        if factor < desired * margin && best.is_none_or(|(_, f)| factor > f) {
            best = Some((i, factor));
        }
    }
    best.map(|(i, _)| i)
}

/// The colormaps served (rio-tiler's tables for these names).
pub const COLORMAPS: [&str; 16] = [
    "viridis", "magma", "inferno", "plasma", "cividis", "turbo", "gray", "greys", "terrain",
    "rdylgn", "spectral", "rdbu", "blues", "greens", "reds", "ylorrd",
];

/// A colormap's 256 RGBA entries, indexed by the rescaled value.
pub fn colormap(name: &str) -> Option<&'static [[u8; 4]; 256]> {
    use std::sync::OnceLock;
    macro_rules! table {
        ($name:literal) => {{
            static TABLE: OnceLock<[[u8; 4]; 256]> = OnceLock::new();
            TABLE.get_or_init(|| {
                let hex = include_str!(concat!("cmaps/", $name, ".hex")).trim();
                let bytes = hex::decode(hex).expect("a vendored colormap is hex");
                let mut table = [[0u8; 4]; 256];
                for (entry, rgba) in table.iter_mut().zip(bytes.chunks_exact(4)) {
                    entry.copy_from_slice(rgba);
                }
                table
            })
        }};
    }
    Some(match name {
        "viridis" => table!("viridis"),
        "magma" => table!("magma"),
        "inferno" => table!("inferno"),
        "plasma" => table!("plasma"),
        "cividis" => table!("cividis"),
        "turbo" => table!("turbo"),
        "gray" => table!("gray"),
        "greys" => table!("greys"),
        "terrain" => table!("terrain"),
        "rdylgn" => table!("rdylgn"),
        "spectral" => table!("spectral"),
        "rdbu" => table!("rdbu"),
        "blues" => table!("blues"),
        "greens" => table!("greens"),
        "reds" => table!("reds"),
        "ylorrd" => table!("ylorrd"),
        _ => return None,
    })
}

/// Stretches `v` from `min..max` to 0–255, clipped, truncated as rio-tiler casts.
fn stretch(v: f64, (min, max): (f64, f64)) -> u8 {
    let clipped = v.clamp(min, max);
    ((clipped - min) / (max - min) * 255.0) as u8
}

/// A value drawn without `rescale`: as it is, clipped to 0–255.
fn plain(v: f64) -> u8 {
    if v.is_nan() {
        0
    } else {
        v.clamp(0.0, 255.0) as u8
    }
}

/// What a band's value is drawn as: stretched when valid; under the mask, as read when there
/// is no `rescale` and 0 when there is (rio-tiler's rescale fills masked values). Invisible
/// behind alpha 0 either way, but kept as rio-tiler has it so tiles compare equal.
fn drawn(valid: bool, v: f64, stretched: bool, scale: impl Fn(f64) -> u8) -> u8 {
    match (valid, stretched) {
        (true, _) => scale(v),
        (false, false) => plain(v),
        (false, true) => 0,
    }
}

/// A band's own colour table as 256 RGBA entries (entries it lacks are transparent black),
/// used as TiTiler does: for one band drawn without a `colormap_name`.
pub type Palette = [[u8; 4]; 256];

/// Pixels of one tile: `bands` (each `n` values, row by row) and `valid` (whether each band's
/// value at a pixel is data), drawn as `render` says, through the file's `palette` when it has
/// one and no colormap is named. Returns the interleaved bytes and the number of channels
/// (1 gray, 2 gray+alpha, 3 RGB, 4 RGBA).
pub fn paint(
    bands: &[Vec<f64>],
    valid: &[Vec<bool>],
    render: &Render,
    palette: Option<&Palette>,
) -> (Vec<u8>, usize) {
    let n = bands.first().map_or(0, Vec::len);
    let scale = |b: usize, v: f64| match render.rescale.len() {
        0 => plain(v),
        1 => stretch(v, render.rescale[0]),
        _ => stretch(v, render.rescale[b.min(render.rescale.len() - 1)]),
    };
    // A pixel shows when any band has data there (rio-tiler's mask).
    let shown = |i: usize| valid.iter().any(|band| band[i]);
    let alpha = render.return_mask && render.format.has_alpha();
    let table = match render.colormap.as_deref() {
        Some(name) => colormap(name),
        None if bands.len() == 1 => palette,
        None => None,
    };
    let colors: usize = match (table, bands.len()) {
        (Some(_), _) => 3,
        (None, 1) => 1,
        _ => 3,
    };
    let channels = if alpha { colors + 1 } else { colors };
    let mut out = Vec::with_capacity(n * channels);
    let stretched = !render.rescale.is_empty();
    for i in 0..n {
        let on = shown(i);
        match (table, bands.len()) {
            (Some(table), _) => {
                let v = drawn(valid[0][i], bands[0][i], stretched, |v| scale(0, v));
                let [r, g, b, a] = table[v as usize];
                out.extend_from_slice(&[r, g, b]);
                if alpha {
                    out.push(if on { a } else { 0 });
                }
            }
            (None, 1) => {
                out.push(drawn(valid[0][i], bands[0][i], stretched, |v| scale(0, v)));
                if alpha {
                    out.push(if on { 255 } else { 0 });
                }
            }
            (None, count) => {
                for b in 0..3 {
                    let v = if b < count {
                        drawn(valid[b][i], bands[b][i], stretched, |v| scale(b, v))
                    } else {
                        0
                    };
                    out.push(v);
                }
                if alpha {
                    out.push(if on { 255 } else { 0 });
                }
            }
        }
    }
    (out, channels)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_grid_is_web_mercator() {
        let world = tile_bounds(0, 0, 0);
        assert_eq!(world, [-ORIGIN, -ORIGIN, ORIGIN, ORIGIN]);
        // The tile rio-tiler's references use: z8/72/109.
        let b = tile_bounds(8, 72, 109);
        assert!((b[0] - -8_766_409.899_970_295).abs() < 1e-6, "{b:?}");
        assert!((b[3] - 2_974_317.644_632_58).abs() < 1e-3, "{b:?}");
        assert!(check_tile(8, 255, 255).is_ok());
        assert!(check_tile(8, 256, 0).unwrap_err().contains("0 to 255"));
        assert!(check_tile(25, 0, 0).is_err());
    }

    #[test]
    fn parameters_are_read_as_titiler_names_them_and_refused_with_a_sentence() {
        let q = [
            ("bidx", "1"),
            ("rescale", "20,200"),
            ("colormap_name", "viridis"),
            ("resampling", "bilinear"),
            ("return_mask", "false"),
            ("nodata", "nan"),
        ];
        let r = parse_query(q, Format::Png, 2).unwrap();
        assert_eq!(r.bidx, [1]);
        assert_eq!(r.rescale, [(20.0, 200.0)]);
        assert_eq!(r.colormap.as_deref(), Some("viridis"));
        assert_eq!(r.resampling, "bilinear");
        assert!(!r.return_mask && r.nodata.unwrap().is_nan());
        assert_eq!(r.tilesize, 512);
        for (bad, says) in [
            (("rescale", "200,20"), "below"),
            (("rescale", "a,b"), "numbers"),
            (("rescale", "5"), "min,max"),
            (("colormap_name", "rainbowish"), "viridis"),
            (("resampling", "fancy"), "nearest"),
            (("bidx", "0"), "band number"),
            (("tilesize", "300"), "256 or 512"),
            (("colour", "red"), "not a tile parameter"),
        ] {
            let err = parse_query([bad], Format::Png, 1).unwrap_err();
            assert!(err.contains(says), "{bad:?}: {err}");
        }
        let two = parse_query([("bidx", "1,2"), ("colormap_name", "gray")], Format::Png, 1);
        assert!(two.unwrap_err().contains("one band"));
    }

    #[test]
    fn the_overview_is_the_one_rio_tiler_reads() {
        // RGB.byte.tif converted: 791 px wide, one overview (396); 803 px across in EPSG:3857
        // at full resolution. z7 spans 947 native pixels: desired 3.70, the overview (2×) fits.
        assert_eq!(overview_for(947.8, 256, 791, &[396], true), Some(0));
        // z8 spans 474: desired 1.85, and 2× is under 1.85 × 1.2.
        assert_eq!(overview_for(473.9, 256, 791, &[396], true), Some(0));
        // Bilinear wants the margin of 1.01: 2× is not under 1.87.
        assert_eq!(overview_for(473.9, 256, 791, &[396], false), None);
        // A tile no wider than the data at full resolution reads the full resolution.
        assert_eq!(overview_for(237.0, 256, 791, &[396], true), None);
        // Of several, the coarsest that fits.
        assert_eq!(
            overview_for(4000.0, 256, 4000, &[2000, 1000, 500, 250], true),
            Some(3)
        );
        assert_eq!(
            overview_for(1100.0, 256, 4000, &[2000, 1000, 500, 250], true),
            Some(1)
        );
    }

    #[test]
    fn values_are_stretched_clipped_and_truncated_as_rio_tiler_does() {
        assert_eq!(stretch(500.0, (0.0, 1000.0)), 127);
        assert_eq!(stretch(-5.0, (0.0, 1000.0)), 0);
        assert_eq!(stretch(2000.0, (0.0, 1000.0)), 255);
        let render = Render {
            rescale: vec![(0.0, 100.0)],
            ..Render::default()
        };
        let (px, channels) = paint(&[vec![50.0, 7.0]], &[vec![true, false]], &render, None);
        assert_eq!(channels, 2);
        assert_eq!(
            px,
            [127, 255, 0, 0],
            "gray + alpha; a masked pixel is clear"
        );
    }

    #[test]
    fn a_colormap_gives_rgba_and_three_bands_rgb() {
        let viridis = colormap("viridis").unwrap();
        assert_eq!(viridis[0], [68, 1, 84, 255]);
        assert_eq!(colormap("terrain").unwrap()[0], [51, 51, 153, 255]);
        let render = Render {
            colormap: Some("viridis".into()),
            rescale: vec![(0.0, 255.0)],
            ..Render::default()
        };
        let (px, channels) = paint(&[vec![0.0]], &[vec![true]], &render, None);
        assert_eq!((channels, px), (4, vec![68, 1, 84, 255]));
        let rgb = Render {
            format: Format::Jpeg,
            ..Render::default()
        };
        let bands = [vec![1.0], vec![2.0], vec![300.0]];
        let (px, channels) = paint(&bands, &[vec![true], vec![true], vec![true]], &rgb, None);
        assert_eq!((channels, px), (3, vec![1, 2, 255]), "JPEG has no alpha");
        for name in COLORMAPS {
            assert!(colormap(name).is_some(), "{name}");
        }
    }

    #[test]
    fn a_band_s_own_palette_colours_it_unless_a_colormap_is_named() {
        let mut palette = [[0u8; 4]; 256];
        palette[3] = [10, 20, 30, 255];
        palette[4] = [40, 50, 60, 128];
        let values = [vec![3.0, 4.0, 3.0]];
        let valid = [vec![true, true, false]];
        let (px, channels) = paint(&values, &valid, &Render::default(), Some(&palette));
        assert_eq!(channels, 4);
        assert_eq!(
            px,
            [10, 20, 30, 255, 40, 50, 60, 128, 10, 20, 30, 0],
            "the entry's alpha, and a masked pixel clear"
        );
        let named = Render {
            colormap: Some("gray".into()),
            ..Render::default()
        };
        let (px, _) = paint(&values, &valid, &named, Some(&palette));
        assert_eq!(&px[..4], [3, 3, 3, 255], "a named colormap wins");
    }
}
