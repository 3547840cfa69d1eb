//! Which formats are injected towards the next hop: [`Format`] and the [`Propagators`] set,
//! parsed like `OTEL_PROPAGATORS` (OpenTelemetry SDK environment variables, "General SDK
//! Configuration"). Extraction does not depend on it: every format is always read.

use std::fmt;
use std::str::FromStr;

/// A propagation format. Doubles as a bounded metric label via [`Format::as_str`].
#[derive(Clone, Copy, PartialEq, Eq, Debug, Hash)]
pub enum Format {
    /// W3C `traceparent` + `tracestate`.
    TraceContext,
    /// The B3 single header, `b3`.
    B3,
    /// The B3 multi headers, `X-B3-*`.
    B3Multi,
}

// === impl Format ===

impl Format {
    /// Every format, in extraction priority order.
    pub const ALL: [Format; 3] = [Format::TraceContext, Format::B3, Format::B3Multi];

    /// The `OTEL_PROPAGATORS` name, also used as the `format` metric label.
    pub const fn as_str(self) -> &'static str {
        match self {
            Format::TraceContext => "tracecontext",
            Format::B3 => "b3",
            Format::B3Multi => "b3multi",
        }
    }

    pub(super) const fn bit(self) -> u8 {
        match self {
            Format::TraceContext => 1,
            Format::B3 => 2,
            Format::B3Multi => 4,
        }
    }

    pub(super) const fn index(self) -> usize {
        match self {
            Format::TraceContext => 0,
            Format::B3 => 1,
            Format::B3Multi => 2,
        }
    }
}

impl fmt::Display for Format {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The set of formats injected towards the next hop (like `OTEL_PROPAGATORS`). Extraction
/// always accepts every format. A bitset: `Copy` and free to test per request.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Hash)]
pub struct Propagators(u8);

/// A propagator name that [`Propagators::parse`] does not know.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown propagator {name:?}: expected a comma-separated list of tracecontext, b3, b3multi, baggage or none")]
pub struct UnknownPropagator {
    /// The offending list item, trimmed.
    pub name: String,
}

// === impl Propagators ===

impl Propagators {
    /// No format: context headers are removed, not rewritten.
    pub const NONE: Propagators = Propagators(0);
    /// Every format this proxy can write.
    pub const ALL: Propagators = Propagators(1 | 2 | 4);

    /// Whether `f` is injected.
    pub const fn contains(self, f: Format) -> bool {
        self.0 & f.bit() != 0
    }

    /// This set plus `f`.
    #[must_use]
    pub const fn with(self, f: Format) -> Self {
        Propagators(self.0 | f.bit())
    }

    /// Whether no format is injected.
    pub const fn is_empty(self) -> bool {
        self.0 == 0
    }

    /// The formats in the set, in [`Format::ALL`] order.
    pub fn iter(self) -> impl Iterator<Item = Format> {
        Format::ALL.into_iter().filter(move |f| self.contains(*f))
    }

    /// Parses an `OTEL_PROPAGATORS`-style list such as `"tracecontext,b3"`.
    ///
    /// Items are comma separated, surrounding whitespace and empty items are ignored,
    /// duplicates are fine, names are case-insensitive (as the OpenTelemetry environment
    /// specification asks of enum values). `baggage` is accepted and contributes nothing,
    /// because baggage passes through this proxy untouched; `none` contributes nothing either.
    /// An empty or blank string means the default, since OpenTelemetry treats an empty variable
    /// as unset.
    ///
    /// # Errors
    ///
    /// [`UnknownPropagator`] naming the first item that is none of the above (for example
    /// `jaeger` or `xray`, which this proxy does not speak).
    pub fn parse(s: &str) -> Result<Self, UnknownPropagator> {
        if s.trim().is_empty() {
            return Ok(Self::default());
        }
        let mut set = Self::NONE;
        for name in s.split(',').map(str::trim).filter(|n| !n.is_empty()) {
            let is = |known: &str| name.eq_ignore_ascii_case(known);
            if let Some(f) = Format::ALL.into_iter().find(|f| is(f.as_str())) {
                set = set.with(f);
            } else if !is("baggage") && !is("none") {
                return Err(UnknownPropagator {
                    name: name.to_owned(),
                });
            }
        }
        Ok(set)
    }
}

impl Default for Propagators {
    /// `tracecontext`, the OpenTelemetry default without `baggage`.
    fn default() -> Self {
        Self::NONE.with(Format::TraceContext)
    }
}

impl FromStr for Propagators {
    type Err = UnknownPropagator;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

impl fmt::Display for Propagators {
    /// `tracecontext,b3`, or `none` for the empty set: what [`Propagators::parse`] reads back.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.is_empty() {
            return f.write_str("none");
        }
        for (i, format) in self.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            f.write_str(format.as_str())?;
        }
        Ok(())
    }
}
