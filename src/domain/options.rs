//! Conversion options: what a client may ask for, checked once, turned into GDAL arguments.

use serde::{Deserialize, Serialize};

/// Options exactly as a client sends them (`POST .../convert-to-geo-raster`).
/// Unknown fields are refused so that a typo never silently falls back to a default.
#[derive(Debug, Clone, Default, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RequestedOptions {
    /// deflate | lzw | zstd | webp | jpeg | lerc | none (default deflate)
    #[schema(example = "deflate")]
    pub compression: Option<String>,
    /// 1 to 100, for jpeg and webp only.
    #[serde(default, deserialize_with = "whole_number")]
    pub quality: Option<i64>,
    /// Tile size: a power of two from 64 to 4096 (default 512).
    #[serde(default, deserialize_with = "whole_number")]
    pub blocksize: Option<i64>,
    /// nearest | average | bilinear | cubic | cubicspline | lanczos | mode | rms
    pub overview_resampling: Option<String>,
    /// `AUTHORITY:CODE`; reprojects in the same pass.
    #[schema(example = "EPSG:3857")]
    pub target_crs: Option<String>,
    /// Align to the GoogleMapsCompatible tiling scheme (EPSG:3857).
    pub web_optimized: Option<bool>,
    /// A number, or "nan".
    #[schema(value_type = Option<String>)]
    pub nodata: Option<serde_json::Value>,
    /// A subdataset name (NetCDF variable) or a file inside a zip.
    pub subdataset: Option<String>,
    /// Orders this user's own queued tasks (default normal); other users' tasks take turns
    /// with them whatever their priority.
    pub priority: Option<Priority>,
    /// A URL called when this task ends (`task.succeeded`, `task.failed` or `task.revoked`),
    /// signed as webhooks are, with the key from `GET /webhooks/callback-secret`. Public
    /// addresses only. Not part of the conversion: status shows it nowhere.
    #[schema(example = "https://example.com/hooks/rastercast")]
    pub callback_url: Option<String>,
}

/// An integer as JSON Schema counts them: `512` or `512.0` (a number with no fraction).
fn whole_number<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<i64>, D::Error> {
    use serde::de::Error;
    let Some(n) = Option::<serde_json::Number>::deserialize(d)? else {
        return Ok(None);
    };
    n.as_i64()
        .or_else(|| {
            n.as_f64()
                .filter(|f| f.fract() == 0.0 && f.abs() < 9.0e15)
                .map(|f| f as i64)
        })
        .map(Some)
        .ok_or_else(|| D::Error::custom(format!("expected a whole number, not {n}")))
}

/// Where a task goes among its user's own queued tasks.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Priority {
    Low,
    #[default]
    Normal,
    High,
}

impl Priority {
    /// The order key the queue sorts by, highest first.
    pub fn rank(self) -> i64 {
        match self {
            Priority::Low => -1,
            Priority::Normal => 0,
            Priority::High => 1,
        }
    }
}

/// Options after validation, with every default filled in. Stored with the task and
/// sent to the worker, so what ran is always what the client can read back.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Conversion {
    pub compression: String,
    pub quality: Option<u8>,
    pub blocksize: u32,
    /// `None` lets the engine choose: nearest for paletted sources, average otherwise.
    pub overview_resampling: Option<String>,
    pub target_crs: Option<String>,
    pub web_optimized: bool,
    /// A number, or NaN; serialised as a string so NaN survives JSON.
    pub nodata: Option<String>,
    pub subdataset: Option<String>,
    /// Tasks stored before priorities existed read as normal.
    #[serde(default)]
    pub priority: Priority,
}

/// Options stored with a resumable upload until it completes: the conversion, and its
/// callback. JSON stored before callbacks existed reads as a conversion alone.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Deferred {
    #[serde(flatten)]
    pub options: Conversion,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub callback_url: Option<String>,
}

impl Default for Conversion {
    fn default() -> Self {
        RequestedOptions::default()
            .validate()
            .expect("defaults are valid")
    }
}

pub const COMPRESSIONS: &[&str] = &["deflate", "lzw", "zstd", "webp", "jpeg", "lerc", "none"];
pub const RESAMPLINGS: &[&str] = &[
    "nearest",
    "average",
    "bilinear",
    "cubic",
    "cubicspline",
    "lanczos",
    "mode",
    "rms",
];
/// Compression for map clients: lossless, and read by every GeoTIFF reader including geotiff.js.
pub const DEFAULT_COMPRESSION: &str = "deflate";
/// 512 is the COG driver's own default and the tile size map clients fetch most efficiently.
pub const DEFAULT_BLOCKSIZE: u32 = 512;

