//! Peak VRAM of one run, measured on the host: the container's processes (its cgroup, as host PIDs)
//! are matched against what the GPU reports per process. Owns the [`VramMeter`] trait, the sampler
//! loop shared by every real meter (>= 50 Hz, peak kept between reads, faults seen while sampling)
//! and the meter of virtual slots, which always says `unavailable`. It never trusts the miner.

use super::cgroup::ContainerProcs;
use super::health::Fault;
use crate::domain::metrics::MeasurementSource;
use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

/// Peak VRAM over one window (a scored challenge) and where the figure comes from.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct VramReading {
    /// Peak bytes; `None` when unavailable (the scoring then applies the reference value, flagged).
    pub peak_bytes: Option<u64>,
    /// Provenance: `accounting`, `sampled` or `unavailable`.
    pub source: MeasurementSource,
}

impl VramReading {
    /// Nothing measured.
    pub const UNAVAILABLE: VramReading = VramReading {
        peak_bytes: None,
        source: MeasurementSource::Unavailable,
    };

    /// The peak in GiB (the reference's `peak_vram_gb` unit: MiB / 1024).
    pub fn gib(&self) -> Option<f64> {
        self.peak_bytes.map(|b| b as f64 / f64::from(1u32 << 30))
    }
}

/// The weakest provenance of several readings (one run's figure is only as good as its worst
/// challenge): unavailable < miner_reported < sampled < accounting.
pub fn weakest(sources: impl IntoIterator<Item = MeasurementSource>) -> MeasurementSource {
    fn rank(s: MeasurementSource) -> u8 {
        match s {
            MeasurementSource::Unavailable => 0,
            MeasurementSource::MinerReported => 1,
            MeasurementSource::Sampled | MeasurementSource::HostClock => 2,
            MeasurementSource::Accounting => 3,
        }
    }
    sources
        .into_iter()
        .min_by_key(|s| rank(*s))
        .unwrap_or(MeasurementSource::Unavailable)
}

/// Measures runs on one kind of slot.
pub trait VramMeter: Send + Sync {
    /// Start measuring the container whose processes are `procs` on GPU `gpu_uuid`.
    fn start(&self, gpu_uuid: &str, procs: Option<ContainerProcs>) -> Box<dyn VramSession>;
    /// Whether this meter measures anything (false: the caller can skip resolving the container's
    /// processes).
    fn measures(&self) -> bool {
        true
    }
}

/// One run's measurement.
pub trait VramSession: Send {
    /// The peak since the previous call (or the start), and its provenance.
    fn take_peak(&mut self) -> VramReading;
    /// A fault seen since the previous call (throttling, XID, a foreign process on the GPU).
    fn take_fault(&mut self) -> Option<Fault>;
}

/// Virtual slots (and hosts where per-process memory is not reported): always `unavailable`.
#[derive(Debug, Clone, Copy, Default)]
pub struct UnavailableMeter;

impl VramMeter for UnavailableMeter {
    fn start(&self, _gpu_uuid: &str, _procs: Option<ContainerProcs>) -> Box<dyn VramSession> {
        Box::new(UnavailableMeter)
    }

    fn measures(&self) -> bool {
        false
    }
}

impl VramSession for UnavailableMeter {
    fn take_peak(&mut self) -> VramReading {
        VramReading::UNAVAILABLE
    }
    fn take_fault(&mut self) -> Option<Fault> {
        None
    }
}

/// What the sampler thread and the session share.
#[derive(Debug, Default)]
pub struct SamplerShared {
    peak: AtomicU64,
    samples: AtomicU64,
    stop: AtomicBool,
    seen: Mutex<BTreeSet<u32>>,
    fault: Mutex<Option<Fault>>,
}

impl SamplerShared {
    /// Tell the sampler to stop.
    pub fn stop(&self) {
        self.stop.store(true, Ordering::SeqCst);
    }

    /// Every container PID seen so far.
    pub fn seen(&self) -> BTreeSet<u32> {
        self.seen.lock().unwrap_or_else(PoisonError::into_inner).clone()
    }

    /// Peak bytes and sample count since the last call, resetting both.
    pub fn take(&self) -> (u64, u64) {
        (
            self.peak.swap(0, Ordering::SeqCst),
            self.samples.swap(0, Ordering::SeqCst),
        )
    }

    /// The fault seen since the last call.
    pub fn take_fault(&self) -> Option<Fault> {
        self.fault.lock().unwrap_or_else(PoisonError::into_inner).take()
    }

    /// Record one sample of `used` bytes.
    pub fn record(&self, used: u64) {
        self.peak.fetch_max(used, Ordering::SeqCst);
        self.samples.fetch_add(1, Ordering::SeqCst);
    }

    /// Record a fault (the first one of a window is kept).
    pub fn record_fault(&self, fault: Fault) {
        let mut f = self.fault.lock().unwrap_or_else(PoisonError::into_inner);
        if f.is_none() {
            *f = Some(fault);
        }
    }
}

/// One sample: the bytes used by the container's processes, given its PIDs. An `Err` is a fault
/// seen on the GPU (the sample is then skipped).
pub type SampleFn<'a> = dyn FnMut(&BTreeSet<u32>) -> Result<u64, Fault> + 'a;

