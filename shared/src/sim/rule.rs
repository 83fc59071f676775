//! [`Rule`]: a Life-like rule in `B.../S...` notation, its parser and its canonical form.
//!
//! This module owns the notation only; applying a rule to cells is the kernels' job
//! ([`crate::sim::ShardGrid`], [`crate::sim::PlainGrid`]).

use std::{fmt, str::FromStr};

use serde::{Deserialize, Serialize};

/// A Life-like rule over the Moore neighbourhood: which live-neighbour counts (0 to 8) give
/// birth to a dead cell, and which keep a live cell alive.
///
/// Parsed from `B3/S23` notation (case-insensitive, digits in any order, either set may be
/// empty: `B/S`), displayed and serialized in canonical form (upper case, digits ascending).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Rule {
    /// Bit `n` set: a dead cell with `n` live neighbours is born.
    birth: u16,
    /// Bit `n` set: a live cell with `n` live neighbours survives.
    survival: u16,
}

/// Why a rule string was refused. The message names the offending part.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RuleError {
    /// Nothing but whitespace.
    #[error("rule is empty: expected B.../S..., e.g. B3/S23")]
    Empty,
    /// No `/` between the two sets.
    #[error("rule has no '/': expected B.../S..., e.g. B3/S23")]
    MissingSlash,
    /// More than one `/`.
    #[error("rule has more than one '/': expected B.../S..., e.g. B3/S23")]
    ExtraSlash,
    /// The part before `/` does not start with `B`.
    #[error("rule must start with 'B' (the birth counts), e.g. B3/S23")]
    MissingBirth,
    /// The part after `/` does not start with `S`.
    #[error("expected 'S' (the survival counts) right after '/', e.g. B3/S23")]
    MissingSurvival,
    /// A digit above 8: a cell has at most 8 neighbours.
    #[error("neighbour count {digit} in the {section} set is out of range: counts are 0 to 8")]
    CountOutOfRange {
        /// `'B'` or `'S'`.
        section: char,
        /// The digit as written.
        digit: char,
    },
    /// The same count twice in one set.
    #[error("neighbour count {digit} appears twice in the {section} set")]
    Duplicate {
        /// `'B'` or `'S'`.
        section: char,
        /// The repeated digit.
        digit: char,
    },
    /// Anything other than a digit inside a set.
    #[error("unexpected character {found:?} in the {section} set: only digits 0 to 8 are allowed")]
    UnexpectedChar {
        /// `'B'` or `'S'`.
        section: char,
        /// The character found.
        found: char,
    },
}

/// Every neighbour count, as a set.
const ALL_COUNTS: u16 = 0x1FF;

impl Rule {
    /// Conway's Game of Life, `B3/S23`, the default.
    pub const CONWAY: Rule = Rule {
        birth: 1 << 3,
        survival: (1 << 2) | (1 << 3),
    };

    /// Builds a rule from bit sets: bit `n` of `birth` (resp. `survival`) set means count `n`
    /// is in the set. Bits above 8 are ignored.
    pub fn from_masks(birth: u16, survival: u16) -> Self {
        Rule {
            birth: birth & ALL_COUNTS,
            survival: survival & ALL_COUNTS,
        }
    }

    /// The birth set as a bit mask (bit `n` = count `n`).
    pub fn birth_mask(self) -> u16 {
        self.birth
    }

    /// The survival set as a bit mask (bit `n` = count `n`).
    pub fn survival_mask(self) -> u16 {
        self.survival
    }

    /// True when a dead cell with `neighbours` live neighbours is born.
    #[inline]
    pub fn births(self, neighbours: u32) -> bool {
        neighbours <= 8 && self.birth & (1 << neighbours) != 0
    }

    /// True when a live cell with `neighbours` live neighbours survives.
    #[inline]
    pub fn survives(self, neighbours: u32) -> bool {
        neighbours <= 8 && self.survival & (1 << neighbours) != 0
    }

    /// The next state of a cell, given its state and its live-neighbour count.
    #[inline]
    pub fn next(self, alive: bool, neighbours: u32) -> bool {
        if alive {
            self.survives(neighbours)
        } else {
            self.births(neighbours)
        }
    }
}

impl Default for Rule {
    fn default() -> Self {
        Rule::CONWAY
    }
}

impl FromStr for Rule {
    type Err = RuleError;

    fn from_str(s: &str) -> Result<Self, RuleError> {
        let s = s.trim();
        if s.is_empty() {
            return Err(RuleError::Empty);
        }
        let (birth, survival) = s.split_once('/').ok_or(RuleError::MissingSlash)?;
        if survival.contains('/') {
            return Err(RuleError::ExtraSlash);
        }
        let birth = strip_letter(birth, 'B').ok_or(RuleError::MissingBirth)?;
        let survival = strip_letter(survival, 'S').ok_or(RuleError::MissingSurvival)?;
        Ok(Rule {
            birth: parse_counts(birth, 'B')?,
            survival: parse_counts(survival, 'S')?,
        })
    }
}

/// `part` without its leading `letter` (either case), or `None` if it does not start with it.
fn strip_letter(part: &str, letter: char) -> Option<&str> {
    part.strip_prefix(letter)
        .or_else(|| part.strip_prefix(letter.to_ascii_lowercase()))
}