impl RequestedOptions {
    /// Checks every option; the error is a sentence fit for a 422 `detail`.
    pub fn validate(self) -> Result<Conversion, String> {
        let compression = match self.compression {
            None => DEFAULT_COMPRESSION.to_string(),
            Some(c) => {
                let c = c.to_ascii_lowercase();
                if !COMPRESSIONS.contains(&c.as_str()) {
                    return Err(format!(
                        "compression must be one of {}, not {c:?}",
                        COMPRESSIONS.join(", ")
                    ));
                }
                c
            }
        };
        let quality = match self.quality {
            None => None,
            Some(q) if !matches!(compression.as_str(), "jpeg" | "webp") => {
                return Err(format!(
                    "quality ({q}) applies only to jpeg and webp compression, not {compression}"
                ))
            }
            Some(q) if !(1..=100).contains(&q) => {
                return Err(format!("quality must be between 1 and 100, not {q}"))
            }
            Some(q) => Some(q as u8),
        };
        let blocksize = match self.blocksize {
            None => DEFAULT_BLOCKSIZE,
            Some(b) if (64..=4096).contains(&b) && (b as u64).is_power_of_two() => b as u32,
            Some(b) => {
                return Err(format!(
                    "blocksize must be a power of two from 64 to 4096, not {b}"
                ))
            }
        };
        let overview_resampling = match self.overview_resampling {
            None => None,
            Some(r) => {
                let r = r.to_ascii_lowercase();
                if !RESAMPLINGS.contains(&r.as_str()) {
                    return Err(format!(
                        "overview_resampling must be one of {}, not {r:?}",
                        RESAMPLINGS.join(", ")
                    ));
                }
                Some(r)
            }
        };
        let target_crs = self.target_crs.map(|c| normalise_crs(&c)).transpose()?;
        let web_optimized = self.web_optimized.unwrap_or(false);
        if web_optimized {
            if let Some(crs) = &target_crs {
                if crs != "EPSG:3857" {
                    return Err(format!(
                        "web_optimized output is always EPSG:3857; drop target_crs ({crs}) or set it to EPSG:3857"
                    ));
                }
            }
        }
        let nodata = self.nodata.map(parse_nodata).transpose()?;
        let subdataset = match self.subdataset {
            None => None,
            Some(s) if s.is_empty() || s.len() > 256 || s.chars().any(char::is_control) => {
                return Err("subdataset must be a subdataset name of 1 to 256 printable characters, as listed in the error for a file that has several".into())
            }
            Some(s) => Some(s),
        };
        Ok(Conversion {
            compression,
            quality,
            blocksize,
            overview_resampling,
            target_crs,
            web_optimized,
            nodata,
            subdataset,
            priority: self.priority.unwrap_or_default(),
        })
    }
}

/// Accepts only `AUTHORITY:CODE`. GDAL's general CRS parser would also read files and
/// fetch URLs named in the string, so nothing else ever reaches it. Whether GDAL knows the code
/// is [`check_crs`]'s question, asked in a worker: the server does not link GDAL.
pub fn normalise_crs(input: &str) -> Result<String, String> {
    let bad =
        || format!("target_crs must be an authority code such as \"EPSG:3857\", not {input:?}");
    let (auth, code) = input.trim().split_once(':').ok_or_else(bad)?;
    let auth = auth.to_ascii_uppercase();
    let allowed_auth = ["EPSG", "ESRI", "OGC", "IAU_2015"].contains(&auth.as_str());
    let code_ok =
        !code.is_empty() && code.len() <= 16 && code.chars().all(|c| c.is_ascii_alphanumeric());
    if !allowed_auth || !code_ok {
        return Err(bad());
    }
    Ok(format!("{auth}:{code}"))
}

fn parse_nodata(value: serde_json::Value) -> Result<String, String> {
    match value {
        serde_json::Value::Number(n) => n
            .as_f64()
            .map(|v| v.to_string())
            .ok_or_else(|| "nodata is out of range".to_string()),
        serde_json::Value::String(s) if s.eq_ignore_ascii_case("nan") => Ok("nan".into()),
        serde_json::Value::String(s) => s
            .trim()
            .parse::<f64>()
            .ok()
            .filter(|v| v.is_finite())
            .map(|v| v.to_string())
            .ok_or_else(|| format!("nodata must be a number or \"nan\", not {s:?}")),
        other => Err(format!("nodata must be a number or \"nan\", not {other}")),
    }
}

