//! Rendering one map tile in the worker: GDAL warps the tile's square of EPSG:3857 from the
//! overview rio-tiler would read (one `GDALWarp`, nearest by default, nodata or an alpha band
//! for what is outside the data), the domain paints the values, and GDAL encodes the image.
//! Only GeoTIFFs are opened: tiles are drawn from COGs.

use std::ffi::{c_char, c_int, CString};
use std::path::Path;

use gdal::raster::Buffer;
use gdal::{Dataset, DatasetOptions, DriverManager, GdalOpenFlags};

use super::ConvertError;
use crate::domain::tiles::{self, Area, Format, TileJob};

fn fail(message: impl Into<String>) -> ConvertError {
    ConvertError::Failed(message.into())
}

pub(super) fn open_tiff(path: &Path) -> Result<Dataset, ConvertError> {
    Dataset::open_ex(
        path,
        DatasetOptions {
            open_flags: GdalOpenFlags::GDAL_OF_RASTER | GdalOpenFlags::GDAL_OF_READONLY,
            allowed_drivers: Some(&["GTiff"]),
            open_options: None,
            sibling_files: None,
        },
    )
    .map_err(|_| fail("This file is not a GeoTIFF: tiles are drawn from COGs."))
}

/// The file's full resolution once warped to EPSG:3857 (metres per pixel), as GDAL suggests
/// it (`GDALSuggestedWarpOutput2`, which rio-tiler uses through rasterio).
fn native_resolution(dataset: &Dataset) -> Result<f64, ConvertError> {
    let srs = gdal::spatial_ref::SpatialRef::from_epsg(3857)
        .and_then(|s| s.to_wkt())
        .map_err(|_| fail("EPSG:3857 is unknown to GDAL."))?;
    let wkt = CString::new(srs).expect("WKT has no NUL");
    // SAFETY: the dataset handle is valid for this call; the VRT it returns is closed here.
    let gt = unsafe {
        let vrt = gdal_sys::GDALAutoCreateWarpedVRT(
            dataset.c_dataset(),
            std::ptr::null(),
            wkt.as_ptr(),
            gdal_sys::GDALResampleAlg::GRA_NearestNeighbour,
            0.125,
            std::ptr::null(),
        );
        if vrt.is_null() {
            return Err(fail(
                "This raster cannot be placed on a web map: it has no CRS, or one GDAL cannot bring to EPSG:3857.",
            ));
        }
        let mut gt = [0.0f64; 6];
        gdal_sys::GDALGetGeoTransform(vrt, gt.as_mut_ptr());
        gdal_sys::GDALClose(vrt);
        gt
    };
    Ok(gt[1].abs())
}

/// Warps the tile's square into an in-memory dataset of `size`², from overview `overview`.
fn warp(
    dataset: &Dataset,
    bounds: [f64; 4],
    size: u32,
    resampling: &str,
    overview: Option<usize>,
    nodata: Option<f64>,
) -> Result<Dataset, ConvertError> {
    let mut args: Vec<String> = vec![
        "-of".into(),
        "MEM".into(),
        "-t_srs".into(),
        "EPSG:3857".into(),
        "-te".into(),
    ];
    args.extend(bounds.iter().map(|v| format!("{v:?}")));
    args.extend([
        "-ts".into(),
        size.to_string(),
        size.to_string(),
        "-r".into(),
        resampling.into(),
        "-ovr".into(),
        overview.map_or("NONE".into(), |i| i.to_string()),
        "-wo".into(),
        "INIT_DEST=NO_DATA".into(),
    ]);
    match nodata {
        Some(v) => {
            let v = if v.is_nan() {
                "nan".to_owned()
            } else {
                format!("{v:?}")
            };
            args.extend(["-srcnodata".into(), v.clone(), "-dstnodata".into(), v]);
        }
        None => args.push("-dstalpha".into()),
    }
    let args: Vec<CString> = args
        .into_iter()
        .map(|a| CString::new(a).expect("no NUL"))
        .collect();
    let mut argv: Vec<*mut c_char> = args.iter().map(|a| a.as_ptr() as *mut c_char).collect();
    argv.push(std::ptr::null_mut());
    let empty = CString::new("").expect("no NUL");
    // SAFETY: `argv` is NULL-terminated and outlives the options; the source handle is valid;
    // the options are freed and the result is owned by the returned Dataset.
    unsafe {
        gdal_sys::CPLErrorReset();
        let options = gdal_sys::GDALWarpAppOptionsNew(argv.as_mut_ptr(), std::ptr::null_mut());
        if options.is_null() {
            return Err(fail("GDAL refused the tile's warp options."));
        }
        let mut sources = [dataset.c_dataset()];
        let mut usage_error: c_int = 0;
        let out = gdal_sys::GDALWarp(
            empty.as_ptr(),
            std::ptr::null_mut(),
            1,
            sources.as_mut_ptr(),
            options,
            &mut usage_error,
        );
        gdal_sys::GDALWarpAppOptionsFree(options);
        if out.is_null() {
            return Err(fail("GDAL could not draw this tile."));
        }
        Ok(Dataset::from_c_dataset(out))
    }
}

