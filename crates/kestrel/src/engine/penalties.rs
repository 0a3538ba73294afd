//! Repetition, presence and frequency penalties of one row, as data: the host applies them to f32
//! logits ([`RowPenalties::apply`], what [`super::sampling::Sampler`] does), and a GPU sampler applies
//! the same f32 operations to its rows, so only token ids cross to the host.
//!
//! Semantics (llama.cpp / vLLM): every token of the prompt and the output is divided by the
//! repetition penalty where its logit is positive and multiplied by it otherwise; then each output
//! token's logit loses `presence + frequency * count`.

/// One penalised token.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct PenaltyEntry {
    pub token: u32,
    /// In the prompt or the output: the repetition penalty applies.
    pub repeated: bool,
    /// In the output: `presence + frequency * count`, subtracted after the repetition penalty.
    pub subtract: Option<f32>,
}

/// A row's penalties: entries sorted by token, each token once.
#[derive(Clone, Debug, PartialEq)]
pub struct RowPenalties {
    pub repetition: f32,
    pub entries: Vec<PenaltyEntry>,
}

impl Default for RowPenalties {
    fn default() -> Self {
        RowPenalties {
            repetition: 1.0,
            entries: Vec::new(),
        }
    }
}

impl RowPenalties {
    /// Whether applying these changes nothing.
    pub fn is_none(&self) -> bool {
        self.entries.is_empty()
    }

    /// `logit` of a penalised token, as [`RowPenalties::apply`] leaves it.
    pub fn penalize(&self, e: &PenaltyEntry, logit: f32) -> f32 {
        let mut l = logit;
        if e.repeated && self.repetition != 1.0 {
            l = if l > 0.0 {
                l / self.repetition
            } else {
                l * self.repetition
            };
        }
        if let Some(s) = e.subtract {
            l -= s;
        }
        l
    }

    pub fn apply(&self, logits: &mut [f32]) {
        for e in &self.entries {
            if let Some(l) = logits.get_mut(e.token as usize) {
                *l = self.penalize(e, *l);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repetition_divides_positive_and_multiplies_negative_then_subtracts() {
        let p = RowPenalties {
            repetition: 2.0,
            entries: vec![
                PenaltyEntry {
                    token: 0,
                    repeated: true,
                    subtract: None,
                },
                PenaltyEntry {
                    token: 1,
                    repeated: true,
                    subtract: Some(0.5),
                },
                PenaltyEntry {
                    token: 3,
                    repeated: false,
                    subtract: Some(1.0),
                },
                PenaltyEntry {
                    token: 9, // past the row: ignored
                    repeated: true,
                    subtract: None,
                },
            ],
        };
        let mut l = [4.0, -3.0, 1.0, 2.0];
        p.apply(&mut l);
        assert_eq!(l, [2.0, -6.5, 1.0, 1.0]);
        assert!(RowPenalties::default().is_none());
    }
}