/// The sampler loop: every `period`, refresh the container's PIDs, take one sample, keep the peak.
/// Runs on its own thread until [`SamplerShared::stop`].
pub fn run_sampler(
    shared: &SamplerShared,
    procs: Option<&ContainerProcs>,
    period: Duration,
    sample: &mut SampleFn<'_>,
) {
    let mut next = Instant::now();
    while !shared.stop.load(Ordering::SeqCst) {
        let pids: BTreeSet<u32> = procs.map(|p| p.pids().into_iter().collect()).unwrap_or_default();
        shared
            .seen
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .extend(pids.iter().copied());
        match sample(&pids) {
            Ok(used) => shared.record(used),
            Err(fault) => shared.record_fault(fault),
        }
        next += period;
        let now = Instant::now();
        if next > now {
            std::thread::sleep(next - now);
        } else {
            next = now;
        }
    }
}

/// Reads each PID's lifetime maximum from NVML accounting (exact peaks, whatever the sampling rate);
/// `None` when accounting is off or knows none of the PIDs.
pub type AccountingFn = dyn Fn(&BTreeSet<u32>) -> Option<u64> + Send;

/// A session backed by a sampler thread and, when permitted, NVML accounting.
pub struct SampledSession {
    shared: Arc<SamplerShared>,
    accounting: Option<Box<AccountingFn>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl SampledSession {
    /// Wrap a running sampler thread.
    pub fn new(
        shared: Arc<SamplerShared>,
        accounting: Option<Box<AccountingFn>>,
        thread: std::thread::JoinHandle<()>,
    ) -> SampledSession {
        SampledSession {
            shared,
            accounting,
            thread: Some(thread),
        }
    }
}

impl VramSession for SampledSession {
    fn take_peak(&mut self) -> VramReading {
        let (peak, samples) = self.shared.take();
        if let Some(max) = self.accounting.as_ref().and_then(|a| a(&self.shared.seen()))
            && max > 0
        {
            return VramReading {
                // Accounting maxima are per process lifetime: never below what was sampled.
                peak_bytes: Some(max.max(peak)),
                source: MeasurementSource::Accounting,
            };
        }
        // As the reference: no sample above zero means no figure (never a free zero).
        if samples > 0 && peak > 0 {
            VramReading {
                peak_bytes: Some(peak),
                source: MeasurementSource::Sampled,
            }
        } else {
            VramReading::UNAVAILABLE
        }
    }

    fn take_fault(&mut self) -> Option<Fault> {
        self.shared.take_fault()
    }
}

impl Drop for SampledSession {
    fn drop(&mut self) {
        self.shared.stop();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_unavailable_meter_never_reports_a_figure() {
        let mut s = UnavailableMeter.start("virtual-0", None);
        assert_eq!(s.take_peak(), VramReading::UNAVAILABLE);
        assert!(s.take_fault().is_none());
    }

    #[test]
    fn weakest_provenance_wins() {
        use MeasurementSource::*;
        assert_eq!(weakest([Accounting, Sampled]), Sampled);
        assert_eq!(weakest([Accounting, Unavailable, Sampled]), Unavailable);
        assert_eq!(weakest([Accounting]), Accounting);
        assert_eq!(weakest([]), Unavailable);
    }

    #[test]
    fn a_sampler_keeps_the_peak_between_reads_and_reports_faults() {
        let shared = Arc::new(SamplerShared::default());
        let s2 = shared.clone();
        let thread = std::thread::spawn(move || {
            let mut n = 0u64;
            let mut sample = |_: &BTreeSet<u32>| {
                n += 1;
                if n == 3 {
                    Err(Fault::Throttled {
                        reasons: "hw_thermal".into(),
                    })
                } else {
                    Ok(if n.is_multiple_of(2) { 2 << 30 } else { 1 << 30 })
                }
            };
            run_sampler(&s2, None, Duration::from_millis(1), &mut sample);
        });
        let mut session = SampledSession::new(shared.clone(), None, thread);
        while shared.samples.load(Ordering::SeqCst) < 5 {
            std::thread::yield_now();
        }
        let r = session.take_peak();
        assert_eq!(r.source, MeasurementSource::Sampled);
        assert_eq!(r.peak_bytes, Some(2 << 30));
        assert_eq!(r.gib(), Some(2.0));
        assert!(matches!(session.take_fault(), Some(Fault::Throttled { .. })));
        assert!(session.take_fault().is_none());
    }

    #[test]
    fn accounting_beats_sampling_and_zero_is_unavailable() {
        let shared = Arc::new(SamplerShared::default());
        let thread = std::thread::spawn(|| {});
        let mut s = SampledSession::new(shared.clone(), Some(Box::new(|_| Some(5 << 30))), thread);
        shared.record(1 << 30);
        assert_eq!(
            s.take_peak(),
            VramReading {
                peak_bytes: Some(5 << 30),
                source: MeasurementSource::Accounting
            }
        );
        let thread = std::thread::spawn(|| {});
        let mut s = SampledSession::new(Arc::new(SamplerShared::default()), None, thread);
        assert_eq!(s.take_peak(), VramReading::UNAVAILABLE);
    }
}