/// Renders `job` of the COG at `path` (a tile, or a preview): the encoded image.
pub fn render(path: &Path, job: &TileJob) -> Result<Vec<u8>, ConvertError> {
    let render = &job.render;
    let dataset = open_tiff(path)?;
    let count = dataset.raster_count();
    let bidx: Vec<usize> = if render.bidx.is_empty() {
        if count >= 3 {
            vec![1, 2, 3]
        } else {
            vec![1]
        }
    } else {
        render.bidx.clone()
    };
    if let Some(b) = bidx.iter().find(|b| **b > count) {
        return Err(fail(format!("bidx {b}: the file has {count} bands.")));
    }
    let (bands, valid, size) = match job.area {
        Area::Tile { z, x, y } => tile_values(&dataset, &bidx, render, z, x, y)?,
        Area::Preview { max_size } => preview_values(&dataset, &bidx, render, max_size)?,
    };
    let palette = match (&render.colormap, bidx.as_slice()) {
        (None, [b]) => palette_of(&dataset, *b),
        _ => None,
    };
    let (pixels, channels) = tiles::paint(&bands, &valid, render, palette.as_ref());
    encode(pixels, channels, size, render.format)
}

/// Band `b`'s colour table, when it is paletted.
fn palette_of(dataset: &Dataset, b: usize) -> Option<tiles::Palette> {
    let band = dataset.rasterband(b).ok()?;
    let table = band.color_table()?;
    let mut palette = [[0u8; 4]; 256];
    for (i, entry) in palette.iter_mut().enumerate().take(table.entry_count()) {
        let rgba = table.entry_as_rgb(i)?;
        let channel = |v: i16| v.clamp(0, 255) as u8;
        *entry = [
            channel(rgba.r),
            channel(rgba.g),
            channel(rgba.b),
            channel(rgba.a),
        ];
    }
    Some(palette)
}

type Values = (Vec<Vec<f64>>, Vec<Vec<bool>>, (usize, usize));

/// Whether a value read is data: not the nodata (or NaN), and inside the data.
fn is_data(v: f64, nodata: Option<f64>) -> bool {
    match nodata {
        Some(nd) if !nd.is_nan() => v != nd && !v.is_nan(),
        _ => !v.is_nan(),
    }
}

fn tile_values(
    dataset: &Dataset,
    bidx: &[usize],
    render: &tiles::Render,
    z: u32,
    x: u64,
    y: u64,
) -> Result<Values, ConvertError> {
    let (width, _) = dataset.raster_size();
    let count = dataset.raster_count();
    let first = dataset
        .rasterband(1)
        .map_err(|_| fail("The file has no band."))?;
    let overviews: Vec<usize> = (0..first.overview_count().unwrap_or(0).max(0) as usize)
        .filter_map(|i| first.overview(i).ok().map(|o| o.size().0))
        .collect();
    let nodata = render.nodata.or(first.no_data_value());
    let bounds = tiles::tile_bounds(z, x, y);
    let native_px = (bounds[2] - bounds[0]) / native_resolution(dataset)?;
    let nearest = render.resampling == "near";
    let overview = tiles::overview_for(native_px, render.tilesize, width, &overviews, nearest);
    let size = render.tilesize as usize;
    let warped = warp(
        dataset,
        bounds,
        render.tilesize,
        &render.resampling,
        overview,
        nodata,
    )?;
    let read = |b: usize| -> Result<Vec<f64>, ConvertError> {
        let band = warped
            .rasterband(b)
            .map_err(|_| fail("The warped tile lost a band."))?;
        band.read_as::<f64>((0, 0), (size, size), (size, size), None)
            .map(|buf| buf.into_shape_and_vec().1)
            .map_err(|_| fail("GDAL could not read the warped tile."))
    };
    let alpha = match nodata {
        None => Some(read(count + 1)?),
        Some(_) => None,
    };
    let mut bands = Vec::with_capacity(bidx.len());
    let mut valid = Vec::with_capacity(bidx.len());
    for &b in bidx {
        let values = read(b)?;
        let ok = values
            .iter()
            .enumerate()
            .map(|(i, v)| alpha.as_ref().is_none_or(|a| a[i] != 0.0) && is_data(*v, nodata))
            .collect();
        bands.push(values);
        valid.push(ok);
    }
    Ok((bands, valid, (size, size)))
}

