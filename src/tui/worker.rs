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
use crate::project::{Project, RunRecord};

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
                let result = crate::jobs::execute(
                    Some(&project),
                    &mut engine,
                    &device,
                    Some(*record),
                    &plan,
                    &mut on_event,
                    &cancel,
                );
                if let Err(e) = &result {
                    tracing::warn!("run #{id}: {e:#}");
                }
                let ended = project.record(id).unwrap_or_else(|_| placeholder(id));
                if reports.send(Report::Ended(Box::new(ended))).is_err() {
                    break;
                }
                wake();
            }
        })
        .expect("spawn the worker");
}

/// A record for a run whose file could not be read back (shown as failed).
fn placeholder(id: u64) -> RunRecord {
    RunRecord {
        id,
        created: crate::project::record::now_rfc3339(),
        status: crate::project::Status::Failed,
        error: Some("the record could not be read back".into()),
        parent: None,
        source: String::new(),
        source_run: None,
        steps_run: None,
        device: String::new(),
        starred: false,
        tags: vec![],
        note: String::new(),
        recipe: crate::recipe::Recipe {
            prompt: String::new(),
            negative: String::new(),
            strength: 0.0,
            steps: 0,
            guidance: 0.0,
            seed: 0,
            scheduler: String::new(),
            width: 0,
            height: 0,
            crop: None,
            fit: Default::default(),
            model: String::new(),
        },
        model: Default::default(),
        timings: None,
    }
}
