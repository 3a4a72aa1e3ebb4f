//! Round-trip time estimation (RFC 6298), for the liveness budgets.
//!
//! Owns [`RttEstimator`]: the smoothed RTT and its variation from samples
//! the caller measures (handshakes, answered probes, timestamp echoes of
//! acknowledgements of new data), and the
//! retransmission timeout derived from them. It never reads a clock and
//! never fails: samples are durations passed in.

use std::time::Duration;

/// The smallest RTO it reports (Linux's `TCP_RTO_MIN` is 200 ms; ours is
/// lower because it only sizes failure detection, never a retransmission,
/// and a suspected connection is kept until a resume carries data: see
/// `tifid::lifecycle`, make before break).
pub const MIN_RTO: Duration = Duration::from_millis(40);
/// The largest RTO it reports.
pub const MAX_RTO: Duration = Duration::from_secs(60);

/// Smoothed RTT and RTT variation (RFC 6298 §2).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RttEstimator {
    srtt: Option<Duration>,
    rttvar: Duration,
}

impl RttEstimator {
    /// Takes one RTT sample.
    pub fn sample(&mut self, rtt: Duration) {
        match self.srtt {
            None => {
                self.srtt = Some(rtt);
                self.rttvar = rtt / 2;
            }
            Some(srtt) => {
                let diff = srtt.abs_diff(rtt);
                self.rttvar = (self.rttvar * 3 + diff) / 4;
                self.srtt = Some((srtt * 7 + rtt) / 8);
            }
        }
    }

    /// The smoothed RTT, once there is a sample.
    pub fn srtt(&self) -> Option<Duration> {
        self.srtt
    }

    /// `srtt + 4 * rttvar`, within [`MIN_RTO`, `MAX_RTO`]; `None` before the
    /// first sample.
    pub fn rto(&self) -> Option<Duration> {
        let srtt = self.srtt?;
        Some((srtt + self.rttvar * 4).clamp(MIN_RTO, MAX_RTO))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn no_sample_no_estimate() {
        let e = RttEstimator::default();
        assert_eq!((e.srtt(), e.rto()), (None, None));
    }

    #[test]
    fn first_sample_sets_srtt_and_half_of_it_as_variation() {
        let mut e = RttEstimator::default();
        e.sample(ms(100));
        assert_eq!(e.srtt(), Some(ms(100)));
        assert_eq!(e.rto(), Some(ms(300)));
    }

    #[test]
    fn later_samples_smooth_by_an_eighth_and_a_quarter() {
        let mut e = RttEstimator::default();
        e.sample(ms(100));
        e.sample(ms(200));
        // rttvar = (50 * 3 + 100) / 4 = 62.5; srtt = (700 + 200) / 8 = 112.5
        assert_eq!(e.srtt(), Some(Duration::from_micros(112_500)));
        assert_eq!(e.rto(), Some(Duration::from_micros(362_500)));
    }

    #[test]
    fn rto_has_a_floor_and_a_ceiling() {
        let mut e = RttEstimator::default();
        e.sample(Duration::from_micros(300));
        assert_eq!(e.rto(), Some(MIN_RTO));
        let mut e = RttEstimator::default();
        e.sample(Duration::from_secs(100));
        assert_eq!(e.rto(), Some(MAX_RTO));
    }
}
