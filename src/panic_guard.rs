//! A panic inside one run of a grid becomes that run's error, with the panic's message and
//! source location, so the grid records it as failed and goes on with the next run.

use crate::error::{Error, Result};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::{Mutex, Once};

/// Location of the latest panic on any thread (a worker's panic reaches the caller as a
/// re-raised payload that has lost it).
static LAST_LOCATION: Mutex<Option<String>> = Mutex::new(None);
static HOOK: Once = Once::new();

/// Keep the default report on stderr, and remember where the panic happened.
fn install_hook() {
    HOOK.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            if let Some(l) = info.location() {
                let at = format!("{}:{}:{}", l.file(), l.line(), l.column());
                if let Ok(mut last) = LAST_LOCATION.lock() {
                    *last = Some(at);
                }
            }
            previous(info);
        }));
    });
}

fn payload_message(payload: &(dyn std::any::Any + Send)) -> String {
    payload
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "a panic without a message".into())
}

/// Run `f`; a panic comes back as [`Error::Panic`]. Whatever `f` owned is dropped while
/// unwinding (locks, partial files' guards), so the caller may go on.
pub fn catch<T>(f: impl FnOnce() -> Result<T>) -> Result<T> {
    install_hook();
    if let Ok(mut last) = LAST_LOCATION.lock() {
        *last = None;
    }
    catch_unwind(AssertUnwindSafe(f)).unwrap_or_else(|payload| {
        let at = LAST_LOCATION
            .lock()
            .ok()
            .and_then(|mut l| l.take())
            .unwrap_or_else(|| "unknown location".into());
        Err(Error::Panic {
            message: payload_message(payload.as_ref()),
            at,
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_panic_becomes_an_error_naming_its_location() {
        let v: Vec<u32> = vec![];
        let i = v.len() + 25;
        let e = catch(|| Ok(v[i])).unwrap_err();
        let text = e.to_string();
        assert!(text.contains("index out of bounds"), "{text}");
        assert!(text.contains("src/panic_guard.rs:"), "{text}");
        assert_eq!(catch(|| Ok(7)).unwrap(), 7);
        assert!(matches!(
            catch::<()>(|| Err(Error::Invalid("plain".into()))),
            Err(Error::Invalid(_))
        ));
    }

    #[test]
    fn a_panic_on_a_worker_thread_keeps_its_message() {
        let e = catch::<()>(|| {
            let h = std::thread::spawn(|| panic!("worker gave up"));
            match h.join() {
                Ok(()) => Ok(()),
                Err(p) => std::panic::resume_unwind(p),
            }
        })
        .unwrap_err();
        assert!(e.to_string().contains("worker gave up"), "{e}");
    }
}