fn parse_counts(digits: &str, section: char) -> Result<u16, RuleError> {
    let mut set = 0u16;
    for c in digits.chars() {
        // `to_digit` accepts ASCII digits only, so full-width digits are junk too.
        let Some(n) = c.to_digit(10) else {
            return Err(RuleError::UnexpectedChar { section, found: c });
        };
        if n > 8 {
            return Err(RuleError::CountOutOfRange { section, digit: c });
        }
        if set & (1 << n) != 0 {
            return Err(RuleError::Duplicate { section, digit: c });
        }
        set |= 1 << n;
    }
    Ok(set)
}

impl fmt::Display for Rule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("B")?;
        write_counts(f, self.birth)?;
        f.write_str("/S")?;
        write_counts(f, self.survival)
    }
}

fn write_counts(f: &mut fmt::Formatter<'_>, set: u16) -> fmt::Result {
    for n in 0..=8u8 {
        if set & (1 << n) != 0 {
            fmt::Write::write_char(f, char::from(b'0' + n))?;
        }
    }
    Ok(())
}

impl TryFrom<String> for Rule {
    type Error = RuleError;

    fn try_from(s: String) -> Result<Self, RuleError> {
        s.parse()
    }
}

impl From<Rule> for String {
    fn from(rule: Rule) -> String {
        rule.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_good_rules() {
        let conway: Rule = "B3/S23".parse().unwrap();
        assert_eq!(conway, Rule::CONWAY);
        assert_eq!("b3/s23".parse::<Rule>().unwrap(), Rule::CONWAY);
        assert_eq!(" B3/S32 ".parse::<Rule>().unwrap(), Rule::CONWAY);
        let high_life: Rule = "B36/S23".parse().unwrap();
        assert!(high_life.births(3) && high_life.births(6) && !high_life.births(2));
        assert!(high_life.survives(2) && high_life.survives(3) && !high_life.survives(6));
        let empty: Rule = "B/S".parse().unwrap();
        assert_eq!((empty.birth_mask(), empty.survival_mask()), (0, 0));
        let all: Rule = "B012345678/S876543210".parse().unwrap();
        assert_eq!((all.birth_mask(), all.survival_mask()), (0x1FF, 0x1FF));
    }

    #[test]
    fn displays_canonically() {
        for (input, canonical) in [
            ("B3/S23", "B3/S23"),
            ("b63/s32", "B36/S23"),
            ("B/S", "B/S"),
            ("B0/S8", "B0/S8"),
            ("b/s012345678", "B/S012345678"),
        ] {
            let rule: Rule = input.parse().unwrap();
            assert_eq!(rule.to_string(), canonical);
            assert_eq!(canonical.parse::<Rule>().unwrap(), rule);
        }
    }

    #[test]
    fn rejects_bad_rules_with_reason() {
        use RuleError::*;
        let cases = [
            ("", Empty),
            ("   ", Empty),
            ("B3S23", MissingSlash),
            ("B3/S23/", ExtraSlash),
            ("B3/S2/3", ExtraSlash),
            ("3/S23", MissingBirth),
            ("S23/B3", MissingBirth),
            ("B3/23", MissingSurvival),
            ("B3/B23", MissingSurvival),
            (
                "B39/S23",
                CountOutOfRange {
                    section: 'B',
                    digit: '9',
                },
            ),
            (
                "B3/S239",
                CountOutOfRange {
                    section: 'S',
                    digit: '9',
                },
            ),
            (
                "B33/S23",
                Duplicate {
                    section: 'B',
                    digit: '3',
                },
            ),
            (
                "B3/S232",
                Duplicate {
                    section: 'S',
                    digit: '2',
                },
            ),
            (
                "B3x/S23",
                UnexpectedChar {
                    section: 'B',
                    found: 'x',
                },
            ),
            (
                "B3/S2 3",
                UnexpectedChar {
                    section: 'S',
                    found: ' ',
                },
            ),
            (
                "B3/S２3",
                UnexpectedChar {
                    section: 'S',
                    found: '２',
                },
            ),
            (
                "B-3/S23",
                UnexpectedChar {
                    section: 'B',
                    found: '-',
                },
            ),
        ];
        for (input, want) in cases {
            assert_eq!(input.parse::<Rule>(), Err(want.clone()), "input {input:?}");
        }
        let msg = "B39/S23".parse::<Rule>().unwrap_err().to_string();
        assert!(msg.contains('9') && msg.contains("0 to 8"), "{msg}");
    }

    #[test]
    fn serde_as_canonical_string() {
        let rule: Rule = serde_json::from_str("\"b63/s32\"").unwrap();
        assert_eq!(serde_json::to_string(&rule).unwrap(), "\"B36/S23\"");
        let err = serde_json::from_str::<Rule>("\"B9/S\"").unwrap_err();
        assert!(err.to_string().contains("out of range"), "{err}");
    }

    #[test]
    fn next_state() {
        let r = Rule::CONWAY;
        assert!(r.next(false, 3) && !r.next(false, 2));
        assert!(r.next(true, 2) && r.next(true, 3) && !r.next(true, 4) && !r.next(true, 1));
        assert!(!r.next(true, 9), "counts above 8 are never in a set");
    }
}