impl Conversion {
    /// `gdal_translate` arguments for this conversion. `threads` is the per-job GDAL
    /// thread count, chosen by the caller from the worker pool size.
    pub fn translate_args(&self, resampling: &str, threads: usize) -> Vec<String> {
        let mut args: Vec<String> = vec!["-of".into(), "COG".into()];
        let mut co = |kv: String| {
            args.push("-co".into());
            args.push(kv);
        };
        co(format!(
            "COMPRESS={}",
            self.compression.to_ascii_uppercase()
        ));
        if matches!(self.compression.as_str(), "deflate" | "lzw" | "zstd") {
            co("PREDICTOR=YES".into());
        }
        if let Some(q) = self.quality {
            co(format!("QUALITY={q}"));
        }
        co(format!("BLOCKSIZE={}", self.blocksize));
        co(format!(
            "OVERVIEW_RESAMPLING={}",
            resampling.to_ascii_uppercase()
        ));
        co("BIGTIFF=IF_SAFER".into());
        co(format!("NUM_THREADS={}", threads.max(1)));
        if self.web_optimized {
            co("TILING_SCHEME=GoogleMapsCompatible".into());
        } else if let Some(crs) = &self.target_crs {
            co(format!("TARGET_SRS={crs}"));
        }
        if self.web_optimized || self.target_crs.is_some() {
            co(format!("RESAMPLING={}", warp_resampling(resampling)));
        }
        if let Some(nd) = &self.nodata {
            args.push("-a_nodata".into());
            args.push(nd.clone());
        }
        args
    }
}

/// The warper has no `average` for upsampling-free reprojection worth using; bilinear is
/// its closest smooth kernel.
fn warp_resampling(overview: &str) -> &str {
    match overview {
        "average" | "rms" => "BILINEAR",
        "nearest" => "NEAREST",
        "mode" => "MODE",
        "cubic" => "CUBIC",
        "cubicspline" => "CUBICSPLINE",
        "lanczos" => "LANCZOS",
        _ => "BILINEAR",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn whole_numbers_may_be_written_with_a_zero_fraction() {
        let read = |json: &str| serde_json::from_str::<RequestedOptions>(json);
        assert_eq!(
            read(r#"{"blocksize": 256.0}"#).unwrap().blocksize,
            Some(256)
        );
        assert_eq!(read(r#"{"quality": 80}"#).unwrap().quality, Some(80));
        assert!(read(r#"{"blocksize": 256.5}"#).is_err());
        assert!(read(r#"{"quality": "80"}"#).is_err());
        assert_eq!(read("{}").unwrap().blocksize, None);
    }

    fn parse(json: &str) -> Result<Conversion, String> {
        serde_json::from_str::<RequestedOptions>(json)
            .map_err(|e| e.to_string())?
            .validate()
    }

    #[test]
    fn defaults_suit_map_clients() {
        let c = parse("{}").unwrap();
        assert_eq!(c.compression, "deflate");
        assert_eq!(c.blocksize, 512);
        assert!(c.target_crs.is_none());
    }

    #[test]
    fn refuses_impossible_options_with_a_sentence() {
        assert!(parse(r#"{"compression":"gzip"}"#)
            .unwrap_err()
            .contains("compression"));
        assert!(parse(r#"{"quality":50}"#).unwrap_err().contains("jpeg"));
        assert!(parse(r#"{"compression":"jpeg","quality":0}"#).is_err());
        assert!(parse(r#"{"blocksize":500}"#)
            .unwrap_err()
            .contains("power of two"));
        assert!(parse(r#"{"colour":"red"}"#)
            .unwrap_err()
            .contains("unknown field"));
        assert!(parse(r#"{"nodata":"abc"}"#).is_err());
        assert!(parse(r#"{"web_optimized":true,"target_crs":"EPSG:4326"}"#).is_err());
    }

    #[test]
    fn crs_never_reaches_gdal_as_a_path_or_url() {
        for hostile in [
            "/etc/passwd",
            "http://127.0.0.1/x",
            "+proj=longlat",
            "EPSG:../../x",
        ] {
            let json = serde_json::json!({ "target_crs": hostile }).to_string();
            assert!(parse(&json).is_err(), "{hostile} accepted");
        }
        assert_eq!(
            parse(r#"{"target_crs":"epsg:3857"}"#)
                .unwrap()
                .target_crs
                .unwrap(),
            "EPSG:3857"
        );
    }

    #[test]
    fn nodata_keeps_nan() {
        assert_eq!(parse(r#"{"nodata":"NaN"}"#).unwrap().nodata.unwrap(), "nan");
        assert_eq!(
            parse(r#"{"nodata":-9999}"#).unwrap().nodata.unwrap(),
            "-9999"
        );
    }
}
