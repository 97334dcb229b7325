//! The worker: one thread owns the engine and runs one job at a time into
//! the project, reporting progress with live previews. The UI decides the
//! order (it hands over the next job when the worker is idle), so queued
//! jobs can be removed or reordered until they start.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, Sender};
use std::sync::Arc;

use image::RgbImage;

use crate::engine::{Engine, Event};
use crate::jobs::PlannedRun;
use crate::project::{Project, RunRecord, Status};

pub enum Job {
    Run {
        record: Box<RunRecord>,
        plan: Box<PlannedRun>,
    },
}

pub enum Report {
    Loading(u64),
    Step {
        id: u64,
        step: usize,
        of: usize,
        seconds: f64,
        preview: RgbImage,
    },
    Decoding(u64),
    /// The job is over; the record says how (done, failed, cancelled).
    Ended(Box<RunRecord>),
}

/// Starts the worker. `cancel` stops the running job after its step.
pub fn spawn(
    project: Arc<Project>,
    mut engine: Engine,
    device: String,
    jobs: Receiver<Job>,
    reports: Sender<Report>,
    cancel: Arc<AtomicBool>,
    wake: impl Fn() + Send + 'static,
) {
    std::thread::Builder::new()
        .name("atelier-worker".into())
        .spawn(move || {
            while let Ok(Job::Run { record, plan }) = jobs.recv() {
                cancel.store(false, Ordering::SeqCst);
                let id = record.id;
                let _ = reports.send(Report::Loading(id));
                wake();
                let mut on_event = |event: Event| {
                    let report = match event {
                        Event::Planned { .. } => return,
                        Event::Step {
                            index,
                            of,
                            seconds,
                            preview,
                        } => Report::Step {
                            id,
                            step: index,
                            of,
                            seconds,
                            preview,
                        },
                        Event::Decoding => Report::Decoding(id),
                    };
                    let _ = reports.send(report);
                    wake();
                };
                // A bug in one job must not take the worker down with the queue.
                let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                    crate::jobs::execute(
                        Some(&project),
                        &mut engine,
                        &device,
                        Some(*record.clone()),
                        &plan,
                        &mut on_event,
                        &cancel,
                    )
                }));
                let result = match result {
                    Ok(r) => r,
                    Err(panic) => {
                        let what = panic
                            .downcast_ref::<String>()
                            .cloned()
                            .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                            .unwrap_or_else(|| "unknown".into());
                        let failed =
                            failed_copy(&record, format!("internal error (please report): {what}"));
                        let _ = project.write_record(&failed);
                        Err(anyhow::anyhow!("panic: {what}"))
                    }
                };
                if let Err(e) = &result {
                    tracing::warn!("run #{id}: {e:#}");
                }
                let ended = match (project.record(id), &result) {
                    // A job that failed before its record could say so (a
                    // full disk): failed on screen with the reason; on disk
                    // it stays queued, and runs again at the next start.
                    (Ok(r), Err(e)) if matches!(r.status, Status::Queued | Status::Running) => {
                        failed_copy(&r, format!("{e:#}"))
                    }
                    (Ok(r), _) => r,
                    (Err(_), Err(e)) => failed_copy(&record, format!("{e:#}")),
                    (Err(_), Ok(_)) => {
                        failed_copy(&record, "the record could not be read back".into())
                    }
                };
                if reports.send(Report::Ended(Box::new(ended))).is_err() {
                    break;
                }
                wake();
            }
        })
        .expect("spawn the worker");
}

/// The queued record marked failed with `error`.
fn failed_copy(record: &RunRecord, error: String) -> RunRecord {
    RunRecord {
        status: Status::Failed,
        error: Some(error),
        ..record.clone()
    }
}
