//! When the decode GEMV runs with integer dot products (kernels/gemv_dp4a.cu) instead of decoding the
//! blocks to f32 in registers (gemv_quant.cu): issue #4 asks for both designs measured and the faster
//! kept. Measured (BENCHMARKS.md, H200): for the 4- to 6-bit formats the dequantizing kernel is bound
//! by its arithmetic (~3 instructions a weight) and dp4a is 13-25% faster where x is short (the hidden
//! size), while every block quantizing a long x (o_proj at 4B: 4,096; down: 9,728) costs more than it
//! saves; for Q8_0 the dequantizing kernel already streams at bandwidth. But 8-bit activations cost
//! accuracy: with them the tiny Qwen2 test model's Q4_K_M decode left DESIGN.md's parity bound (2.66e-2
//! against 1.97e-2, H200), and at full size Qwen3-0.6B's decode ratio to HF bf16 rose from 0.69 to 0.91.
//! So they are opt-in (`KESTREL_DP4A=1`), and never for q/k/v (k feeds Qwen3's k_norm gains near 100):
//! the caller says whether 8-bit activations are acceptable. The bf16 default is now the tensor-core
//! kernel for 4-bit weights (gemv_mma.rs: ~2 instructions a weight without leaving bf16), which also
//! beats dp4a on the 4B lm_head (Q4_0 73.7 µs against dp4a's 97.9, other calls, both H200).

use super::quant_layout::QuantFormat;

/// The longest x (in_features) a dp4a GEMV quantizes in every block.
pub const DP4A_MAX_IN_FEATURES: usize = 3072;
/// Tokens the dp4a kernels take (their shared memory grows with them).
pub const DP4A_MAX_TOKENS: usize = 4;

/// Which activations a quantized decode GEMV may use.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Activations {
    /// bf16, as the model holds them (the dequantizing kernel).
    Bf16,
    /// Quantized to 8 bits per 32 values in the kernel where [`use_dp4a`] picks it (with
    /// `KESTREL_DP4A=1`).
    Int8Allowed,
    /// Quantized to 8 bits wherever a dp4a kernel applies, whatever `KESTREL_DP4A` says (tests).
    Int8,
}

/// Whether `KESTREL_DP4A=1` turned the integer kernels on.
fn enabled() -> bool {
    static ON: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *ON.get_or_init(|| std::env::var("KESTREL_DP4A").is_ok_and(|v| v == "1"))
}

/// Whether a GEMV of `tokens` rows of `in_features` over `format` with `activations` runs the dp4a
/// kernel.
pub fn use_dp4a(
    format: QuantFormat,
    activations: Activations,
    tokens: usize,
    in_features: usize,
) -> bool {
    let wanted = match activations {
        Activations::Bf16 => false,
        Activations::Int8Allowed => enabled(),
        Activations::Int8 => true,
    };
    wanted
        && format.dp4a_kernel(1, false).is_some()
        && (1..=DP4A_MAX_TOKENS).contains(&tokens)
        && in_features <= DP4A_MAX_IN_FEATURES
}

/// Dynamic shared memory of a dp4a kernel beyond the fused norm's rows: the quantized x (a byte a
/// value) and a 12-byte (d, two half-block sums) record per 32 values.
pub fn dp4a_smem(tokens: usize, in_features: usize) -> usize {
    tokens * in_features + tokens * in_features / 32 * 12
}
