//! Developer knobs: environment variables that change a tuning constant, read once per process so
//! that a benchmark can compare values without rebuilding. A value that does not parse as an
//! integer in range is warned about and the default kept.

/// `var` as an integer of at least `min`, or `default` when it is unset or not one (warned about).
pub(crate) fn usize_at_least(var: &str, min: usize, default: usize) -> usize {
    match std::env::var(var) {
        Err(_) => default,
        Ok(v) => match v.parse::<usize>() {
            Ok(n) if n >= min => n,
            _ => {
                eprintln!("warning: {var}={v} is not an integer >= {min}; using {default}");
                default
            }
        },
    }
}

/// `var` as a positive integer, or `default` (see [`usize_at_least`]).
pub(crate) fn positive_usize(var: &str, default: usize) -> usize {
    usize_at_least(var, 1, default)
}

#[cfg(test)]
mod tests {
    use super::positive_usize;

    #[test]
    fn unset_or_invalid_values_keep_the_default() {
        // names no one sets
        std::env::remove_var("KESTREL_TEST_KNOB_UNSET");
        assert_eq!(positive_usize("KESTREL_TEST_KNOB_UNSET", 7), 7);
        std::env::set_var("KESTREL_TEST_KNOB_ZERO", "0");
        assert_eq!(positive_usize("KESTREL_TEST_KNOB_ZERO", 7), 7);
        std::env::set_var("KESTREL_TEST_KNOB_WORD", "many");
        assert_eq!(positive_usize("KESTREL_TEST_KNOB_WORD", 7), 7);
        std::env::set_var("KESTREL_TEST_KNOB_SET", "256");
        assert_eq!(positive_usize("KESTREL_TEST_KNOB_SET", 7), 256);
        // zero allowed where the knob says so
        assert_eq!(super::usize_at_least("KESTREL_TEST_KNOB_ZERO", 0, 7), 0);
    }
}
