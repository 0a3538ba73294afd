//! Stop strings over streamed text: text is released only once it can no longer be the start of a stop
//! string, and generation ends at the first stop string (which is not emitted).

pub struct StopMatcher {
    stops: Vec<String>,
    pending: String,
}

pub enum StopStep {
    /// Text safe to emit now (may be empty).
    Emit(String),
    /// A stop string was found: emit this text, then finish.
    Stopped(String),
}

impl StopMatcher {
    pub fn new(stops: Vec<String>) -> StopMatcher {
        StopMatcher {
            stops: stops.into_iter().filter(|s| !s.is_empty()).collect(),
            pending: String::new(),
        }
    }

    pub fn push(&mut self, text: &str) -> StopStep {
        if self.stops.is_empty() {
            // nothing to hold back (the common case), so `pending` stays empty
            return StopStep::Emit(text.to_owned());
        }
        self.pending.push_str(text);
        if let Some(at) = self
            .stops
            .iter()
            .filter_map(|s| self.pending.find(s.as_str()))
            .min()
        {
            let out = self.pending[..at].to_string();
            self.pending.clear();
            return StopStep::Stopped(out);
        }
        // Hold back the longest tail that is a proper prefix of a stop string.
        let mut hold = 0;
        for s in &self.stops {
            for (i, _) in s.char_indices().skip(1) {
                if self.pending.ends_with(&s[..i]) {
                    hold = hold.max(i);
                }
            }
        }
        let cut = self.pending.len() - hold;
        let out = self.pending[..cut].to_string();
        self.pending.drain(..cut);
        StopStep::Emit(out)
    }

    /// What is held back, released at the end of generation.
    pub fn finish(&mut self) -> String {
        std::mem::take(&mut self.pending)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(stops: &[&str], pieces: &[&str]) -> (String, bool) {
        let mut m = StopMatcher::new(stops.iter().map(|s| s.to_string()).collect());
        let mut out = String::new();
        for p in pieces {
            match m.push(p) {
                StopStep::Emit(t) => out += &t,
                StopStep::Stopped(t) => return (out + &t, true),
            }
        }
        (out + &m.finish(), false)
    }

    #[test]
    fn stop_split_across_pieces() {
        assert_eq!(
            run(&["END"], &["ab", "cE", "N", "Dxyz"]),
            ("abc".into(), true)
        );
        assert_eq!(
            run(&["END"], &["ab", "cE", "N", "x"]),
            ("abcENx".into(), false)
        );
        assert_eq!(
            run(&["\n\n", "###"], &["a\n", "b##", "#"]),
            ("a\nb".into(), true)
        );
        assert_eq!(run(&[], &["a", "b"]), ("ab".into(), false));
        assert_eq!(run(&["é!"], &["café", "!"]), ("caf".into(), true));
    }
}
