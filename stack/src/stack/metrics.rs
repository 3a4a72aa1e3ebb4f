//! What happened to the stack's flows since it started, for monitoring
//! (a Prometheus endpoint, say): failures by cause, resumes and their
//! downtimes as a histogram, flows lost, and bytes carried (those of
//! streams that ended are kept; [`Stack::metrics`] adds the live ones).
//! Counting only: no decision reads these.

use std::collections::BTreeMap;
use std::time::Duration;

use tifid::handshake::LostCause;
use tifid::lifecycle::FailureCause;

use super::*;

/// Upper bounds of the downtime histogram's buckets, in seconds (the last
/// bucket, `+Inf`, is implied).
pub const DOWNTIME_BUCKETS: [f64; 10] = [0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0];

/// Counters since the stack started.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct FlowMetrics {
    /// Failures detected (a TI connection given up or suspected), by cause
    /// (`FailureCause`'s name: `stall`, `reset`, `explicit`, ...).
    pub failures_by_cause: BTreeMap<String, u64>,
    /// Resumes that succeeded.
    pub resumes: u64,
    /// Resumes whose downtime (failure noticed to the new connection
    /// carrying the flow) was at most each [`DOWNTIME_BUCKETS`] bound, not
    /// cumulative: bucket `i` counts those above bound `i - 1`; the last
    /// entry counts those above the last bound.
    pub downtime_buckets: [u64; DOWNTIME_BUCKETS.len() + 1],
    /// Sum of the resumes' downtimes.
    pub downtime_sum: Duration,
    /// Flows lost, by cause (`LostCause`'s name).
    pub lost_by_cause: BTreeMap<String, u64>,
    /// Bytes the applications wrote into streams.
    pub bytes_written: u64,
    /// Bytes streams delivered to the applications.
    pub bytes_received: u64,
}

impl FlowMetrics {
    pub(super) fn note_failure(&mut self, cause: FailureCause) {
        *self.failures_by_cause.entry(cause.to_string()).or_default() += 1;
    }

    pub(super) fn note_resume(&mut self, downtime: Duration) {
        self.resumes += 1;
        self.downtime_sum += downtime;
        let secs = downtime.as_secs_f64();
        let bucket = DOWNTIME_BUCKETS
            .iter()
            .position(|&bound| secs <= bound)
            .unwrap_or(DOWNTIME_BUCKETS.len());
        self.downtime_buckets[bucket] += 1;
    }

    pub(super) fn note_lost(&mut self, cause: LostCause) {
        *self.lost_by_cause.entry(cause.to_string()).or_default() += 1;
    }

    /// A stream ends: its bytes join the totals.
    pub(super) fn note_stream_ended(&mut self, stats: &StreamStats) {
        self.bytes_written += stats.bytes_written;
        self.bytes_received += stats.bytes_received;
    }
}

impl<D: Device> Stack<D> {
    /// Counters of what happened to the flows since the stack started,
    /// live streams' bytes included.
    pub fn metrics(&self) -> FlowMetrics {
        let mut m = self.metrics.clone();
        for s in self.streams.values() {
            m.bytes_written += s.stats.bytes_written;
            m.bytes_received += s.stats.bytes_received;
        }
        m
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn downtimes_land_in_their_buckets() {
        let mut m = FlowMetrics::default();
        for ms in [10, 50, 51, 900, 120_000] {
            m.note_resume(Duration::from_millis(ms));
        }
        assert_eq!(m.resumes, 5);
        assert_eq!(m.downtime_buckets[0], 2, "<= 50 ms");
        assert_eq!(m.downtime_buckets[1], 1, "<= 100 ms");
        assert_eq!(m.downtime_buckets[4], 1, "<= 1 s");
        assert_eq!(m.downtime_buckets[DOWNTIME_BUCKETS.len()], 1, "+Inf");
        assert_eq!(m.downtime_sum, Duration::from_millis(121_011));
        m.note_failure(FailureCause::Stall);
        m.note_failure(FailureCause::Stall);
        m.note_failure(FailureCause::Explicit);
        assert_eq!(m.failures_by_cause["stall"], 2);
        assert_eq!(m.failures_by_cause["explicit"], 1);
    }
}
