//! GGUF block-quantized weights in the layout the GPU streams (kernels/quant_formats.cuh).
//!
//! GGUF stores each block with its scales in front of its quants (Q8_0: 34 bytes per 32 weights),
//! which no 16-byte vector load can stream. At upload a tensor is split into planes: `qs`, the quant
//! bytes as 16-byte chunks (row-major, rows 16-byte aligned), and up to three side planes a format
//! reads with small loads (scales, high bits). Every plane is row-major, so the planes of tensors
//! stacked by rows are the concatenation of each one's planes. The values are the file's, bit for bit.
//! Q5_0, Q4_K and Q6_K (kernels/quant_kformats.cuh, whose header describes their planes) are also
//! reordered: nibbles in Q4_0's order per 32 weights, high bits shuffled next to them, K-quant
//! sub-block scales unpacked.

use cudarc::driver::{CudaSlice, DevicePtr};
use kestrel::quant::GgmlType;

pub use super::quant_repack::HostPlanes;
use super::shape_error;
use crate::{CudaDevice, CudaError, Result};

/// Planes per format: `qs` and three side planes.
pub const PLANES: usize = 4;

/// A block-quantized weight format the GPU kernels read.
#[allow(non_camel_case_types)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum QuantFormat {
    Q8_0,
    Q4_0,
    Q5_0,
    Q4_K,
    Q6_K,
}

/// `[["gemv_{fmt}_t{T}", "gemv_{fmt}_t{T}_norm"]; 8]`.
macro_rules! gemv_names {
    ($fmt:literal) => {
        [
            gemv_names!(@t $fmt, "1"),
            gemv_names!(@t $fmt, "2"),
            gemv_names!(@t $fmt, "3"),
            gemv_names!(@t $fmt, "4"),
            gemv_names!(@t $fmt, "5"),
            gemv_names!(@t $fmt, "6"),
            gemv_names!(@t $fmt, "7"),
            gemv_names!(@t $fmt, "8"),
        ]
    };
    (@t $fmt:literal, $t:literal) => {
        [
            concat!("gemv_", $fmt, "_t", $t),
            concat!("gemv_", $fmt, "_t", $t, "_norm"),
        ]
    };
}

/// The GEMV kernels of one format, by token count and norm fusion.
type GemvNames = [[&'static str; 2]; 8];

impl QuantFormat {
    pub const ALL: [QuantFormat; 5] = [
        QuantFormat::Q8_0,
        QuantFormat::Q4_0,
        QuantFormat::Q5_0,
        QuantFormat::Q4_K,
        QuantFormat::Q6_K,
    ];

    /// The format holding GGUF tensors of type `ty`, if the GPU reads it.
    pub fn from_ggml(ty: GgmlType) -> Option<QuantFormat> {
        QuantFormat::ALL.into_iter().find(|f| f.ggml() == ty)
    }

    pub fn ggml(self) -> GgmlType {
        match self {
            QuantFormat::Q8_0 => GgmlType::Q8_0,
            QuantFormat::Q4_0 => GgmlType::Q4_0,
            QuantFormat::Q5_0 => GgmlType::Q5_0,
            QuantFormat::Q4_K => GgmlType::Q4_K,
            QuantFormat::Q6_K => GgmlType::Q6_K,
        }
    }

    /// Weights per 16-byte chunk of `qs` (the kernels' `PER_CHUNK`).
    pub fn weights_per_chunk(self) -> usize {
        match self {
            QuantFormat::Q8_0 => 16,
            QuantFormat::Q4_0 | QuantFormat::Q5_0 | QuantFormat::Q4_K | QuantFormat::Q6_K => 32,
        }
    }

    /// Whether rows of `in_features` weights are whole blocks (and chunks) of this format.
    pub fn fits_row(self, in_features: usize) -> bool {
        let unit = self.ggml().block_size().max(self.weights_per_chunk());
        in_features > 0 && in_features.is_multiple_of(unit)
    }

    /// Bytes of each plane (`qs`, then the side planes) per row of `in_features` weights (whole
    /// blocks: [`QuantFormat::fits_row`]).
    pub fn plane_row_bytes(self, in_features: usize) -> [usize; PLANES] {
        let (blocks, supers) = (in_features / 32, in_features / 256);
        let qs = in_features / self.weights_per_chunk() * 16;
        match self {
            QuantFormat::Q8_0 | QuantFormat::Q4_0 => [qs, 2 * blocks, 0, 0],
            QuantFormat::Q5_0 => [qs, 4 * blocks, 2 * blocks, 0],
            QuantFormat::Q4_K => [qs, 2 * blocks, 4 * supers, 0],
            QuantFormat::Q6_K => [qs, 8 * blocks, 2 * blocks, 2 * supers],
        }
    }

    pub(crate) fn gemv_kernel(self, tokens: usize, norm: bool) -> &'static str {
        const Q8_0: GemvNames = gemv_names!("q8_0");
        const Q4_0: GemvNames = gemv_names!("q4_0");
        const Q5_0: GemvNames = gemv_names!("q5_0");
        const Q4_K: GemvNames = gemv_names!("q4_k");
        const Q6_K: GemvNames = gemv_names!("q6_k");
        let table = match self {
            QuantFormat::Q8_0 => &Q8_0,
            QuantFormat::Q4_0 => &Q4_0,
            QuantFormat::Q5_0 => &Q5_0,
            QuantFormat::Q4_K => &Q4_K,
            QuantFormat::Q6_K => &Q6_K,
        };
        table[tokens - 1][norm as usize]
    }

    /// The integer-dot-product kernel (kernels/gemv_dp4a.cu) for 1..=4 tokens, where the format has one.
    pub(crate) fn dp4a_kernel(self, tokens: usize, norm: bool) -> Option<&'static str> {
        macro_rules! table {
            ($fmt:literal) => {
                [
                    [
                        concat!("gemv_", $fmt, "_dp4a_t1"),
                        concat!("gemv_", $fmt, "_dp4a_t1_norm"),
                    ],
                    [
                        concat!("gemv_", $fmt, "_dp4a_t2"),
                        concat!("gemv_", $fmt, "_dp4a_t2_norm"),
                    ],
                    [
                        concat!("gemv_", $fmt, "_dp4a_t3"),
                        concat!("gemv_", $fmt, "_dp4a_t3_norm"),
                    ],
                    [
                        concat!("gemv_", $fmt, "_dp4a_t4"),
                        concat!("gemv_", $fmt, "_dp4a_t4_norm"),
                    ],
                ]
            };
        }
        const Q4_0: [[&str; 2]; 4] = table!("q4_0");
        const Q5_0: [[&str; 2]; 4] = table!("q5_0");
        const Q4_K: [[&str; 2]; 4] = table!("q4_k");
        const Q6_K: [[&str; 2]; 4] = table!("q6_k");
        let t = match self {
            QuantFormat::Q4_0 => &Q4_0,
            QuantFormat::Q5_0 => &Q5_0,
            QuantFormat::Q4_K => &Q4_K,
            QuantFormat::Q6_K => &Q6_K,
            QuantFormat::Q8_0 => return None,
        };
        t.get(tokens.checked_sub(1)?).map(|row| row[norm as usize])
    }

    pub(crate) fn dequant_kernel(self) -> &'static str {
        match self {
            QuantFormat::Q8_0 => "dequant_q8_0",
            QuantFormat::Q4_0 => "dequant_q4_0",
            QuantFormat::Q5_0 => "dequant_q5_0",
            QuantFormat::Q4_K => "dequant_q4_k",
            QuantFormat::Q6_K => "dequant_q6_k",
        }
    }
}

