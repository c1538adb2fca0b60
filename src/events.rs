//! What the library tells its user while it works — warnings, notes, errors of one run while
//! the others carry on, progress lines — goes to a [`Sink`], never straight to the terminal:
//! the command line installs [`Stderr`] (one line each on standard error, as always), a test
//! or a notebook installs [`Collect`] and reads the events back. The pattern is the `log`
//! crate's: one process-wide sink, set by the program, used by every part of the library
//! (including the lock's heartbeat thread), standard error until one is set.

use std::sync::{Arc, Mutex, RwLock};

/// How much an event matters.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Level {
    /// A run failed or cannot go on; the others carry on.
    Error,
    /// Something is wrong or was repaired, and work goes on (a checkpoint skipped, a lock
    /// taken over, rows set aside).
    Warning,
    /// Worth knowing (a run resumed, already complete, skipped; the device chosen).
    Note,
    /// A training progress line (step, loss, pace).
    Progress,
}

/// One event: its level and its text as a person reads it (with its `warning:` or `[run]`
/// prefix, as the command line prints it).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Event {
    /// How much it matters.
    pub level: Level,
    /// What it says.
    pub text: String,
}

/// Where events go.
pub trait Sink: Send + Sync {
    /// Takes one event.
    fn emit(&self, event: &Event);
}

/// Each event a line on standard error: the command line's sink, and the default.
pub struct Stderr;

impl Sink for Stderr {
    fn emit(&self, event: &Event) {
        eprintln!("{}", event.text);
    }
}

/// Keeps every event, for a test or a program that shows them its own way.
#[derive(Default)]
pub struct Collect {
    events: Mutex<Vec<Event>>,
}

impl Collect {
    /// The events so far, in order.
    pub fn events(&self) -> Vec<Event> {
        self.events.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

impl Sink for Collect {
    fn emit(&self, event: &Event) {
        self.events
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(event.clone());
    }
}

static SINK: RwLock<Option<Arc<dyn Sink>>> = RwLock::new(None);

/// Sends every later event to `sink` (replacing the one before).
pub fn set_sink(sink: Arc<dyn Sink>) {
    *SINK.write().unwrap_or_else(|e| e.into_inner()) = Some(sink);
}

/// Sends an event to the sink.
pub fn emit(level: Level, text: impl Into<String>) {
    let event = Event {
        level,
        text: text.into(),
    };
    let sink = SINK.read().unwrap_or_else(|e| e.into_inner()).clone();
    match sink {
        Some(s) => s.emit(&event),
        None => Stderr.emit(&event),
    }
}

/// [`emit`] at [`Level::Error`].
pub fn error(text: impl Into<String>) {
    emit(Level::Error, text);
}

/// [`emit`] at [`Level::Warning`].
pub fn warning(text: impl Into<String>) {
    emit(Level::Warning, text);
}

/// [`emit`] at [`Level::Note`].
pub fn note(text: impl Into<String>) {
    emit(Level::Note, text);
}

/// [`emit`] at [`Level::Progress`].
pub fn progress(text: impl Into<String>) {
    emit(Level::Progress, text);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_collecting_sink_receives_every_event_in_order_with_its_level() {
        let sink = Arc::new(Collect::default());
        set_sink(sink.clone());
        warning("warning: a");
        note("b");
        error("error: c");
        let got = sink.events();
        set_sink(Arc::new(Stderr));
        let ours: Vec<&Event> = got
            .iter()
            .filter(|e| ["warning: a", "b", "error: c"].contains(&e.text.as_str()))
            .collect();
        assert_eq!(
            ours.iter().map(|e| e.level).collect::<Vec<_>>(),
            [Level::Warning, Level::Note, Level::Error]
        );
    }
}
