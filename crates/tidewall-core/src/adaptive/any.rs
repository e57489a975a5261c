//! One type for any of the algorithms, chosen at run time (from configuration, say).

use super::{Aimd, FixedLimit, Gradient2, LimitAlgorithm, Sample, Steady, Vegas, WindowedGradient};

/// Any one of the algorithms, as a single type: what a limiter built from configuration
/// runs, where the algorithm is a setting rather than a type. Each call goes to the
/// algorithm inside through one `match`.
///
/// ```
/// use core::time::Duration;
/// use tidewall_core::adaptive::{Aimd, AnyAlgorithm, LimitAlgorithm, Sample, Vegas};
///
/// let chosen = |loss_based: bool| -> Result<AnyAlgorithm, tidewall_core::ConfigError> {
///     Ok(if loss_based {
///         Aimd::builder().min_limit(1).initial_limit(20).build()?.into()
///     } else {
///         Vegas::builder().initial_limit(20).build()?.into()
///     })
/// };
/// let mut aimd = chosen(true)?;
/// let dropped = Sample { rtt: Duration::from_millis(5), inflight: 20, dropped: true, at: Duration::ZERO };
/// assert_eq!(aimd.update(&dropped), 18);
/// assert_eq!(chosen(false)?.limit(), 20);
/// # Ok::<(), tidewall_core::ConfigError>(())
/// ```
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum AnyAlgorithm {
    /// [`Aimd`].
    Aimd(Aimd),
    /// [`Vegas`].
    Vegas(Vegas),
    /// [`Gradient2`].
    Gradient2(Gradient2),
    /// [`WindowedGradient`].
    WindowedGradient(WindowedGradient),
    /// [`FixedLimit`].
    Fixed(FixedLimit),
}

impl AnyAlgorithm {
    /// The algorithm inside, as the trait object every variant is.
    fn inner(&self) -> &dyn LimitAlgorithm {
        match self {
            Self::Aimd(a) => a,
            Self::Vegas(a) => a,
            Self::Gradient2(a) => a,
            Self::WindowedGradient(a) => a,
            Self::Fixed(a) => a,
        }
    }
}

impl LimitAlgorithm for AnyAlgorithm {
    fn limit(&self) -> u32 {
        self.inner().limit()
    }

    fn update(&mut self, sample: &Sample) -> u32 {
        match self {
            Self::Aimd(a) => a.update(sample),
            Self::Vegas(a) => a.update(sample),
            Self::Gradient2(a) => a.update(sample),
            Self::WindowedGradient(a) => a.update(sample),
            Self::Fixed(a) => a.update(sample),
        }
    }

    fn bounds(&self) -> (u32, u32) {
        self.inner().bounds()
    }

    fn steady(&self) -> Steady {
        self.inner().steady()
    }
}

macro_rules! from_each {
    ($($variant:ident($algorithm:ty)),*) => {
        $(
            impl From<$algorithm> for AnyAlgorithm {
                fn from(algorithm: $algorithm) -> Self {
                    Self::$variant(algorithm)
                }
            }
        )*
    };
}

from_each!(
    Aimd(Aimd),
    Vegas(Vegas),
    Gradient2(Gradient2),
    WindowedGradient(WindowedGradient),
    Fixed(FixedLimit)
);