/// The whole file in its own CRS, fitted to `max_size`, read with nearest resampling; its
/// mask is GDAL's (nodata, alpha or an internal mask), or the request's `nodata`.
fn preview_values(
    dataset: &Dataset,
    bidx: &[usize],
    render: &tiles::Render,
    max_size: u32,
) -> Result<Values, ConvertError> {
    let (width, height) = dataset.raster_size();
    let (w, h) = tiles::preview_size(width, height, max_size);
    let mut bands = Vec::with_capacity(bidx.len());
    let mut valid = Vec::with_capacity(bidx.len());
    for &b in bidx {
        let band = dataset
            .rasterband(b)
            .map_err(|_| fail(format!("Band {b} cannot be read.")))?;
        let values = band
            .read_as::<f64>((0, 0), (width, height), (w, h), None)
            .map_err(|_| fail(format!("Band {b} cannot be read.")))?
            .into_shape_and_vec()
            .1;
        let ok: Vec<bool> = match render.nodata {
            Some(nd) => values.iter().map(|v| is_data(*v, Some(nd))).collect(),
            None => {
                let mask = band
                    .open_mask_band()
                    .and_then(|m| m.read_as::<u8>((0, 0), (width, height), (w, h), None))
                    .map_err(|_| fail(format!("Band {b}'s mask cannot be read.")))?
                    .into_shape_and_vec()
                    .1;
                mask.iter()
                    .zip(&values)
                    .map(|(m, v)| *m != 0 && !v.is_nan())
                    .collect()
            }
        };
        bands.push(values);
        valid.push(ok);
    }
    Ok((bands, valid, (w, h)))
}

/// Encodes interleaved 8-bit pixels: PNG with the `png` crate, WEBP and JPEG with GDAL's
/// drivers, in memory.
fn encode(
    pixels: Vec<u8>,
    channels: usize,
    (width, height): (usize, usize),
    format: Format,
) -> Result<Vec<u8>, ConvertError> {
    if format == Format::Png {
        return encode_png(&pixels, channels, (width, height));
    }
    // WebP takes colour only: gray (and gray + alpha) is spread to three channels.
    let (pixels, channels) = if format == Format::Webp && channels < 3 {
        let mut wide = Vec::with_capacity(pixels.len() / channels * (channels + 2));
        for px in pixels.chunks_exact(channels) {
            wide.extend_from_slice(&[px[0], px[0], px[0]]);
            if channels == 2 {
                wide.push(px[1]);
            }
        }
        (wide, channels + 2)
    } else {
        (pixels, channels)
    };
    let mem =
        DriverManager::get_driver_by_name("MEM").map_err(|_| fail("GDAL has no MEM driver."))?;
    let image = mem
        .create_with_band_type::<u8, _>("", width, height, channels)
        .map_err(|_| fail("GDAL could not make the tile's image."))?;
    for c in 0..channels {
        let plane: Vec<u8> = pixels.iter().skip(c).step_by(channels).copied().collect();
        let mut band = image.rasterband(c + 1).map_err(|_| fail("no band"))?;
        band.write(
            (0, 0),
            (width, height),
            &mut Buffer::new((width, height), plane),
        )
        .map_err(|_| fail("GDAL could not write the tile's image."))?;
    }
    let (driver, options): (&str, &[&str]) = match format {
        Format::Webp => ("WEBP", &["QUALITY=85"]),
        _ => ("JPEG", &["QUALITY=85"]),
    };
    let driver = DriverManager::get_driver_by_name(driver)
        .map_err(|_| fail(format!("GDAL has no {driver} driver.")))?;
    let name = format!(
        "/vsimem/tile-{}-{}.img",
        std::process::id(),
        TILE_COUNTER.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
    );
    let mut list = gdal::cpl::CslStringList::new();
    for option in options {
        list.add_string(option)
            .map_err(|_| fail("bad encoder options"))?;
    }
    let encoded = image
        .create_copy(&driver, &name, &list)
        .map_err(|_| fail("GDAL could not encode the tile."))?;
    drop(encoded);
    let bytes = gdal::vsi::get_vsi_mem_file_bytes_owned(&name)
        .map_err(|_| fail("GDAL lost the encoded tile."));
    let _ = gdal::vsi::unlink_mem_file(&name);
    // The JPEG driver may leave a side file of metadata.
    let _ = gdal::vsi::unlink_mem_file(format!("{name}.aux.xml"));
    bytes
}

/// PNG with fdeflate (the `png` crate's `Fast`): deflate took half of a tile's time with
/// GDAL's PNG driver (libpng, zlib level 6); this draws twice as many tiles per second, each
/// about 6 % larger than TiTiler's (docs/BENCHMARKS.md, map tiles).
fn encode_png(
    pixels: &[u8],
    channels: usize,
    (width, height): (usize, usize),
) -> Result<Vec<u8>, ConvertError> {
    let colour = match channels {
        1 => png::ColorType::Grayscale,
        2 => png::ColorType::GrayscaleAlpha,
        3 => png::ColorType::Rgb,
        _ => png::ColorType::Rgba,
    };
    let mut out = Vec::with_capacity(pixels.len() / 2);
    let mut encoder = png::Encoder::new(&mut out, width as u32, height as u32);
    encoder.set_color(colour);
    encoder.set_depth(png::BitDepth::Eight);
    encoder.set_compression(png::Compression::Fast);
    encoder
        .write_header()
        .and_then(|mut writer| writer.write_image_data(pixels))
        .map_err(|e| fail(format!("The tile could not be encoded as PNG: {e}")))?;
    Ok(out)
}

static TILE_COUNTER: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
