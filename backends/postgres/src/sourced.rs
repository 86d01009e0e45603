//! `Sourced`: a value and the setting it came from (a leaf the settings and the host
//! list share).

/// A value and the setting it came from, so errors name the variable the user set.
#[derive(Clone)]
pub(crate) struct Sourced<T> {
    pub(crate) value: T,
    pub(crate) setting: &'static str,
}

impl<T> Sourced<T> {
    pub(crate) fn new(value: T, setting: &'static str) -> Self {
        Self { value, setting }
    }
}
