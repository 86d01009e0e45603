//! redis lease backend for `routine` (work in progress).