/// A block-quantized weight `[rows, in_features]` on the device.
pub struct QuantWeights {
    pub format: QuantFormat,
    pub rows: usize,
    pub in_features: usize,
    /// `qs` and the side planes the format has (None where it has none).
    pub planes: [Option<CudaSlice<u8>>; PLANES],
}

impl QuantWeights {
    /// Uploads `host` (rows of `in_features` weights in `format`), checking every plane's size.
    pub fn upload(
        dev: &CudaDevice,
        format: QuantFormat,
        in_features: usize,
        host: &HostPlanes,
    ) -> Result<QuantWeights> {
        let per_row = format.plane_row_bytes(in_features);
        let rows = host.planes[0].len() / per_row[0].max(1);
        if !format.fits_row(in_features) {
            return Err(shape_error(
                "QuantWeights::upload",
                format!(
                    "{format:?} rows of {in_features} weights: need a multiple of {}",
                    format.ggml().block_size().max(format.weights_per_chunk())
                ),
            ));
        }
        let mut planes: [Option<CudaSlice<u8>>; PLANES] = Default::default();
        for (i, (bytes, &width)) in host.planes.iter().zip(&per_row).enumerate() {
            if bytes.len() != rows * width {
                return Err(shape_error(
                    "QuantWeights::upload",
                    format!(
                        "{format:?} plane {i} has {} bytes, {rows} rows need {}",
                        bytes.len(),
                        rows * width
                    ),
                ));
            }
            if width > 0 {
                let what = format!("uploading a {format:?} weight ({rows} x {in_features})");
                planes[i] = Some(
                    dev.stream()
                        .clone_htod(bytes)
                        .map_err(CudaError::driver(what))?,
                );
            }
        }
        Ok(QuantWeights {
            format,
            rows,
            in_features,
            planes,
        })
    }

    /// Bytes on the device (what a GEMV streams).
    pub fn bytes(&self) -> usize {
        self.planes.iter().flatten().map(|p| p.len()).sum()
    }

    /// The planes' device addresses (0 for absent ones) and the guards that keep them in use.
    pub(crate) fn pointers<'a>(
        &'a self,
        s: &'a std::sync::Arc<cudarc::driver::CudaStream>,
    ) -> ([u64; PLANES], Vec<cudarc::driver::SyncOnDrop<'a>>) {
        let mut guards = Vec::with_capacity(PLANES);
        let ptrs = self.planes.each_ref().map(|p| match p {
            Some(p) => {
                let (ptr, g) = p.device_ptr(s);
                guards.push(g);
                ptr
            }
            None => 0,
        });
        (ptrs, guards)
    }
}
